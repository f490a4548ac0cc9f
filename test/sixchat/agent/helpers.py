"""Shared fixtures for the agent tests and the sixchat tests that run real agents: identities, a registry per test, agents of its users."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.profile import Profile
from intermediary.server.relay import Relay, RelayLimits
from intermediary.server.service import IntermediaryService, IntermediarySettings
from irp.wire.records import Endpoint
from sixchat import errors
from sixchat.agent.service import Agent
from test.helpers import (
    EnrolledUser,
    EventCollector,
    RunningRegistry,
    make_profile,
    start_agent,
)

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")
CAROL = Identity.parse("carol@example.org")


def endpoint_of(agent: Agent, index: int = 0) -> Endpoint:
    """Where ``agent`` listens (its ``index``-th port)."""
    address = agent.ports[index].getHost()
    return Endpoint.parse(address.host, address.port)


def log_text(events: Any) -> list[str]:
    """The formatted text of captured log events."""
    from twisted.logger import formatEvent

    return [formatEvent(event) for event in events]


class AgentTestCase(TestCase):
    """A registry on 127.0.0.1 and helpers to run agents of its users."""

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = await RunningRegistry(self).start()
        self.users: dict[str, EnrolledUser] = {}
        self.paths: dict[str, str] = {}

    async def user(self, name: str) -> EnrolledUser:
        """Enrol ``name`` once."""
        if name not in self.users:
            self.users[name] = await self.registry.enrol(name)
            self.paths[name] = os.path.join(os.path.abspath(self.mktemp()), name)
        return self.users[name]

    async def agent(self, name: str, *, listen: tuple[str, ...] = ("127.0.0.1",), contacts: tuple[str, ...] = (), **settings: Any) -> tuple[Agent, EventCollector]:
        """Start the agent of ``name`` (same profile folder on every call) with ``contacts``."""
        user = await self.user(name)
        agent, events = await start_agent(self, self.registry, user, listen=listen, path=self.paths[name], **settings)
        assert agent.store is not None
        for contact in contacts:
            await agent.store.add_contact(Identity(contact, "example.org"))
        return agent, events

    async def pair(self, **settings: Any) -> tuple[Agent, EventCollector, Agent, EventCollector]:
        """Alice on 127.0.0.1 and Bob on ::1, contacts of each other."""
        alice, alice_events = await self.agent("alice", contacts=("bob",), **settings)
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",), **settings)
        return alice, alice_events, bob, bob_events

    async def deliver(self, sender: Agent, sender_events: EventCollector, receiver_events: EventCollector, to: Identity, text: str) -> str:
        """Send ``text`` and wait for it to arrive and for its receipt; returns its id."""
        message = await sender.send_text(to, text)
        received = await receiver_events.wait_for(event="message", id=message.id)
        self.assertEqual(received["text"], text)
        await sender_events.wait_for(event="receipt", id=message.id)
        return message.id

    async def settle(self, agent: Agent) -> None:
        """Wait until no dial nor delivery (or deposit) of ``agent`` is under way and its
        store is idle."""
        while agent.dialer.dialling or agent.outbox._deliveries:
            waiters = [agent.connect(peer) for peer in list(agent.dialer.dialling)]
            for waiter in waiters:
                waiter.addErrback(lambda _: None)
                await waiter
            await agent.outbox.idle()
        assert agent.store is not None
        await agent.store.contacts()

    async def history(self, agent: Agent, peer: Identity) -> list[tuple[str, str, str]]:
        assert agent.store is not None
        return [(m.direction, m.body, m.state) for m in await agent.store.history(peer)]


class HostileBytesTestCase(AgentTestCase):
    """Agent tests that play a raw TCP client sending what no SixChat agent would."""

    async def attack(self, agent: Agent, data: bytes, clock: Any = None, wait: float = 0.0) -> tuple[errors.SixChatError | None, list[str]]:
        """Send ``data`` to ``agent``; return the alert it answered with and its log."""
        from sixchat.wire.handshake import parse_alert
        from test.helpers import RawPeer, frames_of

        address = endpoint_of(agent)
        before = set(agent.connections)
        with capturedLogs() as logs:
            peer = await RawPeer().connect(address.address, address.port)
            if data:
                peer.transport.write(data)
            if clock is not None:
                await self.settle(agent)
                clock.advance(wait)
            received = await peer.closed
            for connection in set(agent.connections) - before:
                await connection.when_lost()
        frames = frames_of(received)
        self.assertLessEqual(len(frames), 1, frames)
        return (parse_alert(frames[0]) if frames else None), log_text(logs)


# -- the intermediary (store and forward, relay) ---------------------------------------

#: Each wait for the network ends within this many seconds.
WAIT = 20


def free_port() -> int:
    """A loopback port free right now (for the relay's range)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_intermediary(
    testcase: TestCase, registry: RunningRegistry, user: EnrolledUser, *, trust: dict[str, Any] | None = None, resolver: Any = None, clock: Any = None
) -> IntermediaryService:
    """The intermediary of ``registry``'s domain on 127.0.0.1 (registered there), with a
    one-port relay and ``clock`` for its timers (default: the reactor's); stopped at
    cleanup."""
    profile = os.path.join(os.path.abspath(testcase.mktemp()), "intermediary")
    make_profile(registry, user, profile)
    for domain, root in (trust or {}).items():
        Profile(profile).trust_domain(domain, root)
    relay_port = free_port()
    settings = IntermediarySettings(
        profile_dir=profile,
        listen=["tcp:0:interface=127.0.0.1"],
        resolver=resolver,
        relay_factory=lambda reactor_, _settings: Relay(
            reactor_, interface="127.0.0.1", ports=range(relay_port, relay_port + 1), limits=RelayLimits(), address="127.0.0.1"
        ),
    )
    service = IntermediaryService(settings, reactor, clock=clock)
    service.startService()
    testcase.addCleanup(service.stopService)
    await service.ready
    return service


async def ready(agent: Agent) -> None:
    """Wait until ``agent`` is subscribed at its intermediary (prekeys published)."""
    await agent.mailbox.when_ready().addTimeout(WAIT, reactor)
