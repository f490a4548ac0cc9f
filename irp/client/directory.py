"""A user's view of IRP: their own registry and those of other domains they trust.

Used by SixChat agents and by a domain's intermediary (each runs as a registry account).

One connection per registry is kept open and reopened when it drops, always presenting
the user's certificate: their own registry logs them in with it, and the registry of
another domain that federates with theirs accepts it for look-ups (one that does not
refuses look-ups with ``certificate-rejected`` but still serves its public CA chain and
CRLs). A domain's registry is the one configured in the profile, or else the one DNS SRV
names (``_irp._tcp.<domain>``). Every answer is verified by :mod:`irp.client.api` (pinned
roots, record signatures); this module caches nothing but connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.endpoint import Endpoint
from common.identity import Identity
from common.pki.keyfiles import PrivateKey, fingerprint
from common.profile import Profile
from irp import DEFAULT_PORT
from irp.client.api import RegistryClient
from irp.client.connect import connect, connect_domain, split_server
from irp.client.discovery import resolver_for
from irp.client.results import CRLInfo
from irp.errors import ClientError, ServerVerificationFailed
from irp.wire.records import AddressRecord

log = Logger()


class Directory:
    """Reaches the registry of any trusted domain with the user's certificate."""

    def __init__(
        self,
        reactor: Any,
        profile: Profile,
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        *,
        timeout: float = 15.0,
        resolver: Any = None,
        home_server: tuple[str, int] | None = None,
    ) -> None:
        self.reactor = reactor
        self.profile = profile
        self.key = key
        self.certificate = certificate
        self.chain = list(chain)
        self.timeout = timeout
        config = profile.load_config()
        #: The twisted.names resolver for SRV look-ups (None: the system's); by default
        #: one asking the profile's DNS server, when it names one.
        self.resolver = resolver if resolver is not None else resolver_for(config.dns_server, reactor)
        self.home_domain = config.domain
        #: ``home_server`` overrides the profile's registry (the command's ``--server``);
        #: a profile without one finds its registry by DNS SRV, as for other domains.
        self.servers: dict[str, tuple[str, int]] = {}
        if home_server is not None:
            self.servers[config.domain] = home_server
        elif config.server is not None:
            self.servers[config.domain] = (config.server, config.port)
        for domain, server in config.registries.items():
            self.servers[domain] = split_server(server, DEFAULT_PORT)
        self.roots = profile.trusted_roots()
        self._clients: dict[str, RegistryClient] = {}
        self._connecting: dict[str, list[Deferred[RegistryClient]]] = {}
        #: Each domain's registry as last seen: "up", "lost" (the connection ended) or
        #: "down" (it cannot be reached); the log says when this changes.
        self._state: dict[str, str] = {}

    def server_for(self, domain: str) -> tuple[str, int] | None:
        """The registry configured for ``domain``, or None (found by DNS SRV then)."""
        if domain not in self.roots:
            raise ClientError(f"{domain} is not a trusted domain: trust its CA first (sixchat trust-domain)")
        return self.servers.get(domain)

    async def client(self, domain: str) -> RegistryClient:
        """A connection to ``domain``'s registry, presenting the user's certificate
        (reused while it stays up; concurrent callers share one connection attempt)."""
        existing = self._clients.get(domain)
        if existing is not None and not existing.protocol.closed:
            return existing
        mine: Deferred[RegistryClient] = Deferred()
        waiters = self._connecting.get(domain)
        if waiters is None:
            server = self.server_for(domain)
            self._connecting[domain] = [mine]
            options: dict[str, Any] = {
                "domain": domain,
                "trust_roots": [self.roots[domain]],
                "client_key": self.key,
                "client_certificate": self.certificate,
                "client_chain": self.chain,
                "timeout": self.timeout,
            }
            if server is not None:
                connecting = connect(self.reactor, server[0], server[1], **options)
            else:
                del options["domain"]
                connecting = connect_domain(self.reactor, domain, resolver=self.resolver, **options)
            connecting.addBoth(self._connected, domain)
        else:
            waiters.append(mine)
        return await mine

    def _connected(self, result: RegistryClient | Failure, domain: str) -> None:
        """Hand a new connection (or its failure) to everyone who asked for it."""
        waiters = self._connecting.pop(domain, [])
        if isinstance(result, Failure):
            if self._state.get(domain) != "down":
                log.warn(
                    "Cannot reach the registry of {domain}: {why} (trying again when next needed)",
                    domain=domain,
                    why=getattr(result.value, "message", None) or result.getErrorMessage(),
                )
            self._state[domain] = "down"
        else:
            self._clients[domain] = result
            log.info(
                "{what} the registry of {domain} at {host} port {port}",
                what="Reconnected to" if domain in self._state else "Connected to",
                domain=domain,
                host=result.host,
                port=result.port,
            )
            self._state[domain] = "up"
            result.protocol.disconnected.addCallback(self._lost, domain, result)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def lookup(self, identity: Identity) -> AddressRecord:
        """The peer's current, verified address record."""
        client = await self.client(identity.domain)
        return await client.lookup(str(identity))

    async def certificate_fingerprints(self, identity: Identity) -> set[str]:
        """Fingerprints of the peer's currently good certificates, per its registry."""
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

    async def issuer_crl(self, domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        """The verified current CRL of one (retired) issuing CA of ``domain``."""
        client = await self.client(domain)
        return await client.get_crl_of(issuer)

    async def register(self, endpoints: Sequence[Endpoint], presence: str, ttl: int) -> AddressRecord:
        """Publish our addresses and presence with our own registry."""
        client = await self.client(self.home_domain)
        return await client.register_addresses(endpoints, presence, ttl)

    async def use_credentials(self, key: PrivateKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
        """Present these from now on (the user renewed): open connections, made with the
        old certificate, are closed; the next request reconnects."""
        self.key, self.certificate, self.chain = key, certificate, list(chain)
        await self.close()

    @property
    def own_fingerprint(self) -> str:
        """Our certificate's fingerprint."""
        return fingerprint(self.certificate)

    def _lost(self, _: None, domain: str, client: RegistryClient) -> None:
        """A registry connection we did not close ended: say so (once)."""
        if self._clients.get(domain) is not client:
            return  # closed by us (close() forgets its clients first), or already replaced
        del self._clients[domain]
        self._state[domain] = "lost"
        why = client.protocol.failure.message if client.protocol.failure is not None else "the connection was closed"
        log.warn(
            "Lost the connection to the registry of {domain}: {why} (reconnecting when next needed)",
            domain=domain,
            why=why,
        )

    async def close(self) -> None:
        """Close every registry connection."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
