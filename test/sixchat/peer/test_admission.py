"""The agent's limits on incoming handshakes and on what a stranger may store (issue 9,
item 7): budgets per IPv4 address or IPv6 /64, a cap on handshakes in progress, and a cap
on the messages and bytes one non-contact may have stored under ``--policy anyone``."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.wire.framing import encode_frame
from sixchat import errors
from sixchat.agent.responder import ResponderFactory
from sixchat.agent.service import Agent, AgentSettings
from sixchat.peer.admission import HandshakeAdmission
from sixchat.peer.protocol import PeerConnection
from sixchat.wire.handshake import alert_for, parse_alert
from test.sixchat.agent.helpers import ALICE, AgentTestCase, HostileBytesTestCase, endpoint_of, log_text


def admission(clock: Clock, **limits: Any) -> HandshakeAdmission:
    settings: dict[str, Any] = {"per_source": 3, "window": 10.0, "max_concurrent": 100}
    settings.update(limits)
    return HandshakeAdmission(clock, **settings)


class HandshakeAdmissionTests(TestCase):
    def test_ipv6_budget_is_per_64(self) -> None:
        clock = Clock()
        limit = admission(clock)
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"):
            self.assertIsNone(limit.admit(host))
        refusal = limit.admit("2001:db8:1:2:abcd::77")
        assert refusal is not None
        self.assertEqual(refusal.name, "rate-limited")
        self.assertIn("2001:db8:1:2::/64", refusal.message)
        # Another /64 and an IPv4 address have budgets of their own.
        self.assertIsNone(limit.admit("2001:db8:1:3::1"))
        self.assertIsNone(limit.admit("192.0.2.1"))

    def test_ipv4_budget_is_per_address(self) -> None:
        limit = admission(Clock(), per_source=1)
        self.assertIsNone(limit.admit("192.0.2.1"))
        self.assertIsNotNone(limit.admit("192.0.2.1"))
        self.assertIsNotNone(limit.admit("::ffff:192.0.2.1"))  # the same IPv4 address
        self.assertIsNone(limit.admit("192.0.2.2"))

    def test_window_slides(self) -> None:
        clock = Clock()
        limit = admission(clock, per_source=2)
        limit.admit("192.0.2.1")
        clock.advance(5)
        limit.admit("192.0.2.1")
        self.assertIsNotNone(limit.admit("192.0.2.1"))
        clock.advance(5)  # the first start left the window
        self.assertIsNone(limit.admit("192.0.2.1"))
        self.assertIsNotNone(limit.admit("192.0.2.1"))

    def test_handshakes_in_progress_are_capped(self) -> None:
        limit = admission(Clock(), max_concurrent=2)
        self.assertIsNone(limit.admit("192.0.2.1"))
        self.assertIsNone(limit.admit("192.0.2.2"))
        refusal = limit.admit("192.0.2.3")
        assert refusal is not None
        self.assertIn("in progress", refusal.message)
        limit.finished()
        self.assertIsNone(limit.admit("192.0.2.3"))

    def test_refusal_counts_nothing(self) -> None:
        limit = admission(Clock(), max_concurrent=1, per_source=1)
        limit.admit("192.0.2.1")
        limit.admit("192.0.2.2")  # refused: one in progress
        limit.finished()
        self.assertIsNone(limit.admit("192.0.2.2"))


class FactoryTests(TestCase):
    """The agent's listening factory applies the budgets (Twisted fakes, no sockets)."""

    def factory(self, **settings: Any) -> tuple[Agent, ResponderFactory]:
        agent = Agent(AgentSettings(profile_dir=self.mktemp(), **settings), reactor=None, clock=Clock())
        return agent, ResponderFactory(agent)

    def refusal_bytes(self, protocol: Any) -> bytes:
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        return transport.value()

    def test_one_64_shares_one_budget(self) -> None:
        _, factory = self.factory(handshakes_per_address=2)
        for host in ("2001:db8::1", "2001:db8::2"):
            self.assertIsInstance(factory.buildProtocol(IPv6Address("TCP", host, 4000)), PeerConnection)
        with capturedLogs() as logs:
            refused = factory.buildProtocol(IPv6Address("TCP", "2001:db8::3", 4000))
        self.assertEqual(self.refusal_bytes(refused), encode_frame(alert_for(errors.RateLimited())))
        self.assertTrue(any("2001:db8::/64" in line for line in log_text(logs)), log_text(logs))
        self.assertIsInstance(factory.buildProtocol(IPv6Address("TCP", "2001:db8:0:1::1", 4000)), PeerConnection)

    def test_slot_is_freed_when_the_handshake_ends(self) -> None:
        agent, factory = self.factory(max_handshakes_in_progress=1)
        first = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        assert isinstance(first, PeerConnection)
        with capturedLogs() as logs:
            refused = factory.buildProtocol(IPv4Address("TCP", "192.0.2.2", 4000))
        self.assertEqual(parse_alert(self.refusal_bytes(refused)[4:]).name, "rate-limited")
        self.assertTrue(any("in progress" in line for line in log_text(logs)), log_text(logs))
        first.connectionLost(Failure(ConnectionDone()))
        first.connectionLost(Failure(ConnectionDone()))  # released once only
        self.assertEqual(agent.admission.in_progress, 0)
        self.assertIsInstance(factory.buildProtocol(IPv4Address("TCP", "192.0.2.2", 4000)), PeerConnection)


