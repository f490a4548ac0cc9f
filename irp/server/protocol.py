"""The registry's Twisted protocol: a thin adapter from TLS bytes to :class:`Registry`.

The connection's logic (framing, pipelining, refusals, the rule that ends a connection,
deadlines) is the sans-I/O core :class:`irp.server.connection.Connection`; this adapter
feeds it the transport's events, performs the actions it returns (writing, running
requests on the registry, pausing and resuming the transport, closing) and runs its
deadlines on the factory's clock. It also counts connections per address and checks the
client certificate when TLS is up.

An idle connection costs memory for as long as it is held, so the adapter keeps little per
connection (one pending call per armed deadline, no timer objects or closures), and a
closed one holds no reference cycle: it is freed by reference counting the moment it is
lost, not at the garbage collector's next full pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.actions import ActionRunner
from common.factory import QuietFactory
from common.memory import MemoryReturn
from common.pki.trust import TrustStore
from common.tls import send_without_delay
from common.wire.xmlcodec import Element
from irp import errors
from irp.server.admission import ConnectionAdmission
from irp.server.connection import (
    Abort,
    Action,
    ArmDeadline,
    CancelDeadline,
    Close,
    Connection,
    ConnectionLimits,
    Deadline,
    Dispatch,
    PauseReading,
    ResumeReading,
    Send,
)
from irp.server.registry import Registry
from irp.server.session import Session
from irp.wire.messages import Request

__all__ = ["ConnectionLimits", "RegistryServerFactory", "RegistryServerProtocol"]

log = Logger()


@implementer(IPushProducer)
class _Producer:
    """What the transport holds as its producer: it forwards to the protocol until the
    connection is lost, then to nothing.

    Twisted's TLS layer keeps its producer after the connection is lost, and sometimes
    lives on in a reference cycle of its own (the failure of an unexpected EOF holds the
    frames it went through); registered directly, the protocol, its session and core would
    live on with it until the garbage collector's next full pass.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: RegistryServerProtocol) -> None:
        self.protocol: RegistryServerProtocol | None = protocol

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        if self.protocol is not None:
            self.protocol.pauseProducing()

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        if self.protocol is not None:
            self.protocol.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away."""
        if self.protocol is not None:
            self.protocol.stopProducing()


@implementer(IHandshakeListener, IPushProducer)
class RegistryServerProtocol(ActionRunner, Protocol):
    """One client connection to the registry."""

    factory: RegistryServerFactory

    def __init__(self) -> None:
        self.session: Session | None = None
        #: The connection's logic (made in connectionMade).
        self.core: Connection | None = None
        #: Whether the connection counts against its address's limit.
        self.counted = False
        #: What is registered as the transport's producer (while it is).
        self.producer: _Producer | None = None
        self._peer_host = "unknown"
        #: The pending call of each armed deadline (dropped when cancelled or run: while
        #: armed, the call refers back to this protocol).
        self._deadlines: dict[Deadline, IDelayedCall] = {}
        #: Actions not yet performed, and whether they are being performed (a loop, not a
        #: recursion: requests that complete at once come back through _perform). A list:
        #: an empty deque costs some 600 bytes, on every idle connection.
        self._actions: list[Action] = []
        self._performing = False

    @property
    def clock(self) -> IReactorTime:
        """The reactor's clock (a fake one in tests)."""
        return self.factory.clock

    @property
    def limits(self) -> ConnectionLimits:
        """The factory's limits."""
        return self.factory.limits

    # -- events from Twisted ----------------------------------------------------------

    def connectionMade(self) -> None:
        """Count the connection and start the handshake deadline."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._peer_host = getattr(peer, "host", "unknown")
        session = self.session = Session(peer_host=self._peer_host)
        self.core = Connection(self.limits, self._peer_host, session.is_anonymous)
        if not self.factory.admission.acquire(self._peer_host):
            log.warn("Refused a connection from {host}: too many connections", host=self._peer_host)
            self._do(self.core.refuse(errors.TooManyConnections()))
            return
        self.counted = True
        send_without_delay(self.transport)
        self.producer = _Producer(self)
        self.transport.registerProducer(self.producer, True)  # type: ignore[union-attr]
        self._do(self.core.start())

    def handshakeCompleted(self) -> None:
        """TLS is up: log in with the client certificate, if one was presented."""
        assert self.core is not None and self.session is not None  # made in connectionMade
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        peer = handle.get_peer_certificate()
        if peer is None:
            self._do(self.core.handshake_completed())
            return
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)

        def intermediates() -> list[bytes]:
            # Read only when needed: certificates this registry issued need no path.
            chain = (crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in handle.get_peer_cert_chain() or [])
            return [der for der in chain if der != leaf_der]

        result = self.factory.authenticate(self.session, leaf_der, intermediates)
        if result is None:  # decided at once
            self._do(self.core.handshake_completed())
            return
        core = self.core
        self._do(core.handshake_completed(authenticating=True))
        result.addErrback(self._authentication_failed, core)
        result.addBoth(lambda _: self._do(core.authentication_finished()))

    def dataReceived(self, data: bytes) -> None:
        """Hand the bytes to the core."""
        if self.core is not None:
            self._do(self.core.data_received(data))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Release the connection's slot and cancel its deadlines."""
        if self.core is not None:
            self._do(self.core.connection_lost())
        if self.counted:
            self.factory.admission.release(self._peer_host)
            self.counted = False
        # No reference cycle is left: no pending call and no transport reaches this protocol.
        for deadline in list(self._deadlines):  # none, the core cancelled them: made sure
            self._cancel(deadline)
        self._forget_producer()
        self.factory.connection_closed()

    def pauseProducing(self) -> None:
        """The client is not reading our answers: stop answering (and reading)."""
        if self.core is not None:
            self._do(self.core.pause_writing())

    def resumeProducing(self) -> None:
        """The client caught up."""
        if self.core is not None:
            self._do(self.core.resume_writing())

    def stopProducing(self) -> None:
        """The transport is going away."""
        if self.core is not None:
            self._do(self.core.transport_gone())

    def _forget_producer(self) -> None:
        if self.producer is not None:
            self.producer.protocol = None
            self.producer = None

    # -- performing the core's actions ------------------------------------------------

    def _perform(self, action: Action) -> None:
        transport: Any = self.transport
        if isinstance(action, ArmDeadline):
            self._arm(action.deadline, action.seconds)
        elif isinstance(action, CancelDeadline):
            self._cancel(action.deadline)
        elif isinstance(action, Send):
            transport.write(action.data)
        elif isinstance(action, Dispatch):
            self._dispatch(action.request)
        elif isinstance(action, PauseReading):
            transport.pauseProducing()
        elif isinstance(action, ResumeReading):
            transport.resumeProducing()
        elif isinstance(action, Close):
            if self.producer is not None:
                # While a producer is registered, the TLS layer holds close_notify back (it
                # waits for the producer to go), and the socket would stay open until the
                # abort.
                self._forget_producer()
                transport.unregisterProducer()
            # Read again (reading may be paused), so that the peer's close_notify, which
            # completes the TLS shutdown and closes the socket, is seen; the core reads
            # nothing after this point.
            transport.resumeProducing()
            transport.loseConnection()
        elif isinstance(action, Abort):
            transport.abortConnection()

    def _arm(self, deadline: Deadline, seconds: float) -> None:
        call = self._deadlines.get(deadline)
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._deadlines[deadline] = self.clock.callLater(seconds, self._deadline_expired, deadline)

    def _cancel(self, deadline: Deadline) -> None:
        call = self._deadlines.pop(deadline, None)
        if call is not None and call.active():
            call.cancel()

    def _deadline_expired(self, deadline: Deadline) -> None:
        self._deadlines.pop(deadline, None)
        if self.core is not None:
            self._do(self.core.deadline_expired(deadline))

    def _dispatch(self, request: Request) -> None:
        """Run ``request`` on the registry and report its outcome to the core (one
        callback: most requests are answered at once, and every callback added to a fired
        Deferred costs a run of its chain)."""
        assert self.core is not None
        core = self.core
        result = self.factory.registry.handle_now(self.session, request)  # type: ignore[arg-type]
        if not isinstance(result, Deferred):
            self._do(self._outcome(core, result, request))
            return
        done = []

        def finished(outcome: list[Element] | Failure) -> None:
            done.append(True)
            self._do(self._outcome(core, outcome, request))

        result.addBoth(finished)
        if not done:
            self._do(core.request_running())

    def _outcome(self, core: Connection, outcome: list[Element] | Failure, request: Request) -> list[Action]:
        if not isinstance(outcome, Failure):
            return core.request_answered(request, outcome)
        if not outcome.check(errors.IRPError):
            log.failure("Request {op} from {host} failed", outcome, op=request.operation, host=self._peer_host)
            return core.request_failed(request, errors.InternalError())
        error: errors.IRPError = outcome.value  # type: ignore[assignment]
        log.info("Request {op} from {host} refused: {error}", op=request.operation, host=self._peer_host, error=str(error))
        return core.request_failed(request, error)

    def _authentication_failed(self, failure: Failure, core: Connection) -> None:
        """The client certificate could not be checked: a refusal the client may act on
        (the database is unavailable) ends the connection with it; anything else is an
        internal failure."""
        if not failure.check(errors.IRPError):
            self._internal_failure(failure)
            return
        self._do(core.refuse(failure.value))  # type: ignore[arg-type] # logged by the core

    def _internal_failure(self, failure: Failure) -> None:
        log.failure("Internal failure serving {host}", failure, host=self._peer_host)
        if self.core is not None:
            self._do(self.core.internal_failure())


