"""The CA folder on disk (``<data-dir>/ca/``): loading, creating, and its layout.

::

    root.pem           the root certificate (always here)
    root.key           the root key; missing when the root is kept offline
    root.crl           the root CRL signed offline (only with an offline root)
    issuing.pem        the current issuing CA certificate
    issuing.key        its key
    retired/<n>/       issuing CA number <n> replaced by a rotation: issuing.pem and
                       issuing.key, kept to sign its CRL until its certificates expire
    record-signing/    the record-signing key and certificate (irp.server.credentials)

Keys are PEM, mode 0600, optionally encrypted with one passphrase (an encrypted key is
loaded only with it; an unencrypted key is loaded without it). A rotation interrupted by a
crash is completed (or undone) the next time the folder is loaded; see
:func:`finish_interrupted_rotation`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile

from cryptography import x509
from cryptography.x509.oid import NameOID

from common.identity import check_domain
from common.pki import keyfiles
from common.pki.keyfiles import PrivateKey
from common.pki.keys import DEFAULT_KEY_TYPE
from common.pki.revocation import crl_signed_by
from irp.server.ca.authority import (
    ISSUING_CERTIFICATE_FILE,
    ISSUING_KEY_FILE,
    ROOT_CERTIFICATE_FILE,
    ROOT_KEY_FILE,
    CertificateAuthority,
    CertificateAuthorityError,
    Clock,
    certificate_domain,
    load_one_certificate,
    system_clock,
)
from irp.server.ca.issuance import PublicationURLs

ROOT_CRL_FILE = "root.crl"
RETIRED_DIRECTORY = "retired"
#: Suffix of the files a rotation writes before it puts them in place.
NEW_SUFFIX = ".new"
#: What to tell an operator whose key is encrypted and who gave no passphrase.
PASSPHRASE_HINT = "give its passphrase with --key-passphrase-file FILE (or IRP_KEY_PASSPHRASE_FILE)"
MAX_CRL_FILE_SIZE = 1024 * 1024
_GENERATION = re.compile(r"IRP Issuing CA(?: (\d+))?\Z")


def holds_ca(directory: str) -> bool:
    """True if ``directory`` holds a CA (its root certificate)."""
    return os.path.exists(os.path.join(directory, ROOT_CERTIFICATE_FILE))


def load_key(path: str, passphrase: bytes | None) -> PrivateKey:
    """Load a CA key, decrypting it with ``passphrase`` when it is encrypted."""
    if keyfiles.is_encrypted_private_key(path):
        if passphrase is None:
            raise keyfiles.KeyFileError(f"the private key in {path} is encrypted: {PASSPHRASE_HINT}")
        return keyfiles.load_private_key(path, passphrase)
    return keyfiles.load_private_key(path)


def issuing_generation(certificate: x509.Certificate) -> int:
    """The number of an issuing CA (1 for the first, ``n`` for ``... IRP Issuing CA n``)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    found = _GENERATION.search(str(names[0].value)) if names else None
    if found is None:
        return 1
    return int(found.group(1) or 1)


def retired_folders(directory: str) -> list[tuple[int, str]]:
    """The retired issuing CAs' folders as (number, path), newest (highest) first."""
    parent = os.path.join(directory, RETIRED_DIRECTORY)
    if not os.path.isdir(parent):
        return []
    found = [(int(name), os.path.join(parent, name)) for name in os.listdir(parent) if name.isdigit()]
    return sorted(found, reverse=True)


def load_or_create(
    directory: str,
    domain: str,
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    now: Clock | None = None,
    passphrase: bytes | None = None,
    publication: PublicationURLs | None = None,
) -> CertificateAuthority:
    """See :meth:`CertificateAuthority.load_or_create`."""
    domain = check_domain(domain)
    directory = os.path.abspath(directory)
    if not holds_ca(directory):
        created = _create_in_place(directory, domain, key_type, now, passphrase, publication)
        if created is not None:
            return created
    return load(directory, domain, now=now, passphrase=passphrase)


