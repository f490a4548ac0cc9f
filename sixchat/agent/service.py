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
from datetime import UTC, timedelta
from typing import Any

from cryptography import x509
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.factory import QuietFactory
from common.identity import Identity
from common.pki.keyfiles import KeyFileError, fingerprint
from common.pki.trust import TrustStore, check_anchor
from common.profile import CERTIFICATE_FILE, KEY_FILE, Profile, ProfileError
from common.startup import EarlyPorts
from common.wire.framing import encode_frame
from irp.client import IRPError
from irp.wire.records import Endpoint
from sixchat import DEFAULT_PORT, errors
from sixchat.agent.control import listen_control
from sixchat.agent.outcome import explain
from sixchat.agent.store import AgentStore, StoredMessage
from sixchat.handshake import LocalCredentials, Role
from sixchat.peer.addresses import advertised_endpoints
from sixchat.peer.admission import HandshakeAdmission
from sixchat.peer.directory import Directory
from sixchat.peer.protocol import ConnectionLimits, PeerConnection
from sixchat.peer.verification import PeerVerifier, RevocationChecker
from sixchat.record import MAX_BODY
from sixchat.wire.application import (
    MAX_TEXT_LENGTH,
    ApplicationMessage,
    ChatMessage,
    Ping,
    Pong,
    Presence,
    Receipt,
    encode_application,
)
from sixchat.wire.handshake import alert_for

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


class _Refused(Protocol):
    """Answers a connection with one clear alert and closes it; reads nothing."""

    def __init__(self, error: errors.SixChatError) -> None:
        self.error = error

    def connectionMade(self) -> None:
        """Send the alert, then close."""
        transport: Any = self.transport
        transport.write(encode_frame(alert_for(self.error)))
        transport.loseConnection()


