"""The intermediary as a Twisted service: profile credentials, store, listeners, registration,
push delivery and housekeeping.

It runs as the registry account ``intermediary@<domain>`` of a profile folder (made with
``irp init`` and ``irp enrol``): that account's certificate is its TLS server certificate,
the profile's trusted roots say whose users may connect, and its address is registered with
its own registry as an agent's is (refreshed at half the TTL, ``away`` on stop), so clients
find it with an ordinary ``lookup intermediary``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from common.addresses import advertised_endpoints, primary_addresses
from common.endpoint import Endpoint
from common.pki.trust import TrustStore, check_anchor
from common.profile import Profile
from common.startup import EarlyPorts
from common.tls import ServerTLS, make_server_context
from common.version import describe_version
from intermediary import ACCOUNT, DEFAULT_JOIN_PORT, DEFAULT_PORT, DEFAULT_RELAY_PORTS, errors
from intermediary.server import relay as relay_module
from intermediary.server.connection import ConnectionLimits
from intermediary.server.operations import Limits, Operations, RelayService
from intermediary.server.protocol import IntermediaryFactory
from intermediary.server.senders import SenderVerifier, crl_checker
from intermediary.server.store import IntermediaryStore, Quotas
from intermediary.server.subscriptions import Subscriptions
from irp.client import Directory, IRPError

log = Logger()

DATABASE_FILE = "intermediary.sqlite3"


@dataclass
class IntermediarySettings:
    """How one intermediary runs."""

    profile_dir: str
    listen: list[str] = field(default_factory=lambda: [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"])
    database: str | None = None
    advertise: list[Endpoint] | None = None
    relay_ports: range = DEFAULT_RELAY_PORTS
    relay_interface: str = "::"
    #: The relay's join port, on ``relay_interface`` (plain TCP; 0: any free port).
    relay_join_port: int = DEFAULT_JOIN_PORT
    #: The relay address given to users (default: the interface, or when it is a wildcard
    #: the first advertised address, else the host's primary address).
    relay_address: str | None = None
    register: bool = True
    register_ttl: int = 300
    expire_interval: float = 300.0
    quotas: Quotas = field(default_factory=Quotas)
    limits: Limits = field(default_factory=Limits)
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    fingerprint_max_age: float = 300.0
    crl_max_age: float = 300.0
    #: The domain's registry (host, port), overriding the profile's.
    server: tuple[str, int] | None = None
    #: twisted.names resolver for other domains' registries (None: the system's).
    resolver: Any = None
    #: Builds the relay (reactor, settings) -> RelayService, or None for no relay (default:
    #: :func:`default_relay`).
    relay_factory: Callable[[Any, IntermediarySettings], RelayService | None] | None = None

    @property
    def database_url(self) -> str:
        """The database URL (default: a SQLite file in the profile folder)."""
        return self.database or os.path.join(self.profile_dir, DATABASE_FILE)


def default_relay(reactor: Any, settings: IntermediarySettings) -> RelayService | None:
    """Part C's relay on ``settings``' ports."""
    address = settings.relay_address
    if address is None:
        address = settings.relay_interface
        if ipaddress.ip_address(address.split("%")[0]).is_unspecified:
            candidates = [endpoint.address for endpoint in settings.advertise or []]
            candidates = candidates or [found for found in primary_addresses() if ":" in address or ":" not in found]
            if candidates:
                address = candidates[0]
    built: RelayService = relay_module.Relay(
        reactor,
        interface=settings.relay_interface,
        ports=settings.relay_ports,
        limits=relay_module.RelayLimits(),
        address=address,
        join_port=settings.relay_join_port,
    )
    return built


class IntermediaryService(service.Service):
    """Runs one intermediary (see the module docs); ``ready`` fires once it listens."""

    def __init__(self, settings: IntermediarySettings, reactor: Any, clock: Any = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.profile = Profile(settings.profile_dir, "irp")
        self.store: IntermediaryStore | None = None
        self.registries: Directory | None = None
        self.subscriptions: Subscriptions | None = None
        self.operations: Operations | None = None
        self.relay: RelayService | None = None
        self.factory: IntermediaryFactory | None = None
        self.ports: list[IListeningPort] = []
        self.early_ports: EarlyPorts | None = None
        self.loops: list[LoopingCall] = []
        self.advertised: list[Endpoint] = []
        #: Whether the last registration published our address (the log says when it changes).
        self.registered = False
        self.ready: Deferred[IntermediaryService] = Deferred()

    def privilegedStartService(self) -> None:  # noqa: N802
        """Bind the listening ports before the reactor runs."""
        super().privilegedStartService()
        self.early_ports = EarlyPorts(self.reactor, self.settings.listen, "SixChat intermediary")

    def startService(self) -> None:  # noqa: N802
        """Start in the background."""
        super().startService()
        log.info("Starting {version}", version=describe_version("intermediary"))
        Deferred.fromCoroutine(self._start()).addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        log.critical("The intermediary could not start: {why}", why=getattr(failure.value, "message", None) or str(failure.value))
        if self.early_ports is not None:
            self.early_ports.release()
            self.early_ports = None
        for port in self.ports:
            port.stopListening()
        self.ports.clear()
        if self.relay is not None:
            self.relay.stop()
        self.ready.errback(failure)

    async def _start(self) -> IntermediaryService:
        settings = self.settings
        early = self.early_ports or EarlyPorts(self.reactor, settings.listen, "SixChat intermediary")
        self.early_ports = None
        self.ports.extend(await early.ports())
        identity = self.profile.identity()
        if identity.username != ACCOUNT:
            raise errors.ClientError(f"the profile's account is {identity}: the intermediary runs as {ACCOUNT}@{identity.domain}")
        key, certificate, chain = self.profile.credentials()
        config = self.profile.load_config()
        # The relay's join port is bound now, with the other ports, before anything is
        # created on disk.
        self.relay = (settings.relay_factory or default_relay)(self.reactor, settings)
        if self.relay is not None:
            self.relay.start()
        roots = self.profile.trusted_roots()
        trust = TrustStore()
        for domain, root in roots.items():
            try:
                check_anchor(root, domain)
                trust.add_root(root, domain)
            except ValueError as problem:
                log.warn("The root trusted for {domain} is not used: {why}", domain=domain, why=str(problem))
        self.registries = Directory(self.reactor, self.profile, key, certificate, chain, resolver=settings.resolver, home_server=settings.server)
        verifier = SenderVerifier(
            trust,
            crl_checker(self.registries, self.clock, settings.crl_max_age),
            self.registries.certificate_fingerprints,
            self.clock,
            known_intermediates=chain,
            fingerprint_max_age=settings.fingerprint_max_age,
        )
        self.store = await IntermediaryStore.open(settings.database_url, self.reactor, quotas=settings.quotas)
        self.subscriptions = Subscriptions(self.store, self.clock)
        self.operations = Operations(config.domain, self.store, self.subscriptions, self.clock, limits=settings.limits, relay=self.relay)
        self.factory = IntermediaryFactory(self.operations, verifier, self.clock, settings.connection_limits)
        context = make_server_context(key, certificate, chain, client_ca_names=list(roots.values()))
        early.gate.open(TLSMemoryBIOFactory(ServerTLS(context), False, self.factory))
        for port in self.ports:
            address: Any = port.getHost()
            log.info("Intermediary of {domain} listening on {host} port {port}", domain=config.domain, host=address.host, port=address.port)
        self._loop(self._expire, settings.expire_interval, now=True)
        bound = [(port.getHost().host, port.getHost().port) for port in self.ports]  # type: ignore[attr-defined]
        self.advertised = list(settings.advertise) if settings.advertise is not None else advertised_endpoints(bound)
        if settings.register:
            await self._register("online")
            self._loop(lambda: self._register("online"), max(settings.register_ttl / 2, 5))
        log.info("Intermediary of {domain} is ready", domain=config.domain)
        return self

    def _loop(self, function: Callable[[], Any], interval: float, *, now: bool = False) -> None:
        def guarded() -> Deferred[Any]:
            result = Deferred.fromCoroutine(_call(function))
            return result.addErrback(lambda failure: log.failure("Intermediary housekeeping failed", failure))

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=now)
        self.loops.append(loop)

    async def _expire(self) -> None:
        assert self.store is not None
        messages, prekeys = await self.store.expire(int(self.clock.seconds()))
        if messages or prekeys:
            log.info("Deleted {messages} expired messages and {prekeys} expired prekeys", messages=messages, prekeys=prekeys)

    async def _register(self, presence: str) -> None:
        assert self.registries is not None
        endpoints = self.advertised if presence == "online" else []
        try:
            await self.registries.register(endpoints, presence, self.settings.register_ttl)
        except (IRPError, errors.IntermediaryError, OSError) as error:
            log.warn("Could not register with the registry: {error}", error=getattr(error, "message", str(error)))
            self.registered = False
            return
        if not self.registered:
            log.info("Registered with the registry: {presence}", presence=presence)
            self.registered = presence == "online"

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Stop listening, end subscriptions, mark the address away, close the store."""
        super().stopService()

        async def stop() -> None:
            for loop in self.loops:
                if loop.running:
                    loop.stop()
            self.loops.clear()
            for port in self.ports:
                await port.stopListening()  # type: ignore[misc]
            self.ports.clear()
            if self.factory is not None:
                await self.factory.close_all()
            if self.subscriptions is not None:
                self.subscriptions.stop()
            if self.relay is not None:
                await self.relay.stop()
            if self.registries is not None:
                if self.settings.register:
                    await self._register("away")
                await self.registries.close()
            if self.store is not None:
                self.store.close()

        return Deferred.fromCoroutine(stop())


async def _call(function: Callable[[], Any]) -> None:
    result = function()
    if hasattr(result, "__await__"):
        await result
