"""IRP's base64 rule (docs/irp.rst): :class:`common.wire.fields.StrictFields` raising
:class:`~irp.errors.BadRequest`, with the ``LINES`` rule (RFC 4648 with padding; requests may
break it into lines, so white space is dropped before decoding)."""

from __future__ import annotations

from typing import Final

from common.wire.fields import Base64Rule, StrictFields, encode_base64
from irp import errors

__all__ = ["FIELDS", "decode_base64", "encode_base64"]

#: The strict checks of IRP messages (so far: base64).
FIELDS: Final = StrictFields(errors.BadRequest, protocol="IRP", base64_rule=Base64Rule.LINES)


def decode_base64(text: str, what: str) -> bytes:
    """Decode IRP base64 (white space allowed between lines); bad-request if invalid."""
    return FIELDS.decode_base64(text, what)
