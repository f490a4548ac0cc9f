"""Tests for :mod:`irp.wire.fields`: IRP's strict field access, base64 and serial numbers.

The texts are IRP's (they travel in error answers); the rules are the shared ones of
:mod:`common.wire.fields`.
"""

from __future__ import annotations

from twisted.trial import unittest

from common.wire.xmlcodec import make_element, parse_document, sub_element
from irp import errors
from irp.wire.fields import (
    bool_text,
    check_fields,
    child_text,
    decode_base64,
    encode_base64,
    optional_bool,
    optional_int,
    parse_serial,
    required,
)


def _element(data: bytes):  # type: ignore[no-untyped-def]
    return parse_document(data)


class FieldTests(unittest.SynchronousTestCase):
    """check_fields, required, optional_int, optional_bool, child_text."""

    def test_check_fields(self) -> None:
        """Only the named attributes and children are allowed."""
        element = _element(b'<op a="1"><c/></op>')
        check_fields(element, ("a", "b"), ("c",))
        error = self.assertRaises(errors.BadRequest, check_fields, element, ("b",), ("c",))
        self.assertIn("'a'", error.message)
        error = self.assertRaises(errors.BadRequest, check_fields, element, ("a",), ())
        self.assertIn("<c>", error.message)

    def test_required(self) -> None:
        """required returns the value or raises bad-request naming the attribute."""
        element = _element(b'<op a="x"/>')
        self.assertEqual(required(element, "a"), "x")
        error = self.assertRaises(errors.BadRequest, required, element, "b")
        self.assertIn("'b'", error.message)

    def test_optional_int(self) -> None:
        """Integers within bounds; default when absent."""
        element = _element(b'<op n="5" big="99" neg="-1" junk="5x" long="1234567890123"/>')
        self.assertEqual(optional_int(element, "n", 0, 1, 10), 5)
        self.assertEqual(optional_int(element, "missing", 3, 1, 10), 3)
        self.assertRaises(errors.InvalidArgument, optional_int, element, "big", 0, 1, 10)
        self.assertRaises(errors.BadRequest, optional_int, element, "neg", 0, -5, 10)
        self.assertRaises(errors.BadRequest, optional_int, element, "junk", 0, 0, 10)
        self.assertRaises(errors.BadRequest, optional_int, element, "long", 0, 0, 10**20)
        for digits in ("\u00b2", "\u0663", "\uff15"):
            element.set("n", digits)
            self.assertRaises(errors.BadRequest, optional_int, element, "n", 0, 0, 10)

    def test_optional_bool(self) -> None:
        """Only 'true' and 'false'."""
        element = _element(b'<op t="true" f="false" y="yes"/>')
        self.assertIs(optional_bool(element, "t"), True)
        self.assertIs(optional_bool(element, "f"), False)
        self.assertIsNone(optional_bool(element, "missing"))
        self.assertIs(optional_bool(element, "missing", True), True)
        self.assertRaises(errors.BadRequest, optional_bool, element, "y")
        self.assertEqual((bool_text(True), bool_text(False)), ("true", "false"))

    def test_child_text(self) -> None:
        """One text-only child, within a length limit."""
        element = make_element("op")
        sub_element(element, "password", None, "secret")
        self.assertEqual(child_text(element, "password"), "secret")
        self.assertIsNone(child_text(element, "csr", required_child=False))
        self.assertRaises(errors.BadRequest, child_text, element, "csr")
        # A field over its limit is not a frame over its limit: not fatal.
        error = self.assertRaises(errors.InvalidArgument, child_text, element, "password", limit=3)
        self.assertFalse(error.fatal)
        sub_element(element, "password", None, "again")
        self.assertRaises(errors.BadRequest, child_text, element, "password")

    def test_child_text_without_attributes(self) -> None:
        """Text-only children carry no attributes."""
        element = _element(b'<op><password colour="red">secret</password></op>')
        error = self.assertRaises(errors.BadRequest, child_text, element, "password")
        self.assertIn("colour", error.message)

    def test_check_fields_text(self) -> None:
        """Text where none is defined is refused (white space between elements is not
        text); with text=True it is allowed."""
        for data in (b"<op>hello</op>", b"<op><c/>tail</op>", b"<op> x <c/></op>"):
            self.assertRaises(errors.BadRequest, check_fields, _element(data), (), ("c",))
        check_fields(_element(b"<op>\n  <c/>\n</op>"), (), ("c",))
        check_fields(_element(b"<op>hello</op>"), text=True)

    def test_check_fields_only_xml_white_space(self) -> None:
        """White space between elements means XML's (space, tab, CR, LF): other Unicode
        spaces, which str.isspace() would accept, are text and refused."""
        check_fields(_element(b"<op> \t\r\n<c/> \t\n</op>"), (), ("c",))
        for space in ("\u00a0", "\u2028", "\u3000", "\x85"):
            for data in (f"<op>{space}<c/></op>", f"<op><c/>{space}</op>"):
                with self.subTest(data=data):
                    self.assertRaises(errors.BadRequest, check_fields, _element(data.encode("utf-8")), (), ("c",))

    def test_child_text_empty_and_nested(self) -> None:
        """An empty child is the empty string; a child with elements is refused."""
        element = _element(b"<op><a/><b><c/></b></op>")
        self.assertEqual(child_text(element, "a"), "")
        self.assertRaises(errors.BadRequest, child_text, element, "b")


