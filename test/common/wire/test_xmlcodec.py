"""Tests for :mod:`common.wire.xmlcodec`: the hardened parser every network document goes through."""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.trial import unittest

from common.wire.xmlcodec import (
    MAX_DEPTH,
    MAX_ELEMENTS,
    XMLRejected,
    check_markup,
    make_element,
    parse_document,
    serialize,
    serialize_leaf,
    sub_element,
)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<r>&xxe;</r>"""


class ForbiddenMarkupTests(unittest.SynchronousTestCase):
    """Everything that is not plain elements, attributes and text is refused as forbidden."""

    def assertForbidden(self, data: bytes) -> XMLRejected:
        error = self.assertRaises(XMLRejected, parse_document, data)
        self.assertTrue(error.forbidden, f"{data!r} was rejected, but not as forbidden: {error}")
        return error

    def test_billion_laughs(self) -> None:
        """An entity-expansion bomb is refused before any parser sees it."""
        self.assertForbidden(BILLION_LAUGHS)

    def test_external_entity(self) -> None:
        """External entities (XXE) are refused."""
        self.assertForbidden(EXTERNAL_ENTITY)

    def test_doctype_alone(self) -> None:
        """A DOCTYPE without entities is refused too."""
        self.assertForbidden(b"<!DOCTYPE r><r/>")

    def test_external_dtd(self) -> None:
        """A DOCTYPE naming an external DTD is refused (no network access is ever tried)."""
        self.assertForbidden(b'<!DOCTYPE r SYSTEM "http://example.invalid/x.dtd"><r/>')

    def test_comment(self) -> None:
        """Comments are refused, anywhere."""
        self.assertForbidden(b"<r><!-- hi --></r>")
        self.assertForbidden(b"<!-- hi --><r/>")

    def test_cdata(self) -> None:
        """CDATA sections are refused."""
        self.assertForbidden(b"<r><![CDATA[x]]></r>")

    def test_processing_instruction_inside(self) -> None:
        """A processing instruction in the document is refused."""
        self.assertForbidden(b"<r><?pi data?></r>")

    def test_processing_instruction_after_root(self) -> None:
        """A processing instruction after the root is refused."""
        self.assertForbidden(b"<r/><?pi data?>")

    def test_processing_instruction_after_declaration(self) -> None:
        """Only one <? is allowed: the declaration."""
        self.assertForbidden(b'<?xml version="1.0"?><?pi x?><r/>')

    def test_processing_instruction_named_like_the_declaration(self) -> None:
        """``<?xml-stylesheet?>`` at the very start is a processing instruction, not the
        XML declaration (whose target is exactly ``xml``)."""
        self.assertForbidden(b'<?xml-stylesheet href="a.xsl"?><r/>')
        self.assertForbidden(b"<?xmlfoo?><r/>")

    def test_entity_reference(self) -> None:
        """A reference to an undeclared entity is refused as forbidden."""
        self.assertForbidden(b"<r>&foo;</r>")
        self.assertForbidden(b'<r a="&foo;"/>')

    def test_other_encoding_declared(self) -> None:
        """A declared encoding other than UTF-8 (any case) is forbidden markup, as
        docs/irp.rst's XML rules say (issue 9, item 21)."""
        for encoding in (b"ISO-8859-1", b"UTF-16", b"utf8", b"US-ASCII", b""):
            self.assertForbidden(b'<?xml version="1.0" encoding="' + encoding + b'"?><r/>')
        for encoding in (b"UTF-8", b"utf-8", b"Utf-8"):
            self.assertEqual(parse_document(b"<?xml version='1.0' encoding='" + encoding + b"'?><r/>").tag, "r")

    def test_utf16_bomb(self) -> None:
        """A UTF-16 document (where the byte checks would not see ``<!``) is refused."""
        self.assertRaises(XMLRejected, parse_document, BILLION_LAUGHS.decode("ascii").encode("utf-16"))
        self.assertRaises(XMLRejected, parse_document, "<!DOCTYPE r><r/>".encode("utf-16"))
        self.assertRaises(XMLRejected, parse_document, "<!DOCTYPE r><r/>".encode("utf-16-be"))


