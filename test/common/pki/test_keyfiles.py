# mypy: allow-untyped-calls
"""Tests for :mod:`common.pki.keyfiles`: safe storage of keys, certificates and secrets."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from common.pki import keyfiles
from common.pki.keyfiles import KeyFileError
from irp.server.ca import generate_key
from test import pki


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _same_key(first: keyfiles.PrivateKey, second: keyfiles.PrivateKey) -> bool:
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return first.public_key().public_bytes(encoding, spki) == second.public_key().public_bytes(
        encoding, spki
    )


class _TemporaryDirectoryMixin(unittest.TestCase):
    def make_directory(self) -> str:
        directory: str = self.mktemp()
        os.mkdir(directory, 0o700)
        return directory

    def set_umask(self, umask: int) -> None:
        previous = os.umask(umask)
        self.addCleanup(os.umask, previous)


class PrivateKeyTests(_TemporaryDirectoryMixin):
    """Writing and loading private keys."""

    def test_mode_is_0600_even_with_umask_0(self) -> None:
        """A key is never readable by others, even if the umask would allow it."""
        self.set_umask(0)
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_private_key(path, generate_key("p256"))
        self.assertEqual(_mode(path), 0o600)

    def test_mode_is_0600_with_strict_umask(self) -> None:
        """A umask removing owner bits cannot make the key unreadable to its owner."""
        self.set_umask(0o277)
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_private_key(path, generate_key("p256"))
        self.assertEqual(_mode(path), 0o600)

    def test_round_trip(self) -> None:
        """Every supported key type loads back as the same key."""
        directory = self.make_directory()
        for key_type in ("p256", "p384", "ed25519"):
            key = generate_key(key_type)
            path = os.path.join(directory, f"{key_type}.key")
            keyfiles.write_private_key(path, key)
            self.assertTrue(_same_key(keyfiles.load_private_key(path), key))

    def test_encrypted_round_trip(self) -> None:
        """A key written with a passphrase is encrypted and loads with that passphrase."""
        path = os.path.join(self.make_directory(), "root.key")
        key = generate_key("p256")
        keyfiles.write_private_key(path, key, b"correct horse")
        with open(path, "rb") as stored:
            self.assertIn(b"BEGIN ENCRYPTED PRIVATE KEY", stored.read())
        self.assertTrue(_same_key(keyfiles.load_private_key(path, b"correct horse"), key))

    def test_is_encrypted(self) -> None:
        """is_encrypted_private_key tells an encrypted key file from a plain one, and
        refuses an unsafe one like the loader does."""
        directory = self.make_directory()
        plain, encrypted = os.path.join(directory, "plain.key"), os.path.join(directory, "encrypted.key")
        keyfiles.write_private_key(plain, generate_key("p256"))
        keyfiles.write_private_key(encrypted, generate_key("p256"), b"correct horse")
        self.assertFalse(keyfiles.is_encrypted_private_key(plain))
        self.assertTrue(keyfiles.is_encrypted_private_key(encrypted))
        os.chmod(plain, 0o644)
        self.assertRaises(keyfiles.KeyFileError, keyfiles.is_encrypted_private_key, plain)

    def test_empty_passphrase_refused(self) -> None:
        """An empty passphrase is a mistake, not a request for no encryption."""
        path = os.path.join(self.make_directory(), "root.key")
        self.assertRaises(ValueError, keyfiles.write_private_key, path, generate_key(), b"")
        self.assertFalse(os.path.exists(path))

    def test_wrong_passphrase_message_has_no_secrets(self) -> None:
        """A wrong passphrase is reported by file name, quoting no key or passphrase."""
        path = os.path.join(self.make_directory(), "root.key")
        keyfiles.write_private_key(path, generate_key("p256"), b"correct horse")
        with open(path, "rb") as stored:
            pem_lines = stored.read().decode("ascii").splitlines()[1:-1]
        error = self.assertRaises(
            KeyFileError, keyfiles.load_private_key, path, b"battery staple"
        )
        message = str(error)
        self.assertIn("wrong passphrase", message)
        self.assertIn(path, message)
        self.assertNotIn("battery", message)
        self.assertNotIn("correct", message)
        for line in pem_lines:
            self.assertNotIn(line[:16], message)
        # No chained library exception can carry details into a traceback either.
        self.assertIsNone(error.__cause__)
        self.assertTrue(error.__suppress_context__)

    def test_encrypted_key_without_passphrase(self) -> None:
        """Loading an encrypted key without a passphrase says one is needed."""
        path = os.path.join(self.make_directory(), "root.key")
        keyfiles.write_private_key(path, generate_key("p256"), b"correct horse")
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path)
        self.assertIn("passphrase is needed", str(error))

    def test_plain_key_with_passphrase(self) -> None:
        """A passphrase given for an unencrypted key is a configuration mistake."""
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_private_key(path, generate_key("p256"))
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path, b"whatever")
        self.assertIn("not encrypted", str(error))

    def test_group_or_other_access_refused(self) -> None:
        """Like ssh, a key the group or others may read or write is refused."""
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_private_key(path, generate_key("p256"))
        for mode in (0o640, 0o604, 0o620, 0o602, 0o660, 0o644):
            os.chmod(path, mode)
            error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path)
            self.assertIn("accessible by group or others", str(error))
            self.assertIn(f"{mode:04o}", str(error))
        os.chmod(path, 0o400)
        keyfiles.load_private_key(path)

    def test_missing_file(self) -> None:
        """A missing key file is reported as such."""
        path = os.path.join(self.make_directory(), "absent.key")
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path)
        self.assertIn("does not exist", str(error))

    def test_not_a_regular_file(self) -> None:
        """A directory or FIFO in place of a key is refused without blocking."""
        directory = self.make_directory()
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, directory)
        self.assertIn("not a regular file", str(error))
        fifo = os.path.join(directory, "fifo")
        os.mkfifo(fifo, 0o600)
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, fifo)
        self.assertIn("not a regular file", str(error))

    def test_garbage(self) -> None:
        """A file that is not a PEM key is refused without quoting it."""
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_bytes_private(path, b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path)
        self.assertIn("does not hold a readable PEM private key", str(error))
        self.assertNotIn("c2VjcmV0", str(error))

    def test_oversized_file(self) -> None:
        """Huge files are not read into memory."""
        path = os.path.join(self.make_directory(), "user.key")
        keyfiles.write_bytes_private(path, b"x" * (keyfiles.MAX_KEY_FILE_SIZE + 1))
        error = self.assertRaises(KeyFileError, keyfiles.load_private_key, path)
        self.assertIn("larger than", str(error))


class AtomicWriteTests(_TemporaryDirectoryMixin):
    """Writes replace the file in one step and leave nothing behind."""

    def test_replace(self) -> None:
        """Writing over a key replaces the file (a new inode) with the new key."""
        directory = self.make_directory()
        path = os.path.join(directory, "user.key")
        keyfiles.write_private_key(path, generate_key("p256"))
        first_inode = os.stat(path).st_ino
        second_key = generate_key("p256")
        keyfiles.write_private_key(path, second_key)
        self.assertNotEqual(os.stat(path).st_ino, first_inode)
        self.assertTrue(_same_key(keyfiles.load_private_key(path), second_key))
        self.assertEqual(os.listdir(directory), ["user.key"])

    def test_failed_write_keeps_old_file(self) -> None:
        """If writing fails midway, the old file is intact and no temporary file remains."""
        directory = self.make_directory()
        path = os.path.join(directory, "password")
        keyfiles.write_bytes_private(path, b"old")

        def failing_fsync(descriptor: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(os, "fsync", failing_fsync)
        self.assertRaises(OSError, keyfiles.write_bytes_private, path, b"new")
        with open(path, "rb") as stored:
            self.assertEqual(stored.read(), b"old")
        self.assertEqual(os.listdir(directory), ["password"])

    def test_write_bytes_private(self) -> None:
        """Secrets such as PKCS#12 files are written 0600 and read back."""
        self.set_umask(0)
        path = os.path.join(self.make_directory(), "alice.p12")
        keyfiles.write_bytes_private(path, b"\x00secret\xff")
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(keyfiles.read_bytes_private(path), b"\x00secret\xff")
        os.chmod(path, 0o644)
        self.assertRaises(KeyFileError, keyfiles.read_bytes_private, path)


