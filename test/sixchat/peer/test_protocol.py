"""The Twisted adapter of one SixChat connection, with Twisted's fakes: an in-memory pair
of connections (twisted.test.iosim), single StringTransports and a fake clock.

The cryptographic attacks are the core's tests (test_handshake, test_record); here: that
the adapter turns every outcome into one end (an alert where possible, one
``connection_ended`` with a SixChat error, a log line), enforces its time limits, and never
leaves a half-open session behind.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat import errors
from sixchat.handshake import Role
from sixchat.peer.protocol import ConnectionLimits, PeerConnection
from sixchat.record import MAX_RECORD_PAYLOAD
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from test import sixchat_certs
from test.helpers import BareOwner, frames_of

BOB = Identity.parse("bob@example.org")
LIMITS = ConnectionLimits(handshake_timeout=10.0, idle_timeout=600.0, verification_timeout=15.0)


def lines(logs: Any) -> list[str]:
    return [formatEvent(event) for event in logs]


class Pair:
    """Alice's initiator and Bob's responder, connected in memory, sharing one fake clock."""

    def __init__(self, *, alice_verdict: Any = None, bob_verdict: Any = None, greet: bool = True) -> None:
        self.clock = Clock()
        self.alice = BareOwner(sixchat_certs.user("alice"), clock=self.clock, limits=LIMITS, verdict=alice_verdict)
        self.bob = BareOwner(sixchat_certs.user("bob"), clock=self.clock, limits=LIMITS, verdict=bob_verdict)
        self.client: PeerConnection
        self.server: PeerConnection
        self.pump: IOPump
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: PeerConnection(self.bob, Role.RESPONDER),
            lambda: PeerConnection(self.alice, Role.INITIATOR, expected_peer=BOB),
            greet=greet,
        )


def responder_on_string_transport(clock: Clock, **owner: Any) -> tuple[PeerConnection, StringTransport, BareOwner]:
    bob = BareOwner(sixchat_certs.user("bob"), clock=clock, limits=LIMITS, **owner)
    connection = PeerConnection(bob, Role.RESPONDER)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, bob


def holding(held: list[Deferred[None]]) -> Any:
    """A verdict that leaves each check pending (its Deferred appended to ``held``)."""

    def verdict(identity: Identity, chain: Any) -> Deferred[None]:
        held.append(Deferred())
        return held[-1]

    return verdict


def alert_in(data: bytes) -> errors.SixChatError:
    """The clear alert that ``data`` holds (exactly one frame)."""
    (payload,) = frames_of(data)
    return wire_handshake.parse_alert(payload)


class EstablishedTests(TestCase):
    def test_handshake_messages_and_clean_close(self) -> None:
        pair = Pair()
        self.assertTrue(pair.client.is_established and pair.server.is_established)
        self.assertEqual(pair.alice.verified, [BOB])
        self.assertEqual(pair.bob.verified, [Identity.parse("alice@example.org")])
        self.assertEqual(pair.client.peer, BOB)
        self.assertEqual(self.successResultOf(pair.client.when_established()), pair.client)
        pair.client.send(wire_application.ChatMessage("hello"))
        pair.server.send(wire_application.Presence("busy"))
        pair.pump.flush()
        self.assertEqual([type(m) for m in pair.bob.messages], [wire_application.ChatMessage])
        self.assertEqual(pair.alice.messages, [wire_application.Presence("busy")])

        pair.client.close("bye")
        pair.pump.flush()
        self.assertEqual([error for _, error in pair.alice.ended], [None])
        self.assertEqual([error for _, error in pair.bob.ended], [None])
        self.assertFalse(pair.server.is_established)
        self.assertTrue(pair.client.disconnected and pair.server.disconnected)
        self.assertEqual(self.successResultOf(pair.client.when_lost()), None)
        with self.assertRaises(errors.Closed):
            pair.client.send(wire_application.Ping())
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_ping_gets_no_answer_from_the_adapter(self) -> None:
        """Ping/pong is the agent's business: the adapter only delivers."""
        pair = Pair()
        pair.client.send(wire_application.Ping())
        pair.pump.flush()
        self.assertEqual(pair.bob.messages, [wire_application.Ping()])

    def test_truncation(self) -> None:
        pair = Pair()
        with capturedLogs() as logs:
            pair.client.transport.loseConnection()  # type: ignore[union-attr]
            pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.Truncated)
        self.assertTrue(any("alice@example.org" in line and "truncated" in line for line in lines(logs)), lines(logs))
        self.assertFalse(pair.server.is_established)

    def test_alert_from_peer_ends_the_session(self) -> None:
        pair = Pair()
        pair.client.abort(errors.SequenceExhausted("test"))
        pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.SequenceExhausted)
        [(_, own)] = pair.alice.ended
        self.assertIsInstance(own, errors.SequenceExhausted)

    def test_oversized_record(self) -> None:
        pair = Pair()
        with capturedLogs() as logs:
            pair.server.dataReceived((MAX_RECORD_PAYLOAD + 1).to_bytes(4, "big"))
            pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.MessageTooLarge)
        # Alice reads Bob's alert record.
        [(_, told)] = pair.alice.ended
        self.assertIsInstance(told, errors.MessageTooLarge)
        self.assertTrue(any("message-too-large" in line for line in lines(logs)))

    def test_garbage_after_the_handshake(self) -> None:
        pair = Pair()
        pair.server.dataReceived(b"\x00\x00\x00\x20" + b"\x17" + b"x" * 31)
        pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.DecryptFailed)
        self.assertEqual(pair.bob.messages, [])

    def test_record_after_close_gets_unexpected_message(self) -> None:
        """A record behind the peer's close is answered by an ``unexpected-message`` alert
        record (in place of our own close), logged, and the connection ends."""
        from sixchat.record import InnerType

        pair = Pair()
        alice = pair.client.session
        assert alice is not None
        after = alice.close("bye")
        after += alice._sending.seal_record(InnerType.APPLICATION, wire_application.encode_application(wire_application.Ping()))
        sent = len(b"".join(pair.server.transport.stream))  # type: ignore[union-attr]
        with capturedLogs() as logs:
            pair.server.dataReceived(after)
        written = b"".join(pair.server.transport.stream)[sent:]  # type: ignore[union-attr]
        # Exactly one record: the alert, not a close; Alice opens it as unexpected-message.
        (record,) = frames_of(written)
        self.assertEqual(alice.receive_data(written)[0].error.name, "unexpected-message")  # type: ignore[union-attr]
        self.assertEqual(len(record), 1 + 1 + len(wire_handshake.alert_for(errors.UnexpectedMessage())) + 16)
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.UnexpectedMessage)
        self.assertTrue(any("after the peer's close" in line for line in lines(logs)), lines(logs))

    def test_idle_session_closes_cleanly(self) -> None:
        pair = Pair()
        pair.clock.advance(LIMITS.idle_timeout - 1)
        pair.client.send(wire_application.Ping())
        pair.pump.flush()
        pair.clock.advance(2)
        # Bob's idle timer was reset by the ping; Alice's was not (she received nothing).
        self.assertEqual([error for _, error in pair.alice.ended], [None])
        pair.pump.flush()
        self.assertEqual([error for _, error in pair.bob.ended], [None])

    def test_a_peer_that_stops_reading_is_cut_off(self) -> None:
        clock = Clock()
        connection, transport, _owner = responder_on_string_transport(clock)
        connection.close("bye")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        clock.advance(LIMITS.handshake_timeout)
        self.assertTrue(transport.disconnected)  # aborted
        connection.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])


