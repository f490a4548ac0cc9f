"""Tests for sixchat.sealed.prekeys: making, encoding, decoding and verifying prekeys, and
the secrets' serialisation."""

from __future__ import annotations

import base64
import dataclasses

from lxml import etree
from twisted.trial.unittest import TestCase

from common.pki.keys import sign
from sixchat import errors
from sixchat.sealed import prekeys
from test.sixchat.sealed.helpers import (
    BOB,
    CAROL,
    DAY,
    KEY_TYPES,
    NOW,
    credentials,
    edit,
    flip_base64,
    prekey_for,
    set_attribute,
)


class MakeTests(TestCase):
    """make_prekey."""

    def test_every_key_type(self) -> None:
        for key_type in KEY_TYPES:
            bob = credentials("bob", key_type)
            prekey, secret = prekey_for(bob, kind=prekeys.LAST_RESORT, lifetime=7 * DAY)
            self.assertEqual(prekey.owner, BOB)
            self.assertEqual((prekey.created, prekey.expires), (NOW, NOW + 7 * DAY))
            self.assertEqual(prekey.algorithm, bob.signature_algorithm)
            self.assertEqual(prekey.kind, prekeys.LAST_RESORT)
            self.assertFalse(prekey.one_time)
            self.assertEqual(secret.prekey, prekey)
            self.assertEqual(secret.x25519_key().public_key().public_bytes_raw(), prekey.x25519)
            self.assertEqual(secret.mlkem_key().public_key().public_bytes_raw(), prekey.mlkem)
            prekeys.verify_prekey(prekey, bob.certificate, owner=BOB, now=NOW)

    def test_entropy_order(self) -> None:
        """The id, then the X25519 private key, then the ML-KEM seed."""
        stream = iter([bytes(range(16)), b"\x07" * 32, b"\x09" * 64])
        prekey, secret = prekeys.make_prekey(
            credentials("bob"), kind=prekeys.ONE_TIME, now=NOW, lifetime=DAY,
            entropy=lambda length: next(stream),
        )
        self.assertEqual(prekey.id, bytes(range(16)).hex())
        self.assertEqual(secret.x25519_private, b"\x07" * 32)
        self.assertEqual(secret.mlkem_seed, b"\x09" * 64)

    def test_unique(self) -> None:
        ids = {prekey_for(credentials("bob"))[0].id for _ in range(20)}
        self.assertEqual(len(ids), 20)

    def test_refusals(self) -> None:
        bob = credentials("bob")
        for arguments in (
            {"kind": "many-times", "now": NOW, "lifetime": DAY},
            {"kind": prekeys.ONE_TIME, "now": NOW, "lifetime": 0},
            {"kind": prekeys.ONE_TIME, "now": NOW, "lifetime": prekeys.MAX_PREKEY_LIFETIME + 1},
            {"kind": prekeys.ONE_TIME, "now": -1, "lifetime": DAY},
            {"kind": prekeys.ONE_TIME, "now": NOW, "lifetime": DAY, "entropy": lambda n: b"x"},
        ):
            self.assertRaises(ValueError, prekeys.make_prekey, bob, **arguments)  # type: ignore[arg-type]

    def test_signer_is_used(self) -> None:
        prekey, _ = prekeys.make_prekey(
            credentials("bob"), kind=prekeys.ONE_TIME, now=NOW, lifetime=DAY,
            signer=lambda data: b"\x01" * 64,
        )
        self.assertEqual(prekey.signature, b"\x01" * 64)


