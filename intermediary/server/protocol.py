"""The intermediary's Twisted protocol: a thin adapter from TLS bytes to the operations.

The connection's logic is the sans-I/O core :class:`intermediary.server.connection.Connection`;
this adapter feeds it the transport's events, performs its actions (writing, running
requests on :class:`~intermediary.server.operations.Operations`, pausing, deadlines on the
factory's clock, closing), counts connections per address, and checks the client
certificate when TLS is up (:class:`~intermediary.server.senders.SenderVerifier`).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.actions import ActionRunner
from common.factory import QuietFactory
from common.identity import Identity
from common.limits import ConnectionCounter
from common.tls import send_without_delay
from intermediary import errors
from intermediary.server.connection import (
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
from intermediary.server.operations import Caller, Operations
from intermediary.server.senders import SenderVerifier
from intermediary.wire import Event, Request, Result

log = Logger()


@implementer(IPushProducer)
class _Producer:
    """Forwards the transport's flow control to the protocol until it is forgotten."""

    def __init__(self, protocol: IntermediaryProtocol) -> None:
        self.protocol: IntermediaryProtocol | None = protocol

    def pauseProducing(self) -> None:  # noqa: N802
        if self.protocol is not None:
            self.protocol._do(self.protocol.core.pause_writing())

    def resumeProducing(self) -> None:  # noqa: N802
        if self.protocol is not None:
            self.protocol._do(self.protocol.core.resume_writing())

    def stopProducing(self) -> None:  # noqa: N802
        pass


