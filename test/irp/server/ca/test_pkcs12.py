# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca.pkcs12`: PKCS#12 bundles, opened by OpenSSL and cryptography."""

from __future__ import annotations

import subprocess

from cryptography.hazmat.primitives.serialization import pkcs12

from irp.errors import InvalidArgument
from irp.server import ca as ca_module
from test import pki
from test.irp.server.ca.support import ALICE, _OpenSSLMixin, _pem


class PKCS12Tests(_OpenSSLMixin):
    """Server-side key generation as PKCS#12."""

    def setUp(self) -> None:
        self.authority = pki.make_ca()

    def write(self, data: bytes) -> str:
        path: str = self.mktemp()
        with open(path, "wb") as output:
            output.write(data)
        return path

    def test_openssl_opens_it(self) -> None:
        """OpenSSL 3 reads the bundle with the passphrase (default KDF rounds), not without."""
        certificate, bundle = self.authority.generate_pkcs12(ALICE, b"passphrase 1")
        path = self.write(bundle)
        result = subprocess.run(
            ["openssl", "pkcs12", "-in", path, "-passin", "pass:passphrase 1", "-info",
             "-nokeys"],
            capture_output=True, text=True, check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("MAC: sha256", result.stderr)
        self.assertIn("PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256",
                      result.stderr)
        self.assertEqual(result.stdout.count("BEGIN CERTIFICATE"), 3)
        self.assertIn("friendlyName: alice@example.org", result.stdout)
        self.assertIn(_pem(certificate).decode("ascii"), result.stdout)
        wrong = subprocess.run(
            ["openssl", "pkcs12", "-in", path, "-passin", "pass:passphrase 2", "-info",
             "-nokeys"],
            capture_output=True, text=True, check=False,
        )
        self.assertNotEqual(wrong.returncode, 0)

    def test_cryptography_opens_it(self) -> None:
        """The bundle holds the key of the certificate, the chain and the friendly name."""
        for key_type in ca_module.KEY_TYPES:
            certificate, bundle = self.authority.generate_pkcs12(
                ALICE, b"passphrase 1", key_type=key_type, kdf_rounds=1000
            )
            loaded = pkcs12.load_pkcs12(bundle, b"passphrase 1")
            assert loaded.cert is not None and loaded.key is not None
            self.assertEqual(loaded.cert.certificate, certificate)
            self.assertEqual(loaded.cert.friendly_name, b"alice@example.org")
            self.assertEqual(loaded.key.public_key(), certificate.public_key())
            self.assertEqual([c.certificate for c in loaded.additional_certs],
                             self.authority.chain)
            self.assertEqual(
                certificate.subject.rfc4514_string(), "CN=alice,O=example.org"
            )
            self.assertRaises(ValueError, pkcs12.load_pkcs12, bundle, b"passphrase 2")

    def test_short_passphrase_refused(self) -> None:
        """Passphrases under 8 bytes are refused."""
        error = self.assertRaises(InvalidArgument, self.authority.generate_pkcs12, ALICE,
                                  b"1234567")
        self.assertIn("at least 8 bytes", error.message)
