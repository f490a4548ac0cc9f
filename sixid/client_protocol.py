"""The client side of a sixid connection: frames requests, matches answers by id, hands
pushes on (see :mod:`sixid.client`, which builds on it).

The pipeline is :class:`common.rpc.client.RpcClientProtocol`'s: at most
:data:`~sixid.wire.MAX_OUTSTANDING` requests in flight, more wait in a local queue. Each
waits at most the protocol's ``timeout``; a timed-out request fails with ``timeout`` and
ends the connection, since a late answer could no longer be matched safely. Whatever the
server sends that breaks the protocol ends the connection with ``malformed-message``; an
``<error>`` without id ends it with that error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.python.failure import Failure

from common.rpc.client import ClientErrors, RpcClientProtocol
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
    ServerMessage,
    encode_request,
    parse_answer,
)

#: Seconds to wait for a connection, the TLS handshake or an answer (default).
DEFAULT_TIMEOUT = 15.0


class SixidClientProtocol(RpcClientProtocol):
    """Frames requests, matches answers by id, hands pushes to ``on_push``
    (:class:`common.rpc.client.RpcClientProtocol` speaking :mod:`sixid.wire`)."""

    error_classes: ClassVar[ClientErrors] = errors
    base_error = errors.SixidError
    response_type = Response
    error_type = ErrorAnswer
    peer = "the sixid server"
    max_frame = MAX_FRAME
    max_outstanding = MAX_OUTSTANDING

    def __init__(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(reactor, timeout)
        #: Called with each push (``Changed`` or ``Gone``).
        self.on_push: Callable[[Changed | Gone], None] | None = None

    def encode_request(self, request_id: int, operation: Operation) -> bytes:
        """The document of request ``request_id``."""
        return encode_request(Request(request_id, operation))

    def parse_answer(self, payload: bytes) -> ServerMessage:
        """What the server sent."""
        return parse_answer(payload)

    def pushed(self, event: Changed | Gone) -> None:
        """A push: to ``on_push``."""
        if self.on_push is not None:
            self.on_push(event)

    def lost_error(self, reason: Failure) -> errors.SixidError:
        """The connection ended unasked."""
        return errors.ConnectionLost(f"the connection to the sixid server was lost: {reason.getErrorMessage()}")

    def handshake_error(self, reason: Failure) -> errors.SixidError:
        """The connection ended before TLS was up: why the server was not accepted."""
        return errors.ServerVerificationFailed(describe_tls_failure(reason))


def describe_tls_failure(reason: Failure) -> str:
    """What a connection that ended before TLS was up says about the server."""
    if reason.check(VerificationError):
        return "the sixid server's certificate does not name the host dialled"
    if reason.check(SSL.Error) and "certificate verify failed" in reason.getErrorMessage():
        return "the sixid server's certificate does not chain to the root CA trusted for its domain (or is not valid now)"
    return f"the TLS connection to the sixid server failed: {reason.getErrorMessage()}"
