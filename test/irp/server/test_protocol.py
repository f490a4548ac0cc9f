"""Unit tests of :class:`irp.server.protocol.RegistryServerProtocol` with Twisted's fakes.

The protocol runs over a :class:`StringTransport` (standing in for the TLS transport, with a
fake ``getHandle()`` for the peer certificate) and a :class:`Clock` for every timeout. Behind
it is a real :class:`Registry`, used only for operations that need no database (the
protocol is the subject here), plus test operations added to its operation table that
answer at once, wait for the test, or fail.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.identity import Identity
from common.pki.trust import TrustStore
from common.wire.framing import encode_frame
from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.server.dispatch import Operation
from irp.server.protocol import ConnectionLimits, RegistryServerFactory, RegistryServerProtocol
from irp.server.session import Session, SessionState
from test import pki
from test.irp.server.helpers import (
    CLIENT_HOST,
    FakeTLSTransport,
    make_registry,
    request,
    responses,
)


class Gate:
    """A test operation that waits until the test releases it."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[None]] = []

    async def handler(self, session: Session, element: Element) -> list[Element]:
        waiting: Deferred[None] = Deferred()
        self.waiting.append(waiting)
        await waiting
        return [make_element("done", {"n": element.get("n", "")})]

    def release(self) -> None:
        self.waiting.pop(0).callback(None)


async def echo(session: Session, element: Element) -> list[Element]:
    """A test operation answering at once."""
    return [make_element("echo", {"n": element.get("n", "")})]


async def boom(session: Session, element: Element) -> list[Element]:
    """A test operation with a bug."""
    raise ZeroDivisionError("bug")


def traceback_depth(error: BaseException) -> int:
    """How many frames ``error``'s traceback holds."""
    depth, frame = 0, error.__traceback__
    while frame is not None:
        depth, frame = depth + 1, frame.tb_next
    return depth


