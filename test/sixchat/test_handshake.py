# mypy: allow-untyped-calls
"""Tests for sixchat.handshake: the handshake state machine, end to end and under attack."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.wire.framing import encode_frame
from sixchat import errors
from sixchat.handshake import (
    INITIATOR_SIGNATURE_LABEL,
    RESPONDER_SIGNATURE_LABEL,
    SEALED_AAD,
    TRANSITIONS,
    Handshake,
    HandshakeAborted,
    LocalCredentials,
    PeerNeedsVerification,
    Role,
    SendData,
    State,
)
from sixchat.record import (
    AlertReceived,
    CloseReceived,
    DataReceived,
    MessageReceived,
    RecordLimits,
)
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from test import pki
from test.sixchat_certs import (
    Endpoint,
    Tamper,
    connect,
    exchange,
    forged_credentials,
    initiator,
    responder,
    small_limits,
    user,
)

ALICE = Identity("alice", "example.org")
BOB = Identity("bob", "example.org")

#: Names of the frames of one handshake, keyed by (sender role, sender's frame index).
FRAMES = {
    "M1": (Role.INITIATOR, 0),
    "M2": (Role.RESPONDER, 0),
    "M2b": (Role.RESPONDER, 1),
    "M3": (Role.INITIATOR, 1),
}


def tamper_frame(name: str, change: Callable[[bytes], bytes | None]) -> Tamper:
    """A tamper hook changing the frame called ``name`` (M1, M2, M2b, M3) with ``change``."""
    role, wanted = FRAMES[name]

    def tamper(sender: Endpoint, index: int, frame: bytes) -> bytes | None:
        if sender.handshake.role is role and index == wanted:
            return change(frame)
        return frame

    return tamper


def rewrite(frame: bytes, **changes: Any) -> bytes:
    """Re-encode a clear handshake frame with some fields changed."""
    message: Any = wire_handshake.parse_handshake_frame(frame[4:])
    return encode_frame(dataclasses.replace(message, **changes).to_xml())


@functools.cache
def deterministic_frames() -> dict[str, bytes]:
    """The four frames of a deterministic handshake (identical on every run)."""
    seen: dict[str, bytes] = {}

    def record(sender: Endpoint, index: int, frame: bytes) -> bytes:
        for name, (role, wanted) in FRAMES.items():
            if sender.handshake.role is role and index == wanted:
                seen[name] = frame
        return frame

    alice, bob = connect(
        initiator(deterministic=True), responder(deterministic=True), tamper=record
    )
    assert alice.completed and bob.completed
    return seen


def alert_error(data: bytes) -> errors.SixChatError:
    """The error a clear alert frame reports."""
    return wire_handshake.parse_alert(data[4:])


class HandshakeTestCase(TestCase):
    """Helpers shared by the handshake tests."""

    def assertNoSession(self, *endpoints: Endpoint) -> None:
        for endpoint in endpoints:
            self.assertIsNone(endpoint.completed)

    def assertFailed(
        self, endpoint: Endpoint, kind: type[errors.SixChatError], *, verified: bool = False
    ) -> None:
        """The endpoint's handshake failed with ``kind``, without a session."""
        self.assertIsInstance(endpoint.error, kind, f"got {endpoint.error!r}")
        self.assertIsNone(endpoint.completed)
        self.assertIs(endpoint.handshake.state, State.FAILED)
        if not verified:
            self.assertEqual(endpoint.verifications, [])


