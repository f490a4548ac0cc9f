"""The SixChat agent end to end: a real registry, two agents, real sockets on loopback."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from irp.identity import Identity
from sixchat.agent import Agent, AgentSettings
from test.helpers import RunningRegistry, make_profile


class EventCollector:
    """Collects agent events and lets a test wait for one."""

    def __init__(self, agent: Agent) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiting: list[tuple[dict[str, Any], Deferred[dict[str, Any]]]] = []
        agent.subscribe(self._event)

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for pattern, waiter in list(self._waiting):
            if all(event.get(key) == value for key, value in pattern.items()):
                self._waiting.remove((pattern, waiter))
                waiter.callback(event)

    def wait_for(self, **pattern: Any) -> Deferred[dict[str, Any]]:
        for event in self.events:
            if all(event.get(key) == value for key, value in pattern.items()):
                return Deferred.fromCoroutine(_value(event))
        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((pattern, waiter))
        return waiter


async def _value(value: Any) -> Any:
    return value


class AgentTourTests(TestCase):
    async def start_agent(self, registry: RunningRegistry, name: str, listen: str) -> tuple[Agent, EventCollector]:
        user = await registry.enrol(name)
        path = make_profile(registry, user, os.path.join(self.mktemp(), name))
        agent = Agent(AgentSettings(profile_dir=path, listen=[listen]), reactor)
        collector = EventCollector(agent)
        agent.startService()
        self.addCleanup(agent.stopService)
        await agent.ready
        return agent, collector

    async def test_messages_and_receipts_both_ways(self) -> None:
        registry = await RunningRegistry(self).start()
        alice, alice_events = await self.start_agent(registry, "alice", "tcp:0:interface=127.0.0.1")
        bob, bob_events = await self.start_agent(registry, "bob", "tcp6:0:interface=\\:\\:1")
        alice_id = Identity.parse("alice@example.org")
        bob_id = Identity.parse("bob@example.org")
        assert alice.store is not None and bob.store is not None
        await alice.store.add_contact(bob_id)
        await bob.store.add_contact(alice_id)

        sent = await alice.send_text(bob_id, "hello bob")
        received = await bob_events.wait_for(event="message", id=sent.id)
        self.assertEqual(received["text"], "hello bob")
        await alice_events.wait_for(event="receipt", id=sent.id)

        reply = await bob.send_text(alice_id, "hi alice")
        got = await alice_events.wait_for(event="message", id=reply.id)
        self.assertEqual(got["from"], "bob@example.org")
        await bob_events.wait_for(event="receipt", id=reply.id)
        history = await bob.store.history(alice_id)
        self.assertEqual([(m.direction, m.body, m.state) for m in history], [("in", "hello bob", "received"), ("out", "hi alice", "delivered")])
