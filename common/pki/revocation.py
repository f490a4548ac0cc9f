"""Revocation checks against the issuing CA's CRL, fetched from a domain's registry.

Used by registries (for users of federated domains) and by SixChat agents (for peers).
A CRL is cached until its next update but fetched again once older than ``max_age``
(registries publish a new CRL at every revocation, so this bounds how long a revocation
goes unnoticed). When the registry cannot be reached, a cached CRL is used for a grace
period after its next update; with none, the status is unknown and the certificate is
refused.

A CRL answers only for the CA that signed it. Every use of a CRL, fetched or cached, checks
that its issuer name is the subject of the issuer of the path being verified, that its
authority key identifier (if both carry one) is that issuer's, and that its signature
verifies with that issuer's key; and the cache is keyed by the issuer (domain, name and
key), so one issuer's CRL never answers for another. A cached CRL remembers the exact issuer
certificate (DER) it verified against: the same CRL checked against the same bytes gives
the same answer, so only another issuer certificate is checked again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger

from common.errors import ProtocolError
from common.pki.certificates import certificate_der
from common.pki.errors import CertificateRevoked, RevocationUnknown

log = Logger()


#: Fetches a domain's current issuing CRL; raises a :class:`common.errors.ProtocolError`
#: (the protocol's own wire or client error) when the registry refuses or cannot be reached.
CRLFetcher = Callable[[str], Awaitable[x509.CertificateRevocationList]]
#: Fetches the CRL of one issuing CA of a domain (a retired one, after the domain rotated
#: its issuing CA: its certificates stay valid until they expire).
IssuerCRLFetcher = Callable[[str, x509.Certificate], Awaitable[x509.CertificateRevocationList]]


#: A cache key: the domain, and the issuer's subject and public key (DER).
_IssuerKey = tuple[str, bytes, bytes]


def _issuer_key(domain: str, issuer: x509.Certificate) -> _IssuerKey:
    subject, public = _issuer_name_and_key(issuer)
    return (domain, subject, public)


@functools.lru_cache(maxsize=64)
def _issuer_name_and_key(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    """The issuer's subject and public key (DER), kept for the few issuers in use: every
    check asks for them, and a certificate object never changes."""
    public = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return issuer.subject.public_bytes(), public


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """True if ``crl`` was issued by ``issuer``: same name, matching key identifier (when
    both carry one), and a signature that verifies with ``issuer``'s key."""
    if crl.issuer != issuer.subject:
        return False
    try:
        authority = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        subject = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        pass
    except (ValueError, x509.DuplicateExtension):
        return False
    else:
        if authority.key_identifier is not None and authority.key_identifier != subject.digest:
            return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


@dataclass
class _CachedCRL:
    crl: x509.CertificateRevocationList
    next_update: datetime
    fetched_at: datetime
    #: The DER of the issuer certificate the CRL verified against.
    issuer_der: bytes


class RevocationChecker:
    """Keeps each trusted domain's issuing CRL and answers "is this revoked?".

    A CRL is used until its next update, but fetched again once it is older than
    ``max_age`` (registries publish a new CRL at every revocation, so this bounds how long
    a revocation goes unnoticed); None keeps it until its next update.
    """

    def __init__(
        self,
        fetch: CRLFetcher,
        clock: Any,
        *,
        stale_grace: timedelta = timedelta(days=3),
        max_age: timedelta | None = timedelta(minutes=5),
        fetch_issuer: IssuerCRLFetcher | None = None,
    ) -> None:
        self.fetch = fetch
        #: Asked when the domain's current CRL is not the issuer's (None: unknown then).
        self.fetch_issuer = fetch_issuer
        self.clock = clock
        self.stale_grace = stale_grace
        self.max_age = max_age
        #: By issuer: a CRL is only ever stored under the issuer it verified against.
        self._cache: dict[_IssuerKey, _CachedCRL] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def forget(self, domain: str) -> None:
        """Drop the cached CRLs of ``domain`` (to force a fetch on the next check)."""
        for key in [key for key in self._cache if key[0] == domain]:
            del self._cache[key]

    async def check(self, domain: str, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
        """Raise CertificateRevoked if ``certificate`` is on the CRL of ``issuer`` (the
        issuer in its verified path), RevocationUnknown if no CRL of ``issuer`` is at hand."""
        crl = await self._current(domain, issuer)
        if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            raise CertificateRevoked(
                f"the certificate of {domain} serial {certificate.serial_number:x} is revoked"
            )

    async def _current(self, domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        now = self._now()
        key = _issuer_key(domain, issuer)
        cached = self._cache.get(key)
        issuer_der = certificate_der(issuer)
        if cached is not None and cached.issuer_der != issuer_der and not crl_signed_by(cached.crl, issuer):
            # Cannot happen by construction (stored only under the issuer it verified
            # against); checked anyway, since a wrong answer here accepts a forgery. The
            # check is skipped only for the very issuer bytes the CRL verified against.
            del self._cache[key]
            cached = None
        if cached is not None and now < cached.next_update and (self.max_age is None or now < cached.fetched_at + self.max_age):
            return cached.crl
        try:
            crl = await self.fetch(domain)
            if self.fetch_issuer is not None and not crl_signed_by(crl, issuer):
                crl = await self.fetch_issuer(domain, issuer)
        except ProtocolError as error:
            if cached is not None and now < cached.next_update + self.stale_grace:
                log.warn("Using a stale CRL of {domain}: {error}", domain=domain, error=str(error))
                return cached.crl
            raise RevocationUnknown(
                f"cannot check revocation: the registry of {domain} is unreachable ({error.message})"
            ) from None
        if not crl_signed_by(crl, issuer):
            raise RevocationUnknown(
                f"the CRL of {domain} does not verify: it was not issued by {_name(issuer)},"
                " the issuer of the certificate being checked"
            )
        next_update = crl.next_update_utc or (now + timedelta(hours=1))
        self._cache[key] = _CachedCRL(crl, next_update, now, issuer_der)
        return crl


def _name(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string()
    except ValueError:
        return "its CA"