class CertificateFileTests(_TemporaryDirectoryMixin):
    """Writing and loading certificates."""

    def test_round_trip_and_mode(self) -> None:
        """Certificates are public (0644 whatever the umask) and load in order."""
        self.set_umask(0o077)
        ca = pki.make_ca()
        path = os.path.join(self.make_directory(), "chain.pem")
        keyfiles.write_certificates(path, ca.chain)
        self.assertEqual(_mode(path), 0o644)
        self.assertEqual(keyfiles.load_certificates(path), ca.chain)

    def test_empty_list_refused(self) -> None:
        """Writing no certificates is a mistake."""
        path = os.path.join(self.make_directory(), "chain.pem")
        self.assertRaises(ValueError, keyfiles.write_certificates, path, [])

    def test_not_certificates(self) -> None:
        """A file without PEM certificates, or no file, raises KeyFileError."""
        directory = self.make_directory()
        path = os.path.join(directory, "chain.pem")
        with open(path, "wb") as garbage:
            garbage.write(b"not a certificate\n")
        self.assertRaises(KeyFileError, keyfiles.load_certificates, path)
        self.assertRaises(
            KeyFileError, keyfiles.load_certificates, os.path.join(directory, "absent.pem")
        )


class PrivateDirectoryTests(_TemporaryDirectoryMixin):
    """ensure_private_directory."""

    def test_creates_parents_0700(self) -> None:
        """Missing directories are created 0700, even under umask 0."""
        self.set_umask(0)
        base = self.make_directory()
        path = os.path.join(base, "a", "b", "c")
        keyfiles.ensure_private_directory(path)
        for created in ("a", "a/b", "a/b/c"):
            self.assertEqual(_mode(os.path.join(base, created)), 0o700)

    def test_tightens_existing(self) -> None:
        """An existing directory loses its group and other permissions only."""
        path = self.make_directory()
        os.chmod(path, 0o755)
        keyfiles.ensure_private_directory(path)
        self.assertEqual(_mode(path), 0o700)
        os.chmod(path, 0o500)
        keyfiles.ensure_private_directory(path)
        self.assertEqual(_mode(path), 0o500)

    def test_file_in_the_way(self) -> None:
        """A file where the directory should be is an error."""
        path = os.path.join(self.make_directory(), "file")
        keyfiles.write_bytes_private(path, b"")
        self.assertRaises(KeyFileError, keyfiles.ensure_private_directory, path)


