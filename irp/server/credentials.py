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
from irp.server.ca import CertificateAuthority, CertificateAuthorityError, generate_key
from irp.server.ca.issuance import PublicationURLs, subject_key_identifier
from irp.server.ca.ondisk import holds_ca

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
    #: What loading created or renewed, one phrase each (logged at start).
    renewed: tuple[str, ...] = ()


class DatabaseCAMismatch(CertificateAuthorityError):
    """The data folder holds no CA, or another CA, than the one the database belongs to."""


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
    chain = [*credentials.server_chain, *(issuing for issuing, _key in ca.issuers)]
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


def issued_by_key(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``certificate`` names ``issuer`` as its issuer by key identifier (its
    authority key identifier is the issuer's subject key identifier), or, lacking one, by
    name: after a rotation the issuing CA has a new key, whatever its name."""
    try:
        authority = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return certificate.issuer == issuer.subject
    return authority.key_identifier == subject_key_identifier(issuer).digest


def _load_or_issue(
    directory: str,
    now: datetime,
    make_key: Callable[[], PrivateKey],
    issue: Callable[[PrivateKey], x509.Certificate],
    still_good: Callable[[x509.Certificate], bool],
    renew_before: timedelta = RENEW_BEFORE,
) -> tuple[PrivateKey, x509.Certificate, str | None]:
    """The key and certificate in ``directory``, and what was done: None (loaded as they
    were), ``"created"``, ``"renewed (ending ...)"`` or ``"renewed (no longer fitting)"``."""
    key_path = os.path.join(directory, "key.pem")
    certificate_path = os.path.join(directory, "certificate.pem")
    keyfiles.ensure_private_directory(directory)
    if os.path.exists(key_path) and os.path.exists(certificate_path):
        key = keyfiles.load_private_key(key_path)
        certificate = keyfiles.load_certificates(certificate_path)[0]
        ending = certificate.not_valid_after_utc - now <= renew_before
        if not ending and still_good(certificate):
            return key, certificate, None
        done = (
            f"renewed (it ended on {certificate.not_valid_after_utc.isoformat()})"
            if ending
            else "renewed (it no longer fitted: another issuing CA, or other host names)"
        )
    else:
        key = make_key()
        keyfiles.write_private_key(key_path, key)
        done = "created"
    certificate = issue(key)
    keyfiles.write_certificates(certificate_path, [certificate])
    return key, certificate, done


def load_or_create_credentials(
    data_dir: str,
    domain: str,
    hostnames: Sequence[str],
    *,
    key_type: str = "p384",
    now: Callable[[], datetime] | None = None,
    renew_before: timedelta = RENEW_BEFORE,
    passphrase: bytes | None = None,
    expected_root: str | None = None,
    publication: PublicationURLs | None = None,
) -> ServerCredentials:
    """Load the registry's credentials from ``data_dir``, creating what is missing and
    renewing the server and record-signing certificates when they end within
    ``renew_before`` (or no longer fit: other host names, another issuing CA).

    With ``publication``, the certificates issued name the HTTP endpoint (see
    :mod:`irp.server.http`). ``passphrase`` decrypts the CA's keys (and encrypts a new CA's). ``expected_root`` is
    the root fingerprint the database recorded: then no CA is created, and a CA with
    another root is refused (:class:`DatabaseCAMismatch`).

    The registry runs this at start and then daily (see
    :meth:`irp.server.service.RegistryService.renew_credentials`).
    """
    ca_dir = os.path.join(data_dir, "ca")
    with data_directory_lock(data_dir):
        if expected_root is not None and not holds_ca(ca_dir):
            raise DatabaseCAMismatch(
                f"the database belongs to the CA with root fingerprint {keyfiles.format_fingerprint(expected_root)},"
                f" but {ca_dir} holds no CA: copy the ca/ folder of the registry's first process"
                " there (a second CA for one database is refused)"
            )
        ca = CertificateAuthority.load_or_create(
            ca_dir, domain, key_type=key_type, now=now, passphrase=passphrase, publication=publication
        )
        if expected_root is not None and ca.root_fingerprint != expected_root:
            raise DatabaseCAMismatch(
                f"the CA in {ca_dir} (root fingerprint {keyfiles.format_fingerprint(ca.root_fingerprint)}) is not"
                f" the database's (root fingerprint {keyfiles.format_fingerprint(expected_root)}): copy the"
                " ca/ folder of the registry's first process there, or use this CA's own database"
            )
        ca.publication = publication
        moment = ca.now()
        issuing = ca.issuing_certificate
        wanted = {name.lower() for name in hostnames}

        server_key, server_certificate, server_done = _load_or_issue(
            os.path.join(data_dir, "server"),
            moment,
            lambda: generate_key(key_type),
            lambda key: ca.issue_server_certificate(list(hostnames), key.public_key()),
            lambda certificate: issued_by_key(certificate, issuing)
            and {name.lower() for name in _names_of(certificate)} == wanted,
            renew_before,
        )
        signing_key, signing_certificate, signing_done = _load_or_issue(
            os.path.join(data_dir, "ca", "record-signing"),
            moment,
            ed25519.Ed25519PrivateKey.generate,
            lambda key: ca.issue_signing_certificate(key.public_key()),
            lambda certificate: issued_by_key(certificate, issuing),
            renew_before,
        )
    if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
        raise keyfiles.KeyFileError("the record-signing key must be an Ed25519 key")
    renewed = tuple(
        f"{what} {done}, valid until {certificate.not_valid_after_utc.isoformat()}"
        for what, done, certificate in (
            ("the TLS server certificate", server_done, server_certificate),
            ("the record-signing certificate", signing_done, signing_certificate),
        )
        if done is not None and done != "created"
    )
    return ServerCredentials(ca, server_key, server_certificate, signing_key, signing_certificate, renewed=renewed)
