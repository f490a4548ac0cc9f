"""The client protocol on a fake transport: ids, answers in any order, pushes, errors,
timeouts, the local outstanding cap, the switch to raw bytes after ``<accepted/>``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.wire.framing import encode_frame
from intermediary import errors
from intermediary.client import CircuitStream, IntermediaryClient, IntermediaryClientProtocol
from intermediary.wire import (
    Accepted,
    Deposited,
    Ping,
    Pong,
    Superseded,
    encode_error,
    encode_push,
    encode_response,
    parse_request,
)
from test.helpers import frames_of
from test.intermediary.helpers import EVENTS, HEX


class Raw(Protocol):
    """Collects raw bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = True


class ClientProtocolTests(TestCase):
    """IntermediaryClientProtocol and IntermediaryClient without a network."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = IntermediaryClientProtocol(self.clock, 15.0, lambda leaf, chain: None)
        # No TLS here: ``ready`` never fires before the connection is lost, and then fails.
        self.protocol.ready.addErrback(lambda failure: None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = IntermediaryClient(self.protocol, "127.0.0.1", 4605)

    def sent_ids(self) -> list[int]:
        ids = [parse_request(frame).id for frame in frames_of(self.transport.value())]
        self.transport.clear()
        return ids

    def answer(self, request_id: int, result: Any) -> None:
        self.protocol.dataReceived(encode_frame(encode_response(request_id, result)))

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError()))

    def test_answers_matched_by_id(self) -> None:
        first = Deferred.fromCoroutine(self.client.deposit(Identity("bob", "example.org"), b"x", 10))
        second = Deferred.fromCoroutine(self.client.ping())
        self.assertEqual(self.sent_ids(), [1, 2])
        self.answer(2, Pong())
        self.assertIsNone(self.successResultOf(second))
        self.assertNoResult(first)
        self.answer(1, Deposited(HEX, 1))
        self.assertEqual(self.successResultOf(first), HEX)

    def test_wrong_result_kind_is_refused(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.answer(1, Accepted())
        self.failureResultOf(pinging, errors.MalformedMessage)

    def test_error_answers_fail_their_request(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        other = Deferred.fromCoroutine(self.client.ping())
        self.protocol.dataReceived(encode_frame(encode_error(1, errors.RateLimited("slow down"))))
        failure = self.failureResultOf(pinging, errors.RateLimited)
        self.assertEqual(failure.value.message, "slow down")
        self.assertNoResult(other)

    def test_connection_error_fails_everything(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        lost = self.client.when_lost()
        self.protocol.dataReceived(encode_frame(encode_error(None, errors.CertificateRejected("revoked"))))
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.failureResultOf(pinging, errors.CertificateRejected)
        self.assertIsNone(self.successResultOf(lost))
        with self.assertRaises(errors.CertificateRejected):
            self.protocol.request(Ping())

    def test_lost_connection(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.lose()
        self.failureResultOf(pinging, errors.ConnectionLost)

    def test_malformed_server_message_ends_the_connection(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.protocol.dataReceived(encode_frame(b"<response id='1'><what/></response>"))
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.failureResultOf(pinging, errors.MalformedMessage)

    def test_answer_to_no_request_is_malformed(self) -> None:
        self.answer(9, Pong())
        self.assertTrue(self.transport.disconnecting)

    def test_timeout(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.clock.advance(15)
        self.failureResultOf(pinging, errors.Timeout)
        self.assertTrue(self.transport.disconnected)

    def test_pushes(self) -> None:
        delivered: list[Any] = []
        circuits: list[tuple[str, str]] = []
        superseded: list[bool] = []
        self.protocol.on_deliver = delivered.append
        self.protocol.on_circuit = lambda circuit, source: circuits.append((circuit, source))
        self.protocol.on_superseded = lambda: superseded.append(True)
        for event in EVENTS:
            self.protocol.dataReceived(encode_frame(encode_push(event)))
        self.assertEqual(delivered, [EVENTS[0]])
        self.assertEqual(circuits, [(HEX, "2001:db8::9 50000")])
        self.assertEqual(superseded, [True])
        self.assertIsInstance(EVENTS[1], Superseded)

    def test_outstanding_cap_queues_locally(self) -> None:
        pings = [Deferred.fromCoroutine(self.client.ping()) for _ in range(40)]
        self.assertEqual(self.sent_ids(), list(range(1, 33)))
        for request_id in range(1, 9):
            self.answer(request_id, Pong())
        self.assertEqual(self.sent_ids(), list(range(33, 41)))
        self.assertEqual(sum(1 for ping in pings if ping.called), 8)

    def test_raw_bytes_after_accepted(self) -> None:
        accepting = Deferred.fromCoroutine(self.client.accept_circuit(HEX))
        self.transport.clear()
        self.protocol.dataReceived(encode_frame(encode_response(1, Accepted())) + b"first raw ")
        stream = self.successResultOf(accepting)
        self.assertIsInstance(stream, CircuitStream)
        self.protocol.dataReceived(b"bytes")
        raw = Raw()
        stream.attach(raw)
        self.assertEqual(raw.data, b"first raw bytes")
        self.protocol.dataReceived(encode_frame(b"<not-a-frame-any-more/>"))
        self.assertIn(b"<not-a-frame-any-more/>", raw.data)
        with self.assertRaises(errors.ConnectionLost):
            self.protocol.request(Ping())  # no more requests on a circuit
        self.lose()
        self.assertTrue(raw.lost)
