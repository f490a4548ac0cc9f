"""The agent's metrics (sixchat.agent.metrics): real agents delivering over real sockets,
their metrics endpoints scraped over real HTTP and parsed with the Prometheus client's
parser; every count asserted to move by the exact amount."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from sixchat.agent.service import Agent
from test.helpers import sample, scrape
from test.sixchat.agent.helpers import BOB, WAIT, AgentTestCase, HostileBytesTestCase, ready, start_intermediary

METRICS = "tcp:0:interface=127.0.0.1"


def metrics_port(agent: Agent) -> int:
    """The port of ``agent``'s metrics endpoint."""
    port: Any = agent.metrics.endpoint.ports[0].getHost()
    return int(port.port)


class AgentMetricsTests(HostileBytesTestCase):
    """Handshakes, messages, receipts, sessions, registration."""

    async def test_delivery(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair(intermediary=False, metrics_listen=[METRICS])
        alice_before = await scrape(metrics_port(alice))
        bob_before = await scrape(metrics_port(bob))
        self.assertEqual(sample(alice_before, "sixchat_registry_registered"), 1)
        self.assertEqual(sample(alice_before, "sixchat_sessions_open"), 0)
        await self.deliver(alice, alice_events, bob_events, BOB, "one")
        await self.deliver(alice, alice_events, bob_events, BOB, "two")
        alice_after = await scrape(metrics_port(alice))
        bob_after = await scrape(metrics_port(bob))

        def moved(after: Any, before: Any, name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        self.assertEqual(moved(alice_after, alice_before, "sixchat_messages_sent_total"), 2)
        self.assertEqual(moved(alice_after, alice_before, "sixchat_receipts_received_total"), 2)
        self.assertEqual(
            moved(alice_after, alice_before, "sixchat_handshakes_total", direction="outgoing", outcome="established"), 1
        )
        self.assertEqual(sample(alice_after, "sixchat_sessions_open"), 1)
        self.assertEqual(sample(alice_after, "sixchat_connections_open"), 1)
        self.assertEqual(moved(bob_after, bob_before, "sixchat_messages_received_total", via="direct"), 2)
        self.assertEqual(moved(bob_after, bob_before, "sixchat_messages_received_total", via="intermediary"), 0)
        self.assertEqual(
            moved(bob_after, bob_before, "sixchat_handshakes_total", direction="incoming", outcome="established"), 1
        )
        self.assertEqual(moved(alice_after, alice_before, "sixchat_delivery_failures_total"), 0)
        # No label names a peer.
        for key in [*alice_after, *bob_after]:
            self.assertFalse([value for _name, value in key[1] if "@" in value], key)

    async def test_failed_handshake(self) -> None:
        alice, _events = await self.agent("alice", intermediary=False, metrics_listen=[METRICS])
        before = await scrape(metrics_port(alice))
        alert, _lines = await self.attack(alice, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert alert is not None
        after = await scrape(metrics_port(alice))
        self.assertEqual(
            sample(after, "sixchat_handshakes_total", direction="incoming", outcome=alert.name)
            - sample(before, "sixchat_handshakes_total", direction="incoming", outcome=alert.name),
            1,
        )
        self.assertEqual(sample(after, "sixchat_handshakes_total", direction="incoming", outcome="established"), 0)

    async def test_off_by_default(self) -> None:
        alice, _events = await self.agent("alice", intermediary=False)
        self.assertEqual(alice.metrics.endpoint.ports, [])


class IntermediaryMetricsTests(AgentTestCase):
    """Messages through the intermediary: deposited, received that way, the connection to
    the intermediary reported."""

    timeout = 60

    async def test_store_and_forward(self) -> None:
        await start_intermediary(self, self.registry, await self.user("intermediary"))
        alice, alice_events = await self.agent("alice", contacts=("bob",), metrics_listen=[METRICS])
        bob, _ = await self.agent("bob", listen=("::1",), contacts=("alice",))
        await ready(bob)
        await ready(alice)
        await bob.stopService()
        alice_before = await scrape(metrics_port(alice))
        self.assertEqual(sample(alice_before, "sixchat_intermediary_connected"), 1)
        ids = []
        for n in range(2):
            message = await alice.send_text(BOB, f"message {n}")
            await alice_events.wait_for(event="stored", id=message.id).addTimeout(WAIT, reactor)
            ids.append(message.id)
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",), metrics_listen=[METRICS])
        for message_id in ids:
            await alice_events.wait_for(event="receipt", id=message_id).addTimeout(WAIT, reactor)
            await bob_events.wait_for(event="message", id=message_id).addTimeout(WAIT, reactor)
        alice_after = await scrape(metrics_port(alice))
        bob_after = await scrape(metrics_port(bob))
        self.assertEqual(sample(alice_after, "sixchat_messages_deposited_total") - sample(alice_before, "sixchat_messages_deposited_total"), 2)
        self.assertEqual(sample(alice_after, "sixchat_receipts_received_total") - sample(alice_before, "sixchat_receipts_received_total"), 2)
        self.assertEqual(sample(alice_after, "sixchat_messages_sent_total") - sample(alice_before, "sixchat_messages_sent_total"), 0)
        self.assertEqual(sample(bob_after, "sixchat_messages_received_total", via="intermediary"), 2)
        self.assertEqual(sample(bob_after, "sixchat_messages_received_total", via="direct"), 0)