class _ResponderFactory(QuietFactory):
    """Accepts incoming connections within the handshake budgets (:mod:`sixchat.peer.admission`)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", "")
        admission = self.agent.admission
        refusal = admission.admit(host)
        if refusal is not None:
            log.warn("Refused a connection from {host}: {why}", host=host, why=refusal.message)
            return _Refused(refusal)
        self.agent.reload_credentials()
        return PeerConnection(self.agent, Role.RESPONDER, on_handshake_over=admission.finished)


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
        self._dialling: dict[Identity, list[Deferred[PeerConnection]]] = {}
        self._flush_locks: dict[Identity, DeferredLock] = {}
        self._in_flight: dict[PeerConnection, set[str]] = {}
        self._expected: dict[Identity, tuple[float, set[str]]] = {}
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
        log.info("Now presenting the profile's new certificate {fingerprint}", fingerprint=credentials.fingerprint)
        self._emit({"event": "credentials", "fingerprint": credentials.fingerprint})
        return True

    def privilegedStartService(self) -> None:
        """Bind the listening ports before the reactor runs (a daemonizing twistd hears of
        a port in use); connections wait for the agent to be ready."""
        super().privilegedStartService()
        self.early_ports = EarlyPorts(self.reactor, self.settings.listen, "SixChat agent")

    def startService(self) -> None:
        """Start in the background; ``ready`` fires when listening."""
        super().startService()
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
        self.ready.errback(failure)

    async def _start(self) -> Agent:
        settings = self.settings
        self.load_credentials()
        self.store = await AgentStore.open(os.path.join(settings.profile_dir, STORE_FILE), self.reactor, now=self.clock.seconds)
        key, certificate, chain = self.profile.credentials()
        self.directory = Directory(
            self.reactor, self.profile, key, certificate, chain, resolver=settings.resolver, home_server=settings.server
        )
        roots = self.profile.trusted_roots()
        trust = TrustStore()  # each root certifies only its own domain
        for domain, root in roots.items():  # our own domain's root first
            try:
                check_anchor(root, domain)
            except ValueError as problem:
                # Stored before roots were checked: it certifies only the domain it was
                # trusted for, whatever it says; the user should still hear of it.
                log.warn("The root trusted for {domain} looks wrong ({why}); it certifies only {domain}", domain=domain, why=str(problem))
            try:
                trust.add_root(root, domain)
            except ValueError as problem:
                # The same root stored for a second domain: it keeps its first one.
                log.warn("The root trusted for {domain} is not used: {why}", domain=domain, why=str(problem))
        revocation = RevocationChecker(self.directory.issuing_crl, self.clock, max_age=timedelta(seconds=settings.crl_max_age))
        self.verifier = PeerVerifier(
            trust,
            revocation,
            self.store,
            self.clock,
            policy=settings.policy,
            home_domain=self.identity.domain,
            known_intermediates=chain,
        )
        early = self.early_ports or EarlyPorts(self.reactor, settings.listen, "SixChat agent")
        self.early_ports = None
        self.ports.extend(await early.ports())
        early.gate.open(_ResponderFactory(self))
        for port in self.ports:
            address: Any = port.getHost()
            log.info("SixChat agent of {user} listening on {host} port {port}", user=str(self.identity), host=address.host, port=address.port)
        if settings.control:
            self.control_port = await listen_control(self, self.reactor, settings.profile_dir)
        bound = [(port.getHost().host, port.getHost().port) for port in self.ports]  # type: ignore[attr-defined]
        self.advertised = list(settings.advertise) if settings.advertise is not None else advertised_endpoints(bound)
        if settings.register:
            await self._register("online")
            self._loop(self._refresh, max(settings.register_ttl / 2, 5))
        self._loop(self._retry_pending, settings.retry_interval)
        self._loop(self._give_up_old, min(settings.undelivered_after / 4, 15.0))
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

    async def _refresh(self) -> None:
        self.reload_credentials()
        await self._register("online")

    async def _register(self, presence: str) -> None:
        assert self.directory is not None
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

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the others
                log.failure("An event listener failed")

    # -- sending ----------------------------------------------------------------------

    async def send_text(self, peer: Identity, text: str) -> StoredMessage:
        """Queue a message (stored first) and start delivering it."""
        assert self.store is not None
        if peer == self.identity:
            raise errors.SelfConnection("you cannot send messages to yourself")
        try:
            encoded = encode_application(ChatMessage(text=text))  # checks before storing
        except ValueError as error:
            raise errors.MalformedMessage(f"this text cannot be sent: {error}", fatal=False) from None
        if len(text) > MAX_TEXT_LENGTH or len(encoded) > MAX_BODY:
            raise errors.MessageTooLarge(
                f"a message is limited to {MAX_TEXT_LENGTH} characters and {MAX_BODY // 1024} KiB once encoded", fatal=False
            )
        message = await self.store.queue_message(peer, text)
        self._emit({"event": "queued", "id": message.id, "to": str(peer), "text": text})
        Deferred.fromCoroutine(self._deliver(peer)).addErrback(self._log_delivery_problem, peer)
        return message

    def _log_delivery_problem(self, failure: Failure, peer: Identity) -> None:
        if not failure.check(errors.SixChatError, IRPError, OSError):
            log.failure("Delivery to {peer} failed", failure, peer=str(peer))
        error = failure.value
        assert error is not None
        Deferred.fromCoroutine(self._delivery_problem(peer, error)).addErrback(
            lambda failure: log.failure("Recording a delivery problem failed", failure)
        )

    def _progress(self, peer: Identity, text: str) -> None:
        self._emit({"event": "progress", "to": str(peer), "text": text})

    async def _delivery_problem(self, peer: Identity, error: BaseException) -> None:
        """Tell the sender why messages to ``peer`` are not delivered: give them up if the
        problem is final, else note it on them (they stay queued for the next retry)."""
        assert self.store is not None
        problem = explain(error, peer)
        if problem.our_certificate:
            log.warn("{peer} refused our certificate {fingerprint}: {why}", peer=str(peer), fingerprint=self.credentials.fingerprint, why=problem.reason)
        if problem.final:
            for message in await self.store.fail_pending(peer, problem.reason):
                log.info("Message {id} to {peer} is undelivered: {why}", id=message.id, peer=str(peer), why=problem.reason)
                self._emit({"event": "undelivered", "id": message.id, "to": str(peer), "text": message.body, "reason": problem.reason})
            return
        log.info("Cannot reach {peer} now: {why}", peer=str(peer), why=problem.reason)
        retry = f"{problem.reason}; trying again every {self.settings.retry_interval:g} s"
        for message in await self.store.note_problem(peer, problem.reason):
            self._emit({"event": "progress", "id": message.id, "to": str(peer), "text": retry, "reason": problem.reason})

    async def _deliver(self, peer: Identity) -> None:
        connection = await self.connect(peer)
        await self._flush(peer, connection)

    async def _flush(self, peer: Identity, connection: PeerConnection) -> None:
        """Send every pending message to ``peer`` not yet sent on ``connection``."""
        assert self.store is not None
        lock = self._flush_locks.setdefault(peer, DeferredLock())
        await lock.acquire()
        try:
            sent = self._in_flight.setdefault(connection, set())
            for message in await self.store.pending_for(peer):
                if message.id in sent or not connection.is_established:
                    continue
                try:
                    connection.send(ChatMessage(text=message.body, id=message.id, sent=_datetime(message.sent_at)))
                except (errors.MessageTooLarge, errors.MalformedMessage) as error:
                    # It can never be sent: give it up rather than block the ones behind it.
                    log.warn("Message {id} to {peer} cannot be sent: {error}", id=message.id, peer=str(peer), error=str(error))
                    why = f"it cannot be sent: {error.message}"
                    if await self.store.set_state(message.id, "undelivered", peer=peer, reason=why):
                        self._emit({"event": "undelivered", "id": message.id, "to": str(peer), "text": message.body, "reason": why})
                    continue
                sent.add(message.id)
                await self.store.set_state(message.id, "sent", only_from=("queued",))
        finally:
            lock.release()

    async def _retry_pending(self) -> None:
        assert self.store is not None
        for peer in await self.store.pending_peers():
            if peer in self._dialling:
                continue
            Deferred.fromCoroutine(self._deliver(peer)).addErrback(self._log_delivery_problem, peer)

    async def _give_up_old(self) -> None:
        assert self.store is not None
        cutoff = self.clock.seconds() - self.settings.undelivered_after
        for message in await self.store.give_up_older_than(cutoff):
            why = f"not delivered within {self.settings.undelivered_after:g} s" + (f" ({message.reason})" if message.reason else "")
            log.info("Message {id} to {peer} is undelivered: {why}", id=message.id, peer=str(message.peer), why=why)
            self._emit({"event": "undelivered", "id": message.id, "to": str(message.peer), "text": message.body, "reason": why})

    async def cancel(self, message_id: str) -> StoredMessage | None:
        """Cancel a pending message (never sent again); None if none pending has that id."""
        assert self.store is not None
        message = await self.store.cancel(message_id)
        if message is not None:
            log.info("Message {id} to {peer} cancelled", id=message.id, peer=str(message.peer))
            self._emit({"event": "cancelled", "id": message.id, "to": str(message.peer), "text": message.body})
        return message

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
        """Ask the registry for the presence of every contact (not blocked), a few at a
        time; a contact whose registry cannot be asked keeps what is known."""
        assert self.store is not None and self.directory is not None
        from twisted.internet.defer import DeferredSemaphore, gatherResults

        limit = DeferredSemaphore(8)

        async def one(peer: Identity) -> None:
            assert self.directory is not None and self.store is not None
            try:
                record = await self.directory.lookup(peer)
            except (IRPError, errors.SixChatError, OSError) as error:
                log.debug("No presence for {peer}: {error}", peer=str(peer), error=str(error))
                return
            current = record.is_current(self.clock.seconds()) and record.endpoints
            await self.store.set_presence(peer, record.presence if current else "offline")

        contacts = [contact.identity for contact in await self.store.contacts() if not contact.blocked]
        await gatherResults([limit.run(one, peer) for peer in contacts])

    # -- reaching peers ---------------------------------------------------------------

    def connect(self, peer: Identity) -> Deferred[PeerConnection]:
        """An established session with ``peer``: the current one, or a new one (one dial
        at a time per peer; every caller gets its outcome)."""
        current = self.sessions.get(peer)
        if current is not None and current.is_established:
            return succeed(current)
        waiter: Deferred[PeerConnection] = Deferred()
        waiters = self._dialling.get(peer)
        if waiters is None:
            self._dialling[peer] = [waiter]
            Deferred.fromCoroutine(self._dial(peer)).addBoth(self._dial_finished, peer)
        else:
            waiters.append(waiter)
        return waiter

    def _dial_finished(self, result: Any, peer: Identity) -> None:
        for waiter in self._dialling.pop(peer, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def expected_fingerprints(self, peer: Identity, *, fresh: bool = False) -> set[str]:
        """The certificates the peer's registry holds for them now (cached briefly, unless
        ``fresh``)."""
        assert self.directory is not None
        cached = self._expected.get(peer)
        now = self.clock.seconds()
        if cached is not None and not fresh and now - cached[0] < self.settings.fingerprint_cache:
            return cached[1]
        fingerprints = await self.directory.certificate_fingerprints(peer)
        if not fingerprints:
            raise errors.PeerUnreachable(f"{peer} has no valid certificate at their registry")
        self._expected[peer] = (now, fingerprints)
        return fingerprints

    async def _dial(self, peer: Identity) -> PeerConnection:
        """Try the address that last worked, then every address the registry gives (IPv6
        first). A peer that answers but is refused (another identity or certificate, or it
        refuses us) does not stop the search: an address can move to someone else, and
        nothing is sent before a session with the right peer exists. If no address works,
        the first refusal is raised (it says more than "unreachable")."""
        assert self.store is not None and self.directory is not None
        if peer == self.identity:
            raise errors.SelfConnection("dialling yourself")
        self.reload_credentials()
        self._progress(peer, f"asking the registry of {peer.domain} about {peer}")
        await self.expected_fingerprints(peer)
        tried: list[Endpoint] = []
        contact = await self.store.get_contact(peer)
        problems: list[str] = []
        refusals: list[errors.SixChatError] = []
        if contact is not None and contact.last_endpoint is not None:
            tried.append(contact.last_endpoint)
            connection = await self._try_endpoint(peer, contact.last_endpoint, problems, refusals)
            if connection is not None:
                return connection
        record = await self.directory.lookup(peer)
        if not record.is_current(self.clock.seconds()) or not record.endpoints:
            await self.store.set_presence(peer, "offline")
            if refusals:
                raise refusals[0]
            raise errors.PeerUnreachable(f"{peer} is offline (no current address at their registry)")
        await self.store.set_presence(peer, record.presence)
        for endpoint in sorted(record.endpoints, key=lambda item: item.family != "ipv6"):
            if endpoint in tried:
                continue
            tried.append(endpoint)
            connection = await self._try_endpoint(peer, endpoint, problems, refusals)
            if connection is not None:
                return connection
        if refusals:
            raise refusals[0]
        raise errors.PeerUnreachable(f"{peer} did not answer at {', '.join(problems) or 'any address'}")

    async def _try_endpoint(
        self, peer: Identity, endpoint: Endpoint, problems: list[str], refusals: list[errors.SixChatError]
    ) -> PeerConnection | None:
        """A session with ``peer`` at ``endpoint``, or None (with the problem noted)."""
        assert self.store is not None
        endpoint_class = TCP6ClientEndpoint if endpoint.family == "ipv6" else TCP4ClientEndpoint
        client = endpoint_class(self.reactor, endpoint.address, endpoint.port, timeout=self.settings.connect_timeout)
        connection = PeerConnection(self, Role.INITIATOR, expected_peer=peer)
        self._progress(peer, f"calling {peer} at {endpoint.address} port {endpoint.port}")
        try:
            await client.connect(QuietFactory.forProtocol(lambda: connection))
            await connection.when_established()
        except errors.SixChatError as error:
            problems.append(f"{endpoint.address} port {endpoint.port} ({error.message})")
            if isinstance(error, (errors.IdentityMismatch, errors.SelfConnection, errors.PeerRejected, errors.CertificateInvalid)):
                log.warn("{address} port {port} did not give a session with {peer}: {error}", address=endpoint.address, port=endpoint.port, peer=str(peer), error=str(error))
                refusals.append(error)
            return None
        except Exception as error:  # noqa: BLE001 - any transport failure means "try the next"
            problems.append(f"{endpoint.address} port {endpoint.port} ({error.__class__.__name__})")
            return None
        await self.store.remember_endpoint(peer, endpoint)
        return connection

    # -- ConnectionOwner --------------------------------------------------------------

    def verify_peer(self, connection: PeerConnection, identity: Identity, chain: list[x509.Certificate]) -> Deferred[None]:
        """Check a peer whose key the handshake proved (see :class:`PeerVerifier`)."""
        assert self.verifier is not None

        async def check() -> None:
            assert self.verifier is not None
            expected = None
            dialled = None
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
        peer = connection.peer
        assert peer is not None
        existing = self.sessions.get(peer)
        if existing is not None and existing is not connection and existing.is_established:
            keep, drop = self._pick_session(existing, connection)
            log.info("Two sessions with {peer}: keeping the one {who} dialled", peer=str(peer), who="we" if keep.role is Role.INITIATOR else "they")
            self.sessions[peer] = keep
            drop.close("duplicate")
            if keep is existing:
                return
        self.sessions[peer] = connection
        self._emit({"event": "session", "who": str(peer), "state": "up"})
        try:
            connection.send(Presence("online"))
        except errors.SixChatError:
            return
        Deferred.fromCoroutine(self._flush(peer, connection)).addErrback(self._log_delivery_problem, peer)

    def _initiator_fingerprint(self, connection: PeerConnection) -> str:
        if connection.role is Role.INITIATOR:
            # What we presented in that handshake, as the peer saw it (not a reloaded one).
            return connection.credentials.fingerprint
        assert connection.session is not None
        return connection.session.peer_fingerprint

    def _pick_session(self, first: PeerConnection, second: PeerConnection) -> tuple[PeerConnection, PeerConnection]:
        """Both peers keep the session dialled by the one with the larger fingerprint (the
        newer one when both were dialled by the same side)."""
        first_key = self._initiator_fingerprint(first)
        second_key = self._initiator_fingerprint(second)
        if first_key > second_key:
            return first, second
        return second, first

    def message_received(self, connection: PeerConnection, message: ApplicationMessage) -> None:
        """Store and acknowledge messages; apply receipts and presence."""
        peer = connection.peer
        assert peer is not None
        Deferred.fromCoroutine(self._handle_message(connection, peer, message)).addErrback(
            lambda failure: log.failure("Handling a message from {peer} failed", failure, peer=str(peer))
        )

    async def _handle_message(self, connection: PeerConnection, peer: Identity, message: ApplicationMessage) -> None:
        assert self.store is not None
        if isinstance(message, ChatMessage):
            contact = await self.store.get_contact(peer)
            if contact is not None and contact.blocked:
                # Blocked while the session was open: never stored nor acknowledged.
                log.info("Dropped message {id} from {peer}: blocked", id=message.id, peer=str(peer))
                return
            settings = self.settings
            cap = (settings.unknown_peer_messages, settings.unknown_peer_bytes) if settings.policy == "anyone" else None
            outcome = await self.store.record_incoming(message.id, peer, message.text, int(message.sent.timestamp()), cap)
            if outcome == "over-quota":
                log.warn(
                    "Refused message {id} from {peer}: a stranger may have at most {count} messages or {size} bytes stored",
                    id=message.id, peer=str(peer), count=settings.unknown_peer_messages, size=settings.unknown_peer_bytes,
                )
                connection.abort(errors.RateLimited("you have stored as much as a stranger may; become a contact first"))
                return
            if outcome == "conflict":
                # Not a resend of ours to confirm: another message holds that id.
                log.warn("Refused message {id} from {peer}: that id belongs to another message", id=message.id, peer=str(peer))
                return
            if connection.is_established:
                connection.send(Receipt(message.id))
            if outcome == "new":
                self._emit({"event": "message", "id": message.id, "from": str(peer), "text": message.text, "sent": int(message.sent.timestamp())})
        elif isinstance(message, Receipt):
            # Only the recipient of a message can confirm it.
            if await self.store.set_state(message.id, "delivered", only_from=("queued", "sent", "undelivered"), peer=peer):
                self._emit({"event": "receipt", "id": message.id, "to": str(peer)})
        elif isinstance(message, Presence):
            await self.store.set_presence(peer, message.status)
            self._emit({"event": "presence", "who": str(peer), "status": message.status})
        elif isinstance(message, Ping) and connection.is_established:
            connection.send(Pong())

    def connection_ended(self, connection: PeerConnection, error: errors.SixChatError | None) -> None:
        """Forget the connection; unacknowledged messages stay pending for the next one."""
        self.connections.discard(connection)
        self._in_flight.pop(connection, None)
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
            self._emit(event)
            if error is not None and error.from_peer and isinstance(error, errors.PeerRejected):
                # Refused after our last handshake message: what we sent was never read.
                Deferred.fromCoroutine(self._delivery_problem(peer, error)).addErrback(
                    lambda failure: log.failure("Recording a delivery problem failed", failure)
                )
            else:
                Deferred.fromCoroutine(self._redeliver(peer)).addErrback(self._log_delivery_problem, peer)
        self._closed_because.pop(connection, None)

    async def _redeliver(self, peer: Identity) -> None:
        """After a session ends, move pending messages to the surviving session, if any."""
        current = self.sessions.get(peer)
        if current is not None and current.is_established:
            await self._flush(peer, current)

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
        }


async def _call(function: Callable[[], Any]) -> None:
    result = function()
    if hasattr(result, "__await__"):
        await result


def _datetime(seconds: int) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(seconds, UTC)
