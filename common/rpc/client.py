"""The client's side of a request/response/push connection (the intermediary, sixid).

:class:`RpcClientProtocol` frames requests, matches answers by id and hands pushes on.
Requests are pipelined: at most ``max_outstanding`` in flight, more wait in a local queue.
Each waits at most the protocol's ``timeout``; a timed-out request fails with ``timeout``
and ends the connection, since a late answer could no longer be matched safely. Whatever
the server sends that breaks the protocol ends the connection with ``malformed-message``;
an ``<error>`` without id ends it with that error. A protocol's own client subclasses it
and says how requests are encoded and answers parsed, what its answers' classes are, how
the server's certificate is checked and where pushes go.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from common.errors import ProtocolError
from common.tls import send_without_delay
from common.wire.framing import FrameDecoder, FrameError, encode_frame

R = TypeVar("R")


class ClientErrors(typing.Protocol):
    """The error classes the client's side raises (a protocol's errors module)."""

    @property
    def ConnectionLost(self) -> type[ProtocolError]:  # noqa: N802
        """The connection ended before the answer."""

    @property
    def Timeout(self) -> type[ProtocolError]:  # noqa: N802
        """No answer in time."""

    @property
    def MalformedMessage(self) -> type[ProtocolError]:  # noqa: N802
        """The server broke the protocol."""


@implementer(IHandshakeListener)
class RpcClientProtocol(Protocol):
    """One client connection (see the module docs).

    Subclasses set ``error_classes`` (the protocol's errors module), ``base_error`` (the root of
    them), ``response_type`` and ``error_type`` (the parsed answers: ``.id`` and ``.result``,
    ``.id`` and ``.error``), ``peer`` (how the server is named in complaints),
    ``max_frame`` and ``max_outstanding``; and define :meth:`encode_request`,
    :meth:`parse_answer` and :meth:`pushed`.
    """

    error_classes: ClassVar[ClientErrors]
    base_error: ClassVar[type[ProtocolError]]
    response_type: ClassVar[type[Any]]
    error_type: ClassVar[type[Any]]
    peer: ClassVar[str]
    max_frame: ClassVar[int]
    max_outstanding: ClassVar[int]

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.decoder = FrameDecoder(self.max_frame)
        #: Requests sent and not answered, by id (at most ``max_outstanding``; more wait in
        #: ``queued``).
        self.waiting: dict[int, Deferred[Any]] = {}
        self.queued: list[tuple[int, Any, Deferred[Any]]] = []
        self.next_id = 1
        #: Fires once TLS is up (and the server's certificate verified).
        self.ready: Deferred[Any] = Deferred()
        self.closed = False
        self.failure: ProtocolError | None = None
        self._lost_waiters: list[Deferred[None]] = []

    # -- what a protocol says ---------------------------------------------------------------

    def encode_request(self, request_id: int, operation: Any) -> bytes:
        """The document of request ``request_id`` (unframed)."""
        raise NotImplementedError

    def parse_answer(self, payload: bytes) -> Any:
        """A response, an error answer or a push; raise ``base_error`` if it is none."""
        raise NotImplementedError

    def pushed(self, event: Any) -> None:
        """A push arrived (default: ignored)."""

    def check_server(self) -> None:
        """TLS is up: raise ``base_error`` if the server is not the one meant (default: the
        TLS layer's check is enough)."""

    def lost_error(self, reason: Failure) -> ProtocolError:
        """What outstanding requests fail with when the connection ends unasked."""
        return self.error_classes.ConnectionLost()

    def handshake_error(self, reason: Failure) -> ProtocolError:
        """What ``ready`` fails with when the connection ends before TLS was up."""
        return self.lost_error(reason)

    # -- Twisted's events -------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """TCP is up (the TLS handshake starts): send small messages at once."""
        send_without_delay(self.transport)

    def handshakeCompleted(self) -> None:  # noqa: N802
        """TLS is up: check the server, then ``ready`` fires."""
        try:
            self.check_server()
        except self.base_error as error:
            self.failure = error
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if not self.ready.called:
            self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Frames to answers and pushes."""
        try:
            self.decoder.append(data)
            while not self.closed:
                frame = self.decoder.next_frame()
                if frame is None:
                    return
                self._message(self.parse_answer(frame))
        except FrameError as error:
            self.fail(self.error_classes.MalformedMessage(f"{self.peer} broke the framing: {error}"))
        except self.base_error as error:
            self.fail(self.error_classes.MalformedMessage(f"{self.peer} sent an invalid message: {error.message}"))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Fail everything outstanding; tell those waiting for the end."""
        self.closed = True
        if not self.ready.called:
            self.ready.errback(self.failure or self.handshake_error(reason))
        failure = self.failure or self.lost_error(reason)
        waiting = [*self.waiting.values(), *(deferred for _, _, deferred in self.queued)]
        self.waiting.clear()
        self.queued.clear()
        for deferred in waiting:
            deferred.errback(failure)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- requests -----------------------------------------------------------------------------

    def request(self, operation: Any) -> Deferred[Any]:
        """Send one request; fire with its result, or fail with the error answered
        (``timeout`` after ``timeout`` seconds, which also ends the connection: a late answer
        could not be matched safely)."""
        if self.closed:
            raise self.failure or self.error_classes.ConnectionLost()
        request_id = self.next_id
        self.next_id += 1
        result: Deferred[Any] = Deferred()
        if len(self.waiting) >= self.max_outstanding:
            self.queued.append((request_id, operation, result))
        else:
            self._send(request_id, operation, result)
        return result

    async def handshake(self, too_slow: ProtocolError) -> Any:
        """Wait for ``ready`` (this protocol, TLS up and the server checked) at most
        ``timeout`` seconds, else end the connection with ``too_slow``."""

        def abort() -> None:
            if not self.ready.called:
                self.failure = too_slow
                self.transport.abortConnection()  # type: ignore[union-attr]

        call = self.reactor.callLater(self.timeout, abort)
        try:
            return await self.ready
        finally:
            if call.active():
                call.cancel()

    async def call(self, operation: Any, kind: type[R]) -> R:
        """Send ``operation``; its result, which must be a ``kind`` (else the connection ends:
        the server broke the protocol)."""
        result = await self.request(operation)
        if not isinstance(result, kind):
            self.fail(self.error_classes.MalformedMessage(f"{self.peer} answered with the wrong result"))
            raise self.error_classes.MalformedMessage(f"expected {kind.__name__}, got {type(result).__name__}")
        return result

    def _send(self, request_id: int, operation: Any, result: Deferred[Any]) -> None:
        self.waiting[request_id] = result
        self.transport.write(encode_frame(self.encode_request(request_id, operation)))  # type: ignore[union-attr]
        call = self.reactor.callLater(self.timeout, self._timed_out, request_id)

        def cancel_timer(outcome: Any) -> Any:
            if call.active():
                call.cancel()
            return outcome

        result.addBoth(cancel_timer)

    def _timed_out(self, request_id: int) -> None:
        waiting = self.waiting.pop(request_id, None)
        if waiting is not None:
            self.failure = self.error_classes.Timeout(f"an earlier request to {self.peer} timed out")
            waiting.errback(self.error_classes.Timeout(f"{self.peer} did not answer within {self.timeout:g} seconds"))
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _message(self, message: Any) -> None:
        if isinstance(message, self.response_type | self.error_type):
            if message.id is None:
                self.fail(message.error)
                return
            waiting = self.waiting.pop(message.id, None)
            if waiting is None:
                raise self.error_classes.MalformedMessage(f"an answer to request {message.id}, which is not outstanding")
            if isinstance(message, self.error_type):
                waiting.errback(message.error)
            else:
                waiting.callback(message.result)
            while self.queued and len(self.waiting) < self.max_outstanding and not self.closed:
                self._send(*self.queued.pop(0))
        else:
            self.pushed(message)

    # -- the end ------------------------------------------------------------------------------

    def fail(self, error: ProtocolError) -> None:
        """End the connection because of ``error`` (what every outstanding request fails with)."""
        self.failure = self.failure or error
        self.transport.loseConnection()  # type: ignore[union-attr]

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        waiter: Deferred[None] = Deferred()
        if self.closed:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter
