# mypy: allow-untyped-calls
"""Tests for sixchat.record: the AES-256-GCM record layer and the session."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.wire.framing import encode_frame
from common.wire.xmlcodec import make_element, serialize
from sixchat import errors
from sixchat.keyschedule import next_traffic_secret, traffic_keys
from sixchat.record import (
    MAX_BODY,
    MAX_RECORD_PAYLOAD,
    AlertReceived,
    CloseReceived,
    DataReceived,
    InnerType,
    MessageReceived,
    RecordLimits,
    Session,
    TrafficProtection,
)
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from test.sixchat_certs import small_limits, user

SECRET_A = bytes(range(48))
SECRET_B = bytes(range(100, 148))


def session_pair(
    limits_a: RecordLimits | None = None, limits_b: RecordLimits | None = None
) -> tuple[Session, Session]:
    """Two sessions whose keys match (alice sends with A, bob with B)."""
    alice, bob = user("alice"), user("bob")

    def make(
        local: Identity, peer_chain: list[object], send: bytes, receive: bytes,
        limits: RecordLimits | None,
    ) -> Session:
        return Session(
            local=local,
            peer=Identity("x", "example.org"),
            peer_chain=peer_chain,  # type: ignore[arg-type]
            peer_fingerprint="00" * 32,
            send_secret=send,
            receive_secret=receive,
            exporter_secret=b"e" * 48,
            transcript_hash=b"t" * 48,
            limits=limits,
        )

    return (
        make(alice.identity, [bob.certificate], SECRET_A, SECRET_B, limits_a),
        make(bob.identity, [alice.certificate], SECRET_B, SECRET_A, limits_b),
    )


class RecordFormatTests(TestCase):
    """The bytes on the wire are exactly as specified."""

    def test_layout(self) -> None:
        """length || 0x17 || AES-256-GCM(type || body) with AAD = the first 5 bytes."""
        alice, _ = session_pair()
        record = alice.send_data(b"hello")
        length = int.from_bytes(record[:4], "big")
        self.assertEqual(length, len(record) - 4)
        self.assertEqual(length, 1 + 1 + 5 + 16)
        self.assertEqual(record[4], 0x17)
        keys = traffic_keys(SECRET_A)
        plaintext = AESGCM(keys.key).decrypt(keys.iv, record[5:], record[:5])
        self.assertEqual(plaintext, b"\x02hello")
        # The second record uses IV XOR 1.
        second = alice.send_message(wire_application.Ping())
        nonce = (int.from_bytes(keys.iv, "big") ^ 1).to_bytes(12, "big")
        self.assertEqual(
            AESGCM(keys.key).decrypt(nonce, second[5:], second[:5]), b"\x01<ping/>"
        )

    def test_nonce_uses_64_bit_sequence(self) -> None:
        limits = RecordLimits(rekey_after_records=2**64 - 3, hard_limit_records=2**64 - 1)
        protection = TrafficProtection(SECRET_A, limits, sequence=2**64 - 2)
        record = protection.seal_record(InnerType.DATA, b"x")
        keys = traffic_keys(SECRET_A)
        nonce = (int.from_bytes(keys.iv, "big") ^ (2**64 - 2)).to_bytes(12, "big")
        self.assertEqual(AESGCM(keys.key).decrypt(nonce, record[5:], record[:5]), b"\x02x")

    def test_close_and_alert_bodies(self) -> None:
        alice, _ = session_pair()
        keys = traffic_keys(SECRET_A)
        record = alice.close("going away")
        plaintext = AESGCM(keys.key).decrypt(keys.iv, record[5:], record[:5])
        self.assertEqual(plaintext, b'\x04<close reason="going away"/>')


class SessionTests(TestCase):
    """Sending and receiving."""

    def test_round_trip(self) -> None:
        alice, bob = session_pair()
        message = wire_application.ChatMessage("héllo <world> & \"friends\"\r\n")
        events = bob.receive_data(
            alice.send_message(message)
            + alice.send_data(b"\x00\x01binary")
            + alice.send_message(wire_application.Presence("away"))
            + alice.send_data(b"")
        )
        self.assertEqual(len(events), 4)
        first = events[0]
        assert isinstance(first, MessageReceived)
        self.assertEqual(first.message, message)
        self.assertEqual(first.element.tag, "message")
        self.assertEqual(events[1], DataReceived(b"\x00\x01binary"))
        self.assertEqual(events[2].message, wire_application.Presence("away"))  # type: ignore[union-attr]
        self.assertEqual(events[3], DataReceived(b""))

    def test_element_and_bytes(self) -> None:
        """send_message takes elements and documents, checked like received ones."""
        alice, bob = session_pair()
        element = make_element("receipt", {"id": "00000000-0000-4000-8000-000000000000"})
        events = bob.receive_data(alice.send_message(element) + alice.send_message(b"<pong/>"))
        self.assertEqual(
            [event.message for event in events],  # type: ignore[union-attr]
            [wire_application.Receipt("00000000-0000-4000-8000-000000000000"), wire_application.Pong()],
        )
        self.assertRaises(errors.MalformedMessage, alice.send_message, b"<unknown/>")
        self.assertRaises(errors.MalformedMessage, alice.send_message, make_element("x"))
        with self.assertRaises(errors.MalformedMessage) as caught:
            alice.send_message(wire_application.ChatMessage("bell \x07"))
        self.assertFalse(caught.exception.fatal)
        # Refusals leave the session usable.
        bob.receive_data(alice.send_message(wire_application.Ping()))

    def test_byte_by_byte(self) -> None:
        alice, bob = session_pair()
        data = alice.send_data(os.urandom(3000)) + alice.send_message(wire_application.Ping())
        events = []
        for position in range(len(data)):
            events.extend(bob.receive_data(data[position : position + 1]))
        self.assertEqual(len(events), 2)

    def test_largest_record(self) -> None:
        alice, bob = session_pair()
        body = os.urandom(MAX_BODY)
        record = alice.send_data(body)
        self.assertEqual(len(record), 4 + MAX_RECORD_PAYLOAD)
        self.assertEqual(bob.receive_data(record[:40000]), [])
        self.assertEqual(bob.receive_data(record[40000:]), [DataReceived(body)])

    def test_oversized_send_is_refused_without_harm(self) -> None:
        alice, bob = session_pair()
        with self.assertRaises(errors.MessageTooLarge) as caught:
            alice.send_data(bytes(MAX_BODY + 1))
        self.assertFalse(caught.exception.fatal)
        self.assertEqual(bob.receive_data(alice.send_data(b"ok")), [DataReceived(b"ok")])

    def test_oversized_record_header(self) -> None:
        """An announced length over the cap fails at once (no buffering)."""
        _, bob = session_pair()
        self.assertRaises(
            errors.MessageTooLarge,
            bob.receive_data,
            (MAX_RECORD_PAYLOAD + 1).to_bytes(4, "big"),
        )
        self.assertRaises(errors.Closed, bob.receive_data, b"")

    def test_bad_header_after_good_records(self) -> None:
        """Records before a bad header in the same data are not lost: they travel with the
        error (events_before)."""
        alice, bob = session_pair()
        data = alice.send_data(b"one") + (MAX_RECORD_PAYLOAD + 1).to_bytes(4, "big")
        with self.assertRaises(errors.MessageTooLarge) as caught:
            bob.receive_data(data)
        self.assertEqual(caught.exception.events_before, [DataReceived(b"one")])

    def test_empty_frame(self) -> None:
        """An empty frame is malformed; after the peer's close, any frame is unexpected."""
        _, bob = session_pair()
        with self.assertRaises(errors.MalformedMessage) as caught:
            bob.receive_data(bytes(4))
        self.assertIn("empty frame", caught.exception.message)
        alice, bob = session_pair()
        with self.assertRaises(errors.UnexpectedMessage):
            bob.receive_data(alice.close() + bytes(4))

    def test_nothing_is_read_after_an_alert(self) -> None:
        """Bytes after an alert record are ignored, even a bad header."""
        alice, bob = session_pair()
        data = alice.abort(errors.Timeout()) + (MAX_RECORD_PAYLOAD + 1).to_bytes(4, "big")
        [event] = bob.receive_data(data)
        self.assertIsInstance(event, AlertReceived)

    def test_exporter(self) -> None:
        alice, bob = session_pair()
        self.assertEqual(
            alice.export_keying_material("label", b"", 16),
            bob.export_keying_material("label", b"", 16),
        )
        self.assertNotEqual(
            alice.export_keying_material("label", b"", 16),
            alice.export_keying_material("label", b"x", 16),
        )

    def test_peer_certificate(self) -> None:
        alice, _ = session_pair()
        self.assertEqual(alice.peer_certificate, user("bob").certificate)
        self.assertTrue(alice.is_open)


