# mypy: allow-untyped-calls
"""Tests for :mod:`sixchat.wire.handshake`: handshake messages, alerts, and the errors they carry."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import TestCase

from common.wire.fields import encode_base64
from common.wire.xmlcodec import Element, make_element, serialize, sub_element
from sixchat import errors
from sixchat.wire import application, handshake
from test.sixchat.wire.helpers import GOOD_AUTH, GOOD_HELLO, GOOD_REPLY


def _hello_tree(hello: handshake.Hello) -> Element:
    root = make_element("hello", {"to": str(hello.to)})
    versions = sub_element(root, "versions")
    for version in hello.versions:
        sub_element(versions, "version", text=version)
    suites = sub_element(root, "suites")
    for suite in hello.suites:
        sub_element(suites, "suite", text=suite)
    sub_element(root, "random", text=encode_base64(hello.random))
    sub_element(root, "x25519-key", text=encode_base64(hello.x25519_key))
    sub_element(root, "mlkem768-key", text=encode_base64(hello.mlkem_key))
    return root


def _reply_tree(reply: handshake.Reply) -> Element:
    root = make_element("reply", {"version": reply.version, "suite": reply.suite})
    sub_element(root, "random", text=encode_base64(reply.random))
    sub_element(root, "x25519-key", text=encode_base64(reply.x25519_key))
    sub_element(root, "mlkem768-ciphertext", text=encode_base64(reply.mlkem_ciphertext))
    return root


def _auth_tree(auth: handshake.Auth) -> Element:
    root = make_element("auth")
    for der in auth.certificates:
        sub_element(root, "certificate", text=encode_base64(der))
    sub_element(root, "signature", {"algorithm": auth.signature_algorithm}, encode_base64(auth.signature))
    sub_element(root, "finished", text=encode_base64(auth.finished))
    return root


class CodecTests(TestCase):
    """Round trips and the parser's own rules."""

    def test_round_trips(self) -> None:
        self.assertEqual(handshake.parse_handshake_frame(GOOD_HELLO.to_xml()), GOOD_HELLO)
        self.assertEqual(handshake.parse_handshake_frame(GOOD_REPLY.to_xml()), GOOD_REPLY)
        self.assertEqual(handshake.parse_sealed_content(GOOD_AUTH.to_xml()), GOOD_AUTH)
        sealed = handshake.Sealed(b"\x00" * 100)
        self.assertEqual(handshake.parse_handshake_frame(sealed.to_xml()), sealed)

    def test_offers_are_kept_in_order(self) -> None:
        hello = dataclasses.replace(GOOD_HELLO, versions=("2", "1"), suites=("B", "A"))
        self.assertEqual(handshake.parse_handshake_frame(hello.to_xml()), hello)

    def test_bytes_are_what_lxml_writes(self) -> None:
        """The messages are written without building trees, byte for byte as lxml writes
        the same trees (plain values, values that need escaping, no offers at all)."""
        hello = dataclasses.replace(GOOD_HELLO, versions=("1", "<2> & \"3\""), suites=())
        odd_auth = handshake.Auth((b"\x01", b""), 'a"<&>', b"", GOOD_AUTH.finished)
        cases: list[tuple[handshake.HandshakeMessage | handshake.Auth, Element]] = [
            (GOOD_HELLO, _hello_tree(GOOD_HELLO)),
            (hello, _hello_tree(hello)),
            (GOOD_REPLY, _reply_tree(GOOD_REPLY)),
            (GOOD_AUTH, _auth_tree(GOOD_AUTH)),
            (odd_auth, _auth_tree(odd_auth)),
            (handshake.Sealed(b""), make_element("sealed", text="")),
            (handshake.Sealed(b"\x00" * 100), make_element("sealed", text=encode_base64(b"\x00" * 100))),
            (handshake.Alert(403, "peer-rejected", "policy"), make_element("alert", {"code": "403", "name": "peer-rejected", "reason": "policy"})),
            (handshake.Alert(500, "internal-error"), make_element("alert", {"code": "500", "name": "internal-error"})),
        ]
        for message, tree in cases:
            self.assertEqual(message.to_xml(), serialize(tree))

    def test_too_many_offers(self) -> None:
        hello = handshake.Hello(
            to=GOOD_HELLO.to,
            random=GOOD_HELLO.random,
            x25519_key=GOOD_HELLO.x25519_key,
            mlkem_key=GOOD_HELLO.mlkem_key,
            versions=("1",) * 9,
        )
        self.assertRaises(errors.MalformedMessage, handshake.parse_handshake_frame, hello.to_xml())

    def test_wrong_document_kinds(self) -> None:
        self.assertRaises(
            errors.MalformedMessage, handshake.parse_handshake_frame, GOOD_AUTH.to_xml()
        )
        self.assertRaises(
            errors.MalformedMessage, handshake.parse_sealed_content, GOOD_HELLO.to_xml()
        )
        self.assertRaises(errors.MalformedMessage, handshake.parse_alert, b"<ping/>")
        self.assertRaises(errors.MalformedMessage, application.parse_close, b"<ping/>")
        self.assertRaises(errors.MalformedMessage, application.parse_application, b"<close/>")


