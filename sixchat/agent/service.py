"""A person's SixChat user agent: listens, dials, delivers, keeps history.

The :class:`Agent` owns every connection of one user. It publishes its addresses with its
IRP registry, reaches contacts (last address that worked first, then what the registry
says), checks every peer with :class:`~sixchat.peer.verification.PeerVerifier`, keeps exactly
one session per peer when both dial at once, and delivers the outbox with receipts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.addresses import advertised_endpoints
from common.endpoint import Endpoint
from common.identity import Identity
from common.pki.errors import WeakKey
from common.pki.keyfiles import KeyFileError, fingerprint
from common.profile import CERTIFICATE_FILE, KEY_FILE, Profile, ProfileError
from common.startup import EarlyPorts
from common.version import describe_version
from irp.client import Directory, IRPError
from sixchat import DEFAULT_PORT, errors
from sixchat.agent.control import listen_control
from sixchat.agent.deposit import Depositor
from sixchat.agent.dialer import Dialer
from sixchat.agent.inbox import handle_message
from sixchat.agent.mailbox import Mailbox
from sixchat.agent.metrics import CLOSED, ESTABLISHED, AgentMetricsHost, AgentTally
from sixchat.agent.outbox import Outbox
from sixchat.agent.responder import ResponderFactory
from sixchat.agent.sessions import pick_session
from sixchat.agent.sixid import Connector, Publisher, SixidServers, check_device_key, peer_device_id, sixid_connector
from sixchat.agent.store import AgentStore, StoredMessage
from sixchat.agent.trust import refresh_presence, trust_store
from sixchat.handshake import LocalCredentials, Role
from sixchat.peer.admission import HandshakeAdmission
from sixchat.peer.protocol import ConnectionLimits, PeerConnection
from sixchat.peer.verification import PeerVerifier, RevocationChecker
from sixchat.recipients import Recipient
from sixchat.wire.application import (
    ApplicationMessage,
    Presence,
)

log = Logger()

STORE_FILE = "sixchat.sqlite3"
Event = dict[str, Any]


@dataclass
class AgentSettings:
    """How one agent runs."""

    profile_dir: str
    listen: list[str] = field(default_factory=lambda: [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"])
    advertise: list[Endpoint] | None = None
    policy: str = "contacts"
    register_ttl: int = 300
    undelivered_after: float = 300.0
    retry_interval: float = 15.0
    connect_timeout: float = 5.0
    fingerprint_cache: float = 300.0
    crl_max_age: float = 300.0
    handshakes_per_address: int = 20
    handshake_window: float = 10.0
    #: Incoming handshakes in progress at once, from everyone.
    max_handshakes_in_progress: int = 64
    #: What one peer that is not a contact may have stored under policy ``anyone``.
    unknown_peer_messages: int = 100
    unknown_peer_bytes: int = 1 << 20
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    register: bool = True
    control: bool = True
    #: twisted.names resolver for finding other domains' registries by DNS SRV (None:
    #: the system's).
    resolver: Any = None
    #: The user's registry (host, port), overriding the profile's (``--server``).
    server: tuple[str, int] | None = None
    #: Use intermediaries: deposit for peers who cannot be reached directly, scheduled
    #: messages (``--no-intermediary`` turns it off).
    intermediary: bool = True
    #: Keep a connection to our own intermediary: prekeys, deliveries (off for the
    #: short-lived agent a ``sixchat`` command starts).
    mailbox: bool = True
    #: Reserve a relay port at our intermediary and register it (``--relay``).
    relay: bool = False
    #: Publish our device ID at our domain's sixid server (``--sixid``; needs ``register``).
    sixid: bool = False
    #: Our domain's sixid server (host, port) (``--sixid-server``; default: our registry's
    #: host on port 4606).
    sixid_server: tuple[str, int] | None = None
    #: How to reach a domain's sixid server (None: :func:`sixid_connector` of these
    #: settings); devices of any trusted domain can be looked up.
    sixid_connector: Connector | None = None
    #: Serve Prometheus metrics over HTTP on these endpoints (none: not served).
    metrics_listen: list[str] = field(default_factory=list)


class Agent(service.Service):
    """One user's agent (see the module docs)."""

    def __init__(self, settings: AgentSettings, reactor: Any, clock: IReactorTime | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        #: Every timer and time stamp of the agent (the reactor's, unless a test passes a
        #: fake clock; sockets always use ``reactor``).
        self.clock: Any = clock if clock is not None else reactor
        self.limits = settings.limits
        self.profile = Profile(settings.profile_dir, "sixchat")
        self.credentials: LocalCredentials
        self.identity: Identity
        self.store: AgentStore | None = None
        self.directory: Directory | None = None
        self.verifier: PeerVerifier | None = None
        self.ports: list[IListeningPort] = []
        self.early_ports: EarlyPorts | None = None
        self.loops: list[LoopingCall] = []
        self.sessions: dict[Identity, PeerConnection] = {}
        self.connections: set[PeerConnection] = set()
        self.dialer = Dialer(self)
        self.outbox = Outbox(self)
        self.depositor = Depositor(self)
        self.mailbox = Mailbox(self)
        #: The sixid servers (looking devices up) and our device ID's publication.
        self.sixid = SixidServers(settings.sixid_connector or sixid_connector(self))
        self.publisher = Publisher(self, self.sixid)
        #: The addresses we listen on, as registered (the relay's is added to them).
        self._own_endpoints: list[Endpoint] = []
        self._registering = DeferredLock()
        self.admission = HandshakeAdmission(
            self.clock,
            per_source=settings.handshakes_per_address,
            window=settings.handshake_window,
            max_concurrent=settings.max_handshakes_in_progress,
        )
        self._listeners: list[Callable[[Event], None]] = []
        self.ready: Deferred[Agent] = Deferred()
        self.advertised: list[Endpoint] = []
        self.control_port: IListeningPort | None = None
        #: The outcome of the last registration: (published, why not).
        self.registration: tuple[bool, str] = (False, "not registered yet")
        self._credentials_stamp: tuple[int, ...] | None = None
        #: Why we closed a connection, for its "session down" event.
        self._closed_because: dict[PeerConnection, str] = {}
        #: What the metrics report (see :mod:`sixchat.agent.metrics`).
        self.tally = AgentTally()
        self.subscribe(self.tally.event)
        self.metrics = AgentMetricsHost(self, settings.metrics_listen)

    # -- start and stop ---------------------------------------------------------------

    def load_credentials(self) -> None:
        """Read the user's key and certificate from the profile (synchronous)."""
        self._credentials_stamp = self._profile_stamp()
        key, certificate, chain = self.profile.credentials()
        self.identity = self.profile.identity()
        self.credentials = LocalCredentials(self.identity, certificate, chain, key)

    def _profile_stamp(self) -> tuple[int, ...] | None:
        stamp: list[int] = []
        for name in (KEY_FILE, CERTIFICATE_FILE):
            try:
                status = os.stat(self.profile.file(name))
            except OSError:
                return None
            stamp += [status.st_ino, status.st_mtime_ns, status.st_size]
        return tuple(stamp)

    def reload_credentials(self, *, force: bool = False) -> bool:
        """Take up the profile's key and certificate if they changed since they were read
        (``irp renew`` or ``enrol`` while the agent runs); checked before every new
        session, or at once with ``force``. Returns whether the certificate changed.
        Unreadable or unusable new files are logged and the current ones kept."""
        stamp = self._profile_stamp()
        if not force and (stamp is None or stamp == self._credentials_stamp):
            return False
        self._credentials_stamp = stamp
        try:
            key, certificate, chain = self.profile.credentials()
            credentials = LocalCredentials(self.identity, certificate, chain, key)
        except (ProfileError, KeyFileError, ValueError, OSError) as error:
            log.warn("The profile's key or certificate changed but cannot be used: {error}; still presenting certificate {fingerprint}", error=str(error), fingerprint=self.credentials.fingerprint)
            return False
        if credentials.fingerprint == self.credentials.fingerprint:
            return False
        self.credentials = credentials
        if self.verifier is not None:
            self.verifier.known_intermediates = list(chain)
        if self.directory is not None:
            Deferred.fromCoroutine(self.directory.use_credentials(key, certificate, chain)).addErrback(
                lambda failure: log.failure("Reconnecting to the registry with the new certificate failed", failure)
            )
        # A new key is a new device ID: the old one is withdrawn, the new one published.
        self.publisher.addresses_changed()
        log.info("Now presenting the profile's new certificate {fingerprint}", fingerprint=credentials.fingerprint)
        self.emit({"event": "credentials", "fingerprint": credentials.fingerprint})
        return True

    def privilegedStartService(self) -> None:
        """Bind the listening ports before the reactor runs (a daemonizing twistd hears of
        a port in use); connections wait for the agent to be ready."""
        super().privilegedStartService()
        self.early_ports = EarlyPorts(self.reactor, self.settings.listen, "SixChat agent")
        self.metrics.bind()

    def startService(self) -> None:
        """Start in the background; ``ready`` fires when listening."""
        super().startService()
        log.info("Starting {version}", version=describe_version("sixchat"))
        started = Deferred.fromCoroutine(self._start())
        started.addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(IRPError, errors.SixChatError, ProfileError, KeyFileError, CannotListenError, OSError, ValueError):
            log.critical("The agent could not start: {why}", why=str(failure.value))
        else:
            log.failure("The agent could not start", failure)
        if self.early_ports is not None:
            self.early_ports.release()
            self.early_ports = None
        self.metrics.stop()
        self.ready.errback(failure)

    async def _start(self) -> Agent:
        settings = self.settings
        self.load_credentials()
        self.store = await AgentStore.open(os.path.join(settings.profile_dir, STORE_FILE), self.reactor, now=self.clock.seconds)
        key, certificate, chain = self.profile.credentials()
        self.directory = Directory(
            self.reactor, self.profile, key, certificate, chain, resolver=settings.resolver, home_server=settings.server
        )
        trust = trust_store(self.profile.trusted_roots())
        revocation = RevocationChecker(
            self.directory.issuing_crl, self.clock, max_age=timedelta(seconds=settings.crl_max_age), fetch_issuer=self.directory.issuer_crl
        )
        self.verifier = PeerVerifier(
            trust,
            revocation,
            self.store,
            self.clock,
            policy=settings.policy,
            home_domain=self.identity.domain,
            known_intermediates=chain,
        )
        await self.metrics.start()
        early = self.early_ports or EarlyPorts(self.reactor, settings.listen, "SixChat agent")
        self.early_ports = None
        self.ports.extend(await early.ports())
        early.gate.open(ResponderFactory(self))
        for port in self.ports:
            address: Any = port.getHost()
            log.info("SixChat agent of {user} listening on {host} port {port}", user=str(self.identity), host=address.host, port=address.port)
        if settings.control:
            self.control_port = await listen_control(self, self.reactor, settings.profile_dir)
        bound = [(port.getHost().host, port.getHost().port) for port in self.ports]  # type: ignore[attr-defined]
        self.advertised = list(settings.advertise) if settings.advertise is not None else advertised_endpoints(bound)
        self._own_endpoints = list(self.advertised)
        if settings.intermediary and settings.mailbox:
            self.mailbox.start()
        if settings.register:
            await self._register("online")
            self._loop(self._refresh, max(settings.register_ttl / 2, 5))
            if settings.sixid:
                self.publisher.start()
        self._loop(self.outbox.retry_pending, settings.retry_interval)
        self._loop(self.outbox.give_up_old, min(settings.undelivered_after / 4, 15.0))
        log.info("SixChat agent of {user} is ready", user=str(self.identity))
        return self

    def _loop(self, function: Callable[[], Any], interval: float) -> None:
        def guarded() -> Deferred[None]:
            result: Deferred[None] = Deferred.fromCoroutine(_call(function))
            result.addErrback(lambda failure: log.failure("Agent housekeeping failed", failure))
            return result

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self.loops.append(loop)

    async def relay_changed(self) -> None:
        """The relay endpoint came or went: register what we can be reached at now."""
        relay = self.mailbox.relay
        self.advertised = [*self._own_endpoints, *([relay] if relay is not None else [])]
        if self.settings.register and self.running:
            await self._register("online")
            self.publisher.addresses_changed()

    async def _refresh(self) -> None:
        self.reload_credentials()
        await self._register("online")

    async def _register(self, presence: str) -> None:
        assert self.directory is not None
        # One at a time, each with the addresses of its turn (the relay's may come or go).
        await self._registering.acquire()
        endpoints = self.advertised if presence != "offline" else []
        try:
            await self.directory.register(endpoints, presence, self.settings.register_ttl)
        except IRPError as error:
            why = error.message
        except Exception as error:  # noqa: BLE001 - any failure to reach the registry
            why = f"cannot reach the registry ({error.__class__.__name__}: {error})"
        else:
            if not self.registration[0]:
                log.info("Registered with the registry: {presence}", presence=presence)
            self.registration = (True, "")
            return
        finally:
            self._registering.release()
        log.warn("Could not register with the registry: {error}", error=why)
        self.registration = (False, why)

    def stopService(self) -> Deferred[None]:
        """Close sessions, mark ourselves away at the registry, stop listening."""
        super().stopService()

        async def stop() -> None:
            for loop in self.loops:
                if loop.running:
                    loop.stop()
            self.loops.clear()
            await self.metrics.stop()
            await self.publisher.stop()
            await self.sixid.close()
            await self.mailbox.stop()
            await self.depositor.close()
            closing = list(self.connections)
            for connection in closing:
                connection.close("bye")
            for port in self.ports:
                await port.stopListening()  # type: ignore[misc]
            self.ports.clear()
            # Each is gone within the handshake timeout (then aborted if the peer stalls).
            for connection in closing:
                await connection.when_lost()
            if self.control_port is not None:
                await self.control_port.stopListening()  # type: ignore[misc]
                self.control_port.factory.disconnect_all()  # type: ignore[attr-defined]
                self.control_port = None
            if self.directory is not None:
                if self.settings.register:
                    self.advertised = []
                    await self._register("away")
                await self.directory.close()
            if self.store is not None:
                self.store.close()

        return Deferred.fromCoroutine(stop())

    # -- events for the user interface ------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every event; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: Event) -> None:
        """Give ``event`` to every listener."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the others
                log.failure("An event listener failed")

    def progress(self, peer: Identity, text: str) -> None:
        """Tell the listeners how reaching ``peer`` goes."""
        self.emit({"event": "progress", "to": str(peer), "text": text})

    # -- sending (see :mod:`sixchat.agent.outbox`) --------------------------------------

    async def send_text(self, peer: Recipient, text: str, deliver_at: int | None = None) -> StoredMessage:
        """Queue a message (stored first) for a user or one of their devices, and start
        delivering it (at ``deliver_at``)."""
        return await self.outbox.send_text(peer, text, deliver_at)

    async def cancel(self, message_id: str) -> StoredMessage | None:
        """Cancel a pending message (never sent again); None if none pending has that id."""
        return await self.outbox.cancel(message_id)

    async def block(self, peer: Identity) -> None:
        """Block ``peer``: refused from now on, and any session with them ends at once."""
        assert self.store is not None
        await self.store.set_blocked(peer, True)
        ending = [connection for connection in self.connections if connection.peer == peer]
        for connection in ending:
            self._closed_because[connection] = "blocked"
            connection.close("bye")
        for connection in ending:
            await connection.when_lost()
        if ending:
            log.info("Blocked {peer}: their session is closed", peer=str(peer))

    async def refresh_presence(self) -> None:
        """Ask the registry for the presence of every contact (see :func:`refresh_presence`)."""
        await refresh_presence(self)

    # -- reaching peers ---------------------------------------------------------------

    # -- reaching peers (see :mod:`sixchat.agent.dialer`) ------------------------------

    def connect(self, peer: Identity) -> Deferred[PeerConnection]:
        """An established session with ``peer``: the current one, or a new one (one dial
        at a time per peer; every caller gets its outcome)."""
        return self.dialer.connect(peer)

    async def expected_fingerprints(self, peer: Identity, *, fresh: bool = False) -> set[str]:
        """The certificates the peer's registry holds for them now (cached briefly, unless
        ``fresh``)."""
        return await self.dialer.expected_fingerprints(peer, fresh=fresh)

    # -- ConnectionOwner --------------------------------------------------------------

    def verify_peer(self, connection: PeerConnection, identity: Identity, chain: list[x509.Certificate]) -> Deferred[None]:
        """Check a peer whose key the handshake proved (see :class:`PeerVerifier`)."""
        assert self.verifier is not None

        async def check() -> None:
            assert self.verifier is not None
            expected = None
            dialled = None
            connection.peer_device = peer_device_id(chain[0])
            if connection.expected_device is not None:
                check_device_key(connection.expected_device, identity, chain[0])
            if connection.role is Role.INITIATOR:
                dialled = connection.expected_peer
                expected = await self.expected_fingerprints(identity)
                if fingerprint(chain[0]) not in expected:
                    # The cached answer may predate a renewal: ask the registry again.
                    expected = await self.expected_fingerprints(identity, fresh=True)
            await self.verifier.verify(identity, chain, dialled=dialled, expected_fingerprints=expected)

        async def guarded() -> None:
            try:
                await check()
            except IRPError as error:
                raise errors.PeerRejected(f"cannot check {identity}: {error.message}", reason="untrusted-ca") from None

        return Deferred.fromCoroutine(guarded())

    def connection_started(self, connection: PeerConnection) -> None:
        """Track a new connection, in either role."""
        self.connections.add(connection)

    def session_established(self, connection: PeerConnection) -> None:
        """Keep one session per peer; send presence and the outbox."""
        self.connections.add(connection)
        self.tally.handshake_done(connection.role is Role.INITIATOR, ESTABLISHED)
        peer = connection.peer
        assert peer is not None
        existing = self.sessions.get(peer)
        if existing is not None and existing is not connection and existing.is_established:
            device = self.dialer.devices.get(peer)
            if device is not None and (existing.peer_device == device.sixid) != (connection.peer_device == device.sixid):
                # Two of the peer's devices: keep the one the user addressed them by.
                keep, drop = (connection, existing) if connection.peer_device == device.sixid else (existing, connection)
            else:
                keep, drop = pick_session(existing, connection)
            log.info("Two sessions with {peer}: keeping the one {who} dialled", peer=str(peer), who="we" if keep.role is Role.INITIATOR else "they")
            self.sessions[peer] = keep
            drop.close("duplicate")
            if keep is existing:
                return
        self.sessions[peer] = connection
        self.emit({"event": "session", "who": str(peer), "state": "up"})
        try:
            connection.send(Presence("online"))
        except errors.SixChatError:
            return
        Deferred.fromCoroutine(self.outbox.flush(peer, connection)).addErrback(self.outbox.log_delivery_problem, peer)

    def message_received(self, connection: PeerConnection, message: ApplicationMessage) -> None:
        """Store and acknowledge messages; apply receipts and presence."""
        peer = connection.peer
        assert peer is not None
        Deferred.fromCoroutine(handle_message(self, connection, peer, message)).addErrback(
            lambda failure: log.failure("Handling a message from {peer} failed", failure, peer=str(peer))
        )

    def connection_ended(self, connection: PeerConnection, error: errors.SixChatError | None) -> None:
        """Forget the connection; unacknowledged messages stay pending for the next one."""
        self.connections.discard(connection)
        if connection.session is None:  # the handshake never completed
            self.tally.handshake_done(connection.role is Role.INITIATOR, CLOSED if error is None else error.name)
        self.outbox.forget(connection)
        peer = connection.peer
        if peer is not None and self.sessions.get(peer) is connection:
            del self.sessions[peer]
            event: Event = {"event": "session", "who": str(peer), "state": "down"}
            because = self._closed_because.pop(connection, None)
            if because is not None:
                event["reason"] = because
            if error is not None:
                event["error"] = error.message
                event["name"] = error.name
            self.emit(event)
            if error is not None and error.from_peer and isinstance(error, errors.PeerRejected):
                # Refused after our last handshake message: what we sent was never read.
                Deferred.fromCoroutine(self.outbox.delivery_problem(peer, error)).addErrback(
                    lambda failure: log.failure("Recording a delivery problem failed", failure)
                )
            else:
                Deferred.fromCoroutine(self.outbox.redeliver(peer)).addErrback(self.outbox.log_delivery_problem, peer)
        self._closed_because.pop(connection, None)

    def status(self) -> dict[str, Any]:
        """A summary for ``sixchat status``."""
        return {
            "identity": str(self.identity),
            "fingerprint": fingerprint(self.credentials.certificate),
            "listening": [f"{port.getHost().host} port {port.getHost().port}" for port in self.ports],  # type: ignore[attr-defined]
            "advertised": [f"{endpoint.address} port {endpoint.port}" for endpoint in self.advertised],
            "sessions": sorted(str(peer) for peer, connection in self.sessions.items() if connection.is_established),
            "policy": self.settings.policy,
            "registering": self.settings.register,
            "registered": self.registration[0],
            "registration_error": self.registration[1],
            "intermediary": self.mailbox.describe(),
            "relay": None if self.mailbox.relay is None else f"{self.mailbox.relay.address} port {self.mailbox.relay.port}",
            "device": self.device_address(),
            "sixid": self.publisher.state if self.settings.sixid else "not published (start the agent with --sixid)",
        }

    def device_address(self) -> str:
        """Our device address, ``ID@domain`` (grouped form)."""
        try:
            address = self.publisher.address
        except (WeakKey, ValueError) as error:
            return f"none ({error})"
        return f"{address.sixid.grouped()}@{address.domain}"


async def _call(function: Callable[[], Any]) -> None:
    result = function()
    if hasattr(result, "__await__"):
        await result