@implementer(IHandshakeListener)
class IntermediaryProtocol(ActionRunner, Protocol):
    """One client connection."""

    factory: IntermediaryFactory

    def __init__(self) -> None:
        self.core: Connection
        self.caller: Caller | None = None
        self.counted = False
        self.producer: _Producer | None = None
        self.peer_host = "unknown"
        self._deadlines: dict[Deadline, IDelayedCall] = {}
        self._actions: list[Action] = []
        self._performing = False
        self._lost_waiters: list[Deferred[None]] = []

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        waiting: Deferred[None] = Deferred()
        self._lost_waiters.append(waiting)
        return waiting

    # -- Twisted's events ---------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """Count the connection; start the handshake deadline."""
        self.peer_host = getattr(self.transport.getPeer(), "host", "unknown")  # type: ignore[union-attr]
        self.core = Connection(self.factory.limits, self.peer_host)
        if not self.factory.connections.acquire(self.peer_host):
            log.warn("Refused a connection from {host}: too many connections", host=self.peer_host)
            self._do(self.core.refuse(errors.TooManyConnections()))
            return
        self.counted = True
        self.factory.open.add(self)
        send_without_delay(self.transport)
        self.producer = _Producer(self)
        self.transport.registerProducer(self.producer, True)  # type: ignore[union-attr]
        self._do(self.core.start())

    def handshakeCompleted(self) -> None:  # noqa: N802
        """TLS is up: check the client certificate."""
        self._do(self.core.handshake_completed())
        if self.core.closing:
            return  # refused already (too many connections): nothing to check
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        peer = handle.get_peer_certificate()
        if peer is None:
            self._do(self.core.authenticated(errors.CertificateRejected("a client certificate is required")))
            return
        leaf = peer.to_cryptography()
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
        intermediates = [
            certificate.to_cryptography()
            for certificate in handle.get_peer_cert_chain() or []
            if crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate) != leaf_der
        ]
        checking = Deferred.fromCoroutine(self.factory.verifier.verify(leaf, intermediates))
        checking.addCallbacks(self._authenticated, self._refused)

    def _authenticated(self, identity: Identity) -> None:
        if self.core.closing:
            return
        self.caller = Caller(identity, self._push, self._kept)
        log.info("{who} connected from {host}", who=str(identity), host=self.peer_host)
        self._do(self.core.authenticated(None))

    def _refused(self, failure: Failure) -> None:
        if failure.check(errors.IntermediaryError):
            error: errors.IntermediaryError = failure.value  # type: ignore[assignment]
        else:
            log.failure("Checking the certificate from {host} failed", failure, host=self.peer_host)
            error = errors.InternalError()
        log.info("Refused the certificate from {host}: {error}", host=self.peer_host, error=str(error))
        self._do(self.core.authenticated(error))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Frames to the core."""
        self._do(self.core.data_received(data))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Release the address's slot, the subscription, the reservation."""
        self._do(self.core.connection_lost())
        self.factory.open.discard(self)
        for waiter in self._lost_waiters:
            waiter.callback(None)
        self._lost_waiters.clear()
        if self.counted:
            self.factory.connections.release(self.peer_host)
            self.counted = False
        for deadline in list(self._deadlines):
            self._cancel(deadline)
        if self.producer is not None:
            self.producer.protocol = None
            self.producer = None
        if self.caller is not None:
            self.factory.operations.connection_lost(self.caller)

    # -- pushes -------------------------------------------------------------------------

    def _push(self, event: Event) -> None:
        self._do(self.core.push(event))

    def _kept(self, kept: bool) -> None:
        self._do(self.core.set_kept(kept))

    # -- performing the core's actions --------------------------------------------------

    def _perform(self, action: Action) -> None:
        transport: Any = self.transport
        if isinstance(action, Send):
            transport.write(action.data)
        elif isinstance(action, Dispatch):
            self._dispatch(action.request)
        elif isinstance(action, ArmDeadline):
            call = self._deadlines.get(action.deadline)
            if call is not None and call.active():
                call.reset(action.seconds)
            else:
                self._deadlines[action.deadline] = self.factory.clock.callLater(action.seconds, self._expired, action.deadline)
        elif isinstance(action, CancelDeadline):
            self._cancel(action.deadline)
        elif isinstance(action, PauseReading):
            transport.pauseProducing()
        elif isinstance(action, ResumeReading):
            transport.resumeProducing()
        elif isinstance(action, Close):
            self._unregister()
            transport.resumeProducing()
            transport.loseConnection()
        elif isinstance(action, Abort):
            transport.abortConnection()

    def _unregister(self) -> None:
        if self.producer is not None:
            self.producer.protocol = None
            self.producer = None
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def _cancel(self, deadline: Deadline) -> None:
        call = self._deadlines.pop(deadline, None)
        if call is not None and call.active():
            call.cancel()

    def _expired(self, deadline: Deadline) -> None:
        self._deadlines.pop(deadline, None)
        self._do(self.core.deadline_expired(deadline))

    def _dispatch(self, request: Request) -> None:
        assert self.caller is not None
        core = self.core
        running = self.factory.operations.handle(self.caller, request.operation)
        running.addCallbacks(self._answered, self._failed, callbackArgs=(core, request), errbackArgs=(core, request))

    def _who(self) -> str:
        return "?" if self.caller is None else str(self.caller.identity)

    def _answered(self, result: Result, core: Connection, request: Request) -> None:
        self._do(core.request_answered(request, result))

    def _failed(self, failure: Failure, core: Connection, request: Request) -> None:
        if failure.check(errors.IntermediaryError):
            error: errors.IntermediaryError = failure.value  # type: ignore[assignment]
            log.info("Request of {who} from {host} refused: {error}", who=self._who(), host=self.peer_host, error=str(error))
        else:
            log.failure("Request of {who} from {host} failed", failure, who=self._who(), host=self.peer_host)
            error = errors.InternalError()
        self._do(core.request_failed(request, error))


class IntermediaryFactory(QuietFactory):
    """Builds :class:`IntermediaryProtocol` connections sharing one set of operations."""

    protocol = IntermediaryProtocol  # type: ignore[assignment]

    def __init__(
        self,
        operations: Operations,
        verifier: SenderVerifier,
        clock: IReactorTime,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.operations = operations
        self.verifier = verifier
        self.clock = clock
        self.limits = limits or ConnectionLimits()
        self.connections = ConnectionCounter(self.limits.max_connections_per_address)
        #: The connections open now.
        self.open: set[IntermediaryProtocol] = set()

    async def close_all(self, grace: float = 5.0) -> None:
        """Close every connection (aborting those still there after ``grace`` seconds)."""
        closing = list(self.open)
        waiting = [protocol.when_lost() for protocol in closing]
        for protocol in closing:
            protocol.transport.loseConnection()  # type: ignore[union-attr]
        call = self.clock.callLater(grace, lambda: [p.transport.abortConnection() for p in closing if p in self.open])  # type: ignore[union-attr]
        for lost in waiting:
            await lost
        if call.active():
            call.cancel()