class CompleteHandshakeTests(HandshakeTestCase):
    """Honest peers complete the handshake and talk."""

    def check_connected(self, alice: Endpoint, bob: Endpoint) -> None:
        assert alice.completed is not None and bob.completed is not None
        self.assertIsNone(alice.error)
        self.assertIsNone(bob.error)
        self.assertEqual(alice.completed.peer, BOB)
        self.assertEqual(bob.completed.peer, ALICE)
        alice_session, bob_session = alice.completed.session, bob.completed.session
        self.assertEqual(alice_session.peer, BOB)
        self.assertEqual(alice_session.local, ALICE)
        self.assertEqual(bob_session.peer_fingerprint, alice.handshake._credentials.fingerprint)
        self.assertEqual(alice_session.channel_binding, bob_session.channel_binding)
        self.assertEqual(
            alice_session.export_keying_material("test", b"ctx", 32),
            bob_session.export_keying_material("test", b"ctx", 32),
        )
        self.assertEqual(alice.handshake.state, State.COMPLETE)
        self.assertEqual(bob.handshake.state, State.COMPLETE)

    def test_complete(self) -> None:
        """Both sides complete; each verified the other before completing."""
        alice, bob = connect()
        self.check_connected(alice, bob)
        (verification,) = alice.verifications
        self.assertEqual(verification.identity, BOB)
        self.assertEqual(verification.certificate, user("bob").certificate)
        self.assertEqual(verification.chain[1:], user("bob").chain)
        self.assertEqual(verification.fingerprint, user("bob").fingerprint)
        self.assertEqual(bob.verifications[0].identity, ALICE)
        # The initiator verified the responder before it sent anything about itself.
        kinds = [type(event) for event in alice.events]
        self.assertEqual(kinds[0], PeerNeedsVerification)

    def test_byte_by_byte(self) -> None:
        """Every frame delivered one byte at a time still completes."""
        alice, bob = connect(byte_by_byte=True)
        self.check_connected(alice, bob)

    def test_talk_rekey_and_close(self) -> None:
        """Messages and data both ways, automatic key updates both ways, then close."""
        alice, bob = connect(
            initiator(record_limits=small_limits()), responder(record_limits=small_limits())
        )
        assert alice.session and bob.session
        for number in range(8):
            alice.send(alice.session.send_message(wire_application.ChatMessage(f"hi {number}")))
            bob.send(bob.session.send_data(bytes([number]) * 1000))
        exchange(alice, bob)
        texts = [
            e.message for e in bob.session_events if isinstance(e, MessageReceived)
        ]
        self.assertEqual(
            [getattr(message, "text", None) for message in texts],
            [f"hi {number}" for number in range(8)],
        )
        data = [e.data for e in alice.session_events if isinstance(e, DataReceived)]
        self.assertEqual(data, [bytes([number]) * 1000 for number in range(8)])
        self.assertEqual(alice.session.send_epoch, 2)
        self.assertEqual(bob.session.receive_epoch, 2)
        self.assertEqual(bob.session.send_epoch, 2)
        self.assertEqual(alice.session.receive_epoch, 2)
        alice.send(alice.session.close("done"))
        exchange(alice, bob)
        self.assertEqual(bob.session_events[-1], CloseReceived("done"))
        bob.send(bob.session.close())
        exchange(alice, bob)
        self.assertEqual(alice.session_events[-1], CloseReceived("bye"))
        self.assertIsNone(alice.session.connection_lost())
        self.assertIsNone(bob.session.connection_lost())

    def test_key_types(self) -> None:
        """P-384, P-521, Ed25519 and RSA-3072 leaves work on both sides."""
        for key_type in ("p384", "p521", "ed25519", "rsa3072"):
            alice, bob = connect(
                initiator(user("alice", key_type)), responder(user("bob", key_type))
            )
            self.check_connected(alice, bob)

    def test_mixed_key_types(self) -> None:
        """Each side signs with its own key type."""
        alice, bob = connect(initiator(user("alice", "ed25519")), responder(user("bob", "p384")))
        self.check_connected(alice, bob)

    def test_expected_fingerprint(self) -> None:
        """A matching pinned fingerprint (any accepted spelling) completes."""
        pinned = user("bob").fingerprint.upper()
        spelled = ":".join(pinned[i : i + 2] for i in range(0, len(pinned), 2))
        alice, bob = connect(initiator(expected_fingerprint=spelled))
        self.check_connected(alice, bob)

    def test_data_before_acceptance_is_held(self) -> None:
        """Records the initiator sends right after M3 wait until the responder accepts."""
        alice = Endpoint(initiator())
        bob = Endpoint(responder(), verdict=None)
        alice.start()
        exchange(alice, bob)
        assert alice.session is not None
        self.assertIsNone(bob.completed)
        self.assertEqual(len(bob.verifications), 1)
        alice.send(alice.session.send_message(wire_application.ChatMessage("early")))
        alice.send(alice.session.send_data(b"early data"))
        exchange(alice, bob)
        self.assertEqual(bob.session_events, [])
        self.assertIsNone(bob.completed)
        bob.decide(None)
        self.assertIsNotNone(bob.completed)
        self.assertEqual(bob.session_events[0].message.text, "early")  # type: ignore[union-attr]
        self.assertEqual(bob.session_events[1], DataReceived(b"early data"))

    def test_deterministic_inputs_give_identical_frames(self) -> None:
        """The deterministic helpers really are deterministic (the flip tests rely on it)."""
        first = deterministic_frames()
        seen: list[bytes] = []

        def keep(sender: Endpoint, index: int, frame: bytes) -> bytes:
            seen.append(frame)
            return frame

        connect(initiator(deterministic=True), responder(deterministic=True), tamper=keep)
        self.assertEqual(sorted(seen), sorted(first.values()))