class TamperTests(TestCase):
    """Replayed, reordered, dropped and modified records."""

    def assertDead(self, session: Session) -> None:
        self.assertRaises(errors.Closed, session.receive_data, b"")
        self.assertRaises(errors.Closed, session.send_data, b"")

    def test_replay(self) -> None:
        alice, bob = session_pair()
        record = alice.send_data(b"once")
        bob.receive_data(record)
        self.assertRaises(errors.DecryptFailed, bob.receive_data, record)
        self.assertDead(bob)

    def test_reorder(self) -> None:
        alice, bob = session_pair()
        first, second = alice.send_data(b"1"), alice.send_data(b"2")
        self.assertRaises(errors.DecryptFailed, bob.receive_data, second + first)

    def test_drop_first(self) -> None:
        alice, bob = session_pair()
        alice.send_data(b"lost")
        self.assertRaises(errors.DecryptFailed, bob.receive_data, alice.send_data(b"2"))

    def test_record_from_other_direction(self) -> None:
        """Alice's own record reflected back to her does not decrypt."""
        alice, _ = session_pair()
        self.assertRaises(errors.DecryptFailed, alice.receive_data, alice.send_data(b"me"))

    def test_header_is_authenticated(self) -> None:
        """Changing the record type or the length (with matching framing) is detected."""
        alice, bob = session_pair()
        changed = bytearray(alice.send_data(b"abc"))
        changed[4] = 0x18
        self.assertRaises(errors.MalformedMessage, bob.receive_data, bytes(changed))
        alice, bob = session_pair()
        record = alice.send_data(b"abc")
        # One byte more in the frame (a zero appended): length and AAD change.
        longer = encode_frame(record[4:] + b"\x00")
        self.assertRaises(errors.DecryptFailed, bob.receive_data, longer)

    def test_every_bit(self) -> None:
        """Flipping any bit of a record never delivers anything."""
        alice, _ = session_pair()
        record = alice.send_message(wire_application.ChatMessage("secret"))
        for position in range(len(record)):
            for bit in range(8):
                _, bob = session_pair()
                changed = bytearray(record)
                changed[position] ^= 1 << bit
                try:
                    events = bob.receive_data(bytes(changed))
                except errors.SixChatError:
                    continue
                # Only a length change can avoid an error: the frame is then incomplete.
                self.assertLess(position, 4)
                self.assertEqual(events, [])
                self.assertIsInstance(bob.connection_lost(), errors.Truncated)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=1, max_size=200))
    def test_garbage(self, garbage: bytes) -> None:
        _, bob = session_pair()
        try:
            events = bob.receive_data(garbage)
        except errors.SixChatError:
            return
        self.assertEqual(events, [])

    def test_unknown_inner_type(self) -> None:
        _, bob = session_pair()
        protection = TrafficProtection(SECRET_A, RecordLimits())
        self.assertRaises(
            errors.MalformedMessage, bob.receive_data, protection.seal_record(0x09, b"")
        )

    def test_key_update_with_body(self) -> None:
        _, bob = session_pair()
        protection = TrafficProtection(SECRET_A, RecordLimits())
        record = protection.seal_record(InnerType.KEY_UPDATE, b"<key-update/>")
        self.assertRaises(errors.MalformedMessage, bob.receive_data, record)

    def test_invalid_application_message(self) -> None:
        _, bob = session_pair()
        protection = TrafficProtection(SECRET_A, RecordLimits())
        record = protection.seal_record(InnerType.APPLICATION, b"<message/>")
        self.assertRaises(errors.MalformedMessage, bob.receive_data, record)

    def test_xml_bomb_in_record(self) -> None:
        _, bob = session_pair()
        protection = TrafficProtection(SECRET_A, RecordLimits())
        bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]><message id="x" sent="y">&a;</message>'
        record = protection.seal_record(InnerType.APPLICATION, bomb)
        self.assertRaises(errors.MalformedMessage, bob.receive_data, record)


