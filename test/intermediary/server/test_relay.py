"""The intermediary's relay: the circuit core (pure), the relay's bookkeeping with Twisted's
fakes and a fake clock (ports, reservations, limits, timeouts), the join port (its core and
adapter on fake transports: joins, refusals, the failed-join limiter), then real loopback
TCP: a dialer and an agent joining on the real join port, and the whole service.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.wire.framing import encode_frame
from intermediary import errors as intermediary_errors
from intermediary.circuit import circuit_label
from intermediary.client import IntermediaryClient, connect_intermediary
from intermediary.joinframes import encode_join
from intermediary.server.join import JOINED_FRAME, JoinCore, JoinState
from intermediary.server.relay import Relay, RelayLimits, RelayUnavailable, Reservation, UnknownCircuit
from intermediary.server.service import IntermediaryService, IntermediarySettings
from intermediary.server.splice import (
    Circuit,
    Closed,
    PauseDialer,
    ResumeDialer,
    State,
    ToAgent,
    ToDialer,
)
from test.helpers import EnrolledUser, frames_of, make_profile
from test.irp.server.cross_domain import CrossDomainTestCase

BOB = Identity.parse("bob@example.org")
CAROL = Identity.parse("carol@example.org")
PORTS = range(46050, 46054)
JOIN_PORT = 46049


class CircuitCoreTests(TestCase):
    """The sans-I/O core: buffering, joining, caps, the table."""

    def test_pending_buffers_pauses_when_full_and_ends_on_overflow(self) -> None:
        circuit = Circuit(pending_buffer=10, byte_cap=100)
        self.assertEqual(circuit.dialer_data(b"12345"), [])
        self.assertEqual(circuit.dialer_data(b"67890"), [PauseDialer()])
        self.assertEqual(circuit.buffered, 10)
        actions = circuit.dialer_data(b"x")
        self.assertEqual(len(actions), 1)
        self.assertIsInstance(actions[0], Closed)
        self.assertIs(circuit.state, State.CLOSED)
        self.assertEqual(circuit.buffered, 0)

    def test_pending_pauses_before_a_read_could_overflow(self) -> None:
        circuit = Circuit(pending_buffer=100, byte_cap=1000, read_size=40)
        self.assertEqual(circuit.dialer_data(b"x" * 50), [])
        self.assertEqual(circuit.dialer_data(b"x" * 10), [PauseDialer()])

    def test_join_forwards_the_buffer_then_both_ways_counted(self) -> None:
        circuit = Circuit(pending_buffer=10, byte_cap=100)
        circuit.dialer_data(b"hello")
        self.assertEqual(circuit.join(), [ToAgent(b"hello"), ResumeDialer()])
        self.assertEqual(circuit.dialer_data(b"more"), [ToAgent(b"more")])
        self.assertEqual(circuit.agent_data(b"answer"), [ToDialer(b"answer")])
        self.assertEqual((circuit.up, circuit.down), (9, 6))

    def test_byte_cap_each_way(self) -> None:
        for send in ("dialer_data", "agent_data"):
            circuit = Circuit(pending_buffer=10, byte_cap=8)
            circuit.join()
            self.assertEqual(len(getattr(circuit, send)(b"12345678")), 1)
            actions = getattr(circuit, send)(b"9")
            self.assertIsInstance(actions[0], Closed)
            self.assertIn("8 bytes", actions[0].reason)
            self.assertEqual(getattr(circuit, send)(b"more"), [])

    def test_closed_ignores_everything_and_bad_events_are_errors(self) -> None:
        circuit = Circuit(pending_buffer=10, byte_cap=8)
        self.assertRaises(ValueError, circuit.agent_data, b"too early")
        self.assertEqual(circuit.end("gone"), [Closed("gone")])
        self.assertEqual(circuit.end("again"), [])
        self.assertEqual(circuit.join(), [])
        self.assertEqual(circuit.reason, "gone")


class CircuitPropertyTests(TestCase):
    """Whatever the chunking: bytes pass unchanged and in order, the pending buffer is never
    exceeded, and the caps end the circuit at the first byte over them."""

    @settings(max_examples=200, deadline=None)
    @given(
        before=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
        after=st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=40)), max_size=30),
        cap=st.integers(min_value=1, max_value=400),
    )
    def test_transparent_and_bounded(self, before: list[bytes], after: list[tuple[bool, bytes]], cap: int) -> None:
        circuit = Circuit(pending_buffer=100, byte_cap=cap, read_size=40)
        to_agent, to_dialer, sent_up, sent_down = [], [], [], []
        closed = False

        def apply(actions: list[Any]) -> None:
            nonlocal closed
            for action in actions:
                if isinstance(action, ToAgent):
                    to_agent.append(action.data)
                elif isinstance(action, ToDialer):
                    to_dialer.append(action.data)
                elif isinstance(action, Closed):
                    closed = True

        paused = False
        for chunk in before:
            if paused or closed:
                break
            sent_up.append(chunk)
            actions = circuit.dialer_data(chunk)
            paused = PauseDialer() in actions
            apply(actions)
            self.assertLessEqual(circuit.buffered, 100)
        if not closed:
            apply(circuit.join())
        for from_dialer, chunk in after:
            if closed:
                break
            (sent_up if from_dialer else sent_down).append(chunk)
            apply(circuit.dialer_data(chunk) if from_dialer else circuit.agent_data(chunk))
        up, down = b"".join(to_agent), b"".join(to_dialer)
        self.assertLessEqual(max(len(up), len(down)), cap)
        self.assertTrue(b"".join(sent_up).startswith(up) and b"".join(sent_down).startswith(down))
        if not closed:
            self.assertEqual((up, down), (b"".join(sent_up), b"".join(sent_down)))
        self.assertEqual((circuit.up, circuit.down), (len(up), len(down)))


class BusyReactor(MemoryReactorClock):
    """A fake reactor on which some ports are held by other programs."""

    def __init__(self, busy: set[int]) -> None:
        super().__init__()
        self.busy = busy
        self.listening: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("in use"))
        listening = super().listenTCP(port, factory, backlog, interface)
        self.listening.add(port)
        stop = listening.stopListening

        def stopListening() -> Any:
            self.listening.discard(port)
            return stop()

        listening.stopListening = stopListening
        return listening


class Fixture:
    """A relay on a fake reactor, with helpers to connect dialers and legs."""

    def __init__(self, limits: RelayLimits | None = None, busy: set[int] | None = None) -> None:
        self.reactor = BusyReactor(busy or set())
        self.reactor.advance(1_000_000)
        self.relay = Relay(self.reactor, interface="2001:db8::5", ports=PORTS, limits=limits, join_port=JOIN_PORT)
        self.relay.start()
        self.notified: list[tuple[str, str]] = []

    def notify(self, circuit_id: str, where: str) -> None:
        self.notified.append((circuit_id, where))

    def reserve(self, user: Identity = BOB, notify: Any = None) -> Reservation:
        results: list[Any] = []
        self.relay.reserve(user, notify or self.notify).addBoth(results.append)
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def dial(self, port: int, host: str = "192.0.2.7", source_port: int = 40000) -> tuple[Protocol, StringTransport]:
        factory = next(f for number, f, _, _ in reversed(self.reactor.tcpServers) if number == port)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, source_port), lenient=True)
        protocol.makeConnection(transport)
        return protocol, transport

    def joined(self, user: Identity = BOB) -> tuple[Protocol, StringTransport, StringTransport, Any]:
        reservation = self.reserve(user)
        dialer, dialer_transport = self.dial(reservation.port)
        leg = StringTransport(lenient=True)
        splice = self.relay.join(self.notified[-1][0], leg)
        return dialer, dialer_transport, leg, splice

    def join_connection(self, host: str = "192.0.2.9", source_port: int = 50000) -> tuple[Protocol, StringTransport]:
        """A connection to the join port (its protocol and transport)."""
        return self.dial(JOIN_PORT, host, source_port)


class ReservationTests(TestCase):
    """Ports: allocation, renewal, release, expiry, stop."""

    def test_reserve_listens_on_the_interface(self) -> None:
        fixture = Fixture()
        reservation = fixture.reserve()
        self.assertEqual(reservation, Reservation("2001:db8::5", 46050, int(fixture.reactor.seconds()) + 3600, JOIN_PORT))
        self.assertEqual(
            [(port, interface) for port, _, _, interface in fixture.reactor.tcpServers],
            [(JOIN_PORT, "2001:db8::5"), (46050, "2001:db8::5")],
        )
        self.assertEqual(fixture.reserve(CAROL).port, 46051)

    def test_advertised_address(self) -> None:
        reactor = MemoryReactorClock()
        relay = Relay(reactor, interface="::", ports=PORTS, address="2001:db8::9")
        failure = self.failureResultOf(relay.reserve(BOB, print), RelayUnavailable)  # the join port is not bound yet
        self.assertIn("not started", failure.value.message)
        relay.start()
        self.assertEqual(self.successResultOf(relay.reserve(BOB, print)).address, "2001:db8::9")

    def test_second_reserve_keeps_the_port_and_moves_the_target(self) -> None:
        fixture = Fixture()
        first = fixture.reserve()
        later: list[tuple[str, str]] = []
        fixture.reactor.advance(100)
        second = fixture.reserve(BOB, lambda cid, where: later.append((cid, where)))
        self.assertEqual(second.port, first.port)
        self.assertEqual(second.expires, first.expires + 100)
        self.assertEqual(len(fixture.reactor.tcpServers), 2)  # the join port and one relay port
        fixture.dial(first.port)
        self.assertEqual((len(fixture.notified), len(later)), (0, 1))
        self.assertEqual(later[0][1], "192.0.2.7 40000")
        # The older connection's loss does not end the reservation the newer one holds.
        fixture.relay.release(BOB, fixture.notify)
        self.assertEqual(len(fixture.relay.circuits(BOB)), 1)

    def test_busy_ports_are_skipped_and_exhaustion_is_unavailable(self) -> None:
        fixture = Fixture(busy={46050, 46052})
        self.assertEqual(fixture.reserve(BOB).port, 46051)
        self.assertEqual(fixture.reserve(CAROL).port, 46053)
        failure = self.failureResultOf(fixture.relay.reserve(Identity.parse("dave@example.org"), print), RelayUnavailable)
        self.assertIn("no relay port", failure.value.message)

    def test_released_port_is_reused_last(self) -> None:
        fixture = Fixture()
        first = fixture.reserve(BOB)
        fixture.relay.release(BOB, fixture.notify)
        self.assertEqual(fixture.reserve(CAROL).port, first.port + 1)
        self.assertEqual(fixture.reserve(BOB).port, first.port + 2)

    def test_release_closes_the_port_and_every_circuit(self) -> None:
        fixture = Fixture()
        _, joined_dialer, leg, _ = fixture.joined()
        _, pending_dialer = fixture.dial(46050, source_port=40001)
        self.assertEqual(fixture.reactor.listening, {JOIN_PORT, 46050})
        fixture.relay.release(BOB, fixture.notify)
        self.assertTrue(joined_dialer.disconnecting and leg.disconnecting and pending_dialer.disconnecting)
        self.assertEqual(fixture.reactor.listening, {JOIN_PORT})
        self.assertEqual(fixture.relay.circuits(BOB), [])
        self.assertRaises(UnknownCircuit, fixture.relay.join, fixture.notified[-1][0], StringTransport())

    def test_expiry_without_renewal(self) -> None:
        fixture = Fixture()
        fixture.reserve()
        fixture.reactor.advance(3000)
        fixture.reserve()  # renewed: lives 3600 s from now
        fixture.reactor.advance(3000)
        self.assertEqual(len(fixture.relay._held), 1)
        fixture.reactor.advance(601)
        self.assertEqual(fixture.relay._held, {})

    def test_stop_closes_everything_and_refuses_new_reservations(self) -> None:
        fixture = Fixture()
        _, dialer, leg, _ = fixture.joined()
        fixture.reserve(CAROL)
        self.successResultOf(fixture.relay.stop())
        self.assertTrue(dialer.disconnecting and leg.disconnecting)
        self.assertEqual(fixture.relay._held, {})
        self.assertEqual(fixture.reactor.listening, set())
        self.failureResultOf(fixture.relay.reserve(BOB, print), RelayUnavailable)


class CircuitTests(TestCase):
    """Circuits on fake transports: joining, forwarding, flow control, limits, timeouts."""

    def test_dialer_bytes_wait_for_the_join_then_flow_both_ways(self) -> None:
        fixture = Fixture()
        reservation = fixture.reserve()
        dialer, dialer_transport = fixture.dial(reservation.port)
        circuit_id, where = fixture.notified[0]
        self.assertEqual((len(circuit_id), where), (32, "192.0.2.7 40000"))
        dialer.dataReceived(b"client hello")
        leg = StringTransport(lenient=True)
        splice = fixture.relay.join(circuit_id, leg, b"<greeting>")
        self.assertEqual(leg.value(), b"<greeting>client hello")
        # Flow control is coupled both ways.
        self.assertIs(leg.producer, splice.dialer_valve)
        self.assertIs(dialer_transport.producer, splice.leg_valve)
        self.assertTrue(leg.streaming and dialer_transport.streaming)
        splice.data_received(b"server hello")
        dialer.dataReceived(b"finished")
        self.assertEqual(dialer_transport.value(), b"server hello")
        self.assertEqual(leg.value(), b"<greeting>client hellofinished")

    def test_join_refusals(self) -> None:
        fixture = Fixture()
        fixture.reserve()
        fixture.reserve(CAROL)
        fixture.dial(46050)
        fixture.dial(46051, source_port=40001)
        bobs, carols = fixture.notified[0][0], fixture.notified[1][0]
        self.assertNotEqual(bobs, carols)
        self.assertRaises(UnknownCircuit, fixture.relay.join, "0" * 32, StringTransport())
        # The id is the secret: whoever holds it joins that circuit (the user's own).
        self.assertIs(fixture.relay.join(carols, StringTransport()).user, CAROL)
        fixture.relay.join(bobs, StringTransport(lenient=True))
        self.assertRaises(UnknownCircuit, fixture.relay.join, bobs, StringTransport())  # single use

    def test_a_leg_that_cannot_join_ends_the_circuit(self) -> None:
        fixture = Fixture()
        fixture.reserve()
        _, dialer_transport = fixture.dial(46050)
        leg = StringTransport(lenient=True)
        leg.registerProducer(object(), True)  # a producer the adapter did not give up
        self.assertRaises(RuntimeError, fixture.relay.join, fixture.notified[0][0], leg)
        self.assertTrue(dialer_transport.disconnecting and leg.disconnecting)
        self.assertEqual(fixture.relay.circuits(BOB), [])

    def test_join_timeout(self) -> None:
        fixture = Fixture()
        fixture.reserve()
        _, dialer_transport = fixture.dial(46050)
        fixture.reactor.advance(9.9)
        self.assertFalse(dialer_transport.disconnecting)
        with capturedLogs() as logs:
            fixture.reactor.advance(0.2)
        self.assertTrue(dialer_transport.disconnecting)
        self.assertRaises(UnknownCircuit, fixture.relay.join, fixture.notified[0][0], StringTransport())  # expired
        self.assertIn("did not join within 10 s", " ".join(formatEvent(e) for e in logs))

    def test_pending_buffer_pauses_the_dialer_and_overflow_ends_it(self) -> None:
        fixture = Fixture(RelayLimits(pending_buffer=1000))
        fixture.reserve()
        dialer, transport = fixture.dial(46050)
        self.assertEqual(transport.producerState, "producing")
        # One more read of up to 64 KiB could overflow 1000 bytes: paused after the first.
        dialer.dataReceived(b"x" * 500)
        self.assertEqual(transport.producerState, "paused")
        leg = StringTransport(lenient=True)
        fixture.relay.join(fixture.notified[0][0], leg)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(leg.value()), 500)
        # Another dialer that ignores the pause and sends more is dropped.
        dialer, transport = fixture.dial(46050, source_port=40001)
        dialer.dataReceived(b"x" * 1001)
        self.assertTrue(transport.disconnecting)

    def test_slow_side_pauses_the_other(self) -> None:
        fixture = Fixture()
        _, dialer_transport, leg, splice = fixture.joined()
        # The agent's leg is full: its consumer pauses the dialer, and resumes it.
        leg.producer.pauseProducing()
        self.assertEqual(dialer_transport.producerState, "paused")
        leg.producer.resumeProducing()
        self.assertEqual(dialer_transport.producerState, "producing")
        # The dialer is slow: the agent's leg stops being read.
        dialer_transport.producer.pauseProducing()
        self.assertEqual(leg.producerState, "paused")
        self.assertTrue(splice.leg_valve.paused)
        dialer_transport.producer.resumeProducing()
        self.assertEqual(leg.producerState, "producing")

    def test_closing_one_leg_closes_the_other(self) -> None:
        fixture = Fixture()
        dialer, _, leg, _ = fixture.joined()
        dialer.connectionLost(Failure(ConnectionError("gone")))
        self.assertTrue(leg.disconnecting)
        self.assertIsNone(leg.producer)
        _, dialer_transport, _, splice = fixture.joined()
        splice.leg_lost()
        self.assertTrue(dialer_transport.disconnecting)
        splice.data_received(b"after the end")
        self.assertEqual(dialer_transport.value(), b"")
        self.assertEqual(fixture.relay.circuits(BOB), [])

    def test_byte_cap_ends_the_circuit(self) -> None:
        fixture = Fixture(RelayLimits(circuit_bytes=100))
        dialer, dialer_transport, leg, splice = fixture.joined()
        splice.data_received(b"a" * 100)
        self.assertFalse(leg.disconnecting)
        with capturedLogs() as logs:
            splice.data_received(b"b")
        self.assertTrue(leg.disconnecting and dialer_transport.disconnecting)
        self.assertEqual(dialer_transport.value(), b"a" * 100)
        text = " ".join(formatEvent(e) for e in logs)
        self.assertIn("100 bytes from the agent reached", text)
        self.assertIn("0 bytes dialer->agent, 100 bytes agent->dialer", text)
        self.assertNotIn("aaaa", text)

    def test_idle_and_lifetime(self) -> None:
        fixture = Fixture(RelayLimits(circuit_idle=60, circuit_lifetime=1000))
        dialer, dialer_transport, leg, splice = fixture.joined()
        for _ in range(3):
            fixture.reactor.advance(50)
            dialer.dataReceived(b"keep")
        self.assertFalse(leg.disconnecting)
        fixture.reactor.advance(59)
        self.assertFalse(leg.disconnecting)
        fixture.reactor.advance(2)
        self.assertTrue(leg.disconnecting)
        self.assertIn("idle for 60 s", splice.core.reason)
        fixture = Fixture(RelayLimits(circuit_idle=60, circuit_lifetime=200))
        dialer, dialer_transport, leg, splice = fixture.joined()
        for _ in range(5):
            fixture.reactor.advance(45)
            splice.data_received(b"busy")
        self.assertTrue(leg.disconnecting)
        self.assertIn("lifetime of 200 s", splice.core.reason)

    def test_dialer_rate_per_address(self) -> None:
        fixture = Fixture(RelayLimits(dialer_rate=3, dialer_window=10, circuits_per_user=100))
        fixture.reserve()
        transports = [fixture.dial(46050, source_port=40000 + n)[1] for n in range(4)]
        self.assertEqual([t.disconnecting for t in transports], [False, False, False, True])
        self.assertEqual(len(fixture.notified), 3)
        fixture.dial(46050, host="192.0.2.8")
        self.assertEqual(len(fixture.notified), 4)
        fixture.reactor.advance(10)
        fixture.dial(46050)
        self.assertEqual(len(fixture.notified), 5)

    def test_circuits_per_user(self) -> None:
        fixture = Fixture(RelayLimits(circuits_per_user=2))
        fixture.reserve()
        first = fixture.dial(46050, host="192.0.2.1")[0]
        fixture.dial(46050, host="192.0.2.2")
        self.assertTrue(fixture.dial(46050, host="192.0.2.3")[1].disconnecting)
        first.connectionLost(Failure(ConnectionError("gone")))
        self.assertFalse(fixture.dial(46050, host="192.0.2.4")[1].disconnecting)
        self.assertEqual(len(fixture.relay.circuits(BOB)), 2)

    def test_notify_failure_ends_the_circuit(self) -> None:
        fixture = Fixture()

        def broken(circuit_id: str, where: str) -> None:
            raise RuntimeError("connection gone")

        fixture.reserve(BOB, broken)
        _, transport = fixture.dial(46050)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(fixture.relay.circuits(BOB), [])


def join_frame(circuit_id: str) -> bytes:
    return encode_frame(encode_join(circuit_id))


def errors_sent(transport: StringTransport) -> list[bytes]:
    """The frames written to a join connection."""
    return list(frames_of(transport.value()))


class JoinCoreTests(TestCase):
    """The join connection's core: one frame, then raw bytes or a refusal."""

    def test_join_then_raw(self) -> None:
        core = JoinCore()
        data = join_frame("ab" * 16)
        self.assertEqual(core.data_received(data[:7]), [])
        (action,) = core.data_received(data[7:] + b"early bytes")
        self.assertEqual(getattr(action, "circuit_id", None), "ab" * 16)
        self.assertIs(core.state, JoinState.JOINING)
        actions = core.joined()
        self.assertEqual([getattr(a, "data", None) for a in actions], [b"early bytes"])
        self.assertEqual([a.data for a in core.data_received(b"more")], [b"more"])  # type: ignore[union-attr]
        self.assertEqual(len(core.connection_lost()), 1)

    def test_refusals(self) -> None:
        for data in [b"\x00\x00\x01\x01" + b"x" * 257, b"\x00\x00\x00\x00", encode_frame(b"<join/>"), encode_frame(b"<joined/>")]:
            core = JoinCore()
            actions = core.data_received(data)
            self.assertIs(core.state, JoinState.CLOSED, data)
            self.assertIn(b'name="malformed-message"', actions[0].data)  # type: ignore[union-attr]
            self.assertEqual(core.data_received(join_frame("ab" * 16)), [])
        core = JoinCore()
        self.assertIn(b'name="timeout"', core.timed_out()[0].data)  # type: ignore[union-attr]
        self.assertEqual(core.timed_out(), [])


