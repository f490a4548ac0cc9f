"""The thin Twisted adapter of :class:`common.rpc.connection.Connection`.

:class:`RpcProtocol` feeds the core the transport's events and performs its actions
(writing, running requests, pausing, deadlines on the factory's clock, closing); it
counts connections per address and forwards the transport's flow control. A protocol's
own adapter subclasses it and says how the peer is checked once TLS is up
(:meth:`RpcProtocol.check_peer`), how a request runs (:meth:`RpcProtocol.run`) and what
the connection's end releases (:meth:`RpcProtocol.released`). :class:`RpcFactory` holds
what its connections share: the codec, the error classes, the limits, the clock, the
per-address counter and the set of open connections.
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.actions import ActionRunner
from common.errors import ProtocolError
from common.factory import QuietFactory
from common.limits import ConnectionCounter
from common.rpc.connection import (
    Abort,
    Action,
    ArmDeadline,
    CancelDeadline,
    Close,
    Codec,
    Connection,
    ConnectionLimits,
    Deadline,
    Dispatch,
    ErrorClasses,
    PauseReading,
    ResumeReading,
    Send,
)
from common.tls import send_without_delay

log = Logger()


class RefusingErrors(ErrorClasses, typing.Protocol):
    """The error classes an adapter needs beyond the core's."""

    @property
    def TooManyConnections(self) -> type[Exception]:  # noqa: N802
        """Refuses a connection over the per-address count (fatal)."""


@implementer(IPushProducer)
class _Producer:
    """Forwards the transport's flow control to the protocol until it is forgotten."""

    def __init__(self, protocol: RpcProtocol) -> None:
        self.protocol: RpcProtocol | None = protocol

    def pauseProducing(self) -> None:  # noqa: N802
        if self.protocol is not None:
            self.protocol._do(self.protocol.core.pause_writing())

    def resumeProducing(self) -> None:  # noqa: N802
        if self.protocol is not None:
            self.protocol._do(self.protocol.core.resume_writing())

    def stopProducing(self) -> None:  # noqa: N802
        pass


@implementer(IHandshakeListener)
class RpcProtocol(ActionRunner, Protocol):
    """One client connection (see the module docs)."""

    factory: RpcFactory

    def __init__(self) -> None:
        self.core: Connection
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

    # -- what a protocol's adapter says -------------------------------------------------

    def check_peer(self) -> None:
        """TLS is up: check the peer and report with ``self._do(self.core.authenticated(
        error or None))``. By default every peer is accepted at once."""
        self._do(self.core.authenticated(None))

    def run(self, request: Any) -> Any:
        """Run ``request``: its result, or a Deferred firing with it; a protocol error
        (raised or failed) refuses it."""
        raise NotImplementedError

    def released(self) -> None:
        """The connection is gone: release what it held (subscriptions, watches)."""

    def who(self) -> str:
        """The peer as the log names it."""
        return self.peer_host

    def describe(self, request: Any) -> str:
        """``request`` as the log names it (no secrets)."""
        return "Request"

    def refusal(self, failure: Failure) -> Any:
        """The protocol error a failed request is answered with, or None for an
        unexpected failure (logged with its traceback, answered as an internal error)."""
        return failure.value if failure.check(ProtocolError) else None

    # -- Twisted's events ---------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """Count the connection; start the handshake deadline."""
        factory = self.factory
        self.peer_host = getattr(self.transport.getPeer(), "host", "unknown")  # type: ignore[union-attr]
        self.core = Connection(factory.limits, self.peer_host, factory.codec, factory.errors)
        if not factory.connections.acquire(self.peer_host):
            self._do(self.core.refuse(factory.errors.TooManyConnections()))  # logged by the core
            return
        self.counted = True
        factory.open.add(self)
        transport: Any = self.transport
        send_without_delay(transport)
        self.producer = _Producer(self)
        transport.registerProducer(self.producer, True)
        self._do(self.core.start())

    def handshakeCompleted(self) -> None:  # noqa: N802
        """TLS is up: check the peer."""
        self._do(self.core.handshake_completed())
        if self.core.closing:
            return  # refused already (too many connections): nothing to check
        self.check_peer()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Frames to the core."""
        self._do(self.core.data_received(data))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Release the address's slot and what the connection held."""
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
        self.released()

    # -- performing the core's actions --------------------------------------------------

    def _perform(self, action: Action) -> None:
        transport: Any = self.transport
        kind = type(action)
        if kind is Send:
            transport.write(action.data)  # type: ignore[union-attr]
        elif kind is Dispatch:
            self._dispatch(action.request)  # type: ignore[union-attr]
        elif kind is ArmDeadline:
            deadline: Deadline = action.deadline  # type: ignore[union-attr]
            seconds: float = action.seconds  # type: ignore[union-attr]
            call = self._deadlines.get(deadline)
            if call is not None and call.active():
                call.reset(seconds)
            else:
                self._deadlines[deadline] = self.factory.clock.callLater(seconds, self._expired, deadline)
        elif kind is CancelDeadline:
            self._cancel(action.deadline)  # type: ignore[union-attr]
        elif kind is PauseReading:
            transport.pauseProducing()
        elif kind is ResumeReading:
            transport.resumeProducing()
        elif kind is Close:
            self._unregister()
            transport.resumeProducing()
            transport.loseConnection()
        elif kind is Abort:
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

    def _dispatch(self, request: Any) -> None:
        core = self.core
        try:
            outcome = self.run(request)
        except Exception:  # noqa: BLE001 - answered as an internal error, logged
            self._failed(Failure(), core, request)
            return
        if isinstance(outcome, Deferred):
            outcome.addCallbacks(self._answered, self._failed, callbackArgs=(core, request), errbackArgs=(core, request))
        else:
            self._do(core.request_answered(request, outcome))

    def _answered(self, result: Any, core: Connection, request: Any) -> None:
        self._do(core.request_answered(request, result))

    def _failed(self, failure: Failure, core: Connection, request: Any) -> None:
        error = self.refusal(failure)
        if error is not None:
            log.info(
                "{what} of {who} from {host} refused: {error}", what=self.describe(request), who=self.who(), host=self.peer_host, error=str(error)
            )
        else:
            log.failure("{what} of {who} from {host} failed", failure, what=self.describe(request), who=self.who(), host=self.peer_host)
            error = self.factory.errors.InternalError()
        self._do(core.request_failed(request, error))


class RpcFactory(QuietFactory):
    """Builds connections sharing one codec, error classes, limits and clock."""

    protocol = RpcProtocol  # type: ignore[assignment]

    def __init__(self, codec: Codec, errors: RefusingErrors, clock: IReactorTime, limits: ConnectionLimits) -> None:
        self.codec = codec
        self.errors = errors
        self.clock = clock
        self.limits = limits
        self.connections = ConnectionCounter(limits.max_connections_per_address)
        #: The connections open now.
        self.open: set[RpcProtocol] = set()

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