class RejectionTests(HandshakeTestCase):
    """Peers and adapters refusing each other."""

    def test_responder_rejects_initiator(self) -> None:
        """reject_peer after M3: an authenticated alert; the early data is dropped."""
        alice = Endpoint(initiator())
        bob = Endpoint(responder(), verdict=None)
        alice.start()
        exchange(alice, bob)
        assert alice.session is not None
        alice.send(alice.session.send_message(wire_application.ChatMessage("early")))
        exchange(alice, bob)
        bob.decide(errors.PeerRejected(reason="denied"))
        exchange(alice, bob)
        self.assertFailed(bob, errors.PeerRejected, verified=True)
        self.assertEqual(bob.session_events, [])
        (event,) = alice.session_events
        assert isinstance(event, AlertReceived)
        self.assertIsInstance(event.error, errors.PeerRejected)
        # A blocked user cannot tell a block from not being a contact.
        self.assertEqual(event.error.reason, "policy")  # type: ignore[attr-defined]

    def test_rejection_reason_revoked_is_told(self) -> None:
        """Reasons that help an honest peer fix things travel as they are."""
        alice = Endpoint(initiator())
        bob = Endpoint(responder(), verdict=lambda event: errors.PeerRejected(reason="revoked"))
        alice.start()
        exchange(alice, bob)
        (event,) = alice.session_events
        assert isinstance(event, AlertReceived)
        self.assertEqual(event.error.reason, "revoked")  # type: ignore[attr-defined]

    def test_initiator_rejects_responder(self) -> None:
        """reject_peer after M2b: a sealed alert; the initiator never shows its certificate."""
        alice = Endpoint(initiator(), verdict=lambda event: errors.CertificateInvalid())
        bob = Endpoint(responder())
        alice.start()
        exchange(alice, bob)
        self.assertFailed(alice, errors.CertificateInvalid, verified=True)
        self.assertFailed(bob, errors.CertificateInvalid)
        self.assertIsNone(bob.handshake.peer)

    def test_responder_wrong_identity(self) -> None:
        """M1 names someone else: the responder refuses, the initiator learns why."""
        alice, bob = connect(initiator(peer="carol@example.org"))
        self.assertFailed(bob, errors.IdentityMismatch)
        self.assertFailed(alice, errors.IdentityMismatch)

    def test_pinned_fingerprint_mismatch(self) -> None:
        """Another certificate of the right user is refused when a fingerprint is pinned."""
        other_bob = pki.issue_user(pki.make_ca("example.org"), "bob")
        bob_credentials = LocalCredentials(
            BOB, other_bob.certificate, list(other_bob.intermediates), other_bob.key
        )
        alice, bob = connect(
            initiator(expected_fingerprint=user("bob").fingerprint),
            responder(bob_credentials),
        )
        self.assertFailed(alice, errors.IdentityMismatch)
        self.assertFailed(bob, errors.IdentityMismatch)

    def test_too_much_early_data(self) -> None:
        """Early data beyond the pending cap fails the handshake with an alert record."""
        alice = Endpoint(initiator())
        bob = Endpoint(responder(record_limits=RecordLimits(max_pending=5000)), verdict=None)
        alice.start()
        exchange(alice, bob)
        assert alice.session is not None
        alice.send(alice.session.send_data(os.urandom(6000)))
        exchange(alice, bob)
        self.assertFailed(bob, errors.MessageTooLarge, verified=True)
        (event,) = alice.session_events
        self.assertIsInstance(event, AlertReceived)
        self.assertRaises(errors.Closed, bob.handshake.accept_peer)