class EncodingTests(TestCase):
    """encode_prekey and decode_prekey."""

    def setUp(self) -> None:
        self.prekey, _ = prekey_for(credentials("bob"))
        self.encoded = prekeys.encode_prekey(self.prekey)

    def test_round_trip(self) -> None:
        for key_type in KEY_TYPES:
            prekey, _ = prekey_for(credentials("bob", key_type))
            encoded = prekeys.encode_prekey(prekey)
            self.assertLessEqual(len(encoded), prekeys.MAX_PREKEY_SIZE)
            self.assertEqual(prekeys.decode_prekey(encoded), prekey)

    def test_attribute_order(self) -> None:
        """The attributes the intermediary reads, in the order of the specification."""
        root = etree.fromstring(self.encoded)
        self.assertEqual(
            root.keys(),
            ["id", "kind", "owner", "created", "expires", "algorithm", "x25519", "mlkem", "signature"],
        )
        self.assertTrue(self.encoded.startswith(b'<prekey id="' + self.prekey.id.encode()))

    def assertMalformed(self, data: bytes) -> None:
        self.assertRaises(errors.SealedMalformed, prekeys.decode_prekey, data)

    def test_malformed(self) -> None:
        mlkem = etree.fromstring(self.encoded).get("mlkem", "")
        for name, value in (
            ("id", self.prekey.id.upper()),
            ("id", self.prekey.id + "00"),
            ("kind", "one-time "),
            ("kind", "forever"),
            ("owner", "Bob@example.org"),
            ("owner", "bob"),
            ("created", "01"),
            ("created", "-5"),
            ("expires", str(NOW)),
            ("expires", str(NOW + prekeys.MAX_PREKEY_LIFETIME + 1)),
            ("algorithm", "dsa"),
            ("x25519", base64.b64encode(bytes(31)).decode()),
            ("mlkem", mlkem[:-4]),
            ("mlkem", base64.b64encode(b"\xff" * 1184).decode()),  # fails the modulus check
            ("signature", ""),
            ("signature", " " + etree.fromstring(self.encoded).get("signature", "")),
        ):
            with self.subTest(attribute=name, value=value):
                self.assertMalformed(set_attribute(self.encoded, name, value))

    def test_structure(self) -> None:
        for data in (
            b"",
            b"<prekey",
            self.encoded[:-3],
            b"<sealed/>",
            self.encoded.replace(b"<prekey ", b'<prekey extra="1" '),
            edit(self.encoded, lambda root: root.attrib.pop("signature")),
            self.encoded[:-2] + b">text</prekey>",
            self.encoded[:-2] + b"><x/></prekey>",
            b'<!DOCTYPE prekey [<!ENTITY e "x">]>' + self.encoded,
            self.encoded.replace(b'kind="one-time"', b'kind="&#111;ne-time&e;"'),
            b'<prekey xmlns="urn:x"/>',
            self.encoded + b" " * prekeys.MAX_PREKEY_SIZE,
        ):
            self.assertMalformed(data)


