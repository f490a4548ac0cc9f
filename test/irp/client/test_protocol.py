"""Tests for :mod:`irp.client.protocol`: requests and responses matched by id, timeouts,
connection-level errors, and the connection up to the TLS handshake, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from common.wire.framing import FrameDecoder, encode_frame
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.client import RegistryClientProtocol
from irp.client.protocol import await_handshake
from irp.wire.messages import error_response, ok_response, parse_request
from test.irp.client.scripted import DOMAIN, ClientTestCase


class RequestTests(ClientTestCase):
    """Requests, responses, timeouts and connection-level errors on the fake clock."""

    def sent_ids(self) -> list[int]:
        return [parse_request(frame).id for frame in FrameDecoder(1 << 20).feed(self.transport.value())]

    def answer(self, request_id: int, results: list[Element] | None = None) -> None:
        self.protocol.dataReceived(encode_frame(ok_response(request_id, results or [make_element("session", {"method": "none", "admin": "false"})])))

    def test_responses_matched_by_id(self) -> None:
        """Pipelined requests get their own answers, whatever the order."""
        first = self.client.whoami()
        second = self.client.capabilities()
        self.assertEqual(self.sent_ids(), [1, 2])
        self.answer(2, [make_element("capabilities", {"domain": DOMAIN})])
        self.answer(1)
        self.assertEqual(self.successResultOf(second).get("domain"), DOMAIN)
        self.assertEqual(self.successResultOf(first).method, "none")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timers are gone

    def test_unexpected_id_ignored(self) -> None:
        """An answer to nothing we asked is ignored."""
        waiting = self.client.whoami()
        self.answer(77)
        self.assertNoResult(waiting)
        self.answer(1)
        self.successResultOf(waiting)

    def test_error_response(self) -> None:
        """An error answer fails that request only, with the matching error class."""
        first = self.client.lookup("nobody")
        second = self.client.whoami()
        self.protocol.dataReceived(encode_frame(error_response(1, errors.NotFound("no user nobody@example.org"))))
        failure = self.failureResultOf(first, errors.NotFound)
        self.assertEqual(failure.value.message, "no user nobody@example.org")
        self.assertNoResult(second)

    def test_request_timeout(self) -> None:
        """A request unanswered within the timeout fails with timeout; the connection is
        aborted, and the other waiting requests fail when it goes."""
        first = self.client.whoami()
        self.clock.advance(5)
        second = self.client.whoami()
        self.clock.advance(5)
        self.failureResultOf(first, errors.Timeout)
        self.assertTrue(self.transport.disconnected)
        self.assertNoResult(second)
        self.protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.failureResultOf(second, errors.Timeout)
        self.assertRaises(errors.Timeout, self.protocol.request, make_element("whoami"))

    def test_connection_level_error(self) -> None:
        """An error with id 0 (the registry is closing the connection) fails every waiting
        request with it, and every later one."""
        first = self.client.whoami()
        second = self.client.lookup("bob")
        self.protocol.dataReceived(encode_frame(error_response(0, errors.TooManyConnections())))
        self.failureResultOf(first, errors.TooManyConnections)
        self.failureResultOf(second, errors.TooManyConnections)
        self.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertRaises(errors.TooManyConnections, self.protocol.request, make_element("whoami"))

    def test_connection_lost(self) -> None:
        """A lost connection fails the waiting requests with connection-lost."""
        waiting = self.client.whoami()
        self.protocol.connectionLost(Failure(ConnectionError("reset by peer")))
        failure = self.failureResultOf(waiting, errors.ConnectionLost)
        self.assertIn("reset by peer", failure.value.message)
        self.successResultOf(self.protocol.disconnected)
        self.assertRaises(errors.ConnectionLost, self.protocol.request, make_element("whoami"))

    def test_broken_framing(self) -> None:
        """A registry that breaks the framing fails everything and is cut off."""
        waiting = self.client.whoami()
        self.protocol.dataReceived(b"\x00\x00\x00\x00")
        self.failureResultOf(waiting, errors.MalformedMessage)
        self.assertTrue(self.transport.disconnected)

    def test_response_with_many_elements(self) -> None:
        """A response with more elements than a request may hold (a full list-users page)
        is accepted; it does not fail the connection."""
        waiting = self.client.capabilities()
        element = make_element("capabilities", {"domain": DOMAIN})
        for _ in range(7000):
            sub_element(element, "operation", {"name": "x"})
        self.answer(1, [element])
        self.assertEqual(len(self.successResultOf(waiting)), 7000)
        self.assertFalse(self.protocol.closed)

    def test_unparseable_response(self) -> None:
        """A response that is not XML is a connection-level failure."""
        waiting = self.client.whoami()
        self.protocol.dataReceived(encode_frame(b"<response"))
        self.failureResultOf(waiting, errors.MalformedMessage)

    def test_close(self) -> None:
        """close() closes the connection and fires once it is gone."""
        closed = self.client.close()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.protocol.connectionLost(Failure(ConnectionError("done")))
        self.successResultOf(closed)


@implementer(ITCPTransport)
class FakeTCPTransport(StringTransport):
    """A TCP transport recording TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class HandshakeTests(unittest.TestCase):
    """The connection up to the end of the TLS handshake."""

    def test_no_nagle_delay(self) -> None:
        """Requests go out at once (TCP_NODELAY), from the start of the connection."""
        transport = StringTransport()
        transport.transport = FakeTCPTransport()  # type: ignore[attr-defined]
        RegistryClientProtocol(Clock()).makeConnection(transport)
        self.assertTrue(transport.transport.no_delay)  # type: ignore[attr-defined]

    def test_handshake_timeout_aborts(self) -> None:
        """A handshake that does not finish in time fails with timeout and the connection
        is aborted (not left open)."""
        clock = Clock()
        protocol = RegistryClientProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        waiting = Deferred.fromCoroutine(await_handshake(clock, protocol, 5))
        clock.advance(4.9)
        self.assertNoResult(waiting)
        clock.advance(0.1)
        self.failureResultOf(waiting, errors.Timeout)
        self.assertTrue(transport.disconnected)

    def test_handshake_in_time(self) -> None:
        """A handshake in time leaves no timer."""
        clock = Clock()
        protocol = RegistryClientProtocol(clock)
        protocol.makeConnection(StringTransport())
        waiting = Deferred.fromCoroutine(await_handshake(clock, protocol, 5))
        protocol.handshakeCompleted()
        self.successResultOf(waiting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lost_before_handshake(self) -> None:
        """A connection lost during the handshake reads as a verification failure."""
        protocol = RegistryClientProtocol(Clock())
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionError("certificate verify failed")))
        failure = self.failureResultOf(protocol.ready, errors.ServerVerificationFailed)
        self.assertIn("certificate verify failed", failure.value.message)