class StateMachineTests(HandshakeTestCase):
    """The API refuses misuse; finished handshakes refuse everything."""

    def test_transition_table(self) -> None:
        """Every state but the final ones has an exit in the table."""
        sources = {state for state, _ in TRANSITIONS}
        self.assertEqual(set(State) - sources, {State.COMPLETE, State.FAILED})

    def test_initiator_needs_expected_peer(self) -> None:
        self.assertRaises(ValueError, Handshake, Role.INITIATOR, user("alice"))

    def test_responder_cannot_expect(self) -> None:
        self.assertRaises(
            ValueError, Handshake, Role.RESPONDER, user("bob"), expected_peer=ALICE
        )

    def test_bad_pinned_fingerprint(self) -> None:
        self.assertRaises(ValueError, initiator, expected_fingerprint="abc")

    def test_responder_start(self) -> None:
        self.assertEqual(responder().start(), [])

    def test_start_twice(self) -> None:
        handshake = initiator()
        handshake.start()
        self.assertRaises(errors.UnexpectedMessage, handshake.start)

    def test_data_before_start(self) -> None:
        """The initiator speaks first: data before start() fails the handshake."""
        handshake = initiator()
        frame = encode_frame(wire_handshake.alert_for(errors.Timeout()))
        events = handshake.receive_data(frame)
        (event,) = events
        assert isinstance(event, HandshakeAborted)
        self.assertIsInstance(event.error, errors.UnexpectedMessage)

    def test_verdict_before_verification(self) -> None:
        handshake = responder()
        self.assertRaises(RuntimeError, handshake.accept_peer)
        self.assertRaises(RuntimeError, handshake.reject_peer, errors.PeerRejected())

    def test_complete_refuses_more(self) -> None:
        alice, bob = connect()
        self.assertRaises(errors.Closed, alice.handshake.receive_data, b"x")
        self.assertRaises(errors.Closed, bob.handshake.accept_peer)
        self.assertRaises(errors.Closed, bob.handshake.abort, errors.Timeout())
        self.assertRaises(errors.Closed, alice.handshake.start)

    def test_failed_refuses_more(self) -> None:
        handshake = responder()
        handshake.receive_data(encode_frame(b"<nonsense/>"))
        self.assertIs(handshake.state, State.FAILED)
        self.assertRaises(errors.Closed, handshake.receive_data, b"more")
        self.assertRaises(errors.Closed, handshake.accept_peer)

    def test_abort_waiting_for_hello(self) -> None:
        """An adapter timeout before M1: a clear alert, then HandshakeAborted."""
        alert, aborted = responder().abort(errors.Timeout())
        assert isinstance(alert, SendData) and isinstance(aborted, HandshakeAborted)
        self.assertIsInstance(alert_error(alert.data), errors.Timeout)
        self.assertIsInstance(aborted.error, errors.Timeout)

    def test_abort_before_start(self) -> None:
        """Nothing was sent yet, so no alert is either."""
        (aborted,) = initiator().abort(errors.RateLimited())
        self.assertIsInstance(aborted, HandshakeAborted)

    def test_abort_waiting_for_verdict(self) -> None:
        """The initiator's adapter times out verifying: the responder gets a sealed alert."""
        alice = Endpoint(initiator(), verdict=None)
        bob = Endpoint(responder())
        alice.start()
        exchange(alice, bob)
        alice.handle(alice.handshake.abort(errors.Timeout()))
        exchange(alice, bob)
        self.assertFailed(bob, errors.Timeout)

    def test_responder_timeout_after_reply(self) -> None:
        """The responder gives up waiting for M3: the initiator's session learns it."""
        alice = Endpoint(initiator(), verdict=None)
        bob = Endpoint(responder())
        alice.start()
        exchange(alice, bob)
        bob.handle(bob.handshake.abort(errors.Timeout()))
        exchange(alice, bob)
        alice.decide(None)
        self.assertIsInstance(alice.session_error, errors.Timeout)

    def test_credentials_must_match(self) -> None:
        """LocalCredentials refuses a wrong key, a wrong identity and unusable certificates."""
        alice, bob = user("alice"), user("bob")
        self.assertRaises(
            ValueError, LocalCredentials, ALICE, alice.certificate, [], bob.private_key
        )
        self.assertRaises(
            ValueError, LocalCredentials, BOB, alice.certificate, [], alice.private_key
        )
        ca = pki.make_ca("example.org")
        for defect in ("weak-key", "no-identity"):
            bad = pki.bad_user(ca, defect)
            self.assertRaises(ValueError, LocalCredentials, ALICE, bad.certificate, [], bad.key)