class AlertTests(TestCase):
    """Errors to alerts and back: the one place and its rules."""

    def test_round_trip_every_error(self) -> None:
        for cls in errors.error_classes():
            error = handshake.parse_alert(handshake.alert_for(cls()))
            self.assertEqual((error.name, error.code), (cls.name, cls.code))

    def test_local_details_stay_local(self) -> None:
        error = errors.PeerRejected("alice is on bob's deny list", reason="denied")
        document = handshake.alert_for(error)
        self.assertNotIn(b"deny", document)
        self.assertEqual(document, b'<alert code="305" name="peer-rejected" reason="policy"/>')

    def test_rejection_reasons(self) -> None:
        for reason, wire in errors.PEER_REJECTED_WIRE_REASONS.items():
            received = handshake.parse_alert(
                handshake.alert_for(errors.PeerRejected(reason=reason))
            )
            assert isinstance(received, errors.PeerRejected)
            self.assertEqual(received.reason, wire)
        self.assertRaises(ValueError, errors.PeerRejected, reason="because")

    def test_unknown_alerts(self) -> None:
        """Unknown names fall back to the class of their code, then to the base."""
        by_code = handshake.parse_alert(b'<alert code="301" name="brand-new-signature-error"/>')
        self.assertIsInstance(by_code, errors.BadSignature)
        unknown = handshake.parse_alert(b'<alert code="999" name="who-knows"/>')
        self.assertIs(type(unknown), errors.SixChatError)
        odd_reason = handshake.parse_alert(b'<alert code="305" name="peer-rejected" reason="x"/>')
        self.assertEqual(odd_reason.reason, "policy")  # type: ignore[attr-defined]


class ErrorTests(TestCase):
    """The error hierarchy itself."""

    def test_names_and_codes_unique(self) -> None:
        classes = [
            cls
            for cls in errors.error_classes()
            if cls is not errors.InternalError and cls.__module__ == errors.__name__
        ]
        self.assertEqual(len({cls.name for cls in classes}), len(classes))
        self.assertEqual(len({cls.code for cls in classes}), len(classes))

    def test_required_classes(self) -> None:
        for name in (
            "MalformedMessage", "UnexpectedMessage", "UnsupportedVersion", "DowngradeDetected",
            "HandshakeFailed", "BadSignature", "BadFinished", "IdentityMismatch",
            "SelfConnection", "PeerRejected", "CertificateInvalid", "DecryptFailed",
            "SequenceExhausted", "Truncated", "Timeout", "MessageTooLarge", "RateLimited",
            "Closed",
        ):
            cls = getattr(errors, name)
            self.assertTrue(issubclass(cls, errors.SixChatError), name)
            instance = cls()
            self.assertTrue(str(instance).endswith(f"[{cls.name}, {cls.code}]"))

    def test_authentication_errors_are_handshake_failures(self) -> None:
        for cls in (
            errors.BadSignature, errors.BadFinished, errors.IdentityMismatch,
            errors.SelfConnection, errors.PeerRejected, errors.CertificateInvalid,
        ):
            self.assertTrue(issubclass(cls, errors.HandshakeFailed))
        self.assertTrue(issubclass(errors.DowngradeDetected, errors.UnsupportedVersion))

    def test_fatal(self) -> None:
        self.assertTrue(errors.DecryptFailed().fatal)
        self.assertFalse(errors.Closed().fatal)
        self.assertFalse(errors.MessageTooLarge(fatal=False).fatal)
        self.assertTrue(errors.MessageTooLarge.fatal)

    def test_lookup(self) -> None:
        self.assertIs(errors.error_class_for("truncated", 0), errors.Truncated)
        self.assertIs(errors.error_class_for("nope", 402), errors.Truncated)
        self.assertIs(errors.error_class_for("nope", 0), errors.SixChatError)
        self.assertIs(errors.error_class_for("internal-error", 500), errors.InternalError)
