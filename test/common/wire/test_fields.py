"""Tests for :mod:`common.wire.fields`: strict XML field checks and the two base64 rules."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from common.wire.fields import Base64Rule, FieldMessages, StrictFields, encode_base64, only_space
from common.wire.xmlcodec import parse_document


class Refused(Exception):
    """The error a test protocol raises."""


CANONICAL = StrictFields(Refused, protocol="Test")
LINES = StrictFields(Refused, protocol="Test", base64_rule=Base64Rule.LINES)


class OutOfRange(Exception):
    """The error a test protocol raises for well-formed values out of range."""


#: A protocol with its own texts and its own range error.
WORDED = StrictFields(
    Refused,
    protocol="Worded",
    range_error=OutOfRange,
    messages=FieldMessages(
        missing_attributes="missing {first} in {tag}",
        unknown_attributes="stray {first} ({names}) in {tag}",
        text="words in {tag}",
        too_long="{child} over {limit}",
    ),
)


def element(document: bytes) -> object:
    return parse_document(document, max_depth=4, max_elements=20)


class ErrorFactoryTests(TestCase):
    """Every check raises the protocol's own error, with a message naming the element."""

    def test_parse(self) -> None:
        self.assertEqual(CANONICAL.parse(b"<a/>", max_depth=1, max_elements=1).tag, "a")
        with self.assertRaises(Refused) as caught:
            CANONICAL.parse(b"<a", max_depth=1, max_elements=1)
        self.assertIn("unacceptable XML", str(caught.exception))
        with self.assertRaises(Refused) as caught:
            CANONICAL.parse(b'<a xmlns="urn:x"/>', max_depth=1, max_elements=1)
        self.assertEqual(str(caught.exception), "namespaces are not used in Test messages")

    def test_attributes(self) -> None:
        root = element(b'<a x="1" y="2"/>')
        CANONICAL.check_attributes(root, ("x",), ("y",))
        self.assertEqual(CANONICAL.attribute(root, "x"), "1")
        with self.assertRaises(Refused) as caught:
            CANONICAL.check_attributes(root, ("x", "z"), ("y",))
        self.assertEqual(str(caught.exception), "<a> lacks the attribute(s) z")
        with self.assertRaises(Refused) as caught:
            CANONICAL.check_attributes(root, ("x",))
        self.assertEqual(str(caught.exception), "<a> has unknown attribute(s) y")

    def test_children(self) -> None:
        root = element(b"<a>\n <b/> <c/>\n</a>")
        self.assertEqual([child.tag for child in CANONICAL.children(root, ("b", "c"))], ["b", "c"])
        self.assertRaises(Refused, CANONICAL.children, root, ("c", "b"))
        self.assertRaises(Refused, CANONICAL.children, element(b"<a>x<b/><c/></a>"), ("b", "c"))
        self.assertRaises(Refused, CANONICAL.children, element(b"<a><b/>x<c/></a>"), ("b", "c"))

    def test_repeated(self) -> None:
        root = element(b"<a><b/><b/></a>")
        self.assertEqual(len(CANONICAL.repeated(root, "b", 1, 2)), 2)
        self.assertRaises(Refused, CANONICAL.repeated, root, "b", 3, 4)
        self.assertRaises(Refused, CANONICAL.repeated, element(b"<a><b/><c/></a>"), "b", 1, 2)

    def test_leaf_text_and_empty(self) -> None:
        self.assertEqual(CANONICAL.leaf_text(element(b'<a n="1">t</a>'), attributes=("n",)), "t")
        self.assertEqual(CANONICAL.leaf_text(element(b"<a/>")), "")
        self.assertRaises(Refused, CANONICAL.leaf_text, element(b"<a><b/></a>"))
        CANONICAL.empty(element(b'<a n="1"/>'), ("n",))
        self.assertRaises(Refused, CANONICAL.empty, element(b"<a>t</a>"))
        self.assertRaises(Refused, CANONICAL.empty, element(b"<a><b/></a>"))

    def test_only_space(self) -> None:
        self.assertTrue(only_space(None))
        self.assertTrue(only_space(" \t\r\n"))
        self.assertFalse(only_space("\u00a0"))  # not XML white space