class ImpersonationTests(HandshakeTestCase):
    """Key-compromise impersonation, misbinding (unknown key share), reflection."""

    def test_kci_initiator_key_cannot_sign_as_responder(self) -> None:
        """Holding alice's long-term key, an attacker still cannot pose as bob to alice."""
        impostor = forged_credentials(
            identity=BOB, certificates=user("bob"), private_key=user("alice").private_key
        )
        alice, attacker = connect(initiator(), responder(impostor))
        self.assertFailed(alice, errors.BadSignature)
        self.assertFailed(attacker, errors.BadSignature)

    def test_kci_replayed_responder_auth(self) -> None:
        """Bob's genuine <auth> from an earlier session does not verify in a new one."""
        trace: dict[str, bytes] = {}
        connect(responder_handshake=responder(trace=trace.__setitem__))
        old_auth = trace["responder_auth"]

        class Replayer(Handshake):
            def _auth_frame(self, label: bytes) -> bytes:
                assert self._send_handshake is not None
                sealed = self._send_handshake.seal(old_auth, SEALED_AAD)
                return encode_frame(wire_handshake.Sealed(sealed).to_xml())

        attacker_credentials = forged_credentials(
            identity=BOB, certificates=user("bob"), private_key=user("alice").private_key
        )
        alice, attacker = connect(
            initiator(), Replayer(Role.RESPONDER, attacker_credentials)
        )
        self.assertFailed(alice, errors.BadSignature)
        self.assertNoSession(attacker)

    def test_kci_with_initiators_own_certificate(self) -> None:
        """Presenting alice's own certificate to alice is a self-connection."""
        impostor = forged_credentials(
            identity=BOB, certificates=user("alice"), private_key=user("alice").private_key
        )
        alice, attacker = connect(initiator(), responder(impostor))
        self.assertFailed(alice, errors.SelfConnection)
        self.assertFailed(attacker, errors.SelfConnection)

    def test_kci_responder_key_cannot_sign_as_initiator(self) -> None:
        """Holding bob's key, an attacker cannot pose as alice to bob."""
        impostor = forged_credentials(
            identity=ALICE, certificates=user("alice"), private_key=user("bob").private_key
        )
        _attacker, bob = connect(initiator(impostor))
        self.assertFailed(bob, errors.BadSignature)
        self.assertNoSession(bob)

    def test_mitm_with_other_valid_certificate(self) -> None:
        """Mallory, with her own valid certificate, answers alice's call to bob."""
        mallory = forged_credentials(
            identity=BOB, certificates=user("mallory"), private_key=user("mallory").private_key
        )
        alice, attacker = connect(initiator(), responder(mallory))
        self.assertFailed(alice, errors.IdentityMismatch)
        self.assertFailed(attacker, errors.IdentityMismatch)

    def test_relayed_hello_names_the_intended_peer(self) -> None:
        """Alice calls mallory; mallory relays M1 to bob: bob refuses (misbinding)."""
        alice, bob = connect(initiator(peer="mallory@example.org"))
        self.assertFailed(bob, errors.IdentityMismatch)
        self.assertFailed(alice, errors.IdentityMismatch)

    def test_relayed_hello_with_rewritten_target(self) -> None:
        """Rewriting M1's ``to`` changes the transcript: alice cannot read bob's M2b."""
        tamper = tamper_frame("M1", functools.partial(rewrite, to=BOB))
        alice, bob = connect(
            initiator(peer="mallory@example.org"), responder(), tamper=tamper
        )
        self.assertFailed(alice, errors.DecryptFailed)
        self.assertIsInstance(bob.error, errors.DecryptFailed)
        self.assertNoSession(alice, bob)

    def test_hello_reflected_to_sender(self) -> None:
        """M1 echoed back to the initiator is an unexpected message."""
        alice = Endpoint(initiator())
        alice.start()
        alice.deliver(alice.outbox.pop())
        self.assertFailed(alice, errors.UnexpectedMessage)

    def test_hello_reflected_to_senders_responder(self) -> None:
        """Alice's M1 (to bob) sent to alice's own responder is refused."""
        alice, alice_listener = connect(responder_handshake=responder(user("alice")))
        self.assertFailed(alice_listener, errors.IdentityMismatch)
        self.assertFailed(alice, errors.IdentityMismatch)

    def test_self_dial(self) -> None:
        """Alice calling alice (her own listener) is refused on both ends."""
        alice, listener = connect(initiator(peer=ALICE), responder(user("alice")))
        self.assertFailed(alice, errors.SelfConnection)
        self.assertFailed(listener, errors.SelfConnection)

    def test_sealed_auth_reflected(self) -> None:
        """The responder's own M2b sent back to it as M3 does not decrypt."""
        alice = Endpoint(initiator())
        bob = Endpoint(responder())
        alice.start()
        bob.deliver(alice.outbox.pop())
        _m2, m2b = bob.outbox
        bob.deliver(m2b)
        self.assertFailed(bob, errors.DecryptFailed)

    def test_signature_with_other_role_label(self) -> None:
        """A signature made with the initiator's label does not pass as the responder's."""

        class WrongLabel(Handshake):
            def _auth_frame(self, label: bytes) -> bytes:
                return super()._auth_frame(INITIATOR_SIGNATURE_LABEL)

        alice, bob = connect(initiator(), WrongLabel(Role.RESPONDER, user("bob")))
        self.assertFailed(alice, errors.BadSignature)
        self.assertFailed(bob, errors.BadSignature)

    def test_initiator_signature_with_responder_label(self) -> None:
        class WrongLabel(Handshake):
            def _auth_frame(self, label: bytes) -> bytes:
                return super()._auth_frame(RESPONDER_SIGNATURE_LABEL)

        _alice, bob = connect(WrongLabel(Role.INITIATOR, user("alice"), expected_peer=BOB))
        self.assertFailed(bob, errors.BadSignature)

    def test_wrong_finished(self) -> None:
        """A Finished MAC made with another key is refused, on either side."""

        class WrongFinished(Handshake):
            def _auth_frame(self, label: bytes) -> bytes:
                real = self._send_handshake_secret
                self._send_handshake_secret = bytes(48)
                try:
                    return super()._auth_frame(label)
                finally:
                    self._send_handshake_secret = real

        alice, bob = connect(initiator(), WrongFinished(Role.RESPONDER, user("bob")))
        self.assertFailed(alice, errors.BadFinished)
        alice, bob = connect(WrongFinished(Role.INITIATOR, user("alice"), expected_peer=BOB))
        self.assertFailed(bob, errors.BadFinished)
        self.assertIsInstance(alice.session_events[0].error, errors.BadFinished)  # type: ignore[union-attr]

    def test_peer_certificate_without_identity(self) -> None:
        """A peer certificate without an irp: identity is refused."""
        bad = pki.bad_user(pki.make_ca("example.org"), "no-identity", "bob")
        impostor = forged_credentials(
            identity=BOB, certificates=[bad.certificate], private_key=bad.key
        )
        alice, _attacker = connect(initiator(), responder(impostor))
        self.assertFailed(alice, errors.CertificateInvalid)

    def test_peer_weak_key(self) -> None:
        """An RSA-1024 peer leaf is refused."""
        bad = pki.bad_user(pki.make_ca("example.org"), "weak-key", "bob")
        impostor = forged_credentials(
            identity=BOB, certificates=[bad.certificate], private_key=bad.key,
            signature_algorithm="rsa-pss-sha384",
        )
        alice, _attacker = connect(initiator(), responder(impostor))
        self.assertFailed(alice, errors.CertificateInvalid)

    def test_signature_algorithm_must_match_key(self) -> None:
        """The announced algorithm must be the one of the leaf key."""
        liar = forged_credentials(
            identity=BOB, certificates=user("bob"), private_key=user("bob").private_key,
            signature_algorithm="ed25519",
        )
        alice, _attacker = connect(initiator(), responder(liar))
        self.assertFailed(alice, errors.BadSignature)


