"""Tests for :mod:`common.wire.fields`: strict XML field checks and the two base64 rules."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from common.wire.fields import Base64Rule, StrictFields, encode_base64, only_space
from common.wire.xmlcodec import parse_document


class Refused(Exception):
    """The error a test protocol raises."""


CANONICAL = StrictFields(Refused, protocol="Test")
LINES = StrictFields(Refused, protocol="Test", base64_rule=Base64Rule.LINES)


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