class ProtocolTestCase(unittest.TestCase):
    """Shared set-up: a factory with a fake clock and small limits."""

    limits = ConnectionLimits(
        max_request=4096,
        handshake_timeout=20.0,
        idle_timeout=300.0,
        frame_timeout=5.0,
        max_pipelined=4,
        max_connections_per_address=2,
    )

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = make_registry(self.clock)
        self.gate = Gate()
        self.registry.operations["slow"] = Operation(self.gate.handler, "anyone", ("n",))
        self.registry.operations["echo"] = Operation(echo, "anyone", ("n",))
        self.registry.operations["boom"] = Operation(boom, "anyone")
        self.factory = RegistryServerFactory(
            self.registry, pki.trust_store(pki.make_ca()), self.clock, self.limits
        )

    def connect(
        self, host: str = CLIENT_HOST, *, handshake: bool = True, peer: x509.Certificate | None = None
    ) -> tuple[RegistryServerProtocol, FakeTLSTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        assert isinstance(protocol, RegistryServerProtocol)
        transport = FakeTLSTransport(host, peer)
        protocol.makeConnection(transport)
        if handshake:
            protocol.handshakeCompleted()
        return protocol, transport

    def send(self, protocol: RegistryServerProtocol, *payloads: bytes) -> None:
        protocol.dataReceived(b"".join(encode_frame(payload) for payload in payloads))

    def assertClosedWith(self, transport: FakeTLSTransport, name: str) -> None:
        found = responses(transport)
        self.assertTrue(found, "nothing was written")
        self.assertEqual(found[-1][:2], (0, name), found)
        self.assertTrue(transport.disconnecting, "the connection was not closed")

    def assertOpen(self, protocol: RegistryServerProtocol, transport: FakeTLSTransport) -> None:
        """The connection still answers requests."""
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.send(protocol, request(99, '<echo n="still here"/>'))
        [(request_id, status, results)] = responses(transport)
        self.assertEqual((request_id, status, results[0].get("n")), (99, "ok", "still here"))


class RequestTests(ProtocolTestCase):
    """Requests and their answers."""

    def test_producer_registered(self) -> None:
        """The protocol registers a streaming producer of its transport, which pauses and
        resumes it until the connection is lost, and nothing after."""
        protocol, transport = self.connect()
        producer = transport.producer
        self.assertTrue(transport.streaming)
        producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        protocol.connectionLost()
        producer.pauseProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_no_nagle_delay(self) -> None:
        """Small answers go out at once: Nagle's algorithm is off on the TCP connection."""
        _protocol, transport = self.connect(handshake=False)
        self.assertTrue(transport.transport.no_delay)

    def test_request_answered(self) -> None:
        """A request gets a response with its id."""
        protocol, transport = self.connect()
        self.send(protocol, request(7, "<whoami/>"))
        [(request_id, status, results)] = responses(transport)
        self.assertEqual((request_id, status), (7, "ok"))
        self.assertEqual((results[0].tag, results[0].get("method")), ("session", "none"))

    def test_nothing_before_handshake(self) -> None:
        """Requests wait for the TLS handshake."""
        protocol, transport = self.connect(handshake=False)
        self.send(protocol, request(1, '<echo n="a"/>'))
        self.assertEqual(responses(transport), [])
        protocol.handshakeCompleted()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok")])

    def test_frame_split_anywhere(self) -> None:
        """A request arriving one byte at a time is answered once."""
        protocol, transport = self.connect()
        data = encode_frame(request(3, '<echo n="x"/>'))
        for index in range(len(data)):
            protocol.dataReceived(data[index : index + 1])
        self.assertEqual([r[:2] for r in responses(transport)], [(3, "ok")])

    def test_pipelined_in_order(self) -> None:
        """Pipelined requests are run one at a time and answered in order."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'), request(2, '<echo n="2"/>'), request(3, '<slow n="3"/>'))
        self.assertEqual(responses(transport), [])
        self.assertEqual(len(self.gate.waiting), 1)  # one at a time
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (2, "ok")])
        self.gate.release()
        found = responses(transport)
        self.assertEqual([r[:2] for r in found], [(1, "ok"), (2, "ok"), (3, "ok")])
        self.assertEqual([r[2][0].get("n") for r in found], ["1", "2", "3"])

    def test_many_pipelined_requests_in_one_read(self) -> None:
        """Thousands of requests that complete at once, arriving in one read, are all
        answered in order (run in a loop, not by recursion)."""
        self.factory.limits = ConnectionLimits(max_request=4096)
        protocol, transport = self.connect()
        count = 3000
        self.send(protocol, *(request(n, "<whoami/>") for n in range(1, count + 1)))
        found = responses(transport)
        self.assertEqual([r[0] for r in found], list(range(1, count + 1)))
        self.assertEqual({r[1] for r in found}, {"ok"})

    def test_refused_request_answered_in_order(self) -> None:
        """A request refused while parsing is answered in its turn, not before the
        requests sent ahead of it."""
        protocol, transport = self.connect()
        self.send(
            protocol,
            request(1, '<slow n="1"/>'),
            b'<request v="1" id="2" extra="x"><echo/></request>',
            request(3, '<echo n="3"/>'),
        )
        self.assertEqual(responses(transport), [])
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (2, "bad-request"), (3, "ok")])

    def test_unknown_operation(self) -> None:
        """An unknown operation is a non-fatal unknown-operation error."""
        protocol, transport = self.connect()
        self.send(protocol, request(5, "<teleport/>"))
        [(request_id, status, message)] = responses(transport)
        self.assertEqual((request_id, status), (5, "unknown-operation"))
        self.assertIn("teleport", message)
        self.assertOpen(protocol, transport)

    def test_unknown_attribute(self) -> None:
        """An unknown attribute on an operation is a non-fatal bad-request."""
        protocol, transport = self.connect()
        self.send(protocol, request(5, '<whoami user="bob"/>'))
        self.assertEqual([r[:2] for r in responses(transport)], [(5, "bad-request")])
        self.assertOpen(protocol, transport)

    def test_unknown_envelope_attribute(self) -> None:
        """An unknown attribute on <request> is answered with the request's id."""
        protocol, transport = self.connect()
        self.send(protocol, b'<request v="1" id="12" priority="high"><whoami/></request>')
        self.assertEqual([r[:2] for r in responses(transport)], [(12, "bad-request")])
        self.assertOpen(protocol, transport)

    def test_text_and_attributes_where_none_belong(self) -> None:
        """Text in an operation element, attributes on a text-only child and text in
        <endpoint> or <attributes> are non-fatal bad-requests."""
        protocol, transport = self.connect()
        self.send(
            protocol,
            request(1, "<whoami>hello</whoami>"),
            request(2, '<login user="alice"><password colour="red">pw</password></login>'),
            request(3, '<login user="alice"><password>pw</password>tail</login>'),
            request(4, '<register-address><endpoint address="192.0.2.1" port="1">x</endpoint></register-address>'),
            request(5, '<update-user><attributes x="1"/></update-user>'),
            request(6, '<update-user><attributes>text</attributes></update-user>'),
            request(7, '<login user="alice"><password><b/></password></login>'),
        )
        self.assertEqual([r[:2] for r in responses(transport)], [(n, "bad-request") for n in range(1, 8)])
        self.assertOpen(protocol, transport)

    def test_long_field_not_fatal(self) -> None:
        """A field over its own limit (a password over 1 024 characters) is a non-fatal
        invalid-argument: only a frame over max_request ends the connection."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, f'<login user="alice"><password>{"x" * 1025}</password></login>'))
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "invalid-argument")])
        self.assertOpen(protocol, transport)

    def test_needs_login(self) -> None:
        """Anonymous callers of logged-in operations get not-authenticated, and stay."""
        protocol, transport = self.connect()
        self.send(protocol, request(2, '<lookup user="bob"/>'))
        self.assertEqual([r[:2] for r in responses(transport)], [(2, "not-authenticated")])
        self.assertOpen(protocol, transport)

    def test_internal_error(self) -> None:
        """An unexpected exception is logged and answered with internal-error, no details."""
        protocol, transport = self.connect()
        self.send(protocol, request(4, "<boom/>"))
        [(request_id, status, message)] = responses(transport)
        self.assertEqual((request_id, status), (4, "internal-error"))
        self.assertNotIn("bug", message)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertOpen(protocol, transport)


class FatalInputTests(ProtocolTestCase):
    """Input after which the connection is closed, with a clear error first."""

    def test_oversized_frame(self) -> None:
        """A header announcing more than max_request: message-too-large, then close."""
        protocol, transport = self.connect()
        protocol.dataReceived(struct.pack(">I", self.limits.max_request + 1))
        self.assertClosedWith(transport, "message-too-large")

    def test_oversized_frame_before_handshake(self) -> None:
        """The cap holds before the handshake too (nothing is buffered past it)."""
        protocol, transport = self.connect(handshake=False)
        protocol.dataReceived(b"\xff\xff\xff\xff")
        self.assertClosedWith(transport, "message-too-large")

    def test_largest_frame_accepted(self) -> None:
        """A request of exactly max_request bytes is read (and judged on its content)."""
        protocol, transport = self.connect()
        prefix = b'<request v="1" id="1"><echo n="'
        suffix = b'"/></request>'
        payload = prefix + b"x" * (self.limits.max_request - len(prefix) - len(suffix)) + suffix
        self.send(protocol, payload)
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok")])

    def test_bad_id(self) -> None:
        """A request without a usable id cannot be answered in its own name: it is fatal,
        answered with id 0 (which always means the connection ends), after the requests
        before it."""
        for envelope in (b'<request v="1" id="x">', b'<request v="1" id="\xc2\xb2">', b'<request v="1" id="0">'):
            protocol, transport = self.connect()
            self.send(protocol, request(1, '<echo n="1"/>'), envelope + b"<whoami/></request>")
            self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (0, "malformed-message")])
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost()

    def test_operation_id_not_taken_for_the_request_id(self) -> None:
        """An operation's own id attribute is not the request's id."""
        protocol, transport = self.connect()
        self.send(protocol, b'<request v="1"><get-pkcs12 id="5"/></request>')
        self.assertClosedWith(transport, "malformed-message")

    def test_fatal_error_releases_the_transport(self) -> None:
        """A fatal error unregisters the protocol as producer (else the TLS layer holds
        close_notify back until the producer goes) and reads again (reading may be
        paused), so that the TLS shutdown can complete at once."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'), b"<broken")
        self.assertEqual(transport.producerState, "paused")
        self.assertIsNotNone(transport.producer)
        self.gate.release()
        self.assertClosedWith(transport, "malformed-message")
        self.assertIsNone(transport.producer)
        self.assertEqual(transport.producerState, "producing")

    def test_empty_frame(self) -> None:
        """A zero-length frame is malformed-message."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\x00\x00\x00")
        self.assertClosedWith(transport, "malformed-message")

    def test_malformed_xml(self) -> None:
        """Bytes that are not XML: malformed-message, close."""
        protocol, transport = self.connect()
        self.send(protocol, b"<request v='1' id='1'><whoami></request>")
        self.assertClosedWith(transport, "malformed-message")

    def test_forbidden_markup(self) -> None:
        """DTDs, entities, bombs, comments, CDATA and processing instructions:
        forbidden-markup, close."""
        documents = [
            (
                b'<!DOCTYPE request [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
                b'<request v="1" id="1"><echo n="&b;"/></request>'
            ),
            b'<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><request v="1" id="1"><whoami/></request>',
            b'<request v="1" id="1"><echo n="&ext;"/></request>',
            b'<request v="1" id="1"><!-- hello --><whoami/></request>',
            b'<request v="1" id="1"><echo><![CDATA[x]]></echo></request>',
            b'<request v="1" id="1"><?php x?><whoami/></request>',
            b'<?xml-stylesheet href="x"?><request v="1" id="1"><whoami/></request>',
        ]
        for document in documents:
            protocol, transport = self.connect()
            self.send(protocol, document)
            self.assertClosedWith(transport, "forbidden-markup")
            protocol.connectionLost()

    def test_unsupported_version(self) -> None:
        """Another protocol version: unsupported-version, close."""
        protocol, transport = self.connect()
        self.send(protocol, b'<request v="2" id="1"><whoami/></request>')
        self.assertClosedWith(transport, "unsupported-version")

    def test_requests_after_fatal_error_ignored(self) -> None:
        """Requests before a fatal one are answered; nothing after it is run, and later
        data is ignored."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<echo n="1"/>'), b"<broken", request(3, '<echo n="3"/>'))
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (0, "malformed-message")])
        self.assertTrue(transport.disconnecting)
        self.send(protocol, request(4, '<echo n="4"/>'))
        self.assertEqual(len(responses(transport)), 2)

    def test_fatal_error_behind_running_request(self) -> None:
        """A fatal request behind a running one stops reading at once; the running one
        is answered, then the error, then the connection closes."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'), b'<request v="1" id="2"><!--x--></request>')
        self.assertEqual(transport.producerState, "paused")
        self.assertFalse(transport.disconnecting)
        self.send(protocol, request(3, '<echo n="3"/>'))
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (0, "forbidden-markup")])
        self.assertTrue(transport.disconnecting)

    def test_framing_error_behind_running_request(self) -> None:
        """A broken frame header behind a running request: that request is answered,
        then the refusal, then the connection closes."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'))
        protocol.dataReceived(b"\xff\xff\xff\xff")
        self.assertFalse(transport.disconnecting)
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (0, "message-too-large")])
        self.assertTrue(transport.disconnecting)

    def test_abort_when_peer_does_not_read(self) -> None:
        """After a fatal error the connection is aborted if it has not closed within
        frame_timeout (a peer that does not read cannot hold it open)."""
        protocol, transport = self.connect()
        self.send(protocol, b"<broken")
        self.assertFalse(transport.disconnected)
        self.clock.advance(self.limits.frame_timeout)
        self.assertTrue(transport.disconnected)

    def test_no_abort_after_close(self) -> None:
        """Once the connection is lost, no timer is left behind."""
        protocol, _transport = self.connect()
        self.send(protocol, b"<broken")
        protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TimeoutTests(ProtocolTestCase):
    """Handshake, idle and frame timeouts, on the fake clock."""

    def test_handshake_timeout(self) -> None:
        """A connection that never completes the TLS handshake is aborted at its deadline
        (there is no TLS session to say why in, and its slot is freed at once)."""
        protocol, transport = self.connect(handshake=False)
        self.clock.advance(self.limits.handshake_timeout - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(responses(transport), [])
        self.assertTrue(protocol.core.closing)  # type: ignore[union-attr]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no second deadline waits

    def test_silent_anonymous_connection(self) -> None:
        """An anonymous connection that sends nothing is closed after handshake_timeout."""
        _protocol, transport = self.connect()
        self.clock.advance(self.limits.handshake_timeout - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertClosedWith(transport, "timeout")

    def test_anonymous_idle_restarts_after_each_answer(self) -> None:
        """Each answered request gives the connection another idle period."""
        protocol, transport = self.connect()
        for _ in range(3):
            self.clock.advance(self.limits.handshake_timeout - 1)
            self.send(protocol, request(1, "<whoami/>"))
        self.assertFalse(transport.disconnecting)

    def test_authenticated_idle_timeout(self) -> None:
        """A logged-in connection may stay silent for idle_timeout, not longer."""
        self.factory.authenticate = self.fake_login  # type: ignore[method-assign]
        _protocol, transport = self.connect(peer=pki.issue_user(pki.make_ca()).certificate)
        self.clock.advance(self.limits.handshake_timeout + 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(self.limits.idle_timeout - self.limits.handshake_timeout - 1)
        self.assertClosedWith(transport, "timeout")

    def fake_login(self, session: Session, leaf: x509.Certificate, intermediates: list[Any]) -> Deferred[None]:
        session.identity = Identity("alice", "example.org")
        session.state = SessionState.CERTIFICATE
        return succeed(None)

    def test_no_idle_timeout_while_busy(self) -> None:
        """A request the server is still working on does not count as idleness."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'))
        self.clock.advance(self.limits.handshake_timeout * 3)
        self.assertFalse(transport.disconnecting)
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok")])

    def test_slow_frame(self) -> None:
        """A frame started but not finished within frame_timeout: timeout, close."""
        protocol, transport = self.connect()
        data = encode_frame(request(1, "<whoami/>"))
        protocol.dataReceived(data[:10])
        self.clock.advance(self.limits.frame_timeout - 1)
        protocol.dataReceived(data[10:12])  # trickling does not help
        self.clock.advance(1)
        self.assertClosedWith(transport, "timeout")

    def test_header_only(self) -> None:
        """A peer that sends a frame header and then stalls is cut off after frame_timeout."""
        protocol, transport = self.connect()
        protocol.dataReceived(struct.pack(">I", 100))
        self.clock.advance(self.limits.frame_timeout)
        self.assertClosedWith(transport, "timeout")

    def test_frame_deadline_per_frame(self) -> None:
        """Each frame has its own deadline: a steady stream of pipelined requests whose
        chunks end inside frames is not mistaken for one slow frame."""
        protocol, transport = self.connect()
        stream = b"".join(encode_frame(request(n, f'<echo n="{n}"/>')) for n in range(1, 7))
        chunk = len(stream) // 6 + 3  # every chunk ends inside a frame
        for start in range(0, len(stream), chunk):
            protocol.dataReceived(stream[start : start + chunk])
            self.clock.advance(self.limits.frame_timeout - 1)
        self.assertEqual([r[:2] for r in responses(transport)], [(n, "ok") for n in range(1, 7)])
        self.assertFalse(transport.disconnecting)

    def test_complete_frames_cancel_frame_deadline(self) -> None:
        """Once a frame is complete its deadline is gone."""
        protocol, transport = self.connect()
        data = encode_frame(request(1, "<whoami/>"))
        protocol.dataReceived(data[:5])
        protocol.dataReceived(data[5:])
        self.clock.advance(self.limits.frame_timeout + 1)
        self.assertFalse(transport.disconnecting)

    def test_timers_cancelled_on_close(self) -> None:
        """connectionLost leaves no timer behind."""
        protocol, _transport = self.connect()
        protocol.dataReceived(b"\x00\x00")
        protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionLimitTests(ProtocolTestCase):
    """Connections per address."""

    def test_too_many_connections(self) -> None:
        """Beyond max_connections_per_address, connections are refused with an error."""
        self.connect()
        self.connect()
        _third, transport = self.connect()
        self.assertClosedWith(transport, "too-many-connections")
        other, other_transport = self.connect("192.0.2.99")
        self.assertOpen(other, other_transport)

    def test_slot_freed_on_close(self) -> None:
        """A closed connection frees its slot; a refused one never took one."""
        first, _ = self.connect()
        self.connect()
        refused, _ = self.connect()
        refused.connectionLost()
        first.connectionLost()
        fourth, transport = self.connect()
        self.assertOpen(fourth, transport)
        self.assertEqual(self.factory.connections.count(CLIENT_HOST), 2)


class FlowControlTests(ProtocolTestCase):
    """Back-pressure in both directions."""

    def test_write_back_pressure(self) -> None:
        """While the transport's buffer is full (pauseProducing), no further request is
        run and reading stops; resumeProducing carries on."""
        protocol, transport = self.connect()
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.send(protocol, request(1, '<echo n="1"/>'), request(2, '<echo n="2"/>'))
        self.assertEqual(responses(transport), [])
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (2, "ok")])

    def test_paused_while_busy(self) -> None:
        """A pause during a request lets it finish but starts nothing more."""
        protocol, transport = self.connect()
        self.send(protocol, request(1, '<slow n="1"/>'), request(2, '<echo n="2"/>'))
        protocol.pauseProducing()
        self.gate.release()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok")])
        protocol.resumeProducing()
        self.assertEqual([r[:2] for r in responses(transport)], [(1, "ok"), (2, "ok")])

    def test_client_that_stops_reading(self) -> None:
        """A client that never reads our answers is cut off after idle_timeout."""
        protocol, transport = self.connect()
        protocol.pauseProducing()
        self.clock.advance(self.limits.idle_timeout)
        self.assertClosedWith(transport, "timeout")

    def test_pipelining_cap_pauses_reading(self) -> None:
        """More than max_pipelined queued requests pause reading until they are done."""
        protocol, transport = self.connect()
        count = self.limits.max_pipelined + 2
        self.send(protocol, *(request(n, f'<slow n="{n}"/>') for n in range(1, count + 1)))
        self.assertEqual(transport.producerState, "paused")
        for _ in range(count):
            self.gate.release()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([r[0] for r in responses(transport)], list(range(1, count + 1)))

    def test_pipelining_cap_holds_across_a_consumer_pause(self) -> None:
        """A client that pauses and resumes reading our answers while too many requests
        are queued does not get its input read again before the queue drains."""
        protocol, transport = self.connect()
        count = self.limits.max_pipelined + 2
        self.send(protocol, *(request(n, f'<slow n="{n}"/>') for n in range(1, count + 1)))
        protocol.pauseProducing()
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        for _ in range(count):
            self.gate.release()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([r[0] for r in responses(transport)], list(range(1, count + 1)))


class CertificateLoginTests(ProtocolTestCase):
    """The TLS client certificate."""

    def test_requests_wait_for_certificate_check(self) -> None:
        """Requests sent during the certificate check run after it, as the user."""
        checking: Deferred[None] = Deferred()
        seen: list[tuple[Session, bytes]] = []

        def authenticate(session: Session, leaf: bytes, intermediates: list[Any]) -> Deferred[None]:
            seen.append((session, leaf))
            return checking

        self.factory.authenticate = authenticate  # type: ignore[method-assign]
        certificate = pki.issue_user(pki.make_ca()).certificate
        protocol, transport = self.connect(peer=certificate)
        self.assertEqual([leaf for _, leaf in seen], [certificate.public_bytes(serialization.Encoding.DER)])
        self.send(protocol, request(1, "<whoami/>"))
        self.assertEqual(responses(transport), [])
        seen[0][0].identity = Identity("alice", "example.org")
        seen[0][0].state = SessionState.CERTIFICATE
        self.registry.caller_is_admin = lambda session: succeed(False)  # type: ignore[method-assign, assignment, return-value]
        checking.callback(None)
        [(request_id, status, results)] = responses(transport)
        self.assertEqual((request_id, status), (1, "ok"))
        self.assertEqual((results[0].get("user"), results[0].get("method")), ("alice@example.org", "certificate"))

    def test_bad_certificate_refuses_every_login_request(self) -> None:
        """A certificate the trust store refuses makes every request that needs a login
        (and whoami) fail with certificate-rejected, readably, in the application layer;
        public requests still work."""
        bad = pki.bad_user(pki.make_ca(), "expired")
        protocol, transport = self.connect(peer=bad.certificate)
        self.send(protocol, request(1, "<capabilities/>"), request(2, "<whoami/>"), request(3, '<lookup user="bob"/>'))
        self.assertEqual(
            [r[:2] for r in responses(transport)],
            [(1, "ok"), (2, "certificate-rejected"), (3, "certificate-rejected")],
        )
        self.assertFalse(transport.disconnecting)

    def test_refusals_keep_no_history(self) -> None:
        """Each refusal of a refused-certificate connection is a new error whose traceback
        stays the same size, however many requests came before (one error object raised
        again for every request kept every traceback and grew without bound)."""
        bad = pki.bad_user(pki.make_ca(), "expired")
        protocol, transport = self.connect(peer=bad.certificate)
        refusals: list[BaseException] = []
        handle_now = self.registry.handle_now

        def recording(session: Session, request: Any) -> Any:
            result = handle_now(session, request)
            if isinstance(result, Deferred):
                result.addErrback(lambda failure: refusals.append(failure.value) or failure)
            return result

        self.registry.handle_now = recording  # type: ignore[method-assign]
        for number in range(1, 501):
            self.send(protocol, request(number, '<lookup user="bob"/>'))
        self.assertEqual(len(refusals), 500)
        self.assertEqual({type(error) for error in refusals}, {errors.CertificateRejected})
        self.assertEqual(len({id(error) for error in refusals}), 500, "one error object was raised again")
        depths = [traceback_depth(error) for error in (refusals[0], refusals[-1])]
        self.assertEqual(depths[0], depths[1])
        self.assertEqual([r[1] for r in responses(transport)], ["certificate-rejected"] * 500)

    def test_refusals_do_not_extend_the_idle_deadline(self) -> None:
        """Requests refused for the refused certificate are not activity: the connection
        closes at its deadline however many it sends (public requests still count)."""
        bad = pki.bad_user(pki.make_ca(), "expired")
        protocol, transport = self.connect(peer=bad.certificate)
        self.clock.advance(self.limits.handshake_timeout - 2)
        self.send(protocol, request(1, '<lookup user="bob"/>'), request(2, "<whoami/>"))
        self.clock.advance(1)
        self.send(protocol, request(3, '<lookup user="bob"/>'))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertClosedWith(transport, "timeout")

    def test_certificate_check_crash(self) -> None:
        """If checking the certificate fails unexpectedly, the connection is closed with
        internal-error (and the failure logged)."""
        def crash(session: Session, leaf: x509.Certificate, intermediates: list[Any]) -> Deferred[list[Element]]:
            return Deferred.fromCoroutine(boom(session, make_element("x")))

        self.factory.authenticate = crash  # type: ignore[method-assign]
        _protocol, transport = self.connect(peer=pki.issue_user(pki.make_ca()).certificate)
        self.assertClosedWith(transport, "internal-error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class FactoryTests(unittest.TestCase):
    """RegistryServerFactory."""

    def test_defaults(self) -> None:
        """Default limits, and one connection counter per factory."""
        clock = Clock()
        factory = RegistryServerFactory(make_registry(clock), TrustStore([pki.make_ca().root_certificate]), clock)
        self.assertEqual(factory.limits, ConnectionLimits())
        self.assertEqual(factory.connections.limit, ConnectionLimits().max_connections_per_address)


class AdmissionTests(unittest.TestCase):
    """Which new connections get TLS at all (RegistryServerFactory.admit)."""

    def test_within_limit_and_a_few_readable_refusals(self) -> None:
        from irp.server.admission import READABLE_REFUSALS, REFUSAL_WINDOW
        from irp.server.protocol import RegistryServerFactory

        clock = Clock()
        factory = RegistryServerFactory(make_registry(clock), None, clock, ConnectionLimits(max_connections_per_address=2))  # type: ignore[arg-type]
        for _ in range(2):
            self.assertTrue(factory.admit("192.0.2.1"))
            factory.connections.acquire("192.0.2.1")
        verdicts = [factory.admit("192.0.2.1") for _ in range(READABLE_REFUSALS + 5)]
        self.assertEqual(verdicts, [True] * READABLE_REFUSALS + [False] * 5)
        self.assertTrue(factory.admit("192.0.2.2"))  # other addresses are not affected
        clock.advance(REFUSAL_WINDOW)
        self.assertTrue(factory.admit("192.0.2.1"))  # readable again after the window
        factory.connections.release("192.0.2.1")
        self.assertTrue(all(factory.admit("192.0.2.1") for _ in range(20)))  # within its limit
