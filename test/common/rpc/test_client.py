"""The client's request pipeline (common.rpc.client) with a toy protocol on a fake
transport and clock: ids, the outstanding cap and queue, timeouts, answers by id, pushes,
the end of the connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.errors import ProtocolError
from common.rpc.client import ClientErrors, RpcClientProtocol
from common.wire.framing import encode_frame
from test.helpers import frames_of


class ToyError(ProtocolError):
    name = "internal-error"


class ToyErrors:
    """The toy protocol's error classes."""

    class ConnectionLost(ToyError):
        name = "connection-lost"

    class Timeout(ToyError):
        name = "timeout"

    class MalformedMessage(ToyError):
        name = "malformed-message"


@dataclass(frozen=True)
class Response:
    id: int
    result: str


@dataclass(frozen=True)
class ErrorAnswer:
    id: int | None
    error: ToyError


class ToyClient(RpcClientProtocol):
    """Requests ``id op``; answers ``R id result``, ``E id|- message``, ``P event``."""

    error_classes: ClassVar[ClientErrors] = ToyErrors()
    base_error = ToyError
    response_type = Response
    error_type = ErrorAnswer
    peer = "the toy server"
    max_frame = 1024
    max_outstanding = 2

    def __init__(self, reactor: Any, timeout: float) -> None:
        super().__init__(reactor, timeout)
        self.pushes: list[str] = []

    def encode_request(self, request_id: int, operation: Any) -> bytes:
        return f"{request_id} {operation}".encode()

    def parse_answer(self, payload: bytes) -> Any:
        kind, _, rest = payload.decode().partition(" ")
        if kind == "R":
            number, _, result = rest.partition(" ")
            return Response(int(number), result)
        if kind == "E":
            number, _, message = rest.partition(" ")
            return ErrorAnswer(None if number == "-" else int(number), ToyError(message))
        if kind == "P":
            return rest
        raise ToyError(f"what is {kind!r}?")

    def pushed(self, event: Any) -> None:
        self.pushes.append(event)


class PipelineTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = ToyClient(self.clock, 10.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[bytes]:
        frames = frames_of(self.transport.value())
        self.transport.clear()
        return frames

    def receive(self, text: str) -> None:
        self.protocol.dataReceived(encode_frame(text.encode()))

    def test_ids_cap_and_queue(self) -> None:
        """Ids count up; past the cap requests wait, and go as answers come."""
        results = [self.protocol.request(f"op{n}") for n in range(3)]
        self.assertEqual(self.sent(), [b"1 op0", b"2 op1"])
        self.receive("R 2 two")
        self.assertEqual(self.successResultOf(results[1]), "two")
        self.assertEqual(self.sent(), [b"3 op2"])
        self.receive("E 1 no")
        self.assertEqual(self.failureResultOf(results[0], ToyError).value.message, "no")
        self.assertNoResult(results[2])

    def test_push_and_wrong_kind(self) -> None:
        """Pushes go to ``pushed``; a result of the wrong kind ends the connection."""
        self.receive("P hello")
        self.assertEqual(self.protocol.pushes, ["hello"])
        calling = Deferred.fromCoroutine(self.protocol.call("op", int))
        self.receive("R 1 text")
        self.assertEqual(self.failureResultOf(calling, ToyErrors.MalformedMessage).value.message, "expected int, got str")
        self.assertTrue(self.transport.disconnecting)

    def test_timeout_ends_the_connection(self) -> None:
        """A request not answered in time fails with timeout, and so does every later one."""
        first = self.protocol.request("op")
        self.clock.advance(10)
        self.assertEqual(self.failureResultOf(first, ToyErrors.Timeout).value.message, "the toy server did not answer within 10 seconds")
        self.protocol.connectionLost(Failure(ConnectionError()))
        with self.assertRaises(ToyErrors.Timeout):
            self.protocol.request("op")
        self.failureResultOf(self.protocol.ready, ToyErrors.Timeout)

    def test_broken_server(self) -> None:
        """An answer to no request, or a message that does not parse, ends the connection
        with malformed-message; outstanding requests fail with it."""
        waiting = self.protocol.request("op")
        self.receive("X")
        self.assertTrue(self.transport.disconnecting)
        lost = self.protocol.when_lost()
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.failureResultOf(waiting, ToyErrors.MalformedMessage).value.message, "the toy server sent an invalid message: what is 'X'?")
        self.successResultOf(lost)
        self.failureResultOf(self.protocol.ready, ToyErrors.MalformedMessage)

    def test_error_without_id_ends_the_connection(self) -> None:
        waiting = self.protocol.request("op")
        self.receive("E - bye")
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.failureResultOf(waiting, ToyError).value.message, "bye")
        self.successResultOf(self.protocol.when_lost())
        self.failureResultOf(self.protocol.ready, ToyError)

    def test_lost(self) -> None:
        """The connection ending unasked fails what is outstanding with connection-lost."""
        self.protocol.handshakeCompleted()
        self.assertIs(self.successResultOf(self.protocol.ready), self.protocol)
        waiting = self.protocol.request("op")
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(waiting, ToyErrors.ConnectionLost)
