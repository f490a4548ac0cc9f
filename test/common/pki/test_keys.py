"""The key policy: key types made, keys accepted, hashes and signature schemes."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.trial import unittest

from common.pki import keys
from common.pki.errors import UnknownKeyType, WeakKey
from test import pki


class GenerateKeyTests(unittest.TestCase):
    """generate_key and signature_hash."""

    def test_key_types(self) -> None:
        """Each key type makes its key, and certificates it signs use the matching hash."""
        expected = {
            "p384": (ec.EllipticCurvePrivateKey, hashes.SHA384),
            "p256": (ec.EllipticCurvePrivateKey, hashes.SHA256),
            "ed25519": (ed25519.Ed25519PrivateKey, type(None)),
        }
        self.assertEqual(set(keys.KEY_TYPES), set(expected))
        self.assertEqual(keys.DEFAULT_KEY_TYPE, "p384")
        for key_type, (key_class, hash_class) in expected.items():
            key = keys.generate_key(key_type)
            self.assertIsInstance(key, key_class)
            self.assertIsInstance(keys.signature_hash(key), hash_class)
            keys.check_public_key(key.public_key())
        self.assertIsInstance(keys.signature_hash(ec.generate_private_key(ec.SECP521R1())), hashes.SHA512)

    def test_unknown_key_type(self) -> None:
        """An unknown key type is refused, naming the known ones."""
        error = self.assertRaises(UnknownKeyType, keys.generate_key, "rsa1024")
        self.assertEqual(error.message, "unknown key type 'rsa1024'; use one of: p384, p256, ed25519")


class SignatureTests(unittest.TestCase):
    """signature_algorithm_for, sign and verify_signature."""

    def test_round_trip(self) -> None:
        """Every signing key type signs and verifies; other data or keys do not verify."""
        cases = [
            (ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256-sha256"),
            (ec.generate_private_key(ec.SECP384R1()), "ecdsa-p384-sha384"),
            (ec.generate_private_key(ec.SECP521R1()), "ecdsa-p521-sha512"),
            (ed25519.Ed25519PrivateKey.generate(), "ed25519"),
            (pki.rsa_key(3072), "rsa-pss-sha384"),
        ]
        other = ed25519.Ed25519PrivateKey.generate().public_key()
        for key, algorithm in cases:
            public = keys.check_public_key(key.public_key())
            self.assertEqual(keys.signature_algorithm_for(public), algorithm)
            signature = keys.sign(key, b"transcript")
            self.assertTrue(keys.verify_signature(public, signature, b"transcript"))
            self.assertFalse(keys.verify_signature(public, signature, b"transcripT"))
            self.assertFalse(keys.verify_signature(other, signature, b"transcript"))

    def test_ecdsa_is_deterministic(self) -> None:
        """ECDSA signatures are deterministic (RFC 6979): the same data, the same bytes."""
        key = ec.generate_private_key(ec.SECP256R1())
        self.assertEqual(keys.sign(key, b"data"), keys.sign(key, b"data"))

    def test_keys_that_may_not_sign(self) -> None:
        """Other curves and small RSA keys have no signature algorithm."""
        for key in (ec.generate_private_key(ec.SECP256K1()), pki.rsa_key(2048)):
            error = self.assertRaises(WeakKey, keys.signature_algorithm_for, key.public_key())
            self.assertIn("the leaf key must be", error.message)