class OverSocketsTests(AgentTestCase):
    """Real agents, real sockets on loopback."""

    attack = HostileBytesTestCase.attack

    async def test_concurrent_handshakes_are_capped(self) -> None:
        from test.helpers import RawPeer

        alice, alice_events = await self.agent("alice", listen=("127.0.0.1",), contacts=("bob",), max_handshakes_in_progress=2)
        bob, bob_events = await self.agent("bob", contacts=("alice",))
        address = endpoint_of(alice)
        # Two silent handshakes hold both slots.
        stalled = [await RawPeer().connect(address.address, address.port) for _ in range(2)]
        alert, lines = await self.attack(alice, b"")
        self.assertIsInstance(alert, errors.RateLimited)
        self.assertTrue(any("in progress" in line for line in lines), lines)
        # A slot comes back when a stalled handshake ends; then Bob gets through.
        for peer in stalled:
            peer.transport.loseConnection()
            await peer.closed
        for connection in list(alice.connections):
            await connection.when_lost()
        self.assertEqual(alice.admission.in_progress, 0)
        await self.deliver(bob, bob_events, alice_events, ALICE, "through")
        self.assertEqual(alice.admission.in_progress, 0)

    async def test_stranger_store_cap(self) -> None:
        alice, alice_events = await self.agent("alice", policy="anyone", unknown_peer_messages=2, unknown_peer_bytes=1000)
        carol, carol_events = await self.agent("carol", listen=("::1",))
        await self.deliver(carol, carol_events, alice_events, ALICE, "one")
        await self.deliver(carol, carol_events, alice_events, ALICE, "two")
        with capturedLogs() as logs:
            third = await carol.send_text(ALICE, "three")
            down = await carol_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "rate-limited")
        self.assertTrue(any("Refused message" in line and "carol@example.org" in line and "stranger" in line for line in log_text(logs)), log_text(logs))
        assert alice.store is not None and carol.store is not None
        self.assertEqual([m.body for m in await alice.store.history()], ["one", "two"])
        self.assertNotEqual((await carol.store.get_message(third.id)).state, "delivered")  # type: ignore[union-attr]
        # A contact is not limited.
        await alice.store.add_contact(carol.identity)
        await self.settle(carol)
        await carol.outbox.retry_pending()
        await carol_events.wait_for(event="receipt", id=third.id)

    async def test_stranger_byte_cap(self) -> None:
        alice, alice_events = await self.agent("alice", policy="anyone", unknown_peer_messages=100, unknown_peer_bytes=10)
        carol, carol_events = await self.agent("carol", listen=("::1",))
        await self.deliver(carol, carol_events, alice_events, ALICE, "Grüße")  # 7 bytes
        await carol.send_text(ALICE, "über")  # 5 more: 12 > 10
        down = await carol_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "rate-limited")
        assert alice.store is not None
        self.assertEqual([m.body for m in await alice.store.history()], ["Grüße"])
