"""Tests for :mod:`irp.wire.records`: records, their validation and the registry's signatures."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.trial import unittest

from common.identity import Identity
from irp.errors import InvalidArgument, ServerVerificationFailed
from irp.wire.records import (
    DOMAIN_SEPARATOR,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_TEXT_FIELD,
    PRESENCE_STATES,
    AddressRecord,
    CertificateInfo,
    Endpoint,
    RecordSigner,
    RecordVerifier,
    UserRecord,
    check_attributes,
    check_email,
    check_presence,
    check_text_field,
)
from test import pki

ALICE = Identity("alice", "example.org")


def make_signer() -> tuple[RecordSigner, RecordVerifier]:
    """A signer with a fresh Ed25519 key certified by the test CA, and its verifier."""
    key = ed25519.Ed25519PrivateKey.generate()
    certificate = pki.make_ca().issue_signing_certificate(key.public_key())
    return RecordSigner(key, certificate), RecordVerifier(certificate)


def address_record() -> AddressRecord:
    return AddressRecord(
        identity=ALICE,
        presence="online",
        endpoints=(Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.7", 4605)),
        expires_at=2_000_000_300,
        seq=3,
        signed_at=2_000_000_000,
    )


def user_record() -> UserRecord:
    return UserRecord(
        identity=ALICE,
        display_name="Alice",
        email="alice@example.org",
        attributes=(("phone", "+1 555"), ("team", "red")),
        seq=2,
        signed_at=2_000_000_000,
    )


class SigningBytesTests(unittest.SynchronousTestCase):
    """The canonical bytes the registry signs."""

    def test_address_layout(self) -> None:
        """Domain separator, then length-prefixed UTF-8 fields, kind first."""
        data = address_record().signing_bytes()
        self.assertTrue(data.startswith(DOMAIN_SEPARATOR + b"\x00\x00\x00\x09addresses"))
        self.assertIn(b"\x00\x00\x00\x11alice@example.org", data)
        self.assertTrue(data.endswith(b"\x00\x00\x00\x0e192.0.2.7 4605"))

    def test_user_kind_differs(self) -> None:
        """A user record never has the same bytes as an address record."""
        self.assertTrue(user_record().signing_bytes().startswith(DOMAIN_SEPARATOR + b"\x00\x00\x00\x04user"))

    def test_every_field_counts(self) -> None:
        """Changing any field changes the signed bytes."""
        record = address_record()
        changes: dict[str, Any] = {
            "identity": Identity("bob", "example.org"),
            "presence": "away",
            "endpoints": tuple(reversed(record.endpoints)),
            "expires_at": record.expires_at + 1,
            "seq": record.seq + 1,
            "signed_at": record.signed_at + 1,
        }
        for name, value in changes.items():
            self.assertNotEqual(dataclasses.replace(record, **{name: value}).signing_bytes(), record.signing_bytes(), name)
        user = user_record()
        user_changes: dict[str, Any] = {
            "identity": Identity("alice", "example.net"),
            "display_name": "Alicia",
            "email": "a@example.org",
            "attributes": (("phone", "+1 555"),),
            "seq": 3,
            "signed_at": 1,
        }
        for name, value in user_changes.items():
            self.assertNotEqual(dataclasses.replace(user, **{name: value}).signing_bytes(), user.signing_bytes(), name)

    def test_no_ambiguity_between_fields(self) -> None:
        """Moving text from one field to the next changes the bytes (length prefixes)."""
        one = dataclasses.replace(user_record(), display_name="ab", email="c")
        two = dataclasses.replace(user_record(), display_name="a", email="bc")
        self.assertNotEqual(one.signing_bytes(), two.signing_bytes())
        three = dataclasses.replace(user_record(), attributes=(("a", "b"), ("c", "d")))
        four = dataclasses.replace(user_record(), attributes=(("a", "bc"),))
        self.assertNotEqual(three.signing_bytes(), four.signing_bytes())


class SignatureTests(unittest.SynchronousTestCase):
    """RecordSigner and RecordVerifier."""

    def test_sign_and_verify(self) -> None:
        """A signed record verifies, unchanged."""
        signer, verifier = make_signer()
        addresses = signer.sign(address_record())
        user = signer.sign(user_record())
        self.assertEqual((len(addresses.signature), len(user.signature)), (64, 64))
        self.assertEqual(verifier.verify(addresses), addresses)
        self.assertEqual(verifier.verify(user), user)

    def test_unsigned_fails(self) -> None:
        """A record without a signature does not verify."""
        _signer, verifier = make_signer()
        self.assertRaises(ServerVerificationFailed, verifier.verify, address_record())

    def test_tampered_fields_fail(self) -> None:
        """Any field changed after signing makes verification fail."""
        signer, verifier = make_signer()
        signed = signer.sign(address_record())
        tampering: tuple[tuple[str, Any], ...] = (
            ("presence", "busy"),
            ("endpoints", (Endpoint("203.0.113.66", 4605),)),
            ("expires_at", signed.expires_at + 86400),
            ("seq", signed.seq + 1),
            ("identity", Identity("mallory", "example.org")),
        )
        for name, value in tampering:
            error = self.assertRaises(ServerVerificationFailed, verifier.verify, dataclasses.replace(signed, **{name: value}))
            self.assertIn("signature", error.message)
        user = signer.sign(user_record())
        self.assertRaises(ServerVerificationFailed, verifier.verify, dataclasses.replace(user, email="mallory@evil.example"))

    def test_flipped_signature_bit_fails(self) -> None:
        """A bit flipped in the signature fails."""
        signer, verifier = make_signer()
        signed = signer.sign(user_record())
        broken = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
        self.assertRaises(ServerVerificationFailed, verifier.verify, dataclasses.replace(signed, signature=broken))

    def test_other_key_fails(self) -> None:
        """A signature by another key (another registry) does not verify."""
        signer, _ = make_signer()
        _, other_verifier = make_signer()
        self.assertRaises(ServerVerificationFailed, other_verifier.verify, signer.sign(user_record()))

    def test_verifier_needs_ed25519(self) -> None:
        """The record-signing certificate must hold an Ed25519 key."""
        ca = pki.make_ca()
        self.assertRaises(ServerVerificationFailed, RecordVerifier, ca.issuing_certificate)


class AddressRecordTests(unittest.SynchronousTestCase):
    """AddressRecord.is_current."""

    def test_expiry(self) -> None:
        """Current strictly before expires_at."""
        record = address_record()
        self.assertTrue(record.is_current(record.expires_at - 1))
        self.assertFalse(record.is_current(record.expires_at))
        self.assertFalse(record.is_current(record.expires_at + 1))


class CertificateInfoTests(unittest.SynchronousTestCase):
    """CertificateInfo.status."""

    def info(self, **changes: object) -> CertificateInfo:
        base = CertificateInfo(
            serial=1,
            fingerprint="00" * 32,
            username="alice",
            origin="issued",
            not_before=100,
            not_after=200,
            issued_at=100,
            revoked_at=None,
            revocation_reason=None,
            der=b"",
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def test_states(self) -> None:
        """good inside the validity period (bounds included), else expired / not-yet-valid."""
        info = self.info()
        self.assertEqual([info.status(t) for t in (99, 100, 150, 200, 201)], ["not-yet-valid", "good", "good", "good", "expired"])

    def test_revoked_wins(self) -> None:
        """A revoked certificate is revoked whatever the time."""
        info = self.info(revoked_at=150, revocation_reason="key-compromise")
        self.assertEqual({info.status(t) for t in (50, 150, 500)}, {"revoked"})

    def test_certificate_property(self) -> None:
        """certificate parses the stored DER."""
        from cryptography.hazmat.primitives.serialization import Encoding

        certificate = pki.issue_user(pki.make_ca()).certificate
        info = self.info(der=certificate.public_bytes(Encoding.DER))
        self.assertEqual(info.certificate, certificate)


class ValidationTests(unittest.SynchronousTestCase):
    """check_presence, check_text_field and check_attributes."""

    def test_presence(self) -> None:
        """The four presence states, nothing else."""
        for state in PRESENCE_STATES:
            self.assertEqual(check_presence(state), state)
        self.assertEqual(set(PRESENCE_STATES), {"online", "away", "busy", "offline"})
        for bad in ("", "Online", "invisible"):
            self.assertRaises(InvalidArgument, check_presence, bad)

    def test_text_field(self) -> None:
        """Length and control characters (tab allowed)."""
        self.assertEqual(check_text_field("n", "Zoë\tX"), "Zoë\tX")
        self.assertEqual(check_text_field("n", "x" * MAX_TEXT_FIELD), "x" * MAX_TEXT_FIELD)
        self.assertRaises(InvalidArgument, check_text_field, "n", "x" * (MAX_TEXT_FIELD + 1))
        for bad in ("a\nb", "a\x00", "\x1b[31m", "a\x7f", "\x9b31m", "\x85"):
            self.assertRaises(InvalidArgument, check_text_field, "n", bad)
        self.assertRaises(InvalidArgument, check_text_field, "n", "abcd", 3)

    def test_email(self) -> None:
        """Empty, or a text field with an @ and no space."""
        for good in ("", "alice@example.org", "a@b"):
            self.assertEqual(check_email(good), good)
        for bad in ("alice", "alice @example.org", "a@b\n", "x" * 300 + "@example.org"):
            self.assertRaises(InvalidArgument, check_email, bad)

    def test_attributes_sorted(self) -> None:
        """Attributes come back sorted by name."""
        self.assertEqual(check_attributes([("b", "2"), ("a", "1")]), (("a", "1"), ("b", "2")))
        self.assertEqual(check_attributes([]), ())

    def test_attribute_names(self) -> None:
        """Names are 1-64 ASCII letters, digits, '-', '_' or '.'."""
        check_attributes([("a-b_c.d9", "v"), ("x" * 64, "v")])
        for bad in ("", "x" * 65, "a b", "é", "a/b", "a:b", "<"):
            self.assertRaises(InvalidArgument, check_attributes, [(bad, "v")])

    def test_duplicates_and_limits(self) -> None:
        """No duplicate names, at most MAX_ATTRIBUTES, values within MAX_ATTRIBUTE_VALUE."""
        self.assertRaises(InvalidArgument, check_attributes, [("a", "1"), ("a", "2")])
        many = [(f"a{i}", "v") for i in range(MAX_ATTRIBUTES)]
        self.assertEqual(len(check_attributes(many)), MAX_ATTRIBUTES)
        self.assertRaises(InvalidArgument, check_attributes, [*many, ("z", "v")])
        check_attributes([("a", "v" * MAX_ATTRIBUTE_VALUE)])
        self.assertRaises(InvalidArgument, check_attributes, [("a", "v" * (MAX_ATTRIBUTE_VALUE + 1))])
        self.assertRaises(InvalidArgument, check_attributes, [("a", "line\nbreak")])
