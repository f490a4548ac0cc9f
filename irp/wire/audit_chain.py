"""The audit trail's chain, sans I/O: how an entry is encoded and hashed, and what a
checkpoint signs (docs/irp.rst, "The audit trail", states every rule here byte for byte).

An entry's encoding is a domain-separation label followed by its fields, each
length-prefixed::

    encoding = "irp-audit-entry-v1" %x00 field(id) field(at) field(event) field(outcome)
               field(actor) field(subject) field(address) field(details)
    field(x) = 4-byte unsigned big-endian length of x || x

where ``id`` and ``at`` (microseconds since the epoch) are written in decimal ASCII and the
text fields in UTF-8; ``details`` is canonical JSON (:func:`canonical_json`). The entry's
hash is SHA-384(previous hash || encoding); entry 1's previous hash is 48 zero bytes. A
checkpoint is an Ed25519 signature by the registry's record-signing key over::

    "irp-audit-checkpoint-v1" %x00 field(domain) field(entry id) field(hash at that entry)
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: The label opening every entry's encoding.
ENTRY_LABEL: Final = b"irp-audit-entry-v1\x00"
#: The label opening every checkpoint's signed message.
CHECKPOINT_LABEL: Final = b"irp-audit-checkpoint-v1\x00"
#: The bytes of a SHA-384 hash.
HASH_SIZE: Final = 48
#: The "previous hash" of entry 1.
GENESIS: Final = bytes(HASH_SIZE)
#: The most characters kept of a text field (actor, subject, address, a detail's value).
TEXT_LIMIT: Final = 256
#: The actor of the registry's own entries (start, stop).
REGISTRY_ACTOR: Final = "registry"


class ChainError(ValueError):
    """An entry or checkpoint that cannot be encoded (a field out of its rules)."""


def canonical_json(details: Mapping[str, Any]) -> str:
    """``details`` as canonical JSON: keys sorted, separators ``,`` and ``:``, no
    insignificant white space, non-ASCII characters as themselves (UTF-8), no NaN or
    infinity; control characters escaped as JSON requires."""
    try:
        return json.dumps(dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ChainError(f"audit details are not canonical JSON: {error}") from None


def clean_text(value: object, limit: int = TEXT_LIMIT) -> str:
    """A text field as the trail keeps it: control characters (Unicode category Cc)
    replaced by U+FFFD, cut to ``limit`` characters (a field's value comes from requests,
    which may carry anything)."""
    text = "".join("\ufffd" if unicodedata.category(char) == "Cc" else char for char in str(value))
    return text[:limit]


def field(value: bytes) -> bytes:
    """One length-prefixed field (4-byte unsigned big-endian length, then the bytes)."""
    if len(value) >= 1 << 32:
        raise ChainError("an audit field is longer than 2^32 - 1 bytes")
    return len(value).to_bytes(4, "big") + value


def _number(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChainError(f"an audit entry's {what} must be a non-negative integer")
    return str(value).encode("ascii")


@dataclass(frozen=True, slots=True)
class EntryDraft:
    """What a new entry says, before the store numbers and chains it."""

    #: Microseconds since 1970-01-01T00:00:00Z.
    at: int
    event: str
    outcome: str
    actor: str
    subject: str
    address: str
    #: Canonical JSON (see :func:`canonical_json`).
    details: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the trail as stored: numbered, with its chained hash."""

    id: int
    at: int
    event: str
    outcome: str
    actor: str
    subject: str
    address: str
    details: str
    hash: bytes

    @property
    def draft(self) -> EntryDraft:
        """The entry's fields without its number and hash."""
        return EntryDraft(self.at, self.event, self.outcome, self.actor, self.subject, self.address, self.details)


def make_draft(
    at: int,
    event: str,
    outcome: str,
    actor: str,
    subject: str = "",
    address: str = "",
    details: Mapping[str, Any] | None = None,
) -> EntryDraft:
    """A new entry's fields, cleaned (:func:`clean_text`) and its details canonical."""
    cleaned = {clean_text(key, 64): clean_text(value) if isinstance(value, str) else value for key, value in (details or {}).items()}
    return EntryDraft(
        at, clean_text(event, 64), clean_text(outcome, 64), clean_text(actor), clean_text(subject), clean_text(address), canonical_json(cleaned)
    )


def encode_entry(entry_id: int, draft: EntryDraft) -> bytes:
    """The bytes an entry's hash covers (see the module's documentation)."""
    parts = [ENTRY_LABEL, field(_number(entry_id, "id")), field(_number(draft.at, "time"))]
    for text in (draft.event, draft.outcome, draft.actor, draft.subject, draft.address, draft.details):
        parts.append(field(text.encode("utf-8")))
    return b"".join(parts)


def entry_hash(previous: bytes, entry_id: int, draft: EntryDraft) -> bytes:
    """SHA-384(previous hash || the entry's encoding)."""
    if len(previous) != HASH_SIZE:
        raise ChainError(f"a previous hash must be {HASH_SIZE} bytes")
    return hashlib.sha384(previous + encode_entry(entry_id, draft)).digest()


def extend(previous: bytes, first_id: int, drafts: Iterable[EntryDraft]) -> list[AuditEntry]:
    """Number and chain ``drafts`` after the entry whose hash is ``previous`` (``first_id``
    is the number of the first of them)."""
    entries: list[AuditEntry] = []
    for offset, draft in enumerate(drafts):
        entry_id = first_id + offset
        previous = entry_hash(previous, entry_id, draft)
        entries.append(AuditEntry(entry_id, draft.at, draft.event, draft.outcome, draft.actor, draft.subject, draft.address, draft.details, previous))
    return entries


def checkpoint_message(domain: str, entry_id: int, chain_hash: bytes) -> bytes:
    """The bytes a checkpoint's signature covers."""
    if len(chain_hash) != HASH_SIZE:
        raise ChainError(f"a checkpoint's hash must be {HASH_SIZE} bytes")
    return CHECKPOINT_LABEL + field(domain.encode("utf-8")) + field(_number(entry_id, "id")) + field(chain_hash)


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A signature over the chain's hash at one entry."""

    entry_id: int
    #: Microseconds since the epoch, when it was signed (not itself signed).
    at: int
    hash: bytes
    signature: bytes
    #: The DER record-signing certificate of the key that signed, followed by the DER
    #: certificate of the issuing CA that issued it.
    certificates: bytes


def split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (certificates) into each one's bytes;
    :class:`ChainError` when the bytes are not such a concatenation."""
    items: list[bytes] = []
    position = 0
    while position < len(data):
        if data[position] != 0x30 or position + 2 > len(data):
            raise ChainError("not a concatenation of DER certificates")
        first = data[position + 1]
        header = 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4 or position + 2 + count > len(data):
                raise ChainError("a DER length is not valid")
            length = int.from_bytes(data[position + 2 : position + 2 + count], "big")
            header += count
        end = position + header + length
        if end > len(data):
            raise ChainError("a DER certificate is cut short")
        items.append(data[position:end])
        position = end
    return items