class DowngradeAndReplayTests(HandshakeTestCase):
    """Tampered offers and selections; replayed handshake messages."""

    def test_other_version_only(self) -> None:
        tamper = tamper_frame("M1", functools.partial(rewrite, versions=("2",)))
        alice, bob = connect(tamper=tamper)
        self.assertFailed(bob, errors.UnsupportedVersion)
        self.assertFailed(alice, errors.UnsupportedVersion)

    def test_extra_version(self) -> None:
        tamper = tamper_frame("M1", functools.partial(rewrite, versions=("1", "0")))
        _alice, bob = connect(tamper=tamper)
        self.assertFailed(bob, errors.UnsupportedVersion)

    def test_other_suite(self) -> None:
        weaker = ("SIXCHAT1-X25519-AES128GCM-SHA256",)
        tamper = tamper_frame("M1", functools.partial(rewrite, suites=weaker))
        alice, bob = connect(tamper=tamper)
        self.assertFailed(bob, errors.UnsupportedVersion)
        self.assertFailed(alice, errors.UnsupportedVersion)

    def test_reply_selects_other_version(self) -> None:
        for change in (
            functools.partial(rewrite, version="0"),
            functools.partial(rewrite, suite="SIXCHAT0-NULL"),
        ):
            tamper = tamper_frame("M2", change)
            alice, bob = connect(tamper=tamper)
            self.assertFailed(alice, errors.DowngradeDetected)
            self.assertNoSession(bob)

    def test_equivalent_hello_breaks_transcript(self) -> None:
        """Even a semantically equal M1 (white space, XML declaration) breaks the keys."""
        changes = [
            lambda frame: encode_frame(frame[4:].replace(b"><", b">\n<", 1)),
            lambda frame: encode_frame(b'<?xml version="1.0" encoding="UTF-8"?>' + frame[4:]),
        ]
        for change in changes:
            alice, bob = connect(tamper=tamper_frame("M1", change))
            self.assertFailed(alice, errors.DecryptFailed)
            self.assertNoSession(bob)

    def test_equivalent_reply_breaks_transcript(self) -> None:
        def change(frame: bytes) -> bytes:
            return encode_frame(frame[4:].replace(b"><", b"> <", 1))

        alice, bob = connect(tamper=tamper_frame("M2", change))
        self.assertFailed(alice, errors.DecryptFailed)
        self.assertNoSession(bob)

    def test_replayed_hello_and_finish(self) -> None:
        """Old M1 and M3 replayed to a new responder: M3 does not decrypt."""
        old = {}

        def keep(sender: Endpoint, index: int, frame: bytes) -> bytes:
            old[(sender.handshake.role, index)] = frame
            return frame

        connect(tamper=keep)
        bob = Endpoint(responder())
        bob.deliver(old[(Role.INITIATOR, 0)])
        self.assertIsNone(bob.error)
        bob.deliver(old[(Role.INITIATOR, 1)])
        self.assertFailed(bob, errors.DecryptFailed)

    def test_replayed_reply(self) -> None:
        """Old M2 and M2b replayed to a new initiator do not decrypt."""
        old = {}

        def keep(sender: Endpoint, index: int, frame: bytes) -> bytes:
            old[(sender.handshake.role, index)] = frame
            return frame

        connect(tamper=keep)
        alice = Endpoint(initiator())
        alice.start()
        alice.deliver(old[(Role.RESPONDER, 0)] + old[(Role.RESPONDER, 1)])
        self.assertFailed(alice, errors.DecryptFailed)

    def test_dropped_auth(self) -> None:
        """A dropped M2b leaves the initiator waiting (the adapter's timeout ends it)."""
        tamper = tamper_frame("M2b", lambda frame: None)
        alice, bob = connect(tamper=tamper)
        self.assertNoSession(alice, bob)
        self.assertIs(alice.handshake.state, State.WAIT_RESPONDER_AUTH)


