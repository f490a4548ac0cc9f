"""The one parser of integers written on the wire or typed as port numbers."""

from __future__ import annotations


def parse_decimal(text: str, max_digits: int) -> int | None:
    """The value of a wire integer, or None when ``text`` is not one.

    The one integer parser of IRP: 1 to ``max_digits`` ASCII digits, without sign, white
    space or leading zeros (``0`` itself is the only integer starting with ``0``).
    ``str.isdigit`` alone would also accept digits of other scripts and superscripts, such
    as ``"\\u0663"`` and ``"\\u00b2"``, which ``int`` either refuses or reads.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    return int(text)


def is_decimal(text: str, max_digits: int) -> bool:
    """True if ``text`` is a wire integer of at most ``max_digits`` digits (see
    :func:`parse_decimal`)."""
    return parse_decimal(text, max_digits) is not None