class JoinPortTests(TestCase):
    """The join port's adapter on fake transports, against the relay."""

    def pending(self, fixture: Fixture) -> tuple[str, StringTransport]:
        fixture.reserve()
        dialer, dialer_transport = fixture.dial(46050)
        dialer.dataReceived(b"client hello")
        return fixture.notified[-1][0], dialer_transport

    def test_join_answers_joined_then_splices(self) -> None:
        fixture = Fixture()
        with capturedLogs() as logs:
            circuit_id, dialer_transport = self.pending(fixture)
            agent, transport = fixture.join_connection()
            agent.dataReceived(join_frame(circuit_id) + b"server hello")
            self.assertEqual(transport.value(), JOINED_FRAME + b"client hello")
            self.assertEqual(dialer_transport.value(), b"server hello")
            agent.dataReceived(b" and more")
            self.assertEqual(dialer_transport.value(), b"server hello and more")
            fixture.reactor.advance(30)  # no join deadline once joined
            self.assertFalse(transport.disconnecting)
            agent.connectionLost(Failure(ConnectionError("gone")))
        text = " ".join(formatEvent(e) for e in logs)
        self.assertEqual(text.count(circuit_label(circuit_id)), 3)  # opened, joined, closed
        self.assertNotIn(circuit_id, text)  # the secret is never logged
        self.assertTrue(dialer_transport.disconnecting)
        self.assertEqual(fixture.relay.circuits(BOB), [])

    def test_unknown_used_and_malformed(self) -> None:
        fixture = Fixture()
        circuit_id, _ = self.pending(fixture)
        first, _ = fixture.join_connection()
        first.dataReceived(join_frame(circuit_id))
        for data, name in [
            (join_frame(circuit_id), "unknown-circuit"),  # used
            (join_frame("0" * 32), "unknown-circuit"),
            (encode_frame(b'<join circuit="short"/>'), "malformed-message"),
            (b"\x00\x00\x10\x00", "malformed-message"),  # over 256 bytes
        ]:
            agent, transport = fixture.join_connection(source_port=50001)
            with capturedLogs() as logs:
                agent.dataReceived(data)
            (answer,) = errors_sent(transport)
            self.assertIn(f'name="{name}"'.encode(), answer)
            self.assertTrue(transport.disconnecting)
            self.assertNotIn(circuit_id, " ".join(formatEvent(e) for e in logs))

    def test_expired_id(self) -> None:
        fixture = Fixture()
        circuit_id, _ = self.pending(fixture)
        fixture.reactor.advance(11)
        agent, transport = fixture.join_connection()
        agent.dataReceived(join_frame(circuit_id))
        self.assertIn(b'name="unknown-circuit"', transport.value())

    def test_frame_deadline(self) -> None:
        fixture = Fixture()
        agent, transport = fixture.join_connection()
        agent.dataReceived(b"\x00\x00")
        fixture.reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        fixture.reactor.advance(0.2)
        self.assertIn(b'name="timeout"', transport.value())
        self.assertTrue(transport.disconnecting)

    def test_failed_joins_locked_out_per_address(self) -> None:
        fixture = Fixture(RelayLimits(join_failures=3, join_failure_window=60, join_lockout=60, join_max_lockout=600))
        circuit_id, _ = self.pending(fixture)
        with capturedLogs() as logs:
            for n in range(4):
                agent, transport = fixture.join_connection(host="2001:db8:1::7", source_port=50000 + n)
                agent.dataReceived(join_frame(f"{n:032x}"))
                self.assertIn(b'name="unknown-circuit"', transport.value())
        text = " ".join(formatEvent(e) for e in logs)
        self.assertEqual(text.count("no such circuit is waiting"), 4)
        self.assertIn("locks out 2001:db8:1::/64", text)
        # Locked out, even with the right id, and from anywhere in the /64.
        agent, transport = fixture.join_connection(host="2001:db8:1::8")
        agent.dataReceived(join_frame(circuit_id))
        self.assertIn(b'name="rate-limited"', transport.value())
        # Another address joins; after the lock-out the first one may again.
        other, other_transport = fixture.join_connection(host="192.0.2.50")
        other.dataReceived(join_frame(circuit_id))
        self.assertTrue(other_transport.value().startswith(JOINED_FRAME))
        fixture.reactor.advance(61)
        agent, transport = fixture.join_connection(host="2001:db8:1::7")
        agent.dataReceived(join_frame("f" * 32))
        self.assertIn(b'name="unknown-circuit"', transport.value())

    def test_connections_per_address(self) -> None:
        fixture = Fixture(RelayLimits(join_connections_per_address=2))
        connections = [fixture.join_connection(source_port=50000 + n) for n in range(3)]
        self.assertEqual([t.disconnecting for _, t in connections], [False, False, True])
        self.assertIn(b'name="rate-limited"', connections[2][1].value())
        connections[0][0].connectionLost(Failure(ConnectionError("gone")))
        self.assertFalse(fixture.join_connection(source_port=50010)[1].disconnecting)

    def test_stop_closes_join_connections(self) -> None:
        fixture = Fixture()
        _, transport = fixture.join_connection()
        self.successResultOf(fixture.relay.stop())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(fixture.reactor.listening, set())