class KeyShareTests(HandshakeTestCase):
    """Invalid X25519 and ML-KEM-768 values."""

    def test_zero_x25519_key(self) -> None:
        for key in (bytes(32), b"\x01" + bytes(31)):
            tamper = tamper_frame("M1", functools.partial(rewrite, x25519_key=key))
            alice, bob = connect(tamper=tamper)
            self.assertFailed(bob, errors.MalformedMessage)
            self.assertFailed(alice, errors.MalformedMessage)

    def test_zero_x25519_key_in_reply(self) -> None:
        tamper = tamper_frame("M2", functools.partial(rewrite, x25519_key=bytes(32)))
        alice, _bob = connect(tamper=tamper)
        self.assertFailed(alice, errors.MalformedMessage)

    def test_malformed_mlkem_key(self) -> None:
        """An encapsulation key with coefficients over q fails the FIPS 203 check."""
        frames = deterministic_frames()
        hello = wire_handshake.parse_handshake_frame(frames["M1"][4:])
        assert isinstance(hello, wire_handshake.Hello)
        bad_key = b"\xff" * 1152 + hello.mlkem_key[1152:]
        tamper = tamper_frame("M1", functools.partial(rewrite, mlkem_key=bad_key))
        _alice, bob = connect(tamper=tamper)
        self.assertFailed(bob, errors.MalformedMessage)

    def test_random_mlkem_ciphertext(self) -> None:
        """A wrong ciphertext decapsulates to garbage (implicit rejection): no keys."""
        tamper = tamper_frame(
            "M2", functools.partial(rewrite, mlkem_ciphertext=os.urandom(1088))
        )
        alice, _bob = connect(tamper=tamper)
        self.assertFailed(alice, errors.DecryptFailed)


