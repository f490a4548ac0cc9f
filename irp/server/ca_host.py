"""The registry process and its CA: one CA per database, the key passphrase, and what
is logged about the CA at start and at the daily check (see :mod:`irp.server.service`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping

from cryptography import x509
from twisted.logger import Logger

from common.pki import keyfiles
from irp.server.ca import CertificateAuthority, CertificateAuthorityError
from irp.server.credentials import DatabaseCAMismatch, ServerCredentials
from irp.server.store import RegistryStore
from irp.server.store.facts import CA_ROOT_FINGERPRINT

log = Logger()

#: The environment variable naming the key passphrase file (like --key-passphrase-file).
PASSPHRASE_FILE_VARIABLE = "IRP_KEY_PASSPHRASE_FILE"
#: How long before the offline-signed root CRL ends the registry starts warning.
ROOT_CRL_WARNING = datetime.timedelta(days=30)
MAX_PASSPHRASE_FILE_SIZE = 4096


def read_passphrase_file(path: str) -> bytes:
    """The passphrase in ``path``: its first line, without the line end. The file must be
    mode 0600 (or stricter) and not empty; raises :class:`keyfiles.KeyFileError`."""
    data = keyfiles.read_bytes_private(path, max_size=MAX_PASSPHRASE_FILE_SIZE)
    passphrase = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not passphrase:
        raise keyfiles.KeyFileError(f"{path} holds no passphrase (its first line is empty)")
    return passphrase


def passphrase_file_from(option: str | None, environment: Mapping[str, str] | None = None) -> str | None:
    """The passphrase file to use: the option's, else the environment variable's."""
    return option or (os.environ if environment is None else environment).get(PASSPHRASE_FILE_VARIABLE) or None


async def agreed_credentials(
    store: RegistryStore, load: Callable[[str | None], ServerCredentials]
) -> ServerCredentials:
    """Load the credentials with ``load(expected_root)`` and make sure the database and
    this process agree on the CA: the database's recorded root (refusing to create a CA
    when there is one) or, on a new database, record ours. Two processes starting together
    on a new database: one records its root first and the other refuses to start.
    """
    expected = await store.get_fact(CA_ROOT_FINGERPRINT)
    credentials = load(expected)
    ours = credentials.ca.root_fingerprint
    if expected is None:
        recorded = await store.record_fact(CA_ROOT_FINGERPRINT, ours)
        if recorded != ours:
            raise DatabaseCAMismatch(
                f"another registry process recorded the CA with root fingerprint {keyfiles.format_fingerprint(recorded)}"
                f" for this database first; this process made or loaded another one ({keyfiles.format_fingerprint(ours)}):"
                " copy the ca/ folder of that process into this process's data folder"
            )
        log.info(
            "Recorded the CA root fingerprint {fingerprint} in the database: processes with another CA (or none) will refuse to start",
            fingerprint=keyfiles.format_fingerprint(ours),
        )
    return credentials


def known_intermediates(ca: CertificateAuthority) -> list[x509.Certificate]:
    """The issuing CAs whose certificates the registry accepts: the current and the retired
    ones still valid."""
    return [certificate for certificate, _key in ca.issuers]


def root_crl_warning(ca: CertificateAuthority) -> str | None:
    """What to tell the operator about the offline-signed root CRL (missing, unreadable,
    ending within :data:`ROOT_CRL_WARNING`, or ended); None when all is well or the root
    is online (the registry then signs it)."""
    if ca.root_key_online or ca.root_crl_file is None:
        return None
    path = ca.root_crl_file.path
    try:
        crl = ca.root_crl_file.current()
    except CertificateAuthorityError as error:
        return f"The root CRL cannot be served: {error}. Sign a new one offline: irp-ca sign-root-crl"
    if crl is None:
        return f"The root key is offline and {path} is missing: get-crl fails until you sign one offline: irp-ca sign-root-crl"
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    left = next_update - ca.now()
    if left <= datetime.timedelta(0):
        return f"The root CRL in {path} ended on {next_update.isoformat()}: sign a new one offline now: irp-ca sign-root-crl"
    if left <= ROOT_CRL_WARNING:
        return f"The root CRL in {path} ends on {next_update.isoformat()}: sign a new one offline before then: irp-ca sign-root-crl"
    return None


def log_ca_state(credentials: ServerCredentials, *, at_start: bool) -> None:
    """Log what loading the credentials did and what the operator must act on."""
    ca = credentials.ca
    for renewed in credentials.renewed:
        log.info("Renewed at {when}: {what}", when="start" if at_start else "the daily check", what=renewed)
    if at_start:
        for certificate, _key in ca.retired_issuers:
            log.info(
                "Also accepting certificates of the retired issuing CA {subject} (valid until {until})",
                subject=certificate.subject.rfc4514_string(),
                until=certificate.not_valid_after_utc.isoformat(),
            )
        if not ca.root_key_online:
            log.info("The root key is offline: the root CRL served is {path}", path=ca.root_crl_file.path if ca.root_crl_file else "?")
    warning = root_crl_warning(ca)
    if warning is not None:
        log.warn("{advice}", advice=warning)


def keeps_running_ca(running: CertificateAuthority, loaded: ServerCredentials) -> bool:
    """At the daily check: log what loading did; True (and a line saying to restart) if
    the CA folder now holds another issuing CA than the one in use (it was rotated): the
    process then keeps its CA and certificates until it is restarted."""
    log_ca_state(loaded, at_start=False)
    if running.issuing_certificate == loaded.ca.issuing_certificate:
        return False
    log.warn(
        "The issuing CA was rotated on disk; this process keeps using {subject} until it is restarted: restart it",
        subject=running.issuing_certificate.subject.rfc4514_string(),
    )
    return True
