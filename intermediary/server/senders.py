"""Who may connect to the intermediary: known users of trusted domains.

A client certificate is accepted when, in this order:

1. it chains to the root the intermediary trusts for the domain it names (its own domain's,
   or another domain's trusted explicitly in the profile), is valid now and names one user;
2. it is not revoked, by the issuing CA's current CRL from that domain's registry
   (:class:`common.pki.revocation.RevocationChecker`: cached, refetched after ``crl_max_age``);
3. it is one the registry of that domain holds for the user now (fingerprint), asked
   through :mod:`irp.client` and cached at most ``fingerprint_max_age`` seconds (asked
   again at once when a fingerprint is not in the cached set: the user may have renewed).

This is what :mod:`sixchat.peer.verification` checks of a dialled peer, reimplemented here
without importing SixChat. The registries are reached through :class:`irp.client.Directory`
(one connection per trusted domain's registry, presenting the intermediary's own
certificate).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from common.identity import Identity
from common.pki.certificates import certificate_der
from common.pki.errors import CertificateInvalid, CertificateRevoked, RevocationUnknown
from common.pki.revocation import RevocationChecker
from common.pki.trust import TrustStore
from intermediary import errors
from irp.client import Directory, IRPError

log = Logger()

FingerprintSource = Callable[[Identity], Awaitable[set[str]]]


class SenderVerifier:
    """Decides whether a client certificate is a known user of a trusted domain."""

    def __init__(
        self,
        trust: TrustStore,
        revocation: RevocationChecker,
        fingerprints: FingerprintSource,
        clock: Any,
        *,
        known_intermediates: Sequence[x509.Certificate] = (),
        fingerprint_max_age: float = 300.0,
        cache_size: int = 10_000,
    ) -> None:
        self.trust = trust
        self.revocation = revocation
        self.fingerprints = fingerprints
        self.clock = clock
        self.known_intermediates = list(known_intermediates)
        self.fingerprint_max_age = fingerprint_max_age
        self.cache_size = cache_size
        self._cache: dict[Identity, tuple[float, set[str]]] = {}

    async def verify(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]) -> Identity:
        """The identity ``leaf`` proves, or an IntermediaryError saying why not."""
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        try:
            verified = self.trust.verify_user_certificate(leaf, [*intermediates, *self.known_intermediates], now=now)
        except CertificateInvalid as error:
            raise errors.from_pki(error) from None
        identity = verified.identity
        try:
            await self.revocation.check(identity.domain, leaf, verified.chain[1])
        except (CertificateRevoked, RevocationUnknown) as error:
            raise errors.from_pki(error, about=str(identity)) from None
        digest = hashlib.sha256(certificate_der(leaf)).hexdigest()
        if digest not in await self._fingerprints(identity, fresh=False) and digest not in await self._fingerprints(identity, fresh=True):
            raise errors.CertificateRejected(f"the registry of {identity.domain} does not hold this certificate for {identity} now")
        return identity

    async def _fingerprints(self, identity: Identity, *, fresh: bool) -> set[str]:
        now = self.clock.seconds()
        cached = self._cache.get(identity)
        if cached is not None and not fresh and now - cached[0] < self.fingerprint_max_age:
            return cached[1]
        try:
            found = await self.fingerprints(identity)
        except IRPError as error:
            if error.name == "not-found":
                found = set()
            else:
                raise errors.Unavailable(f"cannot ask the registry of {identity.domain}: {error.message}") from None
        except OSError as error:
            raise errors.Unavailable(f"cannot reach the registry of {identity.domain}: {error}") from None
        if len(self._cache) >= self.cache_size:
            for stale in [key for key, (when, _) in self._cache.items() if now - when >= self.fingerprint_max_age]:
                del self._cache[stale]
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
        self._cache[identity] = (now, found)
        return found


def crl_checker(directory: Directory, clock: Any, max_age: float = 300.0) -> RevocationChecker:
    """A revocation checker fetching issuing CRLs through ``directory``."""
    return RevocationChecker(directory.issuing_crl, clock, max_age=timedelta(seconds=max_age))