# Real loopback TCP.
@inlineCallbacks
def free_ports(count: int) -> Any:
    """The first of ``count`` consecutive loopback ports nothing listens on (just now)."""
    for _ in range(50):
        probe = global_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        first = probe.getHost().port
        held = [probe]
        try:
            for number in range(first + 1, first + count):
                held.append(global_reactor.listenTCP(number, Factory.forProtocol(Protocol), interface="127.0.0.1"))
        except CannotListenError:
            continue
        finally:
            for port in held:
                yield port.stopListening()
        return first
    raise RuntimeError("no free loopback ports")


class Collector(Protocol):
    """One end of a test connection: sends ``prefix`` + ``payload`` and hashes what arrives."""

    def __init__(self, payload: bytes = b"", *, expect: int = 0, prefix: bytes = b"", read: bool = True) -> None:
        self.payload = payload
        self.prefix = prefix
        self.expect = expect
        self.read = read
        self.digest = hashlib.sha256()
        self.count = 0
        self.done: Deferred[int] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self.read:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.transport.write(self.prefix + self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.count >= self.expect and not self.done.called:
            self.done.callback(self.count)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            if self.count >= self.expect:
                self.done.callback(self.count)
            else:
                self.done.errback(reason or Failure(ConnectionError("lost")))
        self.lost.callback(None)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LoopbackTests(TestCase):
    """A relay on real loopback sockets, a dialer, and an agent joining on the join port
    (what it receives starts with the ``<joined/>`` frame)."""

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.first = yield free_ports(2)
        self.joined: list[Any] = []
        self.agents: list[Collector] = []
        self.agent_payload = b""
        self.agent_reads = True

    def start(self, limits: RelayLimits | None = None, ports: range | None = None) -> Reservation:
        self.relay = Relay(global_reactor, interface="127.0.0.1", ports=ports or range(self.first, self.first + 1), limits=limits)
        self.relay.start()
        self.addCleanup(self.relay.stop)
        join = self.relay.join
        joined = self

        def watched(circuit_id: str, leg: Any, greeting: bytes = b"") -> Any:
            splice = join(circuit_id, leg, greeting)
            joined.joined.append(splice)
            return splice

        self.relay.join = watched  # type: ignore[method-assign]
        return self.successResultOf(self.relay.reserve(BOB, self.on_circuit))

    def on_circuit(self, circuit_id: str, where: str) -> None:
        agent = Collector(self.agent_payload, expect=len(JOINED_FRAME) + self.agent_expect, prefix=join_frame(circuit_id), read=self.agent_reads)
        self.agents.append(agent)
        global_reactor.connectTCP("127.0.0.1", self.relay.join_port, ClientFactory.forProtocol(lambda: agent))

    def dial(self, port: int, payload: bytes, expect: int, read: bool = True) -> Collector:
        dialer = Collector(payload, expect=expect, read=read)
        global_reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: dialer))
        return dialer

    @inlineCallbacks
    def test_bytes_flow_both_ways_unchanged(self) -> Any:
        up, down = os.urandom(3 * 1024 * 1024 + 17), os.urandom(2 * 1024 * 1024 + 5)
        self.agent_payload, self.agent_expect = down, len(up)
        reservation = self.start()
        dialer = self.dial(reservation.port, up, len(down))
        yield dialer.done
        yield self.agents[0].done
        self.assertEqual(self.agents[0].digest.hexdigest(), digest(JOINED_FRAME + up))
        self.assertEqual(dialer.digest.hexdigest(), digest(down))
        splice = self.joined[0]
        self.assertEqual((splice.core.up, splice.core.down), (len(up), len(down)))
        # Closing one leg closes the other.
        dialer.transport.loseConnection()  # type: ignore[union-attr]
        yield self.agents[0].lost
        self.assertIs(splice.state, State.CLOSED)
        self.assertEqual(self.relay.circuits(BOB), [])

    @inlineCallbacks
    def test_agent_not_reading_holds_the_dialer(self) -> Any:
        size = 24 * 1024 * 1024
        self.agent_expect, self.agent_reads = size, False
        reservation = self.start()
        dialer = self.dial(reservation.port, b"\x00" * size, 0)
        splice, leg = yield self.paused(lambda s: s.dialer_valve)
        # The relay holds at most its send buffer (64 KiB) and one read of the dialer.
        self.assertLessEqual(buffered(leg), 2 * 65536)
        self.assertLess(splice.core.up, size)
        leg.resumeProducing()  # no effect on the dialer valve: that is the agent's side
        self.assertTrue(splice.dialer_valve.paused)
        self.agents[0].transport.resumeProducing()  # type: ignore[union-attr]
        count = yield self.agents[0].done
        self.assertEqual(count, len(JOINED_FRAME) + size)
        self.assertEqual(self.agents[0].digest.hexdigest(), digest(JOINED_FRAME + b"\x00" * size))
        dialer.transport.loseConnection()  # type: ignore[union-attr]
        yield self.agents[0].lost

    @inlineCallbacks
    def test_dialer_not_reading_holds_the_agent(self) -> Any:
        size = 24 * 1024 * 1024
        self.agent_payload, self.agent_expect = b"\x01" * size, 0
        reservation = self.start()
        dialer = self.dial(reservation.port, b"", size, read=False)
        splice, _ = yield self.paused(lambda s: s.leg_valve)
        self.assertLessEqual(buffered(splice.dialer.transport), 2 * 65536)
        self.assertLess(splice.core.down, size)
        dialer.transport.resumeProducing()  # type: ignore[union-attr]
        count = yield dialer.done
        self.assertEqual(count, size)
        self.assertEqual(dialer.digest.hexdigest(), digest(b"\x01" * size))
        self.agents[0].transport.loseConnection()  # type: ignore[union-attr]
        yield dialer.lost

    def paused(self, valve_of: Any) -> Deferred[tuple[Any, Any]]:
        """Fires with (splice, leg transport) when ``valve_of(splice)`` is first paused
        by its consumer (hooked as the circuit joins, before any spliced byte moves)."""
        fired: Deferred[tuple[Any, Any]] = Deferred()
        joined = self.joined

        class Hook(list):  # type: ignore[type-arg]
            def append(self, splice: Any) -> None:
                super().append(splice)
                valve = valve_of(splice)
                pause = valve.pauseProducing

                def hooked() -> None:
                    pause()
                    if not fired.called:
                        fired.callback((splice, splice.leg))

                valve.pauseProducing = hooked

        self.joined = Hook(joined)
        return fired

    @inlineCallbacks
    def test_byte_cap_ends_the_circuit(self) -> Any:
        self.agent_expect = 1 << 40
        reservation = self.start(RelayLimits(circuit_bytes=1024 * 1024))
        dialer = self.dial(reservation.port, os.urandom(2 * 1024 * 1024), 1)
        yield dialer.lost
        yield self.agents[0].lost
        self.assertLessEqual(self.agents[0].count, len(JOINED_FRAME) + 1024 * 1024)
        self.assertIn("1048576 bytes from the dialer reached", self.joined[0].core.reason)
        self.failureResultOf(dialer.done)
        self.failureResultOf(self.agents[0].done)

    @inlineCallbacks
    def test_busy_port_skipped_and_release_closes_all(self) -> Any:
        self.agent_expect, self.agent_payload = 5, b"hello"
        busy = global_reactor.listenTCP(self.first, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        reservation = self.start(ports=range(self.first, self.first + 2))
        self.assertEqual(reservation.port, self.first + 1)
        dialers = [self.dial(reservation.port, b"ping!", 5) for _ in range(2)]
        for dialer in dialers:
            yield dialer.done
        self.relay.release(BOB, self.on_circuit)
        for collector in [*dialers, *self.agents]:
            yield collector.lost
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", reservation.port)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Protocol)), ConnectionRefusedError)
        self.assertEqual(len(self.agents), 2)


def buffered(transport: Any) -> int:
    """Bytes a TCP transport holds to send."""
    return len(transport.dataBuffer) + transport._tempDataLen


class ThroughTheServiceTests(CrossDomainTestCase):
    """The relay behind the real intermediary: TLS service connections with client
    certificates, ``<reserve/>``, a ``<circuit>`` push, ``<join>`` on the plain TCP join
    port (the client library's ``accept_circuit``), then the raw stream both ways."""

    timeout = 120

    async def start(self) -> None:
        await self.start_domains()
        home = self.registries["example.org"]
        self.users: dict[str, EnrolledUser] = {}
        for name in ("intermediary", "bob", "mallory"):
            await home.add_user(name)
            self.users[name] = await home.issue(name)
        profile = make_profile(home, self.users["intermediary"], os.path.join(os.path.abspath(self.mktemp()), "im"))
        first = await free_ports(1)
        settings = IntermediarySettings(
            profile_dir=profile,
            listen=["tcp:0:interface=127.0.0.1"],
            resolver=self.resolver,
            relay_factory=lambda reactor_, _settings: Relay(
                reactor_, interface="127.0.0.1", ports=range(first, first + 1), limits=RelayLimits(circuit_bytes=8 << 20)
            ),
        )
        self.service = IntermediaryService(settings, global_reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.ready

    async def connect(self, name: str) -> IntermediaryClient:
        user = self.users[name]
        registry = await self.registries["example.org"].client(user=user)

        async def lookup(identity: Identity) -> tuple[Any, set[str]]:
            record = await registry.lookup(str(identity))
            return record, {entry.fingerprint for entry in await registry.user_certificates(str(identity))}

        client = await connect_intermediary(
            global_reactor,
            "example.org",
            directory_lookup=lookup,
            key=user.key,
            certificate=user.certificate,
            chain=user.chain,
            roots={"example.org": self.registries["example.org"].root},
        )
        self.addCleanup(client.close)
        return client

    async def test_a_dialer_reaches_the_agent_through_the_relay(self) -> None:
        await self.start()
        bob = await self.connect("bob")
        offers: Deferred[tuple[str, str]] = Deferred()
        reservation = await bob.reserve(lambda circuit, source: offers.callback((circuit, source)))
        self.assertEqual(reservation.address, "127.0.0.1")
        up, down = os.urandom(2 * 1024 * 1024 + 3), os.urandom(1024 * 1024 + 1)
        dialer = Collector(up, expect=len(down))
        global_reactor.connectTCP("127.0.0.1", reservation.port, ClientFactory.forProtocol(lambda: dialer))
        circuit_id, source = await offers
        self.assertTrue(source.startswith("127.0.0.1 "))
        # Another user has no reservation to join with; a wrong id is refused; bob joins
        # on the join port the reservation named, once.
        mallory = await self.connect("mallory")
        with self.assertRaises(intermediary_errors.ClientError):
            await mallory.accept_circuit(circuit_id)
        with self.assertRaises(intermediary_errors.UnknownCircuit):
            await bob.accept_circuit("f" * 32)
        stream = await bob.accept_circuit(circuit_id)
        with self.assertRaises(intermediary_errors.UnknownCircuit):
            await bob.accept_circuit(circuit_id)
        agent = Collector(down, expect=len(up))
        stream.attach(agent)
        await dialer.done
        await agent.done
        self.assertEqual(agent.digest.hexdigest(), digest(up))
        self.assertEqual(dialer.digest.hexdigest(), digest(down))
        # The dialer hangs up: the agent's join connection ends too.
        dialer.transport.loseConnection()  # type: ignore[union-attr]
        await agent.lost

    async def test_byte_cap_and_release_end_the_circuit(self) -> None:
        await self.start()
        bob = await self.connect("bob")
        offers: Deferred[str] = Deferred()
        reservation = await bob.reserve(lambda circuit, source: offers.callback(circuit))
        dialer = Collector(os.urandom(9 << 20), expect=1)
        global_reactor.connectTCP("127.0.0.1", reservation.port, ClientFactory.forProtocol(lambda: dialer))
        stream = await bob.accept_circuit(await offers)
        agent = Collector(b"", expect=1 << 40)
        stream.attach(agent)
        await agent.lost
        await dialer.lost
        self.assertLessEqual(agent.count, 8 << 20)
        self.failureResultOf(agent.done)
        self.failureResultOf(dialer.done)
        # Losing the reserving connection releases the reservation and closes the port.
        relay: Any = self.service.relay
        drop = relay._drop
        dropped: Deferred[str] = Deferred()

        def watched(held: Any, reason: str) -> Deferred[Any]:
            return drop(held, reason).addCallback(lambda _: dropped.callback(reason))

        relay._drop = watched
        await bob.close()
        self.assertEqual(await dropped, "the reservation was released")
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", reservation.port)
        with self.assertRaises(ConnectionRefusedError):
            await endpoint.connect(Factory.forProtocol(Protocol))