class NamedFieldTests(TestCase):
    """The checks of named fields in any order (IRP's style), with a protocol's own texts."""

    def test_check_fields(self) -> None:
        """Unknown attributes first (the first in document order named), then unknown
        children, then text."""
        root = element(b'<a z="1" y="2"><b/><b/><c/></a>')
        WORDED.check_fields(root, ("y", "z"), ("b", "c"))
        with self.assertRaises(Refused) as caught:
            WORDED.check_fields(root, (), ())
        self.assertEqual(str(caught.exception), "stray z (y, z) in a")
        with self.assertRaises(Refused) as caught:
            WORDED.check_fields(root, ("y", "z"), ("b",))
        self.assertEqual(str(caught.exception), "unknown element <c> in <a>")
        with self.assertRaises(Refused) as caught:
            WORDED.check_fields(element(b"<a>t<b/></a>"), (), ("b",))
        self.assertEqual(str(caught.exception), "words in a")
        WORDED.check_fields(element(b"<a>t</a>"), text=True)

    def test_required(self) -> None:
        root = element(b'<a x="1"/>')
        self.assertEqual(WORDED.required(root, "x"), "1")
        with self.assertRaises(Refused) as caught:
            WORDED.required(root, "w")
        self.assertEqual(str(caught.exception), "missing w in a")

    def test_optional_int(self) -> None:
        """Decimal without sign or leading zeros (the protocol's error); out of range is
        the range error; absent is the default."""
        root = element(b'<a n="5" z="05" s="+5" big="1234567890123"/>')
        self.assertEqual(WORDED.optional_int(root, "n", 0, 0, 9), 5)
        self.assertEqual(WORDED.optional_int(root, "absent", 7, 0, 9), 7)
        for name in ("z", "s", "big"):
            self.assertRaises(Refused, WORDED.optional_int, root, name, 0, 0, 10**15)
        with self.assertRaises(OutOfRange) as caught:
            WORDED.optional_int(root, "n", 0, 6, 9)
        self.assertEqual(str(caught.exception), "'n' must be between 6 and 9")
        # Without a range error of its own, a protocol raises its one error.
        self.assertRaises(Refused, CANONICAL.optional_int, root, "n", 0, 6, 9)

    def test_optional_bool(self) -> None:
        root = element(b'<a t="true" f="false" y="True"/>')
        self.assertIs(WORDED.optional_bool(root, "t"), True)
        self.assertIs(WORDED.optional_bool(root, "f"), False)
        self.assertIsNone(WORDED.optional_bool(root, "absent"))
        self.assertRaises(Refused, WORDED.optional_bool, root, "y")

    def test_child_text(self) -> None:
        root = element(b'<a><p>text</p><q r="1">x</q><s><t/></s><d/><d/></a>')
        self.assertEqual(WORDED.child_text(root, "p"), "text")
        self.assertIsNone(WORDED.child_text(root, "absent", required_child=False))
        self.assertRaises(Refused, WORDED.child_text, root, "absent")
        self.assertRaises(Refused, WORDED.child_text, root, "q")  # attributes
        self.assertRaises(Refused, WORDED.child_text, root, "s")  # elements
        self.assertRaises(Refused, WORDED.child_text, root, "d")  # twice
        with self.assertRaises(OutOfRange) as caught:
            WORDED.child_text(root, "p", limit=3)
        self.assertEqual(str(caught.exception), "p over 3")


class Base64Tests(TestCase):
    """The canonical rule (SixChat) and the lines rule (IRP)."""

    def test_encode_is_canonical(self) -> None:
        self.assertEqual(encode_base64(b"\x00\x01"), "AAE=")
        for rule in (CANONICAL, LINES):
            self.assertEqual(rule.decode_base64(encode_base64(b"\x00\x01"), "x"), b"\x00\x01")

    def test_canonical(self) -> None:
        for bad in ("AAF=", "AAE", "AA E=", "AAE=\n", "é", "AB=="):
            self.assertRaises(Refused, CANONICAL.decode_base64, bad, "x")

    def test_lines(self) -> None:
        """White space anywhere is dropped; unused bits are not checked; padding is required."""
        self.assertEqual(LINES.decode_base64("AA\r\nE=\n", "x"), b"\x00\x01")
        self.assertEqual(LINES.decode_base64("AAF=", "x"), b"\x00\x01")
        for bad in ("AAE", "é", "AA*E="):
            self.assertRaises(Refused, LINES.decode_base64, bad, "x")

    def test_lengths(self) -> None:
        with self.assertRaises(Refused) as caught:
            CANONICAL.decode_base64("AAE=", "the key", length=3)
        self.assertEqual(str(caught.exception), "the key must be 3 bytes, not 2")
        self.assertRaises(Refused, LINES.decode_base64, "", "x", max_length=10)
        self.assertRaises(Refused, CANONICAL.decode_base64, "AAAA", "x", max_length=2)
        self.assertEqual(CANONICAL.decode_base64("", "x"), b"")
