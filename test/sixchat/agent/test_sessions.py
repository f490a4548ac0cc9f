"""Tests for :mod:`sixchat.agent.sessions`: which of two sessions with one peer is kept, when our
certificate changed between them."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat.agent.service import Agent, AgentSettings
from sixchat.agent.sessions import pick_session
from sixchat.handshake import Role
from sixchat.peer.protocol import PeerConnection
from test.sixchat_certs import user


class PickAfterReloadTests(TestCase):
    """Both ends must pick the same session: they compare the certificate each dialler
    presented in that session's handshake, so ours must be the one we presented then, not
    the one reloaded since (``irp renew`` while the agent runs)."""

    def test_initiator_key_is_the_certificate_presented(self) -> None:
        agent = Agent(AgentSettings(profile_dir=self.mktemp(), register=False, control=False), reactor=None, clock=Clock())
        old, new = user("alice"), user("alice", "p384")
        low, high = sorted([old.fingerprint, new.fingerprint])
        agent.credentials = old
        ours = PeerConnection(agent, Role.INITIATOR, expected_peer=Identity("bob", "example.org"))
        ours.makeConnection(StringTransport())
        agent.credentials = new  # what reload_credentials does after the renewal
        # The peer dialled us too; its certificate's fingerprint lies between ours.
        middle = low + "0"  # sorts after low and before high
        theirs: object = SimpleNamespace(role=Role.RESPONDER, session=SimpleNamespace(peer_fingerprint=middle))
        keep, _ = pick_session(ours, theirs)  # type: ignore[arg-type]
        # The peer saw our old certificate in that handshake and compares it with its own.
        expected = ours if old.fingerprint > middle else theirs
        self.assertIs(keep, expected)
        ours.connectionLost(Failure(ConnectionDone()))