class HandshakeTimeTests(TestCase):
    def test_silent_initiator(self) -> None:
        clock = Clock()
        connection, transport, owner = responder_on_string_transport(clock)
        clock.advance(LIMITS.handshake_timeout - 0.1)
        self.assertEqual(owner.ended, [])
        with capturedLogs() as logs:
            clock.advance(0.1)
        [(_, error)] = owner.ended
        self.assertIsInstance(error, errors.Timeout)
        self.assertIsInstance(alert_in(transport.value()), errors.Timeout)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("took too long" in line for line in lines(logs)))
        self.failureResultOf(connection.when_established(), errors.Timeout)

    def test_silent_responder(self) -> None:
        clock = Clock()
        alice = BareOwner(sixchat_certs.user("alice"), clock=clock, limits=LIMITS)
        connection = PeerConnection(alice, Role.INITIATOR, expected_peer=BOB)
        transport = StringTransport()
        connection.makeConnection(transport)
        hello = transport.value()
        self.assertEqual(len(frames_of(hello)), 1)
        transport.clear()
        clock.advance(LIMITS.handshake_timeout)
        self.failureResultOf(connection.when_established(), errors.Timeout)
        self.assertIsInstance(alert_in(transport.value()), errors.Timeout)

    def test_endless_frame(self) -> None:
        clock = Clock()
        connection, _transport, owner = responder_on_string_transport(clock)
        connection.dataReceived((32 * 1024).to_bytes(4, "big") + b"<hello")
        for _ in range(9):
            clock.advance(1)
            connection.dataReceived(b" ")
        self.assertEqual(owner.ended, [])
        clock.advance(1)
        [(_, error)] = owner.ended
        self.assertIsInstance(error, errors.Timeout)

    def test_oversized_first_frame(self) -> None:
        clock = Clock()
        connection, transport, owner = responder_on_string_transport(clock)
        connection.dataReceived(b"\xff\xff\xff\xff")
        [(_, error)] = owner.ended
        self.assertIsInstance(error, errors.MessageTooLarge)
        self.assertIsInstance(alert_in(transport.value()), errors.MessageTooLarge)
        # Nothing more is read.
        connection.dataReceived(b"\x00\x00\x00\x01<")
        self.assertEqual(len(owner.ended), 1)

    def test_close_during_the_handshake(self) -> None:
        clock = Clock()
        connection, _transport, owner = responder_on_string_transport(clock)
        connection.connectionLost()
        [(_, error)] = owner.ended
        self.assertIsInstance(error, errors.Truncated)
        self.assertIn("during the handshake", error.message)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_send_before_the_session_exists(self) -> None:
        clock = Clock()
        connection, _transport, _owner = responder_on_string_transport(clock)
        with self.assertRaises(errors.Closed):
            connection.send(wire_application.Ping())

    def test_close_during_the_handshake_sends_an_alert(self) -> None:
        clock = Clock()
        connection, transport, owner = responder_on_string_transport(clock)
        connection.close("shutting down")
        [(_, error)] = owner.ended
        self.assertIsInstance(error, errors.Closed)
        self.assertTrue(transport.disconnecting)