class KeyUpdateTests(TestCase):
    """Key updates and usage limits: counters never wrap, keys never overstay."""

    def test_automatic_update_by_records(self) -> None:
        alice, bob = session_pair(small_limits(), small_limits())
        for number in range(10):
            events = bob.receive_data(alice.send_data(bytes([number])))
            self.assertEqual(events, [DataReceived(bytes([number]))])
        # 3 records per key: updates before records 4, 7 and 10.
        self.assertEqual(alice.send_epoch, 3)
        self.assertEqual(bob.receive_epoch, 3)

    def test_automatic_update_by_bytes(self) -> None:
        limits = small_limits(
            rekey_after_records=1000, hard_limit_records=2000, rekey_after_bytes=100_000
        )
        alice, bob = session_pair(limits, limits)
        for _ in range(7):  # an update before the 4th and the 7th record
            bob.receive_data(alice.send_data(bytes(40_000)))
        self.assertEqual(alice.send_epoch, 2)
        self.assertEqual(bob.receive_epoch, 2)

    def test_explicit_update_both_ways(self) -> None:
        trace: dict[str, bytes] = {}
        alice, bob = session_pair()
        bob._trace = trace.__setitem__
        bob.receive_data(alice.update_keys() + alice.send_data(b"a"))
        alice.receive_data(bob.update_keys() + bob.send_data(b"b"))
        self.assertEqual((alice.send_epoch, alice.receive_epoch), (1, 1))
        self.assertEqual((bob.send_epoch, bob.receive_epoch), (1, 1))
        self.assertEqual(trace["receive_traffic_secret_1"], next_traffic_secret(SECRET_A))
        self.assertEqual(trace["send_traffic_secret_1"], next_traffic_secret(SECRET_B))

    def test_sequence_resets_after_update(self) -> None:
        """The first record after an update uses sequence 0 of the next key."""
        alice, _ = session_pair()
        alice.send_data(b"x")
        alice.update_keys()
        record = alice.send_data(b"y")
        keys = traffic_keys(next_traffic_secret(SECRET_A))
        self.assertEqual(AESGCM(keys.key).decrypt(keys.iv, record[5:], record[:5]), b"\x02y")

    def test_receiver_hard_limit(self) -> None:
        """A peer that never updates its key is stopped at the hard limit."""
        sender_limits = small_limits(rekey_after_records=100, hard_limit_records=200)
        alice, bob = session_pair(sender_limits, small_limits())
        for _ in range(6):
            bob.receive_data(alice.send_data(b"."))
        self.assertRaises(errors.SequenceExhausted, bob.receive_data, alice.send_data(b"."))

    def test_receiver_byte_limit(self) -> None:
        sender_limits = small_limits(rekey_after_records=100, hard_limit_records=200)
        receiver_limits = small_limits(
            rekey_after_bytes=10_000, hard_limit_bytes=10_000 + 2 * MAX_RECORD_PAYLOAD
        )
        alice, bob = session_pair(sender_limits, receiver_limits)
        bob.receive_data(alice.send_data(bytes(MAX_BODY)))
        bob.receive_data(alice.send_data(bytes(MAX_BODY)))
        self.assertRaises(
            errors.SequenceExhausted, bob.receive_data, alice.send_data(bytes(MAX_BODY))
        )

    def test_counter_never_wraps(self) -> None:
        """At 2**64 - 1 records the key is exhausted: the nonce can never repeat."""
        limits = RecordLimits(rekey_after_records=2**64 - 3, hard_limit_records=2**64 - 1)
        protection = TrafficProtection(SECRET_A, limits, sequence=2**64 - 2)
        protection.seal_record(InnerType.DATA, b"last")
        self.assertRaises(
            errors.SequenceExhausted, protection.seal_record, InnerType.DATA, b"one more"
        )
        self.assertEqual(protection.sequence, 2**64 - 1)
        self.assertRaises(errors.SequenceExhausted, protection.open, b"x" * 17, b"")

    def test_sender_updates_before_the_limit(self) -> None:
        """A sender at its soft limit updates instead of exhausting the key."""
        limits = RecordLimits(rekey_after_records=2**64 - 2, hard_limit_records=2**64 - 1)
        protection = TrafficProtection(SECRET_A, limits, sequence=2**64 - 2)
        self.assertTrue(protection.needs_update)
        self.assertEqual(protection.next().sequence, 0)

    def test_limits_are_checked(self) -> None:
        for bad in (
            {"rekey_after_records": 0},
            {"rekey_after_records": 10, "hard_limit_records": 10},
            {"hard_limit_records": 2**64},
            {"rekey_after_bytes": 0},
            {"rekey_after_bytes": 2**34, "hard_limit_bytes": 2**34},
            {"max_pending": -1},
        ):
            self.assertRaises(ValueError, RecordLimits, **bad)