def load(
    directory: str,
    domain: str | None = None,
    *,
    now: Clock | None = None,
    passphrase: bytes | None = None,
) -> CertificateAuthority:
    """Load the CA in ``directory`` (for ``domain``; None: whichever the root names).

    The root key is optional (an offline root); retired issuing CAs that have expired are
    not loaded (their keys are no longer needed).
    """
    directory = os.path.abspath(directory)
    for name in (ROOT_CERTIFICATE_FILE, ISSUING_CERTIFICATE_FILE, ISSUING_KEY_FILE):
        if not os.path.exists(os.path.join(directory, name)) and not os.path.exists(
            os.path.join(directory, name + NEW_SUFFIX)
        ):
            raise CertificateAuthorityError(f"{directory} holds no complete CA: {name} is missing")
    keyfiles.ensure_private_directory(directory)
    finish_interrupted_rotation(directory)
    root_certificate = load_one_certificate(os.path.join(directory, ROOT_CERTIFICATE_FILE))
    issuing_certificate = load_one_certificate(os.path.join(directory, ISSUING_CERTIFICATE_FILE))
    root_domain = certificate_domain(root_certificate)
    if root_domain is None or (domain is not None and root_domain != domain):
        raise CertificateAuthorityError(f"{directory} holds the CA of the domain {root_domain!r}, not {domain!r}")
    root_key_path = os.path.join(directory, ROOT_KEY_FILE)
    root_key = load_key(root_key_path, passphrase) if os.path.exists(root_key_path) else None
    issuing_key = load_key(os.path.join(directory, ISSUING_KEY_FILE), passphrase)
    moment = (now or system_clock)()
    retired = []
    for _number, folder in retired_folders(directory):
        if not os.path.exists(os.path.join(folder, ISSUING_CERTIFICATE_FILE)):
            continue  # a rotation stopped while copying the old pair: it is still current
        certificate = load_one_certificate(os.path.join(folder, ISSUING_CERTIFICATE_FILE))
        if certificate.not_valid_after_utc <= moment:
            continue
        retired.append((certificate, load_key(os.path.join(folder, ISSUING_KEY_FILE), passphrase)))
    authority = CertificateAuthority(
        root_domain, root_certificate, root_key, issuing_certificate, issuing_key, now=now, retired=retired
    )
    authority.directory = directory
    if root_key is None:
        authority.root_crl_file = RootCRLFile(os.path.join(directory, ROOT_CRL_FILE), root_certificate)
    return authority


def finish_interrupted_rotation(directory: str) -> None:
    """Complete a rotation a crash interrupted, or undo one that had not begun.

    A rotation first copies the old pair to ``retired/<n>/``, then writes
    ``issuing.pem.new`` and then ``issuing.key.new`` (each complete or absent), then
    renames the certificate and then the key into place. So: both new files present, or
    only the key: roll forward; only the certificate: the key was never written, drop it.
    """
    certificate_new = os.path.join(directory, ISSUING_CERTIFICATE_FILE + NEW_SUFFIX)
    key_new = os.path.join(directory, ISSUING_KEY_FILE + NEW_SUFFIX)
    if os.path.exists(key_new):
        if os.path.exists(certificate_new):
            os.replace(certificate_new, os.path.join(directory, ISSUING_CERTIFICATE_FILE))
        os.replace(key_new, os.path.join(directory, ISSUING_KEY_FILE))
        keyfiles.fsync_directory(directory)
    elif os.path.exists(certificate_new):
        os.unlink(certificate_new)
        keyfiles.fsync_directory(directory)


def write_new(authority: CertificateAuthority, directory: str, passphrase: bytes | None) -> None:
    """Write a CA made in memory to ``directory`` (keys encrypted with ``passphrase``)."""
    keyfiles.write_private_key(os.path.join(directory, ROOT_KEY_FILE), authority.root_key, passphrase)
    keyfiles.write_private_key(os.path.join(directory, ISSUING_KEY_FILE), authority.issuing_key, passphrase)
    keyfiles.write_certificates(os.path.join(directory, ROOT_CERTIFICATE_FILE), [authority.root_certificate])
    keyfiles.write_certificates(os.path.join(directory, ISSUING_CERTIFICATE_FILE), [authority.issuing_certificate])


def _create_in_place(
    directory: str,
    domain: str,
    key_type: str,
    now: Clock | None,
    passphrase: bytes | None,
    publication: PublicationURLs | None,
) -> CertificateAuthority | None:
    """Create a CA in ``directory``; ``None`` if another process got there first.

    The CA is written to a private temporary directory next to ``directory`` and renamed
    into place in one step (which succeeds only if ``directory`` is missing or empty).
    """
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        keyfiles.ensure_private_directory(parent)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.new-", dir=parent)
    try:
        authority = CertificateAuthority.create(domain, key_type=key_type, now=now, publication=publication)
        write_new(authority, staging, passphrase)
        try:
            os.rename(staging, directory)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    keyfiles.fsync_directory(parent)
    authority.directory = directory
    return authority


def read_crl_file(path: str) -> x509.CertificateRevocationList:
    """A CRL file (DER or PEM), at most :data:`MAX_CRL_FILE_SIZE` bytes."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CRL_FILE_SIZE + 1)
    except OSError as error:
        raise CertificateAuthorityError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_CRL_FILE_SIZE:
        raise CertificateAuthorityError(f"{path} is larger than {MAX_CRL_FILE_SIZE} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CertificateAuthorityError(f"{path} does not hold a CRL") from None


class RootCRLFile:
    """The root CRL signed offline (``root.crl``), read again whenever the file changes.

    Refused (:class:`CertificateAuthorityError`) unless the root signed it.
    """

    def __init__(self, path: str, root: x509.Certificate) -> None:
        self.path = path
        self.root = root
        self._stamp: tuple[int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None

    def current(self) -> x509.CertificateRevocationList | None:
        """The CRL in the file, or None when there is no file."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            self._stamp = self._crl = None
            return None
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            crl = read_crl_file(self.path)
            if not crl_signed_by(crl, self.root):
                raise CertificateAuthorityError(f"{self.path} is not a CRL signed by the domain's root")
            self._stamp, self._crl = stamp, crl
        return self._crl
