"""SixChat's strict field checks: :class:`common.wire.fields.StrictFields` raising
:class:`~sixchat.errors.MalformedMessage`, with the canonical base64 rule of docs/sixchat.rst,
and the patterns both message modules use."""

from __future__ import annotations

import re
from typing import Final

from common.wire.fields import Base64Rule, StrictFields, encode_base64
from common.wire.xmlcodec import Element
from sixchat import errors

__all__ = [
    "FIELDS",
    "Element",
    "attribute",
    "check_attributes",
    "children",
    "decode_base64",
    "empty",
    "encode_base64",
    "leaf_text",
    "malformed",
    "parse",
    "repeated",
    "token",
]

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def malformed(message: str) -> errors.MalformedMessage:
    """The error of a message that breaks the rules."""
    return errors.MalformedMessage(message)


#: The checks of every SixChat message.
FIELDS: Final = StrictFields(malformed, protocol="SixChat", base64_rule=Base64Rule.CANONICAL)

parse = FIELDS.parse
check_attributes = FIELDS.check_attributes
attribute = FIELDS.attribute
children = FIELDS.children
repeated = FIELDS.repeated
leaf_text = FIELDS.leaf_text
empty = FIELDS.empty
decode_base64 = FIELDS.decode_base64


def token(text: str, what: str) -> str:
    """A version or suite name: a letter or digit, then up to 63 of ``A-Za-z0-9._-``."""
    if not _TOKEN.match(text):
        raise malformed(f"{what} is not a valid token")
    return text
