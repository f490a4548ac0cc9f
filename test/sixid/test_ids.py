"""Device IDs: derivation from every accepted key type, both text forms, strict parsing."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from twisted.trial.unittest import TestCase

from common.pki.errors import WeakKey
from sixid.ids import InvalidSixId, SixId, SixIdAddress, derive_id, id_of_spki, spki_der
from test.pki import rsa_key
from test.sixid.helpers import KEY_TYPES, device_key

DIGEST = bytes(range(20))
CANONICAL = base64.b32encode(DIGEST).decode().lower()


class DeriveTests(TestCase):
    """An ID is SHA-256 of the context and the SPKI, cut to 160 bits."""

    def test_every_key_type(self) -> None:
        seen = set()
        for key_type in KEY_TYPES:
            public = device_key(key_type).public_key()
            spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.assertEqual(spki_der(public), spki)
            expected = hashlib.sha256(b"sixid-id-v1\x00" + spki).digest()[:20]
            self.assertEqual(derive_id(public).digest, expected, key_type)
            self.assertEqual(id_of_spki(spki).digest, expected)
            seen.add(expected)
        self.assertEqual(len(seen), len(KEY_TYPES))

    def test_refused_keys(self) -> None:
        """Keys outside the key policy have no ID."""
        for key in (ec.generate_private_key(ec.SECP256K1()), ed448.Ed448PrivateKey.generate(), rsa_key(2048)):
            self.assertRaises(WeakKey, derive_id, key.public_key())


class TextTests(TestCase):
    """Canonical and grouped forms."""

    def test_forms(self) -> None:
        sixid = SixId(DIGEST)
        self.assertEqual(str(sixid), CANONICAL)
        self.assertEqual(len(str(sixid)), 32)
        grouped = sixid.grouped()
        self.assertEqual(len(grouped), 39)
        self.assertEqual(grouped.replace("-", ""), CANONICAL)
        self.assertEqual([len(group) for group in grouped.split("-")], [4] * 8)
        self.assertIn(CANONICAL, repr(sixid))

    def test_parse_accepts(self) -> None:
        sixid = SixId(DIGEST)
        for text in (CANONICAL, CANONICAL.upper(), sixid.grouped(), sixid.grouped().upper(), f"  {CANONICAL}\n", f"\t{sixid.grouped()} "):
            self.assertEqual(SixId.parse(text), sixid, text)

    def test_parse_refuses(self) -> None:
        grouped = SixId(DIGEST).grouped()
        for text in (
            "",
            CANONICAL[:-1],
            CANONICAL + "a",
            CANONICAL[:-1] + "1",  # 1 is not in the alphabet
            CANONICAL[:-1] + "=",
            CANONICAL[:-1] + "é",
            grouped.replace("-", " "),
            grouped[:-5] + grouped[-4:],  # a missing dash
            "-" + grouped,
            grouped.replace("-", "--", 1),
            CANONICAL[:16] + " " + CANONICAL[16:],
        ):
            with self.assertRaises(InvalidSixId, msg=text) as caught:
                SixId.parse(text)
            self.assertIn("32 characters", caught.exception.message)
        self.assertRaises(InvalidSixId, SixId.parse, 5)  # type: ignore[arg-type]

    def test_canonical_only(self) -> None:
        self.assertEqual(SixId.from_canonical(CANONICAL), SixId(DIGEST))
        for text in (CANONICAL.upper(), SixId(DIGEST).grouped(), f" {CANONICAL}"):
            self.assertRaises(InvalidSixId, SixId.from_canonical, text)

    def test_digest_size(self) -> None:
        for digest in (b"", bytes(19), bytes(21)):
            self.assertRaises(InvalidSixId, SixId, digest)


class AddressTests(TestCase):
    """``ID@domain``."""

    def test_parse(self) -> None:
        sixid = SixId(DIGEST)
        for text in (f"{CANONICAL}@example.org", f"{sixid.grouped()}@Example.ORG.", f" {CANONICAL.upper()}@example.org "):
            address = SixIdAddress.parse(text)
            self.assertEqual(address, SixIdAddress(sixid, "example.org"))
            self.assertEqual(str(address), f"{CANONICAL}@example.org")

    def test_refused(self) -> None:
        for text in ("", CANONICAL, f"{CANONICAL}@", "@example.org", f"{CANONICAL}@exa mple.org",
                     f"{CANONICAL}@a@example.org", f"{CANONICAL[:-1]}@example.org", f"{CANONICAL}@-bad.org"):
            self.assertRaises(InvalidSixId, SixIdAddress.parse, text)
        self.assertRaises(InvalidSixId, SixIdAddress, SixId(DIGEST), "not a domain")
