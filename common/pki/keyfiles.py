"""Keys, certificates and other secrets on disk, stored safely.

Every write is atomic: the data goes to a fresh temporary file in the same directory (created
with ``O_EXCL`` and the final mode, so no other user can ever open it), is flushed to disk,
and then renamed over the target, after which the directory itself is flushed. A reader sees
the old file or the new one, never a mix, even after a crash.

Private files (keys, PKCS#12 bundles, password files) are mode 0600 whatever the umask, and
are refused on load, like ssh does, when the group or others may read or write them.

Certificate fingerprints are the lowercase hex SHA-256 of the DER encoding (64 characters).
For people they are shown as ``SHA256:`` followed by sixteen groups of four hex digits
separated by spaces (see :func:`format_fingerprint`); :func:`parse_fingerprint` accepts that,
the bare hex, and the colon-separated form OpenSSL prints.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: The private key types the suite stores and loads.
PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
)

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIRECTORY_MODE = 0o700

#: Files larger than this are refused by the loaders (they are not keys or certificates).
MAX_KEY_FILE_SIZE = 1024 * 1024
MAX_CERTIFICATE_FILE_SIZE = 4 * 1024 * 1024

FINGERPRINT_PREFIX = "SHA256:"
_FINGERPRINT_HEX = re.compile(r"[0-9a-f]{64}\Z")
_FINGERPRINT_SEPARATORS = re.compile(r"[\s:]+")
#: PKCS#8 and legacy OpenSSL markers of an encrypted PEM private key.
_ENCRYPTED_PEM_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


class KeyFileError(Exception):
    """A key, certificate or secret file is missing, unsafe, unreadable or undecryptable.

    The message names the file and the problem, never its contents.
    """


def ensure_private_directory(path: str) -> None:
    """Make sure ``path`` is a directory only its owner can use.

    Missing directories (parents too) are created with mode 0700. If ``path`` already exists
    and the group or others have any permission on it, those permissions are removed; its
    parents are left as they are.
    """
    absolute = os.path.abspath(path)
    missing: list[str] = []
    current = absolute
    while not os.path.isdir(current):
        if os.path.lexists(current):
            raise KeyFileError(f"{current} exists and is not a directory")
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise KeyFileError(f"{directory} exists and is not a directory") from None
        else:
            # The umask may have removed owner bits; set the mode exactly.
            os.chmod(directory, PRIVATE_DIRECTORY_MODE)
    mode = stat.S_IMODE(os.stat(absolute).st_mode)
    if mode & 0o077:
        try:
            os.chmod(absolute, mode & ~0o077)
        except PermissionError:
            raise KeyFileError(
                f"{absolute} is accessible by group or others (mode {mode:04o}) and cannot be"
                " tightened: it belongs to another user"
            ) from None


def write_private_key(
    path: str, key: PrivateKey, passphrase: bytes | None = None
) -> None:
    """Store ``key`` at ``path`` as PKCS#8 PEM, mode 0600, atomically.

    With a ``passphrase`` the key is encrypted with the best encryption available.
    """
    if passphrase is not None and not passphrase:
        raise ValueError("the passphrase must not be empty; pass None for no encryption")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_atomically(path, data, PRIVATE_FILE_MODE)


def load_private_key(path: str, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key written by :func:`write_private_key` (or any PKCS#8/PKCS#1 PEM).

    Raises :class:`KeyFileError` if the file is missing, is not a regular file, may be read or
    written by the group or others, is not a private key of a supported type, is encrypted
    and no passphrase was given, is not encrypted but a passphrase was given, or the
    passphrase is wrong.
    """
    data = read_bytes_private(path, max_size=MAX_KEY_FILE_SIZE)
    is_encrypted = any(marker in data for marker in _ENCRYPTED_PEM_MARKERS)
    if is_encrypted and passphrase is None:
        raise KeyFileError(f"the private key in {path} is encrypted; a passphrase is needed")
    if not is_encrypted and passphrase is not None:
        raise KeyFileError(
            f"the private key in {path} is not encrypted, but a passphrase was given"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):
        # The library's messages are safe, but we say it in our words and drop the cause so
        # no part of the file can travel in a traceback.
        if is_encrypted:
            raise KeyFileError(
                f"cannot decrypt the private key in {path}: wrong passphrase or damaged file"
            ) from None
        raise KeyFileError(f"{path} does not hold a readable PEM private key") from None
    if not isinstance(
        key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)
    ):
        raise KeyFileError(
            f"the private key in {path} is of an unsupported type; use EC, Ed25519 or RSA"
        )
    return key