class WireTextTests(unittest.SynchronousTestCase):
    """The texts of IRP's refusals travel in its error answers: they are fixed."""

    def test_texts(self) -> None:
        element = _element(b'<op z="1" n="07" m="99" t="yes"><c/>x<p>long</p></op>')
        cases = [
            (lambda: check_fields(element, (), ()), "unknown attribute 'z' on <op>"),
            (lambda: check_fields(element, ("z", "n", "m", "t"), ("p",)), "unknown element <c> in <op>"),
            (lambda: check_fields(element, ("z", "n", "m", "t"), ("c", "p")), "<op> holds text where none is allowed"),
            (lambda: required(element, "q"), "<op> needs a 'q' attribute"),
            (lambda: optional_int(element, "n", 0, 0, 9), "'n' must be a non-negative integer in decimal, without leading zeros"),
            (lambda: optional_int(element, "m", 0, 0, 9), "'m' must be between 0 and 9"),
            (lambda: optional_bool(element, "t"), "'t' must be 'true' or 'false'"),
            (lambda: child_text(element, "csr"), "<op> needs a <csr> element"),
            (lambda: child_text(element, "p", limit=2), "<p> is longer than 2 characters"),
        ]
        for call, text in cases:
            with self.subTest(text=text):
                with self.assertRaises(errors.IRPError) as caught:
                    call()
                self.assertEqual(caught.exception.message, text)


class EncodingTests(unittest.SynchronousTestCase):
    """Base64 and serial numbers."""

    def test_base64(self) -> None:
        """Strict base64, whitespace between lines allowed."""
        data = bytes(range(256))
        text = encode_base64(data)
        self.assertEqual(decode_base64(text, "x"), data)
        wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
        self.assertEqual(decode_base64(wrapped, "x"), data)
        for bad in ("a", "!!!!", "QUJ", "QU JD$"):
            error = self.assertRaises(errors.BadRequest, decode_base64, bad, "the blob")
            self.assertIn("the blob", error.message)

    def test_serials(self) -> None:
        """Hex serials, with or without colons, case-insensitive, at most 40 digits."""
        self.assertEqual(parse_serial("1a"), 26)
        self.assertEqual(parse_serial("1A:2b"), 0x1A2B)
        self.assertEqual(parse_serial("f" * 40), int("f" * 40, 16))
        for bad in ("", "xyz", "f" * 41, "-1", "0x1a", ":"):
            self.assertRaises(errors.BadRequest, parse_serial, bad)
