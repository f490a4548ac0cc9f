# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca.authority`: the CA object, its construction, and keeping it on disk."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from common.pki import keyfiles
from irp.errors import InvalidArgument
from irp.server.ca import (
    CertificateAuthority,
    CertificateAuthorityError,
    generate_key,
)
from test import pki
from test.helpers import REPOSITORY
from test.irp.server.ca.support import ALICE, START, FakeClock, _extension_value


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
        """The CA keys can be encrypted; loading them then needs the passphrase."""
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256",
                                            passphrase=b"root secret")
        with open(os.path.join(self.directory, "root.key"), "rb") as root_key:
            self.assertIn(b"ENCRYPTED", root_key.read())
        with open(os.path.join(self.directory, "issuing.key"), "rb") as issuing_key:
            self.assertIn(b"ENCRYPTED", issuing_key.read())
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