def is_encrypted_private_key(path: str) -> bool:
    """True if the PEM private key file at ``path`` is encrypted (checked like
    :func:`load_private_key` does; raises :class:`KeyFileError` as it does for an unsafe
    or unreadable file)."""
    data = read_bytes_private(path, max_size=MAX_KEY_FILE_SIZE)
    return any(marker in data for marker in _ENCRYPTED_PEM_MARKERS)


def write_certificates(path: str, certificates: list[x509.Certificate]) -> None:
    """Store ``certificates`` at ``path`` as concatenated PEM, mode 0644, atomically."""
    if not certificates:
        raise ValueError("no certificates to write")
    data = b"".join(
        certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates
    )
    _write_atomically(path, data, PUBLIC_FILE_MODE)


def load_certificates(path: str) -> list[x509.Certificate]:
    """Load every PEM certificate in ``path``, in file order.

    Raises :class:`KeyFileError` if the file is missing, too large, or holds no certificate.
    """
    data = _read_file(path, max_size=MAX_CERTIFICATE_FILE_SIZE, private=False)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyFileError(f"{path} does not hold PEM certificates") from None


def write_bytes_private(path: str, data: bytes) -> None:
    """Store ``data`` at ``path``, mode 0600, atomically (PKCS#12 bundles, password files)."""
    _write_atomically(path, data, PRIVATE_FILE_MODE)


def read_bytes_private(path: str, *, max_size: int = MAX_KEY_FILE_SIZE) -> bytes:
    """Read a private file, refusing it if the group or others may read or write it."""
    return _read_file(path, max_size=max_size, private=True)


def fingerprint(certificate: x509.Certificate) -> str:
    """Return the lowercase hex SHA-256 of the certificate's DER encoding (64 characters)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def format_fingerprint(hex_fingerprint: str) -> str:
    """Show a fingerprint to people: ``SHA256:`` and sixteen space-separated groups of four.

    For example ``SHA256:9f86 d081 884c 7d65 9a2f eaa0 c55a d015 a3bf 4f1b 2b0b 822c d15d
    6c15 b0f0 0a08``. Groups of four are easy to read aloud and compare by eye.
    """
    digits = parse_fingerprint(hex_fingerprint)
    groups = " ".join(digits[start : start + 4] for start in range(0, len(digits), 4))
    return FINGERPRINT_PREFIX + groups


def parse_fingerprint(text: str) -> str:
    """Return the 64-digit lowercase hex form of a SHA-256 fingerprint typed by a person.

    Accepts upper or lower case, with or without a ``SHA256:`` prefix, and with the digits
    separated by colons or white space anywhere. Raises :class:`ValueError` otherwise.
    A fingerprint is public, so the message may quote what was typed.
    """
    if not isinstance(text, str):
        raise TypeError("a fingerprint must be text")
    candidate = text.strip()
    if candidate[: len(FINGERPRINT_PREFIX)].upper() == FINGERPRINT_PREFIX:
        candidate = candidate[len(FINGERPRINT_PREFIX) :]
    digits = _FINGERPRINT_SEPARATORS.sub("", candidate).lower()
    if not _FINGERPRINT_HEX.match(digits):
        raise ValueError(
            "not a SHA-256 fingerprint: expected 64 hex digits, optionally prefixed by"
            " 'SHA256:' and separated by colons or spaces"
        )
    return digits


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp"
    )
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    descriptor = os.open(temporary, flags, mode)
    try:
        try:
            # os.open's mode is filtered by the umask: set it exactly (only we hold the file).
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Flush a directory's entries to disk (after creating, renaming or removing in it)."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_file(path: str, *, max_size: int, private: bool) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"{path} cannot be read: permission denied") from None
    except OSError as error:
        raise KeyFileError(f"{path} cannot be opened: {os.strerror(error.errno or 0)}") from None
    try:
        # Check the file we opened, not the name, so it cannot be swapped in between.
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if private and mode & 0o077:
            raise KeyFileError(
                f"{path} is accessible by group or others (mode {mode:04o}); it holds a secret,"
                f" so it is refused: run 'chmod 600 {path}'"
            )
        if status.st_size > max_size:
            raise KeyFileError(f"{path} is larger than {max_size} bytes")
        chunks: list[bytes] = []
        remaining = max_size + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as error:
        if error.errno == errno.EISDIR:
            raise KeyFileError(f"{path} is not a regular file") from None
        raise KeyFileError(f"{path} cannot be read: {os.strerror(error.errno or 0)}") from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > max_size:
        raise KeyFileError(f"{path} is larger than {max_size} bytes")
    return data
