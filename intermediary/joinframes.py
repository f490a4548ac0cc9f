"""The relay's join port (plain TCP; docs/relay.rst): the one frame an agent sends to join a
circuit, and the one frame it gets back. Both sides use these; the framing is
:mod:`common.wire.framing`, the XML rules those of :mod:`intermediary.wire`."""

from __future__ import annotations

from typing import Final

from common.wire.xmlcodec import serialize_leaf
from intermediary import errors
from intermediary.wire import FIELDS, check_hex_id, leaf_text, parse_decimal_field

#: The largest frame on the join port, either way.
MAX_JOIN_FRAME: Final = 256


def encode_join(circuit_id: str) -> bytes:
    """``<join circuit="ID"/>`` (unframed): the one frame an agent sends on the join port."""
    return serialize_leaf("join", {"circuit": check_hex_id(circuit_id, "the circuit id")})


def parse_join(payload: bytes) -> str:
    """The circuit id a join document names; raise MalformedMessage for anything else."""
    try:
        root = FIELDS.parse(payload, max_depth=1, max_elements=1)
        if root.tag != "join":
            raise errors.MalformedMessage(f"expected <join>, not <{root.tag}>")
        FIELDS.empty(root, ("circuit",))
        return check_hex_id(FIELDS.attribute(root, "circuit"), "the circuit id")
    except errors.MalformedMessage:
        raise
    except errors.IntermediaryError as error:
        raise errors.MalformedMessage(error.message) from None


def encode_joined() -> bytes:
    """``<joined/>`` (unframed): the join succeeded, raw bytes follow."""
    return serialize_leaf("joined")


def parse_join_answer(payload: bytes) -> None:
    """Client side: return if the join port answered ``<joined/>``; raise the error it sent
    instead (an ``<error code name>`` without id), or MalformedMessage for anything else."""
    try:
        root = FIELDS.parse(payload, max_depth=1, max_elements=1)
        if root.tag == "joined":
            FIELDS.empty(root)
            return
        if root.tag != "error" or root.get("id") is not None:
            raise errors.MalformedMessage(f"unexpected <{root.tag}> from the join port")
        text = leaf_text(root, ("code", "name"))
        code = parse_decimal_field(FIELDS.attribute(root, "code"), "code", 0, 999)
        cls = errors.error_class_for(FIELDS.attribute(root, "name"), code)
    except errors.MalformedMessage:
        raise
    except errors.IntermediaryError as error:
        raise errors.MalformedMessage(error.message) from None
    raise cls(text[:1000] or None)
