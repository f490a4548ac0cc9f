# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca`, the domain certificate authority, checked against OpenSSL too."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from common.identity import Identity
from common.pki import keyfiles
from irp.errors import InvalidArgument, WeakKey
from irp.server import ca as ca_module
from irp.server.ca import (
    REVOCATION_REASON_NAMES,
    REVOCATION_REASONS,
    CertificateAuthority,
    CertificateAuthorityError,
    RevokedEntry,
    check_public_key,
    generate_key,
    revocation_reason,
)
from test import pki
from test.helpers import REPOSITORY

ALICE = Identity("alice", "example.org")
START = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


class FakeClock:
    """A clock a test moves by hand."""

    def __init__(self, start: datetime.datetime = START) -> None:
        self.time = start

    def __call__(self) -> datetime.datetime:
        return self.time

    def advance(self, delta: datetime.timedelta) -> None:
        self.time += delta


def _pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(serialization.Encoding.PEM)


_Extension = TypeVar("_Extension", bound=x509.ExtensionType)


def _extension_value(certificate: x509.Certificate, kind: type[_Extension]) -> _Extension:
    return certificate.extensions.get_extension_for_class(kind).value


class _OpenSSLMixin(unittest.TestCase):
    """Run ``openssl verify`` on certificates written to a temporary directory."""

    def openssl_verify(
        self,
        ca: CertificateAuthority,
        leaf: x509.Certificate,
        *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
        untrusted: Sequence[x509.Certificate] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        directory = self.mktemp()
        os.mkdir(directory)
        files = {
            "root.pem": _pem(ca.root_certificate),
            "untrusted.pem": b"".join(
                _pem(c) for c in ([ca.issuing_certificate] if untrusted is None else untrusted)
            ),
            "leaf.pem": _pem(leaf),
        }
        for index, crl in enumerate(crls):
            files[f"crl{index}.pem"] = _pem(crl)
        for name, data in files.items():
            with open(os.path.join(directory, name), "wb") as output:
                output.write(data)
        command = ["openssl", "verify", "-x509_strict", "-CAfile", "root.pem"]
        command += ["-untrusted", "untrusted.pem"] if files["untrusted.pem"] else []
        for index in range(len(crls)):
            command += ["-CRLfile", f"crl{index}.pem"]
        command += [*options, "leaf.pem"]
        return subprocess.run(
            command, cwd=directory, capture_output=True, text=True, check=False
        )

    def assertOpenSSLAccepts(
        self, ca: CertificateAuthority, leaf: x509.Certificate, *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
    ) -> None:
        result = self.openssl_verify(ca, leaf, *options, crls=crls)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("leaf.pem: OK", result.stdout)

    def assertOpenSSLRejects(
        self, ca: CertificateAuthority, leaf: x509.Certificate, *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
        expected: str = "",
    ) -> None:
        result = self.openssl_verify(ca, leaf, *options, crls=crls)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn(expected, result.stdout + result.stderr)


class CAStructureTests(unittest.TestCase):
    """The root and issuing CA certificates."""

    def test_names_and_constraints(self) -> None:
        """Subjects, basic constraints, key usage and key identifiers are as specified."""
        clock = FakeClock()
        authority = CertificateAuthority.create("Example.ORG.", key_type="p256", now=clock)
        root, issuing = authority.root_certificate, authority.issuing_certificate
        self.assertEqual(authority.domain, "example.org")
        self.assertEqual(root.subject.rfc4514_string(), "CN=example.org IRP Root CA,O=example.org")
        self.assertEqual(root.issuer, root.subject)
        self.assertEqual(
            issuing.subject.rfc4514_string(), "CN=example.org IRP Issuing CA,O=example.org"
        )
        self.assertEqual(issuing.issuer, root.subject)
        for certificate, path_length in ((root, 1), (issuing, 0)):
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            self.assertTrue(constraints.critical)
            self.assertEqual((constraints.value.ca, constraints.value.path_length),
                             (True, path_length))
            usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
            self.assertTrue(usage.critical)
            self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
            self.assertFalse(usage.value.digital_signature)
        root_ski = _extension_value(root, x509.SubjectKeyIdentifier)
        assert isinstance(root_ski, x509.SubjectKeyIdentifier)
        for certificate in (root, issuing):
            aki = _extension_value(certificate, x509.AuthorityKeyIdentifier)
            assert isinstance(aki, x509.AuthorityKeyIdentifier)
            self.assertEqual(aki.key_identifier, root_ski.digest)
        self.assertEqual(authority.chain, [issuing, root])
        self.assertEqual(authority.root_fingerprint, keyfiles.fingerprint(root))

    def test_validity(self) -> None:
        """Root 20 years, issuing CA 10 years, both backdated five minutes."""
        clock = FakeClock()
        authority = CertificateAuthority.create("example.org", key_type="p256", now=clock)
        for certificate, years in ((authority.root_certificate, 20),
                                   (authority.issuing_certificate, 10)):
            self.assertEqual(certificate.not_valid_before_utc,
                             START - datetime.timedelta(minutes=5))
            lifetime = certificate.not_valid_after_utc - START
            self.assertGreaterEqual(lifetime, datetime.timedelta(days=365 * years))
            self.assertLess(lifetime, datetime.timedelta(days=365 * years + 10))

    def test_key_types_and_hashes(self) -> None:
        """P-384 signs with SHA-384, P-256 with SHA-256, Ed25519 without a separate hash."""
        expectations = {
            "p384": (ec.EllipticCurvePublicKey, hashes.SHA384),
            "p256": (ec.EllipticCurvePublicKey, hashes.SHA256),
        }
        for key_type, (key_class, hash_class) in expectations.items():
            authority = pki.make_ca(key_type=key_type)
            for certificate in authority.chain:
                self.assertIsInstance(certificate.public_key(), key_class)
                self.assertIsInstance(certificate.signature_hash_algorithm, hash_class)
        p384_key = pki.make_ca(key_type="p384").root_certificate.public_key()
        assert isinstance(p384_key, ec.EllipticCurvePublicKey)
        self.assertEqual(p384_key.curve.name, "secp384r1")
        ed_authority = pki.make_ca(key_type="ed25519")
        self.assertIsNone(ed_authority.root_certificate.signature_hash_algorithm)
        self.assertIsNone(ed_authority.issuing_certificate.signature_hash_algorithm)

    def test_default_key_type_is_p384(self) -> None:
        """Without a key type the CA uses P-384."""
        authority = CertificateAuthority.create("example.org")
        key = authority.issuing_certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp384r1")

    def test_unknown_key_type(self) -> None:
        """An unknown key type is refused, naming the ones that work."""
        error = self.assertRaises(InvalidArgument, CertificateAuthority.create, "example.org",
                                  key_type="rsa1024")
        self.assertIn("p384", error.message)

    def test_long_domain(self) -> None:
        """A domain too long for a common name still gets a CA; O carries the domain."""
        domain = "a" * 60 + ".example.org"
        authority = CertificateAuthority.create(domain, key_type="p256")
        names = authority.root_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(names[0].value, "IRP Root CA")
        self.assertEqual(
            authority.root_certificate.subject.get_attributes_for_oid(
                NameOID.ORGANIZATION_NAME)[0].value,
            domain,
        )

    def test_naive_clock_refused(self) -> None:
        """A clock returning naive datetimes is a bug, found at once."""
        self.assertRaises(ValueError, CertificateAuthority.create, "example.org",
                          key_type="p256", now=lambda: datetime.datetime(2026, 1, 1))

    def test_mismatched_parts_refused(self) -> None:
        """The constructor refuses keys and certificates that do not belong together."""
        one, other = pki.make_ca(), pki.make_ca(label="other")
        self.assertRaises(
            CertificateAuthorityError, CertificateAuthority, "example.org",
            one.root_certificate, other.root_key, one.issuing_certificate, one.issuing_key,
        )
        self.assertRaises(
            CertificateAuthorityError, CertificateAuthority, "example.org",
            one.root_certificate, one.root_key, other.issuing_certificate, other.issuing_key,
        )
        self.assertRaises(
            CertificateAuthorityError, CertificateAuthority, "example.net",
            one.root_certificate, one.root_key, one.issuing_certificate, one.issuing_key,
        )


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


class CRLTests(_OpenSSLMixin):
    """Revocation lists, checked by OpenSSL."""

    def setUp(self) -> None:
        self.authority = pki.make_ca()
        self.good = pki.issue_user(self.authority, "alice").certificate
        self.revoked = pki.issue_user(self.authority, "bob").certificate
        now = datetime.datetime.now(datetime.UTC)
        self.crl = self.authority.build_crl(
            [RevokedEntry(self.revoked.serial_number, now, x509.ReasonFlags.key_compromise)], 7
        )
        self.root_crl = self.authority.build_root_crl(3)

    def test_openssl_crl_check(self) -> None:
        """With -crl_check a revoked certificate fails and a good one passes."""
        crls = [self.crl, self.root_crl]
        self.assertOpenSSLAccepts(self.authority, self.good, "-crl_check", crls=crls)
        self.assertOpenSSLRejects(self.authority, self.revoked, "-crl_check", crls=crls,
                                  expected="certificate revoked")

    def test_openssl_crl_check_all(self) -> None:
        """With -crl_check_all the root's CRL makes the whole chain checkable."""
        crls = [self.crl, self.root_crl]
        self.assertOpenSSLAccepts(self.authority, self.good, "-crl_check_all", crls=crls)
        self.assertOpenSSLRejects(self.authority, self.revoked, "-crl_check_all", crls=crls,
                                  expected="certificate revoked")
        # Without the root's CRL the chain cannot be fully checked: the root CRL matters.
        self.assertOpenSSLRejects(self.authority, self.good, "-crl_check_all",
                                  crls=[self.crl], expected="unable to get certificate CRL")

    def test_contents(self) -> None:
        """CRL number, AKI, signature, timing and per-entry reasons are as specified."""
        clock = FakeClock()
        authority = CertificateAuthority(
            "example.org", self.authority.root_certificate, self.authority.root_key,
            self.authority.issuing_certificate, self.authority.issuing_key, now=clock,
        )
        entries = [
            RevokedEntry(11, START, x509.ReasonFlags.superseded),
            RevokedEntry(12, START, x509.ReasonFlags.unspecified),
            RevokedEntry(13, START, None),
        ]
        crl = authority.build_crl(entries, 42, next_update_after=datetime.timedelta(hours=6))
        self.assertEqual(crl.issuer, authority.issuing_certificate.subject)
        issuing_key = authority.issuing_key.public_key()
        self.assertTrue(crl.is_signature_valid(issuing_key))
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
                         42)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(
            aki.key_identifier,
            _extension_value(authority.issuing_certificate, x509.SubjectKeyIdentifier).digest,
        )
        self.assertEqual(crl.last_update_utc, START - datetime.timedelta(minutes=5))
        self.assertEqual(crl.next_update_utc, START + datetime.timedelta(hours=6))
        reasons: dict[int, x509.ReasonFlags | None] = {}
        for revoked in crl:
            try:
                reasons[revoked.serial_number] = revoked.extensions.get_extension_for_class(
                    x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reasons[revoked.serial_number] = None
        self.assertEqual(reasons, {11: x509.ReasonFlags.superseded, 12: None, 13: None})
        root_crl = authority.build_root_crl(1)
        self.assertEqual(root_crl.issuer, authority.root_certificate.subject)
        self.assertEqual(len(root_crl), 0)
        self.assertTrue(root_crl.is_signature_valid(authority.root_key.public_key()))

    def test_bad_entries(self) -> None:
        """Duplicate serials, naive times and removeFromCRL are refused."""
        now = datetime.datetime.now(datetime.UTC)
        for entries in (
            [RevokedEntry(5, now), RevokedEntry(5, now)],
            [RevokedEntry(5, datetime.datetime(2026, 1, 1))],
            [RevokedEntry(5, now, x509.ReasonFlags.remove_from_crl)],
        ):
            self.assertRaises(ValueError, self.authority.build_crl, entries, 1)
        self.assertRaises(ValueError, self.authority.build_crl, [], -1)

    def test_revocation_reasons_map_both_ways(self) -> None:
        """Wire names and reason flags correspond one to one."""
        self.assertEqual(REVOCATION_REASONS["key-compromise"], x509.ReasonFlags.key_compromise)
        self.assertEqual(REVOCATION_REASONS["cessation-of-operation"],
                         x509.ReasonFlags.cessation_of_operation)
        for name, flag in REVOCATION_REASONS.items():
            self.assertEqual(REVOCATION_REASON_NAMES[flag], name)
            self.assertEqual(revocation_reason(name), flag)
        self.assertEqual(len(REVOCATION_REASON_NAMES), len(REVOCATION_REASONS))
        self.assertEqual(
            set(REVOCATION_REASONS),
            {"unspecified", "key-compromise", "affiliation-changed", "superseded",
             "cessation-of-operation", "privilege-withdrawn"},
        )
        error = self.assertRaises(InvalidArgument, revocation_reason, "certificate-hold")
        self.assertIn("key-compromise", error.message)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


_CREATE_AND_PRINT = """
import sys
from irp.server.ca import CertificateAuthority
ca = CertificateAuthority.load_or_create(sys.argv[1], "example.org", key_type="p256")
print(ca.root_fingerprint)
"""


class LoadOrCreateTests(unittest.TestCase):
    """Keeping the CA on disk."""

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.mkdir(self.base)
        self.directory = os.path.join(self.base, "ca")

    def test_create_then_load(self) -> None:
        """The second call loads the CA the first created, with the right file modes."""
        previous_umask = os.umask(0)
        self.addCleanup(os.umask, previous_umask)
        created = CertificateAuthority.load_or_create(self.directory, "example.org",
                                                      key_type="p256")
        self.assertEqual(_mode(self.directory), 0o700)
        self.assertEqual(sorted(os.listdir(self.directory)),
                         ["issuing.key", "issuing.pem", "root.key", "root.pem"])
        for name, mode in (("root.key", 0o600), ("issuing.key", 0o600),
                           ("root.pem", 0o644), ("issuing.pem", 0o644)):
            self.assertEqual(_mode(os.path.join(self.directory, name)), mode, name)
        loaded = CertificateAuthority.load_or_create(self.directory, "example.org")
        self.assertEqual(loaded.root_fingerprint, created.root_fingerprint)
        self.assertEqual(loaded.issuing_certificate, created.issuing_certificate)
        self.assertEqual(os.listdir(self.base), ["ca"])
        # The loaded CA can sign: its keys match.
        user = loaded.issue_user_certificate(ALICE, generate_key("p256").public_key())
        user.verify_directly_issued_by(created.issuing_certificate)

    def test_existing_empty_directory(self) -> None:
        """An empty directory prepared in advance is used."""
        os.mkdir(self.directory, 0o755)
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256")
        self.assertEqual(_mode(self.directory), 0o700)
        self.assertIn("root.pem", os.listdir(self.directory))

    def test_other_domain(self) -> None:
        """A directory holding another domain's CA is a clear error."""
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256")
        error = self.assertRaises(CertificateAuthorityError,
                                  CertificateAuthority.load_or_create, self.directory,
                                  "example.net")
        self.assertIn("example.org", str(error))
        self.assertIn("example.net", str(error))

    def test_foreign_directory(self) -> None:
        """A non-empty directory without a CA is not overwritten."""
        os.mkdir(self.directory)
        with open(os.path.join(self.directory, "notes.txt"), "w") as notes:
            notes.write("mine")
        error = self.assertRaises(CertificateAuthorityError,
                                  CertificateAuthority.load_or_create, self.directory,
                                  "example.org")
        self.assertIn("root.pem is missing", str(error))
        self.assertEqual(os.listdir(self.directory), ["notes.txt"])
        self.assertEqual(os.listdir(self.base), ["ca"])

    def test_root_passphrase(self) -> None:
        """The root key can be encrypted; loading it then needs the passphrase."""
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256",
                                            passphrase=b"root secret")
        with open(os.path.join(self.directory, "root.key"), "rb") as root_key:
            self.assertIn(b"ENCRYPTED", root_key.read())
        with open(os.path.join(self.directory, "issuing.key"), "rb") as issuing_key:
            self.assertNotIn(b"ENCRYPTED", issuing_key.read())
        self.assertRaises(keyfiles.KeyFileError, CertificateAuthority.load_or_create,
                          self.directory, "example.org")
        self.assertRaises(keyfiles.KeyFileError, CertificateAuthority.load_or_create,
                          self.directory, "example.org", passphrase=b"wrong secret")
        CertificateAuthority.load_or_create(self.directory, "example.org",
                                            passphrase=b"root secret")

    def test_unsafe_key_file(self) -> None:
        """A key file others may read makes loading fail, like ssh."""
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256")
        os.chmod(os.path.join(self.directory, "issuing.key"), 0o644)
        error = self.assertRaises(keyfiles.KeyFileError, CertificateAuthority.load_or_create,
                                  self.directory, "example.org")
        self.assertIn("issuing.key", str(error))

    def test_losing_a_race_loads_the_winner(self) -> None:
        """If another process creates the CA while we create ours, we load theirs.

        The clock, which creation calls after deciding to create, is where the other
        process runs to completion: a deterministic race.
        """
        winner: list[CertificateAuthority] = []

        def racing_clock() -> datetime.datetime:
            if not winner:
                winner.append(CertificateAuthority.load_or_create(
                    self.directory, "example.org", key_type="p256"))
            return datetime.datetime.now(datetime.UTC)

        loser = CertificateAuthority.load_or_create(self.directory, "example.org",
                                                    key_type="p256", now=racing_clock)
        self.assertEqual(loser.root_fingerprint, winner[0].root_fingerprint)
        self.assertEqual(os.listdir(self.base), ["ca"])

    def test_concurrent_processes(self) -> None:
        """Processes started together on one directory all end up with one CA."""
        project = REPOSITORY
        environment = dict(os.environ, PYTHONPATH=project)
        processes = [
            subprocess.Popen([sys.executable, "-c", _CREATE_AND_PRINT, self.directory],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
            for _ in range(4)
        ]
        fingerprints = set()
        for process in processes:
            output, errors = process.communicate(timeout=120)
            self.assertEqual(process.returncode, 0, errors.decode())
            fingerprints.add(output.decode().strip())
        self.assertEqual(len(fingerprints), 1)
        self.assertEqual(
            fingerprints,
            {CertificateAuthority.load_or_create(self.directory, "example.org").root_fingerprint},
        )
        self.assertEqual(os.listdir(self.base), ["ca"])
