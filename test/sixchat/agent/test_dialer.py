"""Tests for :mod:`sixchat.agent.dialer` (unit level; dialling real agents is in test_service)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat import errors
from sixchat.agent.dialer import Dialer

BOB = Identity.parse("bob@example.org")


class FakeDirectory:
    def __init__(self, answers: list[set[str]]) -> None:
        self.answers = answers
        self.asked = 0

    async def certificate_fingerprints(self, identity: Identity) -> set[str]:
        self.asked += 1
        return self.answers.pop(0)


def dialer(answers: list[set[str]], clock: Clock) -> tuple[Dialer, FakeDirectory]:
    directory = FakeDirectory(answers)
    agent: Any = SimpleNamespace(directory=directory, clock=clock, settings=SimpleNamespace(fingerprint_cache=300.0))
    return Dialer(agent), directory


class ExpectedFingerprintTests(TestCase):
    """The registry's certificates of a peer are cached for ``fingerprint_cache`` seconds."""

    async def test_cached_then_fresh(self) -> None:
        clock = Clock()
        subject, directory = dialer([{"a"}, {"b"}, {"c"}], clock)
        self.assertEqual(await subject.expected_fingerprints(BOB), {"a"})
        self.assertEqual(await subject.expected_fingerprints(BOB), {"a"})
        self.assertEqual(directory.asked, 1)
        self.assertEqual(await subject.expected_fingerprints(BOB, fresh=True), {"b"})
        clock.advance(300)
        self.assertEqual(await subject.expected_fingerprints(BOB), {"c"})
        self.assertEqual(directory.asked, 3)

    async def test_no_certificate_is_unreachable(self) -> None:
        subject, _ = dialer([set()], Clock())
        with self.assertRaises(errors.PeerUnreachable):
            await subject.expected_fingerprints(BOB)


class ConnectTests(TestCase):
    def test_current_session_is_reused(self) -> None:
        """A peer with an established session is not dialled again."""
        session: Any = SimpleNamespace(is_established=True)
        agent: Any = SimpleNamespace(sessions={BOB: session})
        subject = Dialer(agent)
        self.assertIs(self.successResultOf(subject.connect(BOB)), session)
        self.assertEqual(subject.dialling, {})
