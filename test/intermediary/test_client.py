"""The client protocol on a fake transport: ids, answers in any order, pushes, errors,
timeouts, the local outstanding cap; the join leg (``<join>``, then raw bytes after
``<joined/>``)."""

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
from intermediary.circuit import JoinClientProtocol
from intermediary.client import CircuitStream, IntermediaryClient, IntermediaryClientProtocol
from intermediary.joinframes import encode_joined, parse_join
from intermediary.wire import (
    Deposited,
    Ping,
    Pong,
    Reserved,
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
        self.answer(1, Reserved("::1", 46051, 10, 46049))
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

    def test_reservation_remembered_for_joins(self) -> None:
        refused = Deferred.fromCoroutine(self.client.accept_circuit(HEX))
        self.failureResultOf(refused, errors.ClientError)
        reserving = Deferred.fromCoroutine(self.client.reserve(lambda circuit, source: None))
        self.answer(1, Reserved("2001:db8::5", 46051, 2_000_000_000, 46049))
        self.successResultOf(reserving)
        self.assertEqual(self.client.reservation, Reserved("2001:db8::5", 46051, 2_000_000_000, 46049))


class JoinClientTests(TestCase):
    """The join leg on a fake transport: one frame out, one answer in, then raw bytes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = JoinClientProtocol(self.clock, HEX, 15.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_join_frame_sent_then_raw_bytes_after_joined(self) -> None:
        (payload,) = frames_of(self.transport.value())
        self.assertEqual(parse_join(payload), HEX)
        self.assertNoResult(self.protocol.joined)
        self.protocol.dataReceived(encode_frame(encode_joined()) + b"first raw ")
        self.successResultOf(self.protocol.joined)
        self.protocol.dataReceived(b"bytes")
        raw = Raw()
        stream = CircuitStream(self.protocol)
        stream.attach(raw)
        self.assertIs(stream.transport, self.transport)
        self.assertEqual(raw.data, b"first raw bytes")
        self.protocol.dataReceived(encode_frame(b"<not-a-frame-any-more/>"))
        self.assertIn(b"<not-a-frame-any-more/>", raw.data)
        self.clock.advance(60)  # no timeout once joined
        self.assertFalse(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.assertTrue(raw.lost)

    def test_answer_split_over_reads(self) -> None:
        joined = encode_frame(encode_joined())
        for byte in joined:
            self.protocol.dataReceived(bytes([byte]))
        self.successResultOf(self.protocol.joined)

    def test_refusal(self) -> None:
        self.protocol.dataReceived(encode_frame(encode_error(None, errors.UnknownCircuit("no such circuit is waiting"))) + b"junk")
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError()))
        failure = self.failureResultOf(self.protocol.joined, errors.UnknownCircuit)
        self.assertEqual(failure.value.message, "no such circuit is waiting")

    def test_broken_answers(self) -> None:
        for answer in [b"\x00\x00\x10\x00", encode_frame(b"<accepted/>"), encode_frame(b'<error id="1" code="406" name="unknown-circuit"/>')]:
            protocol = JoinClientProtocol(self.clock, HEX, 15.0)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(answer)
            self.assertTrue(transport.disconnecting, answer)
            protocol.connectionLost(Failure(ConnectionError()))
            self.failureResultOf(protocol.joined, errors.MalformedMessage)

    def test_timeout_and_loss(self) -> None:
        self.clock.advance(14.9)
        self.assertNoResult(self.protocol.joined)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnected)
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(self.protocol.joined, errors.Timeout)
        protocol = JoinClientProtocol(self.clock, HEX, 15.0)
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(protocol.joined, errors.ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])
