"""What an operator does to a domain's CA folder while registries run: rotate the issuing
CA, take the root key offline, sign the root CRL offline, encrypt or decrypt the keys.

Every function works on a CA folder (see :mod:`irp.server.ca.ondisk`) and writes each file
atomically; callers hold the data directory's lock (:func:`irp.server.credentials.
data_directory_lock`) so a registry starting meanwhile never sees half a change. No
Twisted, no database: these run from the ``irp-ca`` command.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.pki import keyfiles
from common.pki.keyfiles import PrivateKey
from common.pki.keys import DEFAULT_KEY_TYPE, signature_hash
from irp.server.ca.authority import (
    ISSUING_CERTIFICATE_FILE,
    ISSUING_KEY_FILE,
    ROOT_CERTIFICATE_FILE,
    ROOT_KEY_FILE,
    CertificateAuthorityError,
    Clock,
    certificate_domain,
    load_one_certificate,
    same_public_key,
    system_clock,
)
from irp.server.ca.crl import crl_builder
from irp.server.ca.issuance import PublicationURLs, issuing_ca_certificate, subject_key_identifier
from irp.server.ca.keys import generate_key
from irp.server.ca.ondisk import (
    NEW_SUFFIX,
    RETIRED_DIRECTORY,
    ROOT_CRL_FILE,
    issuing_generation,
    load,
    load_key,
    retired_folders,
)

#: How long an offline-signed root CRL lives unless told otherwise.
DEFAULT_OFFLINE_ROOT_CRL_DAYS = 365


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate_issuing` did."""

    old: x509.Certificate
    new: x509.Certificate
    #: The folder the old issuing CA was moved to.
    retired_to: str


def root_key_for(directory: str, root_key_file: str | None, passphrase: bytes | None) -> PrivateKey:
    """The root key: from ``root_key_file`` (an offline root) or the CA folder's
    ``root.key``; it must be the key of the folder's root certificate."""
    path = root_key_file or os.path.join(directory, ROOT_KEY_FILE)
    if not os.path.exists(path):
        raise CertificateAuthorityError(
            f"the root key is not in {directory} (an offline root): give it with --root-key PATH"
        )
    key = load_key(path, passphrase)
    root = load_one_certificate(os.path.join(directory, ROOT_CERTIFICATE_FILE))
    if not same_public_key(key, root):
        raise CertificateAuthorityError(f"the key in {path} is not the key of the root in {directory}")
    return key


def rotate_issuing(
    directory: str,
    root_key: PrivateKey,
    *,
    passphrase: bytes | None = None,
    key_type: str = DEFAULT_KEY_TYPE,
    now: Clock | None = None,
    publication: PublicationURLs | None = None,
) -> Rotation:
    """Replace the issuing CA by a new one (``CN=<domain> IRP Issuing CA <n+1>``) that the
    root signs, keeping the old one in ``retired/<n>/``.

    The old issuing CA's certificates stay valid until they expire: registries accept them,
    and keep its CRL signed with its key. The new key is encrypted with ``passphrase`` when
    the old one was encrypted (the passphrase is then required). With ``publication``
    (the registry's ``--http-url``) the new issuing CA names the root's CRL and certificate.
    """
    authority = load(directory, now=now, passphrase=passphrase)
    directory = authority.directory or directory
    old = authority.issuing_certificate
    old_key_path = os.path.join(directory, ISSUING_KEY_FILE)
    encrypted = keyfiles.is_encrypted_private_key(old_key_path)
    old_generation = issuing_generation(old)
    generation = max([old_generation, *(number for number, _ in retired_folders(directory))]) + 1
    moment = (now or system_clock)()
    new_key = generate_key(key_type)
    new = issuing_ca_certificate(
        authority.domain, authority.root_certificate, root_key, new_key, moment, generation, publication
    )
    # 1. the old pair, complete, in retired/<n>/ (the key's bytes as they are).
    retired = os.path.join(directory, RETIRED_DIRECTORY, str(old_generation))
    kept = os.path.join(retired, ISSUING_CERTIFICATE_FILE)
    # The same certificate there: an earlier rotation stopped after step 1; go on.
    if os.path.exists(kept) and load_one_certificate(kept) != old:
        raise CertificateAuthorityError(f"{retired} already holds another retired issuing CA")
    keyfiles.ensure_private_directory(retired)
    keyfiles.write_bytes_private(os.path.join(retired, ISSUING_KEY_FILE), keyfiles.read_bytes_private(old_key_path))
    keyfiles.write_certificates(os.path.join(retired, ISSUING_CERTIFICATE_FILE), [old])
    # 2. the new certificate, then the new key, beside the current ones.
    certificate_new = os.path.join(directory, ISSUING_CERTIFICATE_FILE + NEW_SUFFIX)
    key_new = os.path.join(directory, ISSUING_KEY_FILE + NEW_SUFFIX)
    keyfiles.write_certificates(certificate_new, [new])
    keyfiles.write_private_key(key_new, new_key, passphrase if encrypted else None)
    # 3. into place: the certificate, then the key (see ondisk.finish_interrupted_rotation).
    os.replace(certificate_new, os.path.join(directory, ISSUING_CERTIFICATE_FILE))
    os.replace(key_new, old_key_path)
    keyfiles.fsync_directory(directory)
    return Rotation(old, new, retired)


