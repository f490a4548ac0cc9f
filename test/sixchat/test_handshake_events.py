"""Tests for :mod:`sixchat.handshake_events` (the full handshake is in test_handshake)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sixchat.handshake_events import PeerNeedsVerification, SendData
from test.sixchat_certs import user


class EventTests(TestCase):
    def test_peer_certificate_is_the_leaf(self) -> None:
        alice = user("alice")
        event = PeerNeedsVerification(alice.identity, [alice.certificate, *alice.chain], alice.fingerprint)
        self.assertIs(event.certificate, alice.certificate)

    def test_bytes_stay_out_of_reprs(self) -> None:
        self.assertNotIn("secret", repr(SendData(b"secret")))
