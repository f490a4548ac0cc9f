# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca.issuance`: user, CSR, server and signing certificates, checked against OpenSSL too."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from common.identity import Identity
from common.pki import keyfiles
from irp.errors import InvalidArgument, WeakKey
from irp.server import ca as ca_module
from irp.server.ca import (
    CertificateAuthority,
    CertificateAuthorityError,
    generate_key,
)
from test import pki
from test.irp.server.ca.support import ALICE, FakeClock, _extension_value, _OpenSSLMixin


class UserCertificateTests(_OpenSSLMixin):
    """Certificates for users, from public keys and from CSRs."""

    def setUp(self) -> None:
        self.clock = FakeClock(datetime.datetime.now(datetime.UTC).replace(microsecond=0))
        self.authority = CertificateAuthority.create("example.org", key_type="p256",
                                                     now=self.clock)

    def test_contents(self) -> None:
        """Subject, SAN, constraints, usages, identifiers and validity are as specified."""
        key = generate_key("p256")
        certificate = self.authority.issue_user_certificate(
            ALICE, key.public_key(), validity=datetime.timedelta(days=10)
        )
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=alice,O=example.org")
        self.assertEqual(certificate.issuer, self.authority.issuing_certificate.subject)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.UniformResourceIdentifier("irp:alice@example.org")])
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertEqual(usage.value, x509.KeyUsage(True, False, False, False, False, False,
                                                     False, False, False))
        self.assertEqual(
            list(_extension_value(certificate, x509.ExtendedKeyUsage)),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.assertEqual(
            _extension_value(certificate, x509.SubjectKeyIdentifier),
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        )
        aki = _extension_value(certificate, x509.AuthorityKeyIdentifier)
        assert isinstance(aki, x509.AuthorityKeyIdentifier)
        self.assertEqual(
            aki.key_identifier,
            x509.SubjectKeyIdentifier.from_public_key(
                self.authority.issuing_certificate.public_key()
            ).digest,
        )
        self.assertEqual(certificate.not_valid_before_utc,
                         self.clock.time - datetime.timedelta(minutes=5))
        self.assertEqual(certificate.not_valid_after_utc,
                         self.clock.time + datetime.timedelta(days=10))
        self.assertIsInstance(certificate.signature_hash_algorithm, hashes.SHA256)

    def test_openssl_verifies_chain(self) -> None:
        """OpenSSL accepts user certificates of every CA key type as TLS client certificates."""
        for key_type in ca_module.KEY_TYPES:
            authority = pki.make_ca(key_type=key_type)
            user = pki.issue_user(authority, key_type=key_type)
            self.assertOpenSSLAccepts(authority, user.certificate, "-purpose", "sslclient")

    def test_openssl_rejects_other_ca(self) -> None:
        """The OpenSSL check can fail: another CA's certificate is refused."""
        user = pki.issue_user(pki.make_ca(label="other"))
        self.assertOpenSSLRejects(pki.make_ca(), user.certificate, "-purpose", "sslclient")

    def test_other_domain_refused(self) -> None:
        """A CA certifies only users of its own domain."""
        error = self.assertRaises(
            InvalidArgument, self.authority.issue_user_certificate,
            Identity("alice", "example.net"), generate_key("p256").public_key(),
        )
        self.assertIn("example.net", error.message)

    def test_weak_key_refused(self) -> None:
        """Keys check_public_key refuses are not certified, whatever the route."""
        error = self.assertRaises(
            WeakKey, self.authority.issue_user_certificate, ALICE, pki.rsa_key(1024).public_key()
        )
        self.assertIn("this one has 1024", error.message)
        self.assertRaises(
            WeakKey, self.authority.issue_server_certificate, ["irp.example.org"],
            pki.rsa_key(2048).public_key(),
        )
        self.assertRaises(
            WeakKey, self.authority.issue_signing_certificate,
            x25519.X25519PrivateKey.generate().public_key(),
        )

    def test_validity_capped_by_issuing_ca(self) -> None:
        """No certificate outlives the issuing CA."""
        certificate = self.authority.issue_user_certificate(
            ALICE, generate_key("p256").public_key(), validity=datetime.timedelta(days=50_000)
        )
        self.assertEqual(certificate.not_valid_after_utc,
                         self.authority.issuing_certificate.not_valid_after_utc)

    def test_expired_issuing_ca(self) -> None:
        """Once the issuing CA has expired nothing more is issued."""
        self.clock.advance(datetime.timedelta(days=3700))
        self.assertRaises(
            CertificateAuthorityError, self.authority.issue_user_certificate, ALICE,
            generate_key("p256").public_key(),
        )

    def test_non_positive_validity(self) -> None:
        """A validity of zero or less is refused."""
        for days in (0, -1):
            self.assertRaises(
                InvalidArgument, self.authority.issue_user_certificate, ALICE,
                generate_key("p256").public_key(), validity=datetime.timedelta(days=days),
            )

    def test_serials(self) -> None:
        """Random serials are unique, positive and at most 159 bits; given ones are used."""
        public_key = generate_key("p256").public_key()
        serials = [
            self.authority.issue_user_certificate(ALICE, public_key).serial_number
            for _ in range(200)
        ]
        self.assertEqual(len(set(serials)), len(serials))
        self.assertTrue(all(0 < serial < 2**159 for serial in serials))
        self.assertTrue(any(serial.bit_length() > 150 for serial in serials))
        given = self.authority.issue_user_certificate(ALICE, public_key, serial=2**159 - 1)
        self.assertEqual(given.serial_number, 2**159 - 1)
        for bad in (0, -5, 2**159):
            self.assertRaises(ValueError, self.authority.issue_user_certificate, ALICE,
                              public_key, serial=bad)


def _csr(
    key: keyfiles.PrivateKey | ec.EllipticCurvePrivateKey,
    *,
    subject: str = "mallory",
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil.example")])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, hashes.SHA256())


class CSRTests(unittest.TestCase):
    """issue_from_csr."""

    def setUp(self) -> None:
        self.authority = pki.make_ca()

    def test_subject_and_extensions_ignored(self) -> None:
        """The CSR's subject, SAN and CA request are ignored; only its key is used."""
        key = generate_key("p256")
        csr = _csr(key, extensions=[
            (x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("irp:admin@example.org")]), False),
            (x509.BasicConstraints(ca=True, path_length=None), True),
        ])
        for data in (csr.public_bytes(serialization.Encoding.PEM),
                     csr.public_bytes(serialization.Encoding.DER)):
            certificate = self.authority.issue_from_csr(data, ALICE)
            self.assertEqual(certificate.subject.rfc4514_string(), "CN=alice,O=example.org")
            san = _extension_value(certificate, x509.SubjectAlternativeName)
            self.assertEqual(
                list(san), [x509.UniformResourceIdentifier("irp:alice@example.org")]
            )
            constraints = _extension_value(certificate, x509.BasicConstraints)
            self.assertFalse(constraints.ca)
            self.assertEqual(certificate.public_key(), key.public_key())

    def test_ed25519_csr(self) -> None:
        """Ed25519 keys are accepted."""
        key = generate_key("ed25519")
        certificate = self.authority.issue_from_csr(
            _csr(key).public_bytes(serialization.Encoding.PEM), ALICE
        )
        self.assertEqual(certificate.public_key(), key.public_key())

    def test_invalid_signature_refused(self) -> None:
        """A CSR whose self-signature does not verify proves nothing and is refused."""
        der = bytearray(_csr(generate_key("p256")).public_bytes(serialization.Encoding.DER))
        der[-1] ^= 0x01  # The last byte is inside the ECDSA signature's s value.
        self.assertFalse(x509.load_der_x509_csr(bytes(der)).is_signature_valid)
        error = self.assertRaises(InvalidArgument, self.authority.issue_from_csr, bytes(der),
                                  ALICE)
        self.assertIn("signature", error.message)

    def test_malformed_refused(self) -> None:
        """Garbage, truncated and empty CSRs are refused with a readable message."""
        good = _csr(generate_key("p256")).public_bytes(serialization.Encoding.DER)
        for data in (b"", b"garbage", good[:40], b"-----BEGIN CERTIFICATE REQUEST-----\n"):
            error = self.assertRaises(InvalidArgument, self.authority.issue_from_csr, data,
                                      ALICE)
            self.assertIn("not a valid", error.message)

    def test_size_cap(self) -> None:
        """CSRs over 16 KiB are refused before parsing."""
        error = self.assertRaises(InvalidArgument, self.authority.issue_from_csr,
                                  b"-" * (16 * 1024 + 1), ALICE)
        self.assertIn("16 KiB", error.message)

    def test_weak_keys_refused(self) -> None:
        """RSA 1024 and 2048 and EC P-192 keys are refused, saying why."""
        cases: list[tuple[keyfiles.PrivateKey, str]] = [
            (pki.rsa_key(1024), "this one has 1024"),
            (pki.rsa_key(2048), "this one has 2048"),
            (ec.generate_private_key(ec.SECP192R1()), "secp192r1"),
        ]
        for key, words in cases:
            data = _csr(key).public_bytes(serialization.Encoding.PEM)
            error = self.assertRaises(WeakKey, self.authority.issue_from_csr, data, ALICE)
            self.assertIn(words, error.message)
            self.assertEqual(error.name, "weak-key")
            self.assertIsInstance(error, InvalidArgument)




