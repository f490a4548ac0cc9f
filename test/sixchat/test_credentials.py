"""Tests for :mod:`sixchat.credentials`: what one side brings to a handshake."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat.credentials import EphemeralKeys, LocalCredentials, Role, encapsulate, leaf_public_key
from test.sixchat_certs import user

ALICE = Identity.parse("alice@example.org")


class LocalCredentialsTests(TestCase):
    """The certificate, the identity and the key are checked once, at construction."""

    def test_derived_fields(self) -> None:
        alice = user("alice")
        self.assertEqual(alice.identity, ALICE)
        self.assertEqual(alice.signature_algorithm, "ecdsa-p256-sha256")
        self.assertEqual(len(alice.certificates_der), 1 + len(alice.chain))
        self.assertEqual(len(alice.fingerprint), 64)
        self.assertEqual(user("alice", "ed25519").signature_algorithm, "ed25519")

    def test_wrong_identity(self) -> None:
        alice = user("alice")
        with self.assertRaises(ValueError) as caught:
            LocalCredentials(Identity.parse("bob@example.org"), alice.certificate, alice.chain, alice.private_key)
        self.assertIn("names alice@example.org", str(caught.exception))

    def test_key_of_another_certificate(self) -> None:
        alice = user("alice")
        with self.assertRaises(ValueError) as caught:
            LocalCredentials(ALICE, alice.certificate, alice.chain, ec.generate_private_key(ec.SECP256R1()))
        self.assertIn("does not belong", str(caught.exception))

    def test_leaf_public_key(self) -> None:
        alice = user("alice", "ed25519")
        self.assertIsInstance(leaf_public_key(alice.certificate), ed25519.Ed25519PublicKey)


class EphemeralKeysTests(TestCase):
    """Only the initiator has an ML-KEM-768 key; the responder encapsulates to it."""

    def test_roles(self) -> None:
        self.assertIsNotNone(EphemeralKeys.generate(Role.INITIATOR).mlkem)
        self.assertIsNone(EphemeralKeys.generate(Role.RESPONDER).mlkem)

    def test_encapsulate(self) -> None:
        keys = EphemeralKeys.generate(Role.INITIATOR)
        assert keys.mlkem is not None
        secret, ciphertext = encapsulate(keys.mlkem.public_key().public_bytes_raw())
        self.assertEqual(keys.mlkem.decapsulate(ciphertext), secret)