def sign_root_crl(
    directory: str,
    root_key: PrivateKey,
    *,
    days: int = DEFAULT_OFFLINE_ROOT_CRL_DAYS,
    now: Clock | None = None,
) -> x509.CertificateRevocationList:
    """Sign the root's CRL (empty: the root revokes no issuing CA) and write it to
    ``root.crl`` (DER), which registries with an offline root serve.

    Its CRL number is the signing time in seconds, so later CRLs have higher numbers
    without any counter to keep offline.
    """
    if days < 1:
        raise ValueError("a root CRL must live at least one day")
    root = load_one_certificate(os.path.join(directory, ROOT_CERTIFICATE_FILE))
    if not same_public_key(root_key, root):
        raise CertificateAuthorityError(f"the key given is not the key of the root in {directory}")
    moment = (now or system_clock)()
    identifier = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_identifier(root))
    builder = crl_builder(root, identifier, int(moment.timestamp()), datetime.timedelta(days=days), moment)
    crl = builder.sign(root_key, signature_hash(root_key))
    _write_public(os.path.join(directory, ROOT_CRL_FILE), crl.public_bytes(serialization.Encoding.DER))
    return crl


def take_root_offline(
    directory: str,
    destination: str,
    *,
    passphrase: bytes | None = None,
    days: int = DEFAULT_OFFLINE_ROOT_CRL_DAYS,
    now: Clock | None = None,
) -> x509.CertificateRevocationList:
    """Move ``root.key`` out of the CA folder to ``destination`` (never overwritten),
    having first signed the root CRL the registries will serve (``root.crl``, ``days``)."""
    source = os.path.join(directory, ROOT_KEY_FILE)
    if not os.path.exists(source):
        raise CertificateAuthorityError(f"{directory} holds no root key: is the root already offline?")
    if os.path.lexists(destination):
        raise CertificateAuthorityError(f"{destination} exists: refusing to overwrite it")
    root_key = root_key_for(directory, None, passphrase)
    crl = sign_root_crl(directory, root_key, days=days, now=now)
    data = keyfiles.read_bytes_private(source)
    descriptor = os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    keyfiles.fsync_directory(os.path.dirname(os.path.abspath(destination)))
    if keyfiles.read_bytes_private(destination) != data:
        raise CertificateAuthorityError(f"{destination} does not read back as written: the root key was left in place")
    os.unlink(source)
    keyfiles.fsync_directory(directory)
    return crl


def key_files(directory: str) -> list[str]:
    """Every CA key file of the folder: the root's (when online), the issuing CA's, the
    retired issuing CAs'."""
    paths = [os.path.join(directory, ROOT_KEY_FILE), os.path.join(directory, ISSUING_KEY_FILE)]
    paths += [os.path.join(folder, ISSUING_KEY_FILE) for _, folder in retired_folders(directory)]
    return [path for path in paths if os.path.exists(path)]


def protect_keys(directory: str, passphrase: bytes, *, remove: bool = False) -> list[tuple[str, str]]:
    """Encrypt every CA key of the folder with ``passphrase`` (``remove``: decrypt them),
    each file replaced atomically. Returns (path, what was done) for each key.

    Keys already in the wanted state are checked (an encrypted key must open with
    ``passphrase``) and left alone.
    """
    if not passphrase:
        raise ValueError("the passphrase is empty")
    done = []
    for path in key_files(directory):
        encrypted = keyfiles.is_encrypted_private_key(path)
        key = keyfiles.load_private_key(path, passphrase if encrypted else None)
        if encrypted != remove:
            done.append((path, "already encrypted" if encrypted else "already not encrypted"))
            continue
        keyfiles.write_private_key(path, key, None if remove else passphrase)
        done.append((path, "decrypted" if remove else "encrypted"))
    return done


def root_domain(directory: str) -> str | None:
    """The domain the CA folder's root names (None if none)."""
    return certificate_domain(load_one_certificate(os.path.join(directory, ROOT_CERTIFICATE_FILE)))


def _write_public(path: str, data: bytes) -> None:
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    keyfiles.fsync_directory(os.path.dirname(os.path.abspath(path)))