class VerificationTests(TestCase):
    """The window between PeerNeedsVerification and the verdict."""

    def test_a_late_verdict_completes(self) -> None:
        held: list[Deferred[None]] = []
        pair = Pair(bob_verdict=holding(held))
        pair.client.send(wire_application.ChatMessage("early"))
        pair.pump.flush()
        self.assertEqual((len(held), pair.bob.messages), (1, []))
        self.assertFalse(pair.server.is_established)
        held[0].callback(None)
        pair.pump.flush()
        self.assertTrue(pair.server.is_established)
        # What arrived meanwhile is delivered once the peer is accepted.
        self.assertEqual([type(m) for m in pair.bob.messages], [wire_application.ChatMessage])

    def test_pausing_uses_the_transport(self) -> None:
        clock = Clock()
        held: list[Deferred[None]] = []
        alice = BareOwner(sixchat_certs.user("alice"), clock=clock, limits=LIMITS, verdict=holding(held))
        _server, client, _pump = _string_pair(clock, alice)
        self.assertEqual(len(held), 1)
        self.assertEqual(client.transport.producerState, "paused")  # type: ignore[union-attr]
        held[0].callback(None)
        self.assertEqual(client.transport.producerState, "producing")  # type: ignore[union-attr]

    def test_slow_verification_gets_its_own_deadline(self) -> None:
        """Checking a peer (a CRL fetch) may take up to verification_timeout, even past the
        handshake deadline; then the peer is told ``timeout``."""
        held: list[Deferred[None]] = []
        pair = Pair(bob_verdict=holding(held))
        pair.clock.advance(LIMITS.handshake_timeout + 1)
        pair.pump.flush()
        self.assertEqual(pair.bob.ended, [])
        self.assertTrue(pair.client.is_established)  # (the initiator does not know yet)
        with capturedLogs() as logs:
            pair.clock.advance(LIMITS.verification_timeout - LIMITS.handshake_timeout - 1)
            pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.Timeout)
        self.assertIn("took too long", error.message)
        [(_, told)] = pair.alice.ended
        self.assertIsInstance(told, errors.Timeout)
        self.assertEqual(pair.bob.messages, [])
        self.assertTrue(held[0].called)  # cancelled
        self.assertTrue(any("checking alice@example.org took too long" in line for line in lines(logs)), lines(logs))
        pair.pump.flush()
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_connection_lost_while_verifying(self) -> None:
        held: list[Deferred[None]] = []
        pair = Pair(bob_verdict=holding(held))
        pair.client.transport.loseConnection()  # type: ignore[union-attr]
        pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.Truncated)
        # No timer is left behind, and a late verdict changes nothing.
        self.assertEqual(pair.clock.getDelayedCalls(), [])
        held[0].callback(None)
        self.assertFalse(pair.server.is_established)
        self.assertEqual(len(pair.bob.ended), 1)

    def test_rejection_reaches_the_initiator(self) -> None:
        reject = errors.PeerRejected("alice is not a contact", reason="not-a-contact")
        held: list[Deferred[None]] = []
        pair = Pair(bob_verdict=holding(held))
        pair.client.send(wire_application.ChatMessage("sent before the verdict arrived"))
        pair.pump.flush()
        held[0].errback(reject)
        pair.pump.flush()
        [(_, error)] = pair.bob.ended
        self.assertIs(error, reject)
        [(_, told)] = pair.alice.ended
        self.assertIsInstance(told, errors.PeerRejected)
        self.assertEqual(told.reason, "policy")  # not-a-contact travels as policy
        self.assertEqual(pair.bob.messages, [])
        self.assertEqual(pair.bob.established, [])

    def test_initiator_rejects_the_responder(self) -> None:
        reject = errors.IdentityMismatch("not the certificate the registry gave")
        pair = Pair(alice_verdict=lambda identity, chain: fail(reject))
        self.failureResultOf(pair.client.when_established(), errors.IdentityMismatch)
        [(_, told)] = pair.bob.ended
        self.assertIsInstance(told, errors.IdentityMismatch)
        self.assertEqual((pair.alice.established, pair.bob.established), ([], []))
        self.assertEqual(pair.bob.verified, [])  # Alice never showed her certificate

    def test_a_failing_check_is_an_internal_error(self) -> None:
        pair = Pair(bob_verdict=lambda identity, chain: fail(ZeroDivisionError()))
        [(_, error)] = pair.bob.ended
        self.assertIsInstance(error, errors.InternalError)
        [(_, told)] = pair.alice.ended
        self.assertEqual(told.name, "internal-error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_failed_responder_leaves_no_unhandled_error(self) -> None:
        """Nobody awaits a responder's ``established``: its failure must not end up as an
        "Unhandled error in Deferred"."""
        clock = Clock()
        connection, _transport, owner = responder_on_string_transport(clock)
        connection.dataReceived(b"\xff\xff\xff\xff")
        del connection, owner
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])


def _string_pair(clock: Clock, alice: BareOwner) -> tuple[PeerConnection, PeerConnection, None]:
    """Run a handshake between two StringTransports by hand until Alice verifies Bob."""
    bob = BareOwner(sixchat_certs.user("bob"), clock=clock, limits=LIMITS)
    server = PeerConnection(bob, Role.RESPONDER)
    client = PeerConnection(alice, Role.INITIATOR, expected_peer=BOB)
    server_transport, client_transport = StringTransport(), StringTransport()
    server.makeConnection(server_transport)
    client.makeConnection(client_transport)
    server.dataReceived(client_transport.value())
    client_transport.clear()
    client.dataReceived(server_transport.value())
    return server, client, None
