"""The registry's own keys and certificates, kept in its data directory.

``<data-dir>/ca/``       the domain CA (see :mod:`irp.server.ca`) and the record-signing key, which
                         every registry process of the domain must share;
``<data-dir>/server/``   the TLS server key and certificate of this host.

Everything is created on first start, and the server and record-signing certificates are
renewed when they near their end (checked at start and daily) or the host names change. Creation happens under an exclusive lock on ``<data-dir>/.lock`` so that several
processes starting together on one data directory end up with one set of credentials.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.pki import keyfiles
from common.pki.keyfiles import PrivateKey
from irp.server.ca import CertificateAuthority, generate_key
from irp.server.ca.issuance import PublicationURLs

RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class ServerCredentials:
    """Everything the registry signs or proves with."""

    ca: CertificateAuthority
    server_key: PrivateKey
    server_certificate: x509.Certificate
    signing_key: ed25519.Ed25519PrivateKey
    signing_certificate: x509.Certificate
    #: Certificates sent after the server certificate (empty: the issuing CA).
    server_chain: tuple[x509.Certificate, ...] = ()


def with_given_server_certificate(
    credentials: ServerCredentials, certificate_file: str, key_file: str
) -> ServerCredentials:
    """Serve TLS with a certificate the operator gives (PEM: the certificate, then its
    chain) instead of the one the domain's CA issues; the key file must be 0600."""
    key = keyfiles.load_private_key(key_file)
    chain = keyfiles.load_certificates(certificate_file)
    if not chain:
        raise keyfiles.KeyFileError(f"{certificate_file} holds no certificate")
    if key.public_key() != chain[0].public_key():
        raise keyfiles.KeyFileError(f"the key in {key_file} does not belong to the certificate in {certificate_file}")
    return replace(credentials, server_key=key, server_certificate=chain[0], server_chain=tuple(chain[1:]))


def chains_to(certificate: x509.Certificate, intermediates: Sequence[x509.Certificate], root: x509.Certificate) -> bool:
    """True if ``certificate`` is issued by ``root``, directly or through some of
    ``intermediates`` (names and signatures checked; nothing else)."""
    unused = list(intermediates)
    current = certificate
    while True:
        if current.issuer == root.subject and _issued_by(current, root):
            return True
        issuer = next((candidate for candidate in unused if current.issuer == candidate.subject and _issued_by(current, candidate)), None)
        if issuer is None:
            return False
        unused.remove(issuer)
        current = issuer


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def foreign_certificate_warning(credentials: ServerCredentials, certificate_file: str) -> str | None:
    """What to tell the operator when the TLS certificate given (``--tls-certificate``)
    does not chain to the domain's root: clients that pinned only that root refuse it."""
    ca = credentials.ca
    chain = [*credentials.server_chain, ca.issuing_certificate]
    if chains_to(credentials.server_certificate, chain, ca.root_certificate):
        return None
    return (
        f"The TLS certificate in {certificate_file} does not chain to the root CA of {ca.domain}: every"
        " client that pinned only the domain's root (irp init --ca-file or --ca-fingerprint, sixchat,"
        " sixid) will refuse the connection. Give a certificate the domain's CA issued, or make sure"
        " every client also trusts the CA that issued this one."
    )


@contextmanager
def data_directory_lock(data_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on the data directory while credentials are set up."""
    keyfiles.ensure_private_directory(data_dir)
    descriptor = os.open(os.path.join(data_dir, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _names_of(certificate: x509.Certificate) -> set[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(name) for name in san.get_values_for_type(x509.DNSName)}
    names |= {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    return names


def _load_or_issue(
    directory: str,
    now: datetime,
    make_key: Callable[[], PrivateKey],
    issue: Callable[[PrivateKey], x509.Certificate],
    still_good: Callable[[x509.Certificate], bool],
    renew_before: timedelta = RENEW_BEFORE,
) -> tuple[PrivateKey, x509.Certificate]:
    key_path = os.path.join(directory, "key.pem")
    certificate_path = os.path.join(directory, "certificate.pem")
    keyfiles.ensure_private_directory(directory)
    if os.path.exists(key_path) and os.path.exists(certificate_path):
        key = keyfiles.load_private_key(key_path)
        certificate = keyfiles.load_certificates(certificate_path)[0]
        if certificate.not_valid_after_utc - now > renew_before and still_good(certificate):
            return key, certificate
    else:
        key = make_key()
        keyfiles.write_private_key(key_path, key)
    certificate = issue(key)
    keyfiles.write_certificates(certificate_path, [certificate])
    return key, certificate


def load_or_create_credentials(
    data_dir: str,
    domain: str,
    hostnames: Sequence[str],
    *,
    key_type: str = "p384",
    now: Callable[[], datetime] | None = None,
    renew_before: timedelta = RENEW_BEFORE,
    publication: PublicationURLs | None = None,
) -> ServerCredentials:
    """Load the registry's credentials from ``data_dir``, creating what is missing and
    renewing the server and record-signing certificates when they end within
    ``renew_before`` (or no longer fit: other host names, another issuing CA).

    With ``publication``, the certificates issued name the HTTP endpoint (see
    :mod:`irp.server.http`). The registry runs this at start and then daily (see
    :meth:`irp.server.service.RegistryService.renew_credentials`).
    """
    with data_directory_lock(data_dir):
        ca = CertificateAuthority.load_or_create(
            os.path.join(data_dir, "ca"), domain, key_type=key_type, now=now
        )
        ca.publication = publication
        moment = ca.now()
        issuing = ca.issuing_certificate
        wanted = {name.lower() for name in hostnames}

        server_key, server_certificate = _load_or_issue(
            os.path.join(data_dir, "server"),
            moment,
            lambda: generate_key(key_type),
            lambda key: ca.issue_server_certificate(list(hostnames), key.public_key()),
            lambda certificate: certificate.issuer == issuing.subject
            and {name.lower() for name in _names_of(certificate)} == wanted,
            renew_before,
        )
        signing_key, signing_certificate = _load_or_issue(
            os.path.join(data_dir, "ca", "record-signing"),
            moment,
            ed25519.Ed25519PrivateKey.generate,
            lambda key: ca.issue_signing_certificate(key.public_key()),
            lambda certificate: certificate.issuer == issuing.subject,
            renew_before,
        )
    if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
        raise keyfiles.KeyFileError("the record-signing key must be an Ed25519 key")
    return ServerCredentials(ca, server_key, server_certificate, signing_key, signing_certificate)
