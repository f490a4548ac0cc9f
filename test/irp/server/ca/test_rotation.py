"""Operator actions on a CA folder (irp.server.ca.rotation and ondisk): issuing-CA
rotation, the offline root, the root CRL signed offline, and encrypted keys; real keys
and files in a temporary folder."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from twisted.trial import unittest

from common.pki import keyfiles
from common.pki.revocation import crl_signed_by
from irp.server.ca import CertificateAuthority, CertificateAuthorityError, generate_key
from irp.server.ca.ondisk import RootCRLFile, issuing_generation, load
from irp.server.ca.rotation import (
    key_files,
    protect_keys,
    root_key_for,
    rotate_issuing,
    sign_root_crl,
    take_root_offline,
)
from test.irp.server.ca.support import ALICE, FakeClock

DAY = datetime.timedelta(days=1)


class RotationTests(unittest.TestCase):
    """``rotate_issuing``: a new issuing CA; the old one kept and still accepted."""

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.directory = os.path.join(self.mktemp(), "ca")
        self.first = CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256", now=self.clock)

    def rotate(self, passphrase: bytes | None = None) -> None:
        root_key = root_key_for(self.directory, None, passphrase)
        rotate_issuing(self.directory, root_key, passphrase=passphrase, key_type="p256", now=self.clock)

    def test_new_issuer_distinct_and_old_retired(self) -> None:
        """The new issuing CA has a distinct subject and key, is signed by the same root,
        and the old one is in retired/1 and among retired_issuers."""
        old_user = self.first.issue_user_certificate(ALICE, generate_key("p256").public_key())
        self.rotate()
        ca = load(self.directory, "example.org", now=self.clock)
        self.assertEqual(ca.root_fingerprint, self.first.root_fingerprint)
        self.assertNotEqual(ca.issuing_certificate.subject, self.first.issuing_certificate.subject)
        self.assertEqual(issuing_generation(ca.issuing_certificate), 2)
        self.assertIn("IRP Issuing CA 2", ca.issuing_certificate.subject.rfc4514_string())
        ca.issuing_certificate.verify_directly_issued_by(ca.root_certificate)
        self.assertEqual([c for c, _k in ca.retired_issuers], [self.first.issuing_certificate])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "retired", "1", "issuing.key")))
        # Old certificates still verify against the retired issuer; new ones get the new one.
        old_user.verify_directly_issued_by(ca.retired_issuers[0][0])
        new_user = ca.issue_user_certificate(ALICE, generate_key("p256").public_key())
        self.assertEqual(new_user.issuer, ca.issuing_certificate.subject)
        # The retired issuer still signs its CRL.
        crl = ca.build_crl([], 7, issuer=ca.retired_issuers[0])
        self.assertTrue(crl_signed_by(crl, self.first.issuing_certificate))
        self.assertFalse(crl_signed_by(crl, ca.issuing_certificate))

    def test_names_the_root_crl(self) -> None:
        """With the registry's --http-url, the new issuing CA names the root's CRL and
        certificate there (so whole-chain CRL checks find the root's); without, neither."""
        from cryptography import x509
        from cryptography.x509.oid import AuthorityInformationAccessOID

        from irp.server.ca.issuance import PublicationURLs

        self.assertRaises(x509.ExtensionNotFound, self.first.issuing_certificate.extensions.get_extension_for_class, x509.CRLDistributionPoints)
        root_key = root_key_for(self.directory, None, None)
        publication = PublicationURLs("http://pki.example.org/")
        rotate_issuing(self.directory, root_key, key_type="p256", now=self.clock, publication=publication)
        issuing = load(self.directory, now=self.clock).issuing_certificate
        points = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        self.assertEqual([name.value for point in points for name in point.full_name or []], ["http://pki.example.org/crl/root.crl"])
        access = issuing.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertEqual(
            [(entry.access_method, entry.access_location.value) for entry in access],
            [(AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example.org/ca/root.crt")],
        )

    def test_twice(self) -> None:
        """A second rotation makes issuing CA 3 and keeps both retired ones, newest first."""
        self.rotate()
        second = load(self.directory, now=self.clock).issuing_certificate
        self.rotate()
        ca = load(self.directory, now=self.clock)
        self.assertEqual(issuing_generation(ca.issuing_certificate), 3)
        self.assertEqual([c for c, _k in ca.retired_issuers], [second, self.first.issuing_certificate])

    def test_expired_retired_issuer_dropped(self) -> None:
        """A retired issuing CA that expired is no longer loaded or offered."""
        self.rotate()
        self.clock.advance(self.first.issuing_certificate.not_valid_after_utc - self.clock() + DAY)
        self.assertEqual(load(self.directory, now=self.clock).retired_issuers, [])

    def test_interrupted_after_certificate(self) -> None:
        """A crash after the new certificate went in but before the key did: the next load
        completes the rotation (the pair matches)."""
        self.rotate()
        ca = load(self.directory, now=self.clock)
        # Recreate the state between the two renames: new key still beside, old key in place.
        key_path = os.path.join(self.directory, "issuing.key")
        os.rename(key_path, key_path + ".new")
        keyfiles.write_bytes_private(key_path, keyfiles.read_bytes_private(os.path.join(self.directory, "retired", "1", "issuing.key")))
        again = load(self.directory, now=self.clock)
        self.assertEqual(again.issuing_certificate, ca.issuing_certificate)
        self.assertFalse(os.path.exists(key_path + ".new"))

    def test_interrupted_before_key_written(self) -> None:
        """Only the new certificate written beside: dropped, the old pair stays."""
        stray = os.path.join(self.directory, "issuing.pem.new")
        keyfiles.write_certificates(stray, [self.first.root_certificate])
        ca = load(self.directory, now=self.clock)
        self.assertEqual(ca.issuing_certificate, self.first.issuing_certificate)
        self.assertFalse(os.path.exists(stray))

    def test_retry_after_failure_in_first_step(self) -> None:
        """A rotation that stopped after copying the old pair to retired/1 can be run
        again; a retired/1 holding another CA is refused and nothing changes."""
        keyfiles.ensure_private_directory(os.path.join(self.directory, "retired", "1"))
        keyfiles.write_private_key(os.path.join(self.directory, "retired", "1", "issuing.key"), self.first.issuing_key)
        self.assertEqual(load(self.directory, now=self.clock).retired_issuers, [])
        self.rotate()
        self.assertEqual(issuing_generation(load(self.directory, now=self.clock).issuing_certificate), 2)
        keyfiles.ensure_private_directory(os.path.join(self.directory, "retired", "2"))
        keyfiles.write_private_key(os.path.join(self.directory, "retired", "2", "issuing.key"), self.first.issuing_key)
        keyfiles.write_certificates(os.path.join(self.directory, "retired", "2", "issuing.pem"), [self.first.issuing_certificate])
        before = load(self.directory, now=self.clock).issuing_certificate
        self.assertRaises(CertificateAuthorityError, self.rotate)
        self.assertEqual(load(self.directory, now=self.clock).issuing_certificate, before)

    def test_wrong_root_key(self) -> None:
        """Another key than the root's is refused, and nothing changes."""
        other = os.path.join(self.mktemp())
        keyfiles.write_private_key(other, generate_key("p256"))
        self.assertRaises(CertificateAuthorityError, root_key_for, self.directory, other, None)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "retired")))

    def test_encrypted_keys_stay_encrypted(self) -> None:
        """With encrypted keys, the new issuing key is encrypted with the same passphrase."""
        protect_keys(self.directory, b"secret words")
        self.rotate(b"secret words")
        with open(os.path.join(self.directory, "issuing.key"), "rb") as key:
            self.assertIn(b"ENCRYPTED", key.read())
        self.assertRaises(keyfiles.KeyFileError, load, self.directory, now=self.clock)
        self.assertEqual(len(load(self.directory, now=self.clock, passphrase=b"secret words").retired_issuers), 1)