class CloseTests(TestCase):
    """Authenticated close, alerts and truncation."""

    def test_close(self) -> None:
        alice, bob = session_pair()
        self.assertEqual(bob.receive_data(alice.close("later")), [CloseReceived("later")])
        self.assertRaises(errors.Closed, alice.send_data, b"more")
        self.assertFalse(alice.is_open)
        # The peer may still answer, then close too.
        self.assertEqual(alice.receive_data(bob.send_data(b"bye")), [DataReceived(b"bye")])
        self.assertEqual(alice.receive_data(bob.close()), [CloseReceived("bye")])
        self.assertIsNone(alice.connection_lost())
        self.assertIsNone(bob.connection_lost())

    def test_record_after_close(self) -> None:
        alice, bob = session_pair()
        data = alice.close() + TrafficProtection(SECRET_A, RecordLimits()).seal_record(2, b"")
        self.assertRaises(errors.UnexpectedMessage, bob.receive_data, data)

    def test_record_after_close_later(self) -> None:
        _, bob = session_pair()
        protection = TrafficProtection(SECRET_A, RecordLimits())
        bob.receive_data(protection.seal_record(InnerType.CLOSE, b'<close reason="x"/>'))
        self.assertRaises(
            errors.UnexpectedMessage,
            bob.receive_data,
            protection.seal_record(InnerType.DATA, b"late"),
        )

    def test_truncation(self) -> None:
        alice, bob = session_pair()
        bob.receive_data(alice.send_data(b"partial"))
        self.assertIsInstance(bob.connection_lost(), errors.Truncated)
        self.assertRaises(errors.Closed, bob.receive_data, b"")

    def test_unexpected_failure_is_not_a_clean_end(self) -> None:
        """A failure outside the protocol's errors is reported, never taken for a close."""
        alice, bob = session_pair()

        def broken(data: bytes, events: list[object]) -> list[object]:
            raise RuntimeError("a bug")

        bob._receive_bytes = broken  # type: ignore[method-assign]
        self.assertRaises(RuntimeError, bob.receive_data, alice.send_data(b"x"))
        self.assertIsInstance(bob.connection_lost(), errors.InternalError)

    def test_close_lost_in_transit(self) -> None:
        """The sender of a close is done; the receiver that never saw it is truncated."""
        alice, bob = session_pair()
        alice.close()
        self.assertIsNone(alice.connection_lost())
        self.assertIsInstance(bob.connection_lost(), errors.Truncated)

    def test_abort_sends_alert(self) -> None:
        alice, bob = session_pair()
        record = alice.abort(errors.Timeout())
        (event,) = bob.receive_data(record)
        assert isinstance(event, AlertReceived)
        self.assertIsInstance(event.error, errors.Timeout)
        self.assertRaises(errors.Closed, bob.receive_data, b"")
        self.assertIsNone(bob.connection_lost())
        self.assertEqual(alice.abort(errors.Timeout()), b"")
        self.assertRaises(errors.Closed, alice.send_data, b"")

    def test_abort_after_receive_failure(self) -> None:
        """After a decryption failure the receiver can still tell the peer why."""
        alice, bob = session_pair()
        forged = bytearray(alice.send_data(b"x"))
        forged[-1] ^= 1
        self.assertRaises(errors.DecryptFailed, bob.receive_data, bytes(forged))
        (event,) = alice.receive_data(bob.abort(errors.DecryptFailed()))
        self.assertIsInstance(event.error, errors.DecryptFailed)  # type: ignore[union-attr]

    def test_abort_after_close_sends_nothing(self) -> None:
        alice, _ = session_pair()
        alice.close()
        self.assertEqual(alice.abort(errors.Timeout()), b"")

    def test_clear_alert_first(self) -> None:
        """A clear alert as the very first frame (the handshake failed late) is reported."""
        _, bob = session_pair()
        frame = encode_frame(wire_handshake.alert_for(errors.BadFinished()))
        self.assertRaises(errors.BadFinished, bob.receive_data, frame)

    def test_clear_alert_later(self) -> None:
        alice, bob = session_pair()
        bob.receive_data(alice.send_data(b"x"))
        frame = encode_frame(wire_handshake.alert_for(errors.BadFinished()))
        self.assertRaises(errors.MalformedMessage, bob.receive_data, frame)

    def test_close_reason_checked(self) -> None:
        alice, _ = session_pair()
        self.assertRaises(ValueError, alice.close, "")
        self.assertRaises(ValueError, alice.close, "x" * 257)

    def test_serialized_element(self) -> None:
        alice, bob = session_pair()
        element = wire_application.to_element(wire_application.ChatMessage("x"))
        events = bob.receive_data(alice.send_message(serialize(element)))
        self.assertEqual(events[0].message.text, "x")  # type: ignore[union-attr]