class VerifyTests(TestCase):
    """verify_prekey: owner, certificate, signature, validity."""

    def setUp(self) -> None:
        self.bob = credentials("bob")
        self.prekey, _ = prekey_for(self.bob)

    def verify(self, prekey: prekeys.Prekey, *, now: int = NOW) -> None:
        prekeys.verify_prekey(prekey, self.bob.certificate, owner=BOB, now=now)

    def test_valid(self) -> None:
        self.verify(self.prekey)
        self.verify(self.prekey, now=self.prekey.expires - 1)
        self.verify(self.prekey, now=NOW - prekeys.CLOCK_SKEW)

    def test_times(self) -> None:
        self.assertRaises(errors.SealedExpired, self.verify, self.prekey, now=self.prekey.expires)
        self.assertRaises(
            errors.SealedExpired, self.verify, self.prekey, now=NOW - prekeys.CLOCK_SKEW - 1
        )

    def test_owner(self) -> None:
        """Carol's prekey served as Bob's: wrong recipient; Bob's prekey checked with
        Carol's certificate: bad signature."""
        carol = credentials("carol")
        carol_prekey, _ = prekey_for(carol)
        self.assertRaises(errors.SealedWrongRecipient, self.verify, carol_prekey)
        self.assertRaises(
            errors.SealedBadSignature,
            prekeys.verify_prekey, self.prekey, carol.certificate, owner=BOB, now=NOW,
        )
        self.assertRaises(
            errors.SealedWrongRecipient,
            prekeys.verify_prekey, self.prekey, carol.certificate, owner=CAROL, now=NOW,
        )

    def test_every_signed_field(self) -> None:
        """Changing any field (decoded from altered XML) breaks the signature."""
        other, _ = prekey_for(self.bob)
        for change in (
            {"id": other.id},
            {"kind": prekeys.LAST_RESORT},
            {"created": NOW - 1},
            {"expires": self.prekey.expires + 1},
            {"x25519": other.x25519},
            {"mlkem": other.mlkem},
            {"signature": base64.b64decode(flip_base64(base64.b64encode(self.prekey.signature).decode(), 8))},
        ):
            with self.subTest(change=list(change)):
                self.assertRaises(
                    errors.SealedBadSignature, self.verify, dataclasses.replace(self.prekey, **change)  # type: ignore[arg-type]
                )

    def test_algorithm_must_match_the_key(self) -> None:
        self.assertRaises(
            errors.SealedBadSignature,
            self.verify, dataclasses.replace(self.prekey, algorithm="ecdsa-p384-sha384"),
        )

    def test_signed_by_another_key(self) -> None:
        """Carol signs a prekey naming Bob with her own key (same algorithm)."""
        carol = credentials("carol")
        forged, _ = prekeys.make_prekey(
            self.bob, kind=prekeys.ONE_TIME, now=NOW, lifetime=DAY,
            signer=lambda data: sign(carol.private_key, data),
        )
        self.assertRaises(errors.SealedBadSignature, self.verify, forged)

    def test_signed_bytes(self) -> None:
        """The documented layout: length-prefixed fields, integers as 8 bytes."""
        signed = self.prekey.signed_bytes()
        self.assertTrue(signed.startswith(b"\x00\x00\x00\x11SIXCHAT-PREKEY-V1\x00\x00\x00\x10"))
        self.assertEqual(len(signed), 4 * 8 + 17 + 16 + 8 + 15 + 8 + 8 + 32 + 1184)


class SecretTests(TestCase):
    """PrekeySecret.to_bytes and from_bytes."""

    def setUp(self) -> None:
        self.prekey, self.secret = prekey_for(credentials("bob"))

    def test_round_trip(self) -> None:
        restored = prekeys.PrekeySecret.from_bytes(self.secret.to_bytes())
        self.assertEqual(restored.prekey, self.prekey)
        self.assertEqual(restored.x25519_private, self.secret.x25519_private)
        self.assertEqual(restored.mlkem_seed, self.secret.mlkem_seed)
        self.assertEqual(restored.prekey_id, self.prekey.id)

    def test_secrets_not_in_repr(self) -> None:
        text = repr(self.secret)
        self.assertNotIn(self.secret.x25519_private.hex(), text)
        self.assertNotIn(repr(self.secret.x25519_private), text)
        self.assertNotIn("mlkem_seed", text)

    def test_refusals(self) -> None:
        _, other = prekey_for(credentials("bob"))
        data = self.secret.to_bytes()
        mismatched = prekeys.PrekeySecret(self.prekey, other.x25519_private, self.secret.mlkem_seed)
        mismatched_kem = prekeys.PrekeySecret(self.prekey, self.secret.x25519_private, other.mlkem_seed)
        for bad in (
            b"",
            data[:-1],
            data + b"\x00",
            data.replace(prekeys.SECRET_DOMAIN, b"SIXCHAT-PREKEY-SECRET-V2"),
            mismatched.to_bytes(),
            mismatched_kem.to_bytes(),
            prekeys.PrekeySecret(self.prekey, b"\x01" * 31, self.secret.mlkem_seed).to_bytes(),
        ):
            self.assertRaises(errors.SealedMalformed, prekeys.PrekeySecret.from_bytes, bad)