class OfflineRootTests(unittest.TestCase):
    """``take_root_offline`` and ``sign_root_crl``."""

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.base = self.mktemp()
        self.directory = os.path.join(self.base, "ca")
        self.first = CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256", now=self.clock)
        self.offline = os.path.join(self.base, "root-offline.key")

    def test_take_offline(self) -> None:
        """The key moves out (0600), a root CRL is signed, and the CA loads without it."""
        crl = take_root_offline(self.directory, self.offline, days=100, now=self.clock)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "root.key")))
        self.assertEqual(os.stat(self.offline).st_mode & 0o777, 0o600)
        self.assertEqual(crl.next_update_utc, self.clock() + datetime.timedelta(days=100))
        ca = load(self.directory, "example.org", now=self.clock)
        self.assertFalse(ca.root_key_online)
        error = self.assertRaises(CertificateAuthorityError, lambda: ca.root_key)
        self.assertIn("offline", str(error))
        self.assertRaises(CertificateAuthorityError, ca.build_root_crl, 1)
        # The issuing key still works; the root CRL is the file's.
        ca.issue_user_certificate(ALICE, generate_key("p256").public_key())
        assert ca.root_crl_file is not None
        served = ca.root_crl_file.current()
        assert served is not None
        self.assertTrue(crl_signed_by(served, ca.root_certificate))

    def test_refuses_to_overwrite(self) -> None:
        """An existing destination is never overwritten; the key stays in place."""
        with open(self.offline, "w") as existing:
            existing.write("precious")
        self.assertRaises(CertificateAuthorityError, take_root_offline, self.directory, self.offline)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "root.key")))
        with open(self.offline) as existing:
            self.assertEqual(existing.read(), "precious")

    def test_twice_refused(self) -> None:
        take_root_offline(self.directory, self.offline, now=self.clock)
        error = self.assertRaises(CertificateAuthorityError, take_root_offline, self.directory, self.offline + "2")
        self.assertIn("already offline", str(error))

    def test_sign_root_crl_offline_and_rotate(self) -> None:
        """With the key offline, a new root CRL (higher number) and a rotation work from
        the offline key file."""
        first = take_root_offline(self.directory, self.offline, now=self.clock)
        self.clock.advance(DAY)
        root_key = root_key_for(self.directory, self.offline, None)
        second = sign_root_crl(self.directory, root_key, days=30, now=self.clock)
        number = x509.CRLNumber
        self.assertGreater(
            second.extensions.get_extension_for_class(number).value.crl_number,
            first.extensions.get_extension_for_class(number).value.crl_number,
        )
        ca = load(self.directory, now=self.clock)
        assert ca.root_crl_file is not None
        self.assertEqual(ca.root_crl_file.current(), second)
        rotate_issuing(self.directory, root_key, key_type="p256", now=self.clock)
        self.assertEqual(issuing_generation(load(self.directory, now=self.clock).issuing_certificate), 2)

    def test_forged_root_crl_refused(self) -> None:
        """A root.crl not signed by the root is refused when read."""
        other = os.path.join(self.mktemp(), "ca")
        stranger = CertificateAuthority.load_or_create(other, "example.org", key_type="p256", now=self.clock)
        sign_root_crl(other, stranger.root_key, now=self.clock)
        reader = RootCRLFile(os.path.join(other, "root.crl"), self.first.root_certificate)
        self.assertRaises(CertificateAuthorityError, reader.current)


