"""The client side of a sixid connection: frames requests, matches answers by id, hands
pushes on (see :mod:`sixid.client`, which builds on it).

Requests are pipelined: at most :data:`~sixid.wire.MAX_OUTSTANDING` in flight, more wait
in a local queue. Each waits at most the protocol's ``timeout``; a timed-out request fails
with ``timeout`` and ends the connection, since a late answer could no longer be matched
safely. Whatever the server sends that breaks the protocol ends the connection with
``malformed-message``; an ``<error>`` without id ends it with that error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from common.tls import send_without_delay
from common.wire.framing import FrameDecoder, FrameError, encode_frame
from sixid import errors
from sixid.wire import (
    MAX_FRAME,
    MAX_OUTSTANDING,
    Changed,
    ErrorAnswer,
    Gone,
    Operation,
    Request,
    Response,
    Result,
    encode_request,
    parse_answer,
)

#: Seconds to wait for a connection, the TLS handshake or an answer (default).
DEFAULT_TIMEOUT = 15.0

R = TypeVar("R")


@implementer(IHandshakeListener)
class SixidClientProtocol(Protocol):
    """Frames requests, matches answers by id, hands pushes to ``on_push``."""

    def __init__(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.decoder = FrameDecoder(MAX_FRAME)
        #: Requests sent and not answered, by id (at most the server's MAX_OUTSTANDING; more
        #: wait in ``queued``).
        self.waiting: dict[int, Deferred[Result]] = {}
        self.queued: list[tuple[Request, Deferred[Result]]] = []
        self.next_id = 1
        #: Fires once TLS is up (and the server's certificate verified).
        self.ready: Deferred[SixidClientProtocol] = Deferred()
        self.closed = False
        self.failure: errors.SixidError | None = None
        #: Called with each push (``Changed`` or ``Gone``).
        self.on_push: Callable[[Changed | Gone], None] | None = None
        self._lost_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:  # noqa: N802
        """TCP is up (the TLS handshake starts): send small messages at once."""
        send_without_delay(self.transport)

    def handshakeCompleted(self) -> None:  # noqa: N802
        """TLS is up; the server's certificate passed the TLS layer's check."""
        if not self.ready.called:
            self.ready.callback(self)

    def request(self, operation: Operation) -> Deferred[Result]:
        """Send one request; fire with its result, or fail with the error answered
        (``timeout`` after ``timeout`` seconds, which also ends the connection: a late answer
        could not be matched safely)."""
        if self.closed:
            raise self.failure or errors.ConnectionLost()
        request = Request(self.next_id, operation)
        self.next_id += 1
        result: Deferred[Result] = Deferred()
        if len(self.waiting) >= MAX_OUTSTANDING:
            self.queued.append((request, result))
        else:
            self._send(request, result)
        return result

    def _send(self, request: Request, result: Deferred[Result]) -> None:
        self.waiting[request.id] = result
        self.transport.write(encode_frame(encode_request(request)))  # type: ignore[union-attr]
        call = self.reactor.callLater(self.timeout, self._timed_out, request.id)

        def cancel_timer(outcome: Any) -> Any:
            if call.active():
                call.cancel()
            return outcome

        result.addBoth(cancel_timer)

    def _timed_out(self, request_id: int) -> None:
        waiting = self.waiting.pop(request_id, None)
        if waiting is not None:
            self.failure = errors.Timeout("an earlier request to the sixid server timed out")
            waiting.errback(errors.Timeout(f"the sixid server did not answer within {self.timeout:g} seconds"))
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Frames to answers and pushes."""
        try:
            self.decoder.append(data)
            while not self.closed:
                frame = self.decoder.next_frame()
                if frame is None:
                    return
                self._message(parse_answer(frame))
        except FrameError as error:
            self.fail(errors.MalformedMessage(f"the sixid server broke the framing: {error}"))
        except errors.SixidError as error:
            self.fail(errors.MalformedMessage(f"the sixid server sent an invalid message: {error.message}"))

    def _message(self, message: Response | ErrorAnswer | Changed | Gone) -> None:
        if isinstance(message, Response | ErrorAnswer):
            if message.id is None:
                assert isinstance(message, ErrorAnswer)
                self.fail(message.error)
                return
            waiting = self.waiting.pop(message.id, None)
            if waiting is None:
                raise errors.MalformedMessage(f"an answer to request {message.id}, which is not outstanding")
            if isinstance(message, ErrorAnswer):
                waiting.errback(message.error)
            else:
                waiting.callback(message.result)
            while self.queued and len(self.waiting) < MAX_OUTSTANDING and not self.closed:
                self._send(*self.queued.pop(0))
        elif self.on_push is not None:
            self.on_push(message)

    def fail(self, error: errors.SixidError) -> None:
        """End the connection because of ``error`` (what every outstanding request fails with)."""
        self.failure = self.failure or error
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Fail everything outstanding; tell those waiting for the end."""
        self.closed = True
        if not self.ready.called:
            self.ready.errback(self.failure or errors.ServerVerificationFailed(describe_tls_failure(reason)))
        failure = self.failure or errors.ConnectionLost(f"the connection to the sixid server was lost: {reason.getErrorMessage()}")
        waiting = [*self.waiting.values(), *(deferred for _, deferred in self.queued)]
        self.waiting.clear()
        self.queued.clear()
        for deferred in waiting:
            deferred.errback(failure)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        waiter: Deferred[None] = Deferred()
        if self.closed:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter


async def request_result(protocol: SixidClientProtocol, operation: Operation, kind: type[R]) -> R:
    """Send ``operation``; its result, which must be a ``kind`` (else the connection ends:
    the server broke the protocol)."""
    result = await protocol.request(operation)
    if not isinstance(result, kind):
        protocol.fail(errors.MalformedMessage("the sixid server answered with the wrong result"))
        raise errors.MalformedMessage(f"expected {kind.__name__}, got {type(result).__name__}")
    return result


def describe_tls_failure(reason: Failure) -> str:
    """What a connection that ended before TLS was up says about the server."""
    if reason.check(VerificationError):
        return "the sixid server's certificate does not name the host dialled"
    if reason.check(SSL.Error) and "certificate verify failed" in reason.getErrorMessage():
        return "the sixid server's certificate does not chain to the root CA trusted for its domain (or is not valid now)"
    return f"the TLS connection to the sixid server failed: {reason.getErrorMessage()}"
