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
without importing SixChat. :class:`Registries` keeps one connection per trusted domain's
registry, presenting the intermediary's own certificate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.endpoint import Endpoint
from common.identity import Identity
from common.pki.certificates import certificate_der
from common.pki.errors import CertificateInvalid, CertificateRevoked, RevocationUnknown
from common.pki.keyfiles import PrivateKey
from common.pki.revocation import RevocationChecker
from common.pki.trust import TrustStore
from intermediary import errors
from irp.client import (
    AddressRecord,
    CRLInfo,
    IRPError,
    RegistryClient,
    ServerVerificationFailed,
    connect,
    connect_domain,
)

log = Logger()

FingerprintSource = Callable[[Identity], Awaitable[set[str]]]


class Registries:
    """One connection per trusted domain's registry, with the intermediary's certificate
    (reopened when it drops; concurrent callers share one attempt)."""

    def __init__(
        self,
        reactor: Any,
        roots: dict[str, x509.Certificate],
        servers: dict[str, tuple[str, int]],
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        *,
        home_domain: str,
        timeout: float = 15.0,
        resolver: Any = None,
    ) -> None:
        self.reactor = reactor
        self.roots = roots
        self.servers = servers
        self.key, self.certificate, self.chain = key, certificate, list(chain)
        self.home_domain = home_domain
        self.timeout = timeout
        self.resolver = resolver
        self._clients: dict[str, RegistryClient] = {}
        self._connecting: dict[str, list[Deferred[RegistryClient]]] = {}

    async def client(self, domain: str) -> RegistryClient:
        """A connection to ``domain``'s registry."""
        existing = self._clients.get(domain)
        if existing is not None and not existing.protocol.closed:
            return existing
        if domain not in self.roots:
            raise errors.CertificateRejected(f"{domain} is not a domain this intermediary trusts")
        mine: Deferred[RegistryClient] = Deferred()
        waiters = self._connecting.get(domain)
        if waiters is not None:
            waiters.append(mine)
            return await mine
        self._connecting[domain] = [mine]
        options: dict[str, Any] = {
            "trust_roots": [self.roots[domain]],
            "client_key": self.key,
            "client_certificate": self.certificate,
            "client_chain": self.chain,
            "timeout": self.timeout,
        }
        server = self.servers.get(domain)
        if server is not None:
            connecting = connect(self.reactor, server[0], server[1], domain=domain, **options)
        else:
            connecting = connect_domain(self.reactor, domain, resolver=self.resolver, **options)
        connecting.addBoth(self._connected, domain)
        return await mine

    def _connected(self, result: RegistryClient | Failure, domain: str) -> None:
        for waiter in self._connecting.pop(domain, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        if isinstance(result, Failure):
            log.warn("Cannot reach the registry of {domain}: {why}", domain=domain, why=result.getErrorMessage())
        else:
            self._clients[domain] = result

    async def fingerprints(self, identity: Identity) -> set[str]:
        """The fingerprints of ``identity``'s currently good certificates, per its registry."""
        client = await self.client(identity.domain)
        return {entry.fingerprint for entry in await client.user_certificates(str(identity))}

    async def issuing_crl(self, domain: str) -> x509.CertificateRevocationList:
        """The verified current CRL of ``domain``'s issuing CA."""
        client = await self.client(domain)
        crls: list[CRLInfo] = await client.get_crls()
        for info in crls:
            if info.issuer == "issuing":
                return info.crl
        raise ServerVerificationFailed(f"the registry of {domain} returned no issuing CRL")

    async def register(self, endpoints: Sequence[Endpoint], presence: str, ttl: int) -> AddressRecord:
        """Publish the intermediary's addresses with its own registry."""
        client = await self.client(self.home_domain)
        return await client.register_addresses(endpoints, presence, ttl)

    async def close(self) -> None:
        """Close every registry connection."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


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


def crl_checker(registries: Registries, clock: Any, max_age: float = 300.0) -> RevocationChecker:
    """A revocation checker fetching issuing CRLs through ``registries``."""
    return RevocationChecker(registries.issuing_crl, clock, max_age=timedelta(seconds=max_age))