class ProtectKeysTests(unittest.TestCase):
    """``protect_keys``: encrypting and decrypting every CA key in place."""

    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "ca")
        CertificateAuthority.load_or_create(self.directory, "example.org", key_type="p256")

    def test_encrypt_then_remove(self) -> None:
        done = protect_keys(self.directory, b"long passphrase")
        self.assertEqual([what for _path, what in done], ["encrypted", "encrypted"])
        for path in key_files(self.directory):
            self.assertTrue(keyfiles.is_encrypted_private_key(path))
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertRaises(keyfiles.KeyFileError, load, self.directory)
        load(self.directory, passphrase=b"long passphrase")
        again = protect_keys(self.directory, b"long passphrase")
        self.assertEqual([what for _path, what in again], ["already encrypted"] * 2)
        protect_keys(self.directory, b"long passphrase", remove=True)
        self.assertFalse(any(keyfiles.is_encrypted_private_key(path) for path in key_files(self.directory)))
        load(self.directory)

    def test_wrong_passphrase_changes_nothing(self) -> None:
        protect_keys(self.directory, b"long passphrase")
        self.assertRaises(keyfiles.KeyFileError, protect_keys, self.directory, b"another one", remove=True)
        self.assertTrue(all(keyfiles.is_encrypted_private_key(path) for path in key_files(self.directory)))
        error = self.assertRaises(keyfiles.KeyFileError, load, self.directory, passphrase=b"another one")
        self.assertIn("wrong passphrase", str(error))