class MalformedTests(unittest.SynchronousTestCase):
    """Documents that are not well-formed or not acceptable, but use no forbidden markup."""

    def assertMalformed(self, data: bytes) -> XMLRejected:
        error = self.assertRaises(XMLRejected, parse_document, data)
        self.assertFalse(error.forbidden, f"{data!r}: {error}")
        return error

    def test_utf8_byte_order_mark(self) -> None:
        """A UTF-8 byte-order mark is refused, with or without an XML declaration after
        it (one rule: nothing we send has one)."""
        for data in (b"\xef\xbb\xbf<r/>", b'\xef\xbb\xbf<?xml version="1.0"?><r/>'):
            error = self.assertMalformed(data)
            self.assertIn("byte-order mark", str(error))

    def test_not_well_formed(self) -> None:
        """Unclosed and overlapping elements, garbage and empty input are refused."""
        for data in (b"<r>", b"<a><b></a></b>", b"hello", b"", b"<r/><s/>", b"<r a='1' a='2'/>"):
            self.assertMalformed(data)

    def test_unquoted_encoding_is_not_well_formed(self) -> None:
        """A declaration whose encoding is not a quoted value is not well-formed."""
        self.assertMalformed(b'<?xml version="1.0" encoding=UTF-8?><r/>')

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are refused."""
        self.assertMalformed(b"<r>\xff\xfe</r>")

    def test_invalid_character_reference(self) -> None:
        """Character references to characters XML forbids are refused."""
        self.assertMalformed(b"<r>&#0;</r>")
        self.assertMalformed(b"<r>&#x1;</r>")

    def test_unterminated_declaration(self) -> None:
        """A declaration without its end is refused."""
        self.assertMalformed(b'<?xml version="1.0"')

    def test_depth_limit(self) -> None:
        """Nesting up to MAX_DEPTH is accepted; one more is refused."""
        def nested(depth: int) -> bytes:
            return b"<e>" * depth + b"</e>" * depth

        self.assertEqual(parse_document(nested(MAX_DEPTH)).tag, "e")
        error = self.assertMalformed(nested(MAX_DEPTH + 1))
        self.assertIn("deeper", str(error))

    def test_element_limit(self) -> None:
        """MAX_ELEMENTS elements are accepted; one more is refused."""
        ok = b"<r>" + b"<e/>" * (MAX_ELEMENTS - 1) + b"</r>"
        self.assertEqual(len(parse_document(ok)), MAX_ELEMENTS - 1)
        error = self.assertMalformed(b"<r>" + b"<e/>" * MAX_ELEMENTS + b"</r>")
        self.assertIn("elements", str(error))

    def test_element_limit_across_levels(self) -> None:
        """The count covers every level: MAX_ELEMENTS spread over nested elements are
        accepted, one more anywhere is refused."""
        half = (MAX_ELEMENTS - 2) // 2
        rest = MAX_ELEMENTS - 2 - half

        def tree(extra: int) -> bytes:
            return b"<r><a>" + b"<e/>" * (half + extra) + b"</a>" + b"<e/>" * rest + b"</r>"

        self.assertEqual(len(parse_document(tree(0))), rest + 1)
        self.assertIn("elements", str(self.assertMalformed(tree(1))))

    def test_custom_limits(self) -> None:
        """The limits can be tightened per call."""
        self.assertRaises(XMLRejected, parse_document, b"<a><b><c/></b></a>", max_depth=2)
        self.assertRaises(XMLRejected, parse_document, b"<a><b/><b/></a>", max_elements=2)


class AcceptedTests(unittest.SynchronousTestCase):
    """What is allowed comes through intact."""

    def test_plain_document(self) -> None:
        """Elements, attributes and text parse as expected."""
        root = parse_document(b'<request v="1" id="7"><lookup user="bob"/></request>')
        self.assertEqual((root.tag, root.get("v"), root.get("id")), ("request", "1", "7"))
        self.assertEqual(root[0].tag, "lookup")
        self.assertEqual(root[0].get("user"), "bob")

    def test_declaration(self) -> None:
        """An XML declaration (UTF-8 or without encoding) is accepted at the start."""
        self.assertEqual(parse_document(b'<?xml version="1.0"?><r/>').tag, "r")
        self.assertEqual(parse_document(b'<?xml version="1.0" encoding="UTF-8"?><r/>').tag, "r")
        self.assertEqual(parse_document(b"<?xml version='1.0' encoding='utf-8'?>\n<r/>").tag, "r")


    def test_predefined_entities_and_character_references(self) -> None:
        """The five predefined entities and character references are allowed."""
        root = parse_document(b'<r a="&quot;&apos;">&lt;&gt;&amp;&#65;&#x42;</r>')
        self.assertEqual(root.text, "<>&AB")
        self.assertEqual(root.get("a"), "\"'")

    def test_non_ascii_text(self) -> None:
        """UTF-8 text is decoded."""
        self.assertEqual(parse_document("<r>Zoë 日本</r>".encode()).text, "Zoë 日本")

    def test_check_markup_alone(self) -> None:
        """check_markup passes clean bytes and refuses forbidden ones without parsing."""
        check_markup(b"<r>text</r>")
        self.assertRaises(XMLRejected, check_markup, b"<!-- -->")


class SerializeTests(unittest.SynchronousTestCase):
    """make_element, sub_element and serialize."""

    def test_round_trip(self) -> None:
        """Serialised elements parse back to the same content, escaped properly."""
        root = make_element("r", {"a": '<&"x">', "skip": None}, "t<&>")  # type: ignore[dict-item]
        sub_element(root, "child", {"n": "1"}, "text")
        sub_element(root, "empty")
        data = serialize(root)
        self.assertFalse(data.startswith(b"<?xml"))
        self.assertNotIn(b"skip", data)
        parsed = parse_document(data)
        self.assertEqual(parsed.get("a"), '<&"x">')
        self.assertEqual(parsed.text, "t<&>")
        self.assertEqual([child.tag for child in parsed], ["child", "empty"])
        self.assertEqual(parsed[0].text, "text")

    def test_serialized_output_passes_the_checks(self) -> None:
        """Whatever we serialise, we accept (text full of markup characters included)."""
        root = make_element("r", None, "<!-- not a comment --> <?pi?> &foo; ]]>")
        self.assertEqual(parse_document(serialize(root)).text, "<!-- not a comment --> <?pi?> &foo; ]]>")


class SerializeLeafTests(unittest.SynchronousTestCase):
    """serialize_leaf writes what lxml writes for the same element, byte for byte."""

    #: Plain characters, every character that needs escaping in text or attributes, and
    #: characters lxml refuses (controls, surrogates, U+FFFE/U+FFFF) or passes through.
    ALPHABET = (
        "a", "z", " ", "'", "&", "<", ">", '"', "\n", "\r", "\t", "\x00", "\x01", "\x1f",
        "\x7f", "\x85", "\xa0", "\u00fc", "\u2028", "\ufffd", "\ufffe", "\uffff", "\ud800",
        "\udfff", "\U0001f600", "\U0010ffff",
    )

    @staticmethod
    def outcome(produce: Callable[[], bytes]) -> bytes | type[BaseException]:
        try:
            return produce()
        except ValueError as error:  # lxml's refusal, or UnicodeEncodeError
            return type(error)

    def test_same_bytes_as_lxml(self) -> None:
        generator = random.Random(4604)

        def word(longest: int) -> str:
            return "".join(generator.choice(self.ALPHABET) for _ in range(generator.randint(0, longest)))

        for _ in range(5000):
            attributes: dict[str, str | None] = {"id": word(4)}
            if generator.random() < 0.5:
                attributes["sent"] = word(3)
            if generator.random() < 0.2:
                attributes["skipped"] = None
            text = generator.choice([None, "", word(6)])
            with self.subTest(attributes=attributes, text=text):
                self.assertEqual(
                    self.outcome(lambda: serialize_leaf("m", attributes, text)),
                    self.outcome(lambda: serialize(make_element("m", attributes, text))),
                )

    def test_plain_values_skip_lxml(self) -> None:
        """The common case, written directly."""
        self.assertEqual(serialize_leaf("receipt", {"id": "ab-1"}), b'<receipt id="ab-1"/>')
        self.assertEqual(serialize_leaf("m", {}, ""), b"<m></m>")
        self.assertEqual(serialize_leaf("m", None, "\u00fc"), "<m>\u00fc</m>".encode())