class FingerprintTests(unittest.TestCase):
    """Certificate fingerprints: computing, showing and reading them."""

    def test_fingerprint_is_sha256_of_der(self) -> None:
        """The fingerprint is the lowercase hex SHA-256 of the DER certificate."""
        certificate = pki.make_ca().root_certificate
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(keyfiles.fingerprint(certificate), hashlib.sha256(der).hexdigest())

    def test_matches_openssl(self) -> None:
        """OpenSSL's colon-separated upper-case fingerprint parses to ours."""
        certificate = pki.make_ca().root_certificate
        output = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
            input=certificate.public_bytes(serialization.Encoding.PEM),
            capture_output=True,
            check=True,
        ).stdout.decode("ascii")
        openssl_form = output.strip().split("=", 1)[1]
        self.assertIn(":", openssl_form)
        self.assertEqual(
            keyfiles.parse_fingerprint(openssl_form), keyfiles.fingerprint(certificate)
        )

    def test_format(self) -> None:
        """The readable form is SHA256: and sixteen groups of four hex digits."""
        digits = "0123456789abcdef" * 4
        self.assertEqual(
            keyfiles.format_fingerprint(digits),
            "SHA256:" + " ".join(["0123", "4567", "89ab", "cdef"] * 4),
        )

    def test_parse_accepts_common_forms(self) -> None:
        """Prefix, case, colons and white space do not matter."""
        digits = hashlib.sha256(b"x").hexdigest()
        colons = ":".join(digits[i : i + 2] for i in range(0, 64, 2)).upper()
        for text in (
            digits,
            digits.upper(),
            f"sha256:{digits}",
            f"  SHA256:{colons}\n",
            keyfiles.format_fingerprint(digits),
            " ".join(digits[i : i + 8] for i in range(0, 64, 8)),
        ):
            self.assertEqual(keyfiles.parse_fingerprint(text), digits, text)

    def test_parse_rejects(self) -> None:
        """Wrong lengths, non-hex digits and other hashes' prefixes are refused."""
        digits = hashlib.sha256(b"x").hexdigest()
        for text in ("", digits[:-1], digits + "0", digits[:-1] + "g", "SHA1:" + digits,
                     "SHA256:", "sha256-" + digits):
            self.assertRaises(ValueError, keyfiles.parse_fingerprint, text)

    @given(st.binary(min_size=32, max_size=32))
    def test_round_trip(self, digest: bytes) -> None:
        """Parsing the readable form gives back the fingerprint."""
        hex_digest = digest.hex()
        self.assertEqual(
            keyfiles.parse_fingerprint(keyfiles.format_fingerprint(hex_digest)), hex_digest
        )
