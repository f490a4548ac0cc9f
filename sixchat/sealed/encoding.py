"""The canonical byte encodings and strict XML field checks that prekeys and envelopes share.

Signed and hashed bytes are never XML: they are sequences of *fields*, each a 4-byte
big-endian length followed by the bytes (:func:`length_prefixed`); integers are 8-byte
big-endian fields (:func:`uint64`), text is its ASCII bytes. A receiver recomputes them from
the decoded values, so XML formatting (attribute order, white space) never matters.

The XML checks are :class:`common.wire.fields.StrictFields` raising
:class:`~sixchat.errors.SealedMalformed`, with SixChat's canonical base64 rule.
"""

from __future__ import annotations

import re
import struct
from typing import Final

from common.identity import Identity, InvalidIdentity
from common.integers import parse_decimal
from common.wire.fields import Base64Rule, StrictFields, encode_base64
from common.wire.xmlcodec import Element
from sixchat import errors

__all__ = [
    "FIELDS",
    "MAX_TIME",
    "encode_base64",
    "identity_attribute",
    "integer_attribute",
    "length_prefixed",
    "malformed",
    "split_fields",
    "uint64",
]

#: The largest time (Unix seconds) and sequence number: 12 decimal digits at most.
MAX_TIME: Final = 10**12 - 1
_HEX_ID = re.compile(r"[0-9a-f]{32}\Z")


def malformed(message: str) -> errors.SealedMalformed:
    """The error of an envelope or prekey that breaks the rules."""
    return errors.SealedMalformed(message)


#: The checks of every sealed document.
FIELDS: Final = StrictFields(
    malformed, protocol="SixChat sealed", base64_rule=Base64Rule.CANONICAL
)


def length_prefixed(*fields: bytes) -> bytes:
    """Each field as ``uint32 length || bytes``, concatenated."""
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def split_fields(data: bytes, count: int) -> list[bytes]:
    """The inverse of :func:`length_prefixed` for exactly ``count`` fields (SealedMalformed
    on any other shape)."""
    fields: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise malformed("a field's length is cut off")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if length > len(data) - offset:
            raise malformed("a field is longer than the data")
        fields.append(data[offset : offset + length])
        offset += length
    if len(fields) != count:
        raise malformed(f"expected {count} fields, found {len(fields)}")
    return fields


def uint64(value: int) -> bytes:
    """An integer as 8 bytes, big-endian."""
    return struct.pack(">Q", value)


def identity_attribute(element: Element, name: str) -> Identity:
    """An identity attribute in canonical (lower-case) form."""
    text = FIELDS.attribute(element, name)
    try:
        identity = Identity.parse(text)
    except InvalidIdentity:
        raise malformed(f"<{element.tag} {name}> is not a valid identity") from None
    if str(identity) != text:
        raise malformed(f"<{element.tag} {name}> is not in canonical (lower-case) form")
    return identity


def integer_attribute(element: Element, name: str, low: int = 0, high: int = MAX_TIME) -> int:
    """A decimal attribute (no sign, no leading zeros, at most 12 digits) in [low, high]."""
    value = parse_decimal(FIELDS.attribute(element, name), 12)
    if value is None or not low <= value <= high:
        raise malformed(f"<{element.tag} {name}> must be an integer from {low} to {high}")
    return value


def hex_id_attribute(element: Element, name: str) -> str:
    """A 16-byte identifier written as 32 lower-case hex digits."""
    text = FIELDS.attribute(element, name)
    if not _HEX_ID.match(text):
        raise malformed(f"<{element.tag} {name}> must be 32 lower-case hex digits")
    return text
