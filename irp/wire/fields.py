"""IRP's strict field checks (docs/irp.rst, "Serialisation"): the shared
:class:`common.wire.fields.StrictFields` raising :class:`~irp.errors.BadRequest`, and
:class:`~irp.errors.InvalidArgument` for well-formed values out of range, with IRP's texts
and the ``LINES`` base64 rule (RFC 4648 with padding; requests may break it into lines, so
white space is dropped before decoding). Also the two IRP field forms the shared layer does
not know: booleans and certificate serial numbers.

The texts below appear in IRP's error answers; changing one changes the wire bytes.
"""

from __future__ import annotations

from typing import Final

from common.wire.fields import Base64Rule, FieldMessages, StrictFields, encode_base64
from irp import errors

__all__ = [
    "FIELDS",
    "bool_text",
    "check_fields",
    "child_text",
    "decode_base64",
    "encode_base64",
    "optional_bool",
    "optional_int",
    "parse_serial",
    "required",
]

#: The texts of IRP's field refusals.
MESSAGES: Final = FieldMessages(
    missing_attributes="<{tag}> needs a {first!r} attribute",
    unknown_attributes="unknown attribute {first!r} on <{tag}>",
    text="<{tag}> holds text where none is allowed",
)

#: The strict checks of IRP messages.
FIELDS: Final = StrictFields(
    errors.BadRequest,
    protocol="IRP",
    base64_rule=Base64Rule.LINES,
    range_error=errors.InvalidArgument,
    messages=MESSAGES,
)

check_fields = FIELDS.check_fields
required = FIELDS.required
optional_int = FIELDS.optional_int
optional_bool = FIELDS.optional_bool
child_text = FIELDS.child_text
no_text = FIELDS.no_text


def decode_base64(text: str, what: str) -> bytes:
    """Decode IRP base64 (white space allowed between lines); bad-request if invalid."""
    return FIELDS.decode_base64(text, what)


def bool_text(value: bool) -> str:
    """The wire form of a boolean."""
    return "true" if value else "false"


def parse_serial(text: str) -> int:
    """Parse a certificate serial number: 1 to 40 hexadecimal digits, either case, colons
    allowed between them; anything else is bad-request."""
    cleaned = text.lower().replace(":", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise errors.BadRequest(f"{text!r} is not a hexadecimal serial number")
    return int(cleaned, 16)
