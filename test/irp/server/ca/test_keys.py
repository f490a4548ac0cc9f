# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca.keys`: the key policy with IRP's errors."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from twisted.trial import unittest

from irp.errors import WeakKey
from irp.server.ca import (
    check_public_key,
    generate_key,
)
from test import pki


class PublicKeyPolicyTests(unittest.TestCase):
    """check_public_key."""

    def test_accepted(self) -> None:
        """EC P-256, P-384, P-521, Ed25519 and RSA 3072 pass."""
        keys: list[PublicKeyTypes] = [
            ec.generate_private_key(curve).public_key()
            for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1())
        ]
        keys.append(generate_key("ed25519").public_key())
        keys.append(pki.rsa_key(3072).public_key())
        for key in keys:
            check_public_key(key)

    def test_refused(self) -> None:
        """Small RSA, other curves, and non-signature or unsupported key types fail."""
        cases = [
            (pki.rsa_key(1024).public_key(),
             "RSA keys must be at least 3072 bits; this one has 1024"),
            (ec.generate_private_key(ec.SECP256K1()).public_key(), "secp256k1"),
            (x25519.X25519PrivateKey.generate().public_key(), "X25519 keys are not accepted"),
            (ed448.Ed448PrivateKey.generate().public_key(), "Ed448 keys are not accepted"),
        ]
        for key, message in cases:
            error = self.assertRaises(WeakKey, check_public_key, key)
            self.assertIn(message, error.message)
