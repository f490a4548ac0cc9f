"""Tests for :mod:`sixchat.agent.inbox` (unit level; chat between real agents is in test_service)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat.agent.inbox import handle_message
from sixchat.wire.application import Ping, Pong, Presence

BOB = Identity.parse("bob@example.org")


class FakeConnection:
    def __init__(self, established: bool = True) -> None:
        self.is_established = established
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


class FakeStore:
    def __init__(self) -> None:
        self.presence: dict[Identity, str] = {}

    async def set_presence(self, peer: Identity, status: str) -> None:
        self.presence[peer] = status


def agent() -> Any:
    events: list[dict[str, Any]] = []
    return SimpleNamespace(store=FakeStore(), emit=events.append, events=events)


class InboxTests(TestCase):
    async def test_ping_is_answered(self) -> None:
        connection = FakeConnection()
        await handle_message(agent(), connection, BOB, Ping())  # type: ignore[arg-type]
        self.assertEqual(connection.sent, [Pong()])

    async def test_no_pong_on_a_closing_session(self) -> None:
        connection = FakeConnection(established=False)
        await handle_message(agent(), connection, BOB, Ping())  # type: ignore[arg-type]
        self.assertEqual(connection.sent, [])

    async def test_presence_is_stored_and_told(self) -> None:
        subject = agent()
        await handle_message(subject, FakeConnection(), BOB, Presence("away"))  # type: ignore[arg-type]
        self.assertEqual(subject.store.presence, {BOB: "away"})
        self.assertEqual(subject.events, [{"event": "presence", "who": str(BOB), "status": "away"}])
