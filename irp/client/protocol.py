"""The client side of an IRP connection: send requests, match responses by id.

Requests may be pipelined. Each request waits at most the protocol's ``timeout``
(:meth:`twisted.internet.defer.Deferred.addTimeout`); a timed-out request fails with
``timeout`` and ends the connection, since a late answer could no longer be matched safely
to anything the caller still waits for.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from common.tls import send_without_delay
from common.wire.framing import FrameDecoder, FrameError, encode_frame
from common.wire.xmlcodec import Element
from irp import errors
from irp.wire.messages import Response, build_request, parse_response

#: The largest response frame the client accepts.
MAX_RESPONSE = 16 * 1024 * 1024
#: Seconds to wait for a connection, the TLS handshake or an answer (default).
DEFAULT_TIMEOUT = 30.0


@implementer(IHandshakeListener)
class RegistryClientProtocol(Protocol):
    """Sends requests and matches responses by id (requests may be pipelined)."""

    def __init__(self, clock: IReactorTime, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.clock = clock
        self.timeout = timeout
        self.decoder = FrameDecoder(MAX_RESPONSE)
        #: The requests sent and not yet answered, by id.
        self.waiting: dict[int, Deferred[Response]] = {}
        self.next_id = 1
        self.ready: Deferred[RegistryClientProtocol] = Deferred()
        #: Fires (with None) once the connection is closed.
        self.disconnected: Deferred[None] = Deferred()
        self.closed = False
        self.failure: errors.IRPError | None = None

    def connectionMade(self) -> None:
        """TCP is up (the TLS handshake starts): send small messages at once."""
        send_without_delay(self.transport)

    def handshakeCompleted(self) -> None:
        """TLS is up (and the registry's certificate verified)."""
        if not self.ready.called:
            self.ready.callback(self)

    def request(self, operation: Element) -> Deferred[Response]:
        """Send one request; fire with its response or fail with the IRPError it carries
        (``timeout`` when no answer comes within ``timeout`` seconds)."""
        if self.closed:
            raise self.failure or errors.ConnectionLost()
        request_id = self.next_id
        self.next_id += 1

        def forget(_: Deferred[Response]) -> None:
            self.waiting.pop(request_id, None)

        result: Deferred[Response] = Deferred(forget)
        self.waiting[request_id] = result
        self.transport.write(encode_frame(build_request(request_id, operation)))  # type: ignore[union-attr]
        result.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        return result

    def _timed_out(self, _cancelled: Any, timeout: float) -> Failure:
        """A request went unanswered: it fails with ``timeout``, and so does the connection."""
        self.failure = errors.Timeout("an earlier request timed out")
        self.transport.abortConnection()  # type: ignore[union-attr]
        return Failure(errors.Timeout(f"the registry did not answer within {timeout:g} seconds"))

    def dataReceived(self, data: bytes) -> None:
        """Dispatch each complete response to its request."""
        try:
            frames = self.decoder.feed(data)
        except FrameError as error:
            self._fail_all(errors.MalformedMessage(f"the registry broke the framing: {error}"))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if self.decoder.error is not None:
            # Frames before a broken header are handled; after them, the stream is dead.
            self.transport.abortConnection()  # type: ignore[union-attr]
        for frame in frames:
            response: Response | errors.IRPError
            try:
                parsed = parse_response(frame)
                response, response_id = parsed, parsed.id
            except errors.IRPError as error:
                response = error
                response_id = getattr(error, "request_id", 0)
            if response_id == 0:
                # A connection-level error: the registry is closing the connection.
                assert isinstance(response, errors.IRPError)
                self.failure = response
                self._fail_all(response)
                continue
            deferred = self.waiting.pop(response_id, None)
            if deferred is None:
                continue
            if isinstance(response, errors.IRPError):
                deferred.errback(response)
            else:
                deferred.callback(response)

    def _fail_all(self, error: errors.IRPError) -> None:
        waiting, self.waiting = self.waiting, {}
        for deferred in waiting.values():
            deferred.errback(error)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Fail every outstanding request."""
        self.closed = True
        error = self.failure or errors.ConnectionLost(f"the connection to the registry was lost: {reason.getErrorMessage()}")
        if not self.ready.called:
            tls_problem = reason.getErrorMessage()
            self.ready.errback(
                errors.ServerVerificationFailed(f"the TLS connection to the registry failed: {tls_problem}")
            )
        self._fail_all(error)
        self.disconnected.callback(None)


async def await_handshake(clock: IReactorTime, protocol: RegistryClientProtocol, seconds: float) -> None:
    """Wait for the TLS handshake; abort the connection if it takes longer than ``seconds``."""

    def timed_out(_cancelled: Any, _timeout: float) -> Failure:
        return Failure(errors.Timeout("the TLS handshake with the registry timed out"))

    try:
        await protocol.ready.addTimeout(seconds, clock, onTimeoutCancel=timed_out)
    except errors.Timeout:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        raise