class RegistryServerFactory(QuietFactory):
    """Builds :class:`RegistryServerProtocol` connections sharing one registry."""

    protocol = RegistryServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: Registry,
        trust: TrustStore,
        clock: IReactorTime,
        limits: ConnectionLimits | None = None,
        known_intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        #: Intermediates to complete client chains with (clients may send only their leaf).
        self.known_intermediates = list(known_intermediates)
        self.registry = registry
        self.trust = trust
        self.clock = clock
        self.limits = limits or ConnectionLimits()
        self.admission = ConnectionAdmission(clock, self.limits.max_connections_per_address)
        #: Open connections per address (see :mod:`irp.server.admission`).
        self.connections = self.admission.connections
        #: Returns the memory of closed connections to the system (see :mod:`common.memory`).
        self.memory = MemoryReturn(clock)

    def connection_closed(self) -> None:
        """A connection is gone (its memory is freed already)."""
        self.memory.connection_closed()

    def stopFactory(self) -> None:
        """No longer listening: nothing is left to return memory for."""
        self.memory.stop()

    def admit(self, host: str) -> bool:
        """Whether to start TLS for a new connection from ``host``: always within its
        connection limit; past it, only for the first few refusals (see
        :class:`~irp.server.admission.ConnectionAdmission`)."""
        return self.admission.admit(host)

    def authenticate(
        self, session: Session, leaf_der: bytes, intermediates: Callable[[], Sequence[bytes]]
    ) -> Deferred[None] | None:
        """Log the session in with the client certificate ``leaf_der`` (DER, as received);
        None when decided at once, else a Deferred (see :mod:`irp.server.auth`)."""
        return self.registry.auth.authenticate_presented(session, leaf_der, intermediates, self.trust, self.known_intermediates)