class ServerAndSigningCertificateTests(_OpenSSLMixin):
    """The registry's own TLS and record-signing certificates."""

    def test_server_certificate(self) -> None:
        """DNS names and IP literals go to the SAN; OpenSSL accepts it for TLS servers."""
        authority = pki.make_ca()
        key = generate_key("p256")
        certificate = authority.issue_server_certificate(
            ["IRP.example.org", "192.0.2.7", "2001:db8::7", "irp.example.org", "2001:DB8::7"],
            key.public_key(),
        )
        self.assertEqual(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "irp.example.org")
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["irp.example.org"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")])
        self.assertEqual(
            list(_extension_value(certificate, x509.ExtendedKeyUsage)),
            [ExtendedKeyUsageOID.SERVER_AUTH],
        )
        self.assertEqual(
            certificate.not_valid_after_utc - certificate.not_valid_before_utc,
            datetime.timedelta(days=397, minutes=5),
        )
        self.assertOpenSSLAccepts(authority, certificate, "-purpose", "sslserver",
                                  "-verify_hostname", "irp.example.org")
        self.assertOpenSSLAccepts(authority, certificate, "-purpose", "sslserver",
                                  "-verify_ip", "192.0.2.7")
        self.assertOpenSSLRejects(authority, certificate, "-purpose", "sslserver",
                                  "-verify_hostname", "other.example.org")
        self.assertOpenSSLRejects(authority, certificate, "-purpose", "sslclient")

    def test_bad_host_names(self) -> None:
        """Invalid names and empty lists are refused."""
        authority = pki.make_ca()
        public_key = generate_key("p256").public_key()
        for names in ([], ["bad name"], ["*.example.org"]):
            self.assertRaises(ValueError, authority.issue_server_certificate, names, public_key)

    def test_signing_certificate(self) -> None:
        """The record-signing certificate carries only the record-signing EKU."""
        authority = pki.make_ca()
        key = generate_key("ed25519")
        certificate = authority.issue_signing_certificate(key.public_key())
        self.assertEqual(
            certificate.subject.rfc4514_string(), "CN=example.org IRP record signing,O=example.org"
        )
        self.assertEqual(
            list(_extension_value(certificate, x509.ExtendedKeyUsage)),
            [ca_module.RECORD_SIGNING_OID],
        )
        self.assertTrue(ca_module.RECORD_SIGNING_OID.dotted_string.startswith("2.25."))
        usage = _extension_value(certificate, x509.KeyUsage)
        self.assertTrue(usage.digital_signature)
        self.assertFalse(_extension_value(certificate, x509.BasicConstraints).ca)
        certificate.verify_directly_issued_by(authority.issuing_certificate)
        self.assertOpenSSLRejects(authority, certificate, "-purpose", "sslclient")
