"""Revocation checks against the issuing CA's CRL, fetched from a domain's registry.

Used by registries (for users of federated domains) and by SixChat agents (for peers).
A CRL is cached until its next update but fetched again once older than ``max_age``
(registries publish a new CRL at every revocation, so this bounds how long a revocation
goes unnoticed). When the registry cannot be reached, a cached CRL is used for a grace
period after its next update; with none, the status is unknown and the certificate is
refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from irp import errors as irp_errors

log = Logger()


CRLFetcher = Callable[[str], Awaitable[x509.CertificateRevocationList]]


@dataclass
class _CachedCRL:
    crl: x509.CertificateRevocationList
    next_update: datetime
    fetched_at: datetime


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
    ) -> None:
        self.fetch = fetch
        self.clock = clock
        self.stale_grace = stale_grace
        self.max_age = max_age
        self._cache: dict[str, _CachedCRL] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def forget(self, domain: str) -> None:
        """Drop a cached CRL (to force a fetch on the next check)."""
        self._cache.pop(domain, None)

    async def check(self, domain: str, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
        """Raise PeerRejected(revoked) if ``certificate`` is on its CA's CRL."""
        crl = await self._current(domain, issuer)
        if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            raise irp_errors.CertificateRevoked(
                f"the certificate of {domain} serial {certificate.serial_number:x} is revoked"
            )

    async def _current(self, domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        now = self._now()
        cached = self._cache.get(domain)
        if cached is not None and now < cached.next_update and (self.max_age is None or now < cached.fetched_at + self.max_age):
            return cached.crl
        try:
            crl = await self.fetch(domain)
        except irp_errors.IRPError as error:
            if cached is not None and now < cached.next_update + self.stale_grace:
                log.warn("Using a stale CRL of {domain}: {error}", domain=domain, error=str(error))
                return cached.crl
            raise irp_errors.RevocationUnknown(
                f"cannot check revocation: the registry of {domain} is unreachable ({error.message})"
            ) from None
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise irp_errors.RevocationUnknown(f"the CRL of {domain} does not verify")
        next_update = crl.next_update_utc or (now + timedelta(hours=1))
        self._cache[domain] = _CachedCRL(crl, next_update, now)
        return crl
