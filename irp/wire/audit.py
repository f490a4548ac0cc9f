"""The audit trail on the wire (docs/irp.rst, "audit-list" and "audit-checkpoints"): an
entry as ``<entry>``, a checkpoint as ``<checkpoint>``, built by the registry and parsed
strictly by clients.

Every field of an entry travels exactly as stored (the hash covers those exact strings):
``at`` in integer microseconds, ``hash`` in lowercase hex.
"""

from __future__ import annotations

import re
from typing import Final

from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.wire.audit_chain import HASH_SIZE, AuditCheckpoint, AuditEntry
from irp.wire.elements import int_attribute
from irp.wire.fields import check_fields, decode_base64, encode_base64, required

ENTRY_ATTRIBUTES: Final = ("id", "at", "event", "outcome", "actor", "subject", "address", "details", "hash")
CHECKPOINT_ATTRIBUTES: Final = ("entry-id", "at", "hash", "signature", "certificates")

_HEX_HASH: Final = re.compile(rf"[0-9a-f]{{{2 * HASH_SIZE}}}\Z")


def entry_element(entry: AuditEntry) -> Element:
    """``<entry>``: one entry of the trail."""
    return make_element(
        "entry",
        {
            "id": str(entry.id),
            "at": str(entry.at),
            "event": entry.event,
            "outcome": entry.outcome,
            "actor": entry.actor,
            "subject": entry.subject,
            "address": entry.address,
            "details": entry.details,
            "hash": entry.hash.hex(),
        },
    )


def _hash(element: Element, name: str) -> bytes:
    text = required(element, name)
    if not _HEX_HASH.match(text):
        raise errors.BadRequest(f"{name!r} must be {2 * HASH_SIZE} lowercase hex digits")
    return bytes.fromhex(text)


def parse_entry(element: Element) -> AuditEntry:
    """Parse ``<entry>`` (strictly)."""
    if element.tag != "entry":
        raise errors.BadRequest(f"expected <entry>, got <{element.tag}>")
    check_fields(element, ENTRY_ATTRIBUTES)
    event, outcome, actor, subject, address, details = (
        required(element, name) for name in ("event", "outcome", "actor", "subject", "address", "details")
    )
    return AuditEntry(
        int_attribute(element, "id"), int_attribute(element, "at"), event, outcome, actor, subject, address, details, _hash(element, "hash")
    )


def checkpoint_element(checkpoint: AuditCheckpoint) -> Element:
    """``<checkpoint>``: one signed checkpoint."""
    return make_element(
        "checkpoint",
        {
            "entry-id": str(checkpoint.entry_id),
            "at": str(checkpoint.at),
            "hash": checkpoint.hash.hex(),
            "signature": encode_base64(checkpoint.signature),
            "certificates": encode_base64(checkpoint.certificates),
        },
    )


def parse_checkpoint(element: Element) -> AuditCheckpoint:
    """Parse ``<checkpoint>`` (strictly)."""
    if element.tag != "checkpoint":
        raise errors.BadRequest(f"expected <checkpoint>, got <{element.tag}>")
    check_fields(element, CHECKPOINT_ATTRIBUTES)
    return AuditCheckpoint(
        int_attribute(element, "entry-id"),
        int_attribute(element, "at"),
        _hash(element, "hash"),
        decode_base64(required(element, "signature"), "signature"),
        decode_base64(required(element, "certificates"), "certificates"),
    )