class MalformedInputTests(HandshakeTestCase):
    """Frames and XML an attacker controls."""

    def feed(self, data: bytes, handshake: Handshake | None = None) -> errors.SixChatError:
        """Feed ``data`` to a responder; return the error of its HandshakeAborted."""
        target = handshake or responder()
        events = target.receive_data(data)
        aborted = events[-1]
        assert isinstance(aborted, HandshakeAborted), events
        alert = events[-2] if len(events) > 1 else None
        if isinstance(alert, SendData) and alert.data[4:].startswith(b"<alert"):
            self.assertEqual(type(alert_error(alert.data)), type(aborted.error))
        self.assertIs(target.state, State.FAILED)
        return aborted.error

    def test_oversized_frame(self) -> None:
        """The announced length alone is enough to refuse."""
        error = self.feed((32 * 1024 + 1).to_bytes(4, "big"))
        self.assertIsInstance(error, errors.MessageTooLarge)

    def test_smaller_cap(self) -> None:
        frame = deterministic_frames()["M1"]
        error = self.feed(frame, responder(max_frame=1000))
        self.assertIsInstance(error, errors.MessageTooLarge)

    def test_empty_frame(self) -> None:
        self.assertIsInstance(self.feed(bytes(4)), errors.MalformedMessage)

    def test_xml_attacks(self) -> None:
        """DTDs, entities, bombs, PIs, comments, CDATA, depth and breadth are refused."""
        documents = [
            (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><hello to="&lol2;"/>'),
            b'<!DOCTYPE hello [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><hello>&xxe;</hello>',
            b'<hello to="&xxe;"/>',
            b"<hello><?php evil?></hello>",
            b"<hello><!-- hi --></hello>",
            b"<hello><![CDATA[x]]></hello>",
            b"<a>" * 50 + b"</a>" * 50,
            b"<hello>" + b"<a/>" * 5000 + b"</hello>",
            b'<?xml version="1.0" encoding="ISO-8859-1"?><hello/>',
            b"<hello",
            b"\xff\xfe<\x00h\x00",
            b'<hello xmlns="urn:evil" to="bob@example.org"/>',
        ]
        for document in documents:
            error = self.feed(encode_frame(document))
            self.assertIsInstance(error, errors.MalformedMessage, document)

    def test_garbage(self) -> None:
        for _ in range(20):
            length = int.from_bytes(os.urandom(2), "big") % 2000 + 1
            error = self.feed(encode_frame(os.urandom(length)))
            self.assertIsInstance(error, errors.MalformedMessage)

    def test_record_to_handshake(self) -> None:
        self.assertIsInstance(
            self.feed(encode_frame(b"\x17" + os.urandom(40))), errors.MalformedMessage
        )

    def test_unexpected_messages(self) -> None:
        """Valid messages out of order are UnexpectedMessage."""
        frames = deterministic_frames()
        cases = [
            (responder(), frames["M2"]),
            (responder(), frames["M2b"]),
            (responder(), frames["M1"] + frames["M1"]),
        ]
        for handshake, data in cases:
            self.assertIsInstance(self.feed(data, handshake), errors.UnexpectedMessage)
        started = initiator()
        started.start()
        self.assertIsInstance(self.feed(frames["M2b"], started), errors.UnexpectedMessage)
        started = initiator(deterministic=True)
        started.start()
        alert = encode_frame(wire_handshake.alert_for(errors.Timeout()))
        error = self.feed(frames["M2"] + alert, started)
        self.assertIsInstance(error, errors.UnexpectedMessage)

    def test_peer_alert_is_not_answered(self) -> None:
        """An alert from the peer fails the handshake without an alert back."""
        started = initiator()
        started.start()
        events = started.receive_data(encode_frame(wire_handshake.alert_for(errors.RateLimited())))
        (aborted,) = events
        assert isinstance(aborted, HandshakeAborted)
        self.assertIsInstance(aborted.error, errors.RateLimited)

    def test_alert_instead_of_hello_is_not_answered(self) -> None:
        """A responder whose first frame is an alert fails without an alert back."""
        waiting = responder()
        waiting.start()
        events = waiting.receive_data(encode_frame(wire_handshake.alert_for(errors.Timeout())))
        (aborted,) = events
        assert isinstance(aborted, HandshakeAborted)
        self.assertIsInstance(aborted.error, errors.Timeout)


def _flip_positions(length: int, stride: int = 7) -> list[tuple[int, int]]:
    """(byte, bit) positions: all bytes near the ends, every stride-th byte elsewhere."""
    positions = set(range(min(64, length))) | set(range(max(0, length - 48), length))
    positions |= set(range(0, length, stride))
    return [(position, (position // stride + position) % 8) for position in sorted(positions)]


class BitFlipTests(HandshakeTestCase):
    """A flipped bit anywhere in any handshake message never completes a handshake."""

    def run_flip(self, name: str, position: int, bit: int) -> None:
        def flip(frame: bytes) -> bytes:
            changed = bytearray(frame)
            changed[position] ^= 1 << bit
            return bytes(changed)

        alice, bob = connect(
            initiator(deterministic=True),
            responder(deterministic=True),
            tamper=tamper_frame(name, flip),
        )
        where = f"{name} byte {position} bit {bit}"
        # The side that receives the flipped frame never authenticates its peer...
        receiver = bob if name in ("M1", "M3") else alice
        self.assertEqual(receiver.verifications, [], where)
        self.assertIsNone(bob.completed, where)
        if name != "M3":
            self.assertIsNone(alice.completed, where)
        # ...and every failure is a SixChatError (never an unhandled exception).
        for error in (alice.error, bob.error, alice.session_error):
            if error is not None:
                self.assertIsInstance(error, errors.SixChatError)

    def flip_everywhere(self, name: str) -> None:
        frame = deterministic_frames()[name]
        for position, bit in _flip_positions(len(frame)):
            self.run_flip(name, position, bit)

    def test_flip_hello(self) -> None:
        self.flip_everywhere("M1")

    def test_flip_reply(self) -> None:
        self.flip_everywhere("M2")

    def test_flip_responder_auth(self) -> None:
        self.flip_everywhere("M2b")

    def test_flip_initiator_auth(self) -> None:
        """The initiator completes (as a TLS client does) but the responder never does, and
        the initiator's session then fails on the responder's alert."""
        self.flip_everywhere("M3")

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(sorted(FRAMES)),
        st.floats(min_value=0, max_value=1, exclude_max=True),
        st.integers(min_value=0, max_value=7),
    )
    def test_flip_random(self, name: str, where: float, bit: int) -> None:
        frame = deterministic_frames()[name]
        self.run_flip(name, int(where * len(frame)), bit)

    def test_flipped_m3_reaches_initiator_as_error(self) -> None:
        """A flipped M3 body: the responder's clear alert ends the initiator's session."""
        frame = deterministic_frames()["M3"]

        def flip(data: bytes) -> bytes:
            changed = bytearray(data)
            changed[len(frame) // 2] ^= 4
            return bytes(changed)

        alice, bob = connect(
            initiator(deterministic=True),
            responder(deterministic=True),
            tamper=tamper_frame("M3", flip),
        )
        self.assertFailed(bob, errors.SixChatError)
        self.assertIsInstance(alice.session_error, errors.SixChatError)
        assert alice.session is not None
        self.assertRaises(errors.Closed, alice.session.receive_data, b"")


class SessionAfterHandshakeTests(HandshakeTestCase):
    """Truncation, dropped records and counter limits on a real connection."""

    def test_truncation(self) -> None:
        alice, bob = connect()
        assert alice.session and bob.session
        self.assertIsInstance(bob.session.connection_lost(), errors.Truncated)

    def test_dropped_first_record(self) -> None:
        alice, bob = connect()
        assert alice.session and bob.session
        alice.session.send_message(wire_application.Ping())
        bob.deliver(alice.session.send_message(wire_application.Pong()))
        self.assertIsInstance(bob.session_error, errors.DecryptFailed)
        self.assertEqual(bob.session_events, [])

    def test_peer_never_rekeys(self) -> None:
        """A receiver refuses a key used past its hard limit."""
        alice, bob = connect(
            initiator(record_limits=small_limits(rekey_after_records=50, hard_limit_records=60)),
            responder(record_limits=small_limits(rekey_after_records=2, hard_limit_records=4)),
        )
        assert alice.session and bob.session
        for _ in range(5):
            alice.send(alice.session.send_message(wire_application.Ping()))
        exchange(alice, bob)
        self.assertEqual(len(bob.session_events), 4)
        self.assertIsInstance(bob.session_error, errors.SequenceExhausted)
