# mypy: allow-untyped-calls
"""Tests for sixchat.wire (handshake and application messages), checked against docs/schema/sixchat.rng.

Every document the code produces must validate against the RELAX NG schema, and every
malformed document in the catalogue below must be refused by both the parser and the
schema: the two descriptions of the format agree.
"""

from __future__ import annotations

import base64
import datetime
import os
from typing import Any

from lxml import etree
from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.handshake import SendData
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from test.helpers import REPOSITORY
from test.sixchat.wire.helpers import GOOD_AUTH, GOOD_HELLO, GOOD_REPLY
from test.sixchat_certs import Endpoint, connect, exchange, initiator, responder, user

SCHEMA_PATH = os.path.join(REPOSITORY, "docs", "schema", "sixchat.rng")
_SCHEMA: list[Any] = []


def schema() -> Any:
    """The compiled RELAX NG schema (compiled once)."""
    if not _SCHEMA:
        _SCHEMA.append(etree.RelaxNG(etree.parse(SCHEMA_PATH)))
    return _SCHEMA[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def handshake_documents(**options: Any) -> list[bytes]:
    """Every XML document of one handshake: the frames' payloads and the sealed contents."""
    documents: list[bytes] = []

    def keep(sender: Endpoint, index: int, frame: bytes) -> bytes:
        documents.append(frame[4:])
        return frame

    trace: dict[str, bytes] = {}
    alice, bob = connect(
        initiator(trace=trace.__setitem__, **options.get("initiator", {})),
        responder(**options.get("responder", {})),
        tamper=keep,
    )
    assert alice.completed is not None and bob.completed is not None
    documents += [trace["responder_auth"], trace["initiator_auth"]]
    return documents


def _replace(document: bytes, old: str, new: str) -> bytes:
    assert old.encode() in document, old
    return document.replace(old.encode(), new.encode(), 1)


def bad_documents() -> list[tuple[str, bytes]]:
    """Documents both the parser and the schema must refuse."""
    hello = GOOD_HELLO.to_xml()
    reply = GOOD_REPLY.to_xml()
    auth = GOOD_AUTH.to_xml()
    random_text = b64(GOOD_HELLO.random)
    non_canonical = random_text[:-2] + chr(ord(random_text[-2]) + 1) + "="
    return [
        ("unknown hello attribute", _replace(hello, "<hello ", '<hello from="a@b.c" ')),
        ("missing to", _replace(hello, ' to="bob@example.org"', "")),
        ("upper-case identity", _replace(hello, "bob@example.org", "Bob@example.org")),
        ("invalid identity", _replace(hello, "bob@example.org", "bob")),
        ("unknown hello element", _replace(hello, "</hello>", "<extra/></hello>")),
        ("missing random", _replace(hello, f"<random>{random_text}</random>", "")),
        (
            "wrong order",
            _replace(hello, f"<random>{random_text}</random>", "")
            .replace(b"</hello>", f"<random>{random_text}</random></hello>".encode()),
        ),
        ("short random", _replace(hello, random_text, b64(bytes(31)))),
        ("non-canonical base64", _replace(hello, random_text, non_canonical)),
        ("base64 without padding", _replace(hello, random_text, random_text.rstrip("="))),
        ("white space in base64", _replace(hello, random_text, " " + random_text)),
        ("bad base64 character", _replace(hello, random_text, "*" + random_text[1:])),
        ("no versions", _replace(hello, "<version>1</version>", "")),
        ("bad version token", _replace(hello, "<version>1</version>", "<version>1 2</version>")),
        ("text in hello", _replace(hello, "<versions>", "text<versions>")),
        ("attribute on random", _replace(hello, "<random>", '<random a="1">')),
        ("child in random", _replace(hello, "</random>", "<x/></random>")),
        ("reply without version", _replace(reply, ' version="1"', "")),
        (
            "short ciphertext",
            _replace(reply, b64(GOOD_REPLY.mlkem_ciphertext), b64(bytes(1087))),
        ),
        ("empty sealed", b"<sealed/>"),
        ("sealed with attribute", b'<sealed seq="1">AAAA</sealed>'),
        ("sealed with child", b"<sealed><auth/></sealed>"),
        (
            "auth without certificate",
            b'<auth><signature algorithm="ed25519">AAAA</signature>'
            b"<finished>" + b64(bytes(48)).encode() + b"</finished></auth>",
        ),
        (
            "auth with seven certificates",
            _replace(auth, "<certificate>", "<certificate>MAA=</certificate>" * 5 + "<certificate>"),
        ),
        ("unknown algorithm", _replace(auth, "ed25519", "ed448")),
        ("signature without algorithm", _replace(auth, ' algorithm="ed25519"', "")),
        ("short finished", _replace(auth, b64(GOOD_AUTH.finished), b64(bytes(47)))),
        ("alert bad code", b'<alert code="99" name="timeout"/>'),
        ("alert upper-case name", b'<alert code="501" name="Timeout"/>'),
        ("alert with text", b'<alert code="501" name="timeout">late</alert>'),
        ("alert extra attribute", b'<alert code="501" name="timeout" x="1"/>'),
        ("alert without name", b'<alert code="501"/>'),
        ("message bad id", b'<message id="123" sent="2026-01-01T00:00:00Z">x</message>'),
        (
            "message upper-case id",
            (b'<message id="ABCDEF00-0000-4000-8000-000000000000"'
            b' sent="2026-01-01T00:00:00Z">x</message>'),
        ),
        (
            "message local time",
            (b'<message id="abcdef00-0000-4000-8000-000000000000"'
            b' sent="2026-01-01T00:00:00+01:00">x</message>'),
        ),
        (
            "message with child",
            (b'<message id="abcdef00-0000-4000-8000-000000000000"'
            b' sent="2026-01-01T00:00:00Z"><b>x</b></message>'),
        ),
        ("message without sent", b'<message id="abcdef00-0000-4000-8000-000000000000">x</message>'),
        ("receipt with text", b'<receipt id="abcdef00-0000-4000-8000-000000000000">x</receipt>'),
        ("unknown presence", b'<presence status="invisible"/>'),
        ("ping with attribute", b'<ping id="1"/>'),
        ("pong with text", b"<pong>x</pong>"),
        ("close without reason", b"<close/>"),
        ("close empty reason", b'<close reason=""/>'),
        ("unknown root", b"<hi/>"),
        ("namespaced root", b'<ping xmlns="urn:x"/>'),
    ]


def parse_any(document: bytes) -> object:
    """Parse a document with the parser its root calls for."""
    root = etree.fromstring(document)
    tag = root.tag
    if tag in ("hello", "reply", "sealed", "alert"):
        return wire_handshake.parse_handshake_frame(document)
    if tag == "auth":
        return wire_handshake.parse_sealed_content(document)
    if tag == "close":
        return wire_application.parse_close(document)
    return wire_application.parse_application(document)


class SchemaTests(TestCase):
    """What the code produces is valid; what it refuses, the schema refuses."""

    def assertValid(self, document: bytes) -> None:
        tree = etree.fromstring(document)
        valid = schema().validate(tree)
        self.assertTrue(valid, f"{document[:200]!r}: {schema().error_log}")

    def test_handshake_documents(self) -> None:
        documents = handshake_documents()
        self.assertEqual([etree.fromstring(d).tag for d in documents],
                         ["hello", "reply", "sealed", "sealed", "auth", "auth"])
        for document in documents:
            self.assertValid(document)

    def test_handshake_documents_every_key_type(self) -> None:
        for key_type in ("p384", "p521", "ed25519", "rsa3072"):
            documents = handshake_documents(
                initiator={"credentials": user("alice", key_type)},
                responder={"credentials": user("bob", key_type)},
            )
            for document in documents[-2:]:
                self.assertValid(document)

    def test_alerts(self) -> None:
        for cls in errors.error_classes():
            self.assertValid(wire_handshake.alert_for(cls()))
        for reason in errors.PEER_REJECTED_WIRE_REASONS:
            self.assertValid(wire_handshake.alert_for(errors.PeerRejected(reason=reason)))

    def test_alert_frames_of_a_failed_handshake(self) -> None:
        """Clear and sealed alerts sent by failing handshakes are valid too."""
        alice = Endpoint(initiator(), verdict=lambda event: errors.CertificateInvalid())
        bob = Endpoint(responder())
        alice.start()
        sent: list[bytes] = []

        def keep(sender: Endpoint, index: int, frame: bytes) -> bytes:
            sent.append(frame[4:])
            return frame

        exchange(alice, bob, tamper=keep)
        self.assertEqual(etree.fromstring(sent[-1]).tag, "sealed")
        for document in sent:
            self.assertValid(document)
        (clear, _) = responder().receive_data(b"\x00\x00\x00\x01x")
        assert isinstance(clear, SendData)
        self.assertValid(clear.data[4:])

    def test_application_messages(self) -> None:
        produced: list[wire_application.ApplicationMessage] = [
            wire_application.ChatMessage("hello"),
            wire_application.ChatMessage(""),
            wire_application.ChatMessage("a < b & \"c\" 'd'\r\n\t\u00e9\U0001f600"),
            wire_application.ChatMessage(
                "x" * wire_application.MAX_TEXT_LENGTH,
                sent=datetime.datetime(2026, 1, 1, 0, 0, 0, 120000, tzinfo=datetime.UTC),
            ),
            wire_application.Receipt("abcdef00-0000-4000-8000-000000000000"),
            wire_application.Ping(),
            wire_application.Pong(),
            *(wire_application.Presence(status) for status in wire_application.PRESENCE_STATUSES),
        ]
        for message in produced:
            document = wire_application.encode_application(message)
            self.assertValid(document)
            parsed, element = wire_application.parse_application(document)
            self.assertEqual(parsed, message)
            self.assertEqual(element.tag, wire_application.to_element(message).tag)
        self.assertValid(wire_application.encode_close("bye"))
        self.assertValid(wire_application.encode_close("x" * 256))

    def test_good_examples_valid(self) -> None:
        for document in (GOOD_HELLO.to_xml(), GOOD_REPLY.to_xml(), GOOD_AUTH.to_xml()):
            self.assertValid(document)

    def test_bad_documents_refused_by_both(self) -> None:
        for name, document in bad_documents():
            self.assertFalse(schema().validate(etree.fromstring(document)), name)
            self.assertRaises(errors.MalformedMessage, parse_any, document)

    def test_pretty_printed_documents(self) -> None:
        """White space between elements is insignificant to both."""
        pretty = etree.tostring(etree.fromstring(GOOD_HELLO.to_xml()), pretty_print=True)
        self.assertValid(pretty)
        self.assertEqual(wire_handshake.parse_handshake_frame(pretty), GOOD_HELLO)

    def test_overlong_text(self) -> None:
        message = wire_application.ChatMessage("x" * (wire_application.MAX_TEXT_LENGTH + 1))
        document = wire_application.encode_application(message)
        self.assertFalse(schema().validate(etree.fromstring(document)))
        self.assertRaises(errors.MessageTooLarge, wire_application.parse_application, document)
