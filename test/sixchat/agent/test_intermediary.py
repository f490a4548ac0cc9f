"""Agents with a real intermediary: real registries, the intermediary service (part B) on a
loopback TLS port with its SQLite file, its relay (part C), real agents and their stores.

- store and forward in one domain: Bob's agent is stopped, Alice's three messages are
  stored at the intermediary; Bob's agent starts and gets them in order; Alice sees them
  delivered (the receipts come back through the intermediary);
- an agent that accepts no direct connection (``--no-listen``) is reached through its relay;
- across two domains: each domain's intermediary, found through its registry.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater

from common.identity import Identity
from sixchat.agent.deposit import stored_reason
from sixchat.agent.service import Agent
from test.helpers import EnrolledUser, EventCollector, RunningRegistry, fake_clock_now, start_agent
from test.irp.server.cross_domain import CrossDomainTestCase
from test.sixchat.agent.helpers import ALICE, BOB, WAIT, AgentTestCase, ready, start_intermediary


class SameDomainTests(AgentTestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.intermediary = await start_intermediary(self, self.registry, await self.user("intermediary"))

    async def test_offline_recipient_gets_stored_messages_in_order(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        bob, _ = await self.agent("bob", listen=("::1",), contacts=("alice",))
        await ready(bob)  # Bob's agent has published prekeys once
        await ready(alice)
        await bob.stopService()

        ids = []
        for n in range(3):
            message = await alice.send_text(BOB, f"message {n}")
            stored = await alice_events.wait_for(event="stored", id=message.id).addTimeout(WAIT, reactor)
            self.assertEqual(stored["reason"], stored_reason(BOB))
            ids.append(message.id)
        self.assertEqual(await self.history(alice, BOB), [("out", f"message {n}", "stored") for n in range(3)])
        assert alice.store is not None
        [first, *_] = await alice.store.pending()
        self.assertEqual(first.reason, "stored at example.org's intermediary, will be delivered when bob@example.org is online")
        # Nothing readable at the intermediary.
        with open(self.intermediary.settings.database_url, "rb") as database:
            self.assertNotIn(b"message 1", database.read())

        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        for message_id in ids:
            await alice_events.wait_for(event="receipt", id=message_id).addTimeout(WAIT, reactor)
        self.assertEqual([event["id"] for event in bob_events.matching(event="message")], ids)
        self.assertEqual(await self.history(bob, ALICE), [("in", f"message {n}", "received") for n in range(3)])
        self.assertEqual(await self.history(alice, BOB), [("out", f"message {n}", "delivered") for n in range(3)])
        status = bob.status()
        self.assertIn("connected to example.org's intermediary", status["intermediary"])

    async def test_reconnects_after_the_intermediary_restarts(self) -> None:
        clock = fake_clock_now()
        bob, _ = await self.agent("bob", listen=("::1",), contacts=("alice",), clock=clock)
        await ready(bob)
        client = bob.mailbox.client
        lost = client.when_lost()
        await self.intermediary.stopService()
        await lost.addTimeout(WAIT, reactor)
        await deferLater(reactor, 0, lambda: None)  # the mailbox's own callbacks run first
        self.assertIsNone(bob.mailbox.client)
        self.assertIn("lost", bob.status()["intermediary"])
        self.intermediary = await start_intermediary(self, self.registry, self.users["intermediary"])
        clock.advance(1)  # the first retry
        await ready(bob)
        self.assertIn("connected to example.org's intermediary", bob.status()["intermediary"])
        # Its prekeys are published again: Alice can leave it a message.
        await bob.stopService()
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        message = await alice.send_text(BOB, "after the restart")
        await alice_events.wait_for(event="stored", id=message.id).addTimeout(WAIT, reactor)

    async def test_recipient_without_direct_connections_is_reached_through_the_relay(self) -> None:
        bob, bob_events = await self.agent("bob", listen=(), contacts=("alice",), relay=True)
        await ready(bob)
        self.assertEqual(bob.ports, [])
        assert bob.mailbox.relay is not None
        self.assertEqual(bob.advertised, [bob.mailbox.relay])
        self.assertEqual(bob.status()["relay"], f"127.0.0.1 port {bob.mailbox.relay.port}")
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await ready(alice)
        message = await alice.send_text(BOB, "through the relay")
        await alice_events.wait_for(event="receipt", id=message.id).addTimeout(WAIT, reactor)
        received = await bob_events.wait_for(event="message", id=message.id)
        self.assertNotIn("via", received)  # a direct session, not a stored message
        self.assertEqual(alice_events.matching(event="stored"), [])
        self.assertIn(ALICE, bob.sessions)

    async def test_recipient_who_never_published_prekeys(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        await ready(alice)
        message = await alice.send_text(BOB, "hello?")
        progress = await alice_events.wait_for(event="progress", id=message.id).addTimeout(WAIT, reactor)
        self.assertIn("bob@example.org has no mailbox at example.org's intermediary", progress["text"])
        self.assertEqual(await self.history(alice, BOB), [("out", "hello?", "queued")])

    async def test_without_intermediary_the_old_retry_path_stays(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",), intermediary=False)
        await self.user("bob")
        message = await alice.send_text(BOB, "nobody home")
        progress = await alice_events.wait_for(event="progress", id=message.id).addTimeout(WAIT, reactor)
        self.assertIn("offline", progress["text"])
        self.assertEqual(await self.history(alice, BOB), [("out", "nobody home", "queued")])
        self.assertEqual(alice.status()["intermediary"], "not used")


class ScheduledTests(AgentTestCase):
    timeout = 60

    async def test_scheduled_message_is_held_until_its_time(self) -> None:
        """The intermediary (on a fake clock) holds a scheduled message until it is due,
        even while Bob is online, then pushes it."""
        clock = fake_clock_now()
        await start_intermediary(self, self.registry, await self.registry.enrol("intermediary"), clock=clock)
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        await ready(alice)
        await ready(bob)
        deliver_at = int(clock.seconds()) + 120
        message = await alice.send_text(BOB, "at the right time", deliver_at)
        scheduled = await alice_events.wait_for(event="scheduled", id=message.id).addTimeout(WAIT, reactor)
        self.assertEqual(scheduled["deliver_at"], deliver_at)
        self.assertEqual(await self.history(alice, BOB), [("out", "at the right time", "scheduled")])
        # Bob is online but gets nothing yet (a round trip to the intermediary proves the
        # deposit was not pushed: pushes and answers travel in order).
        assert bob.mailbox.client is not None
        await bob.mailbox.client.ping()
        self.assertEqual(bob_events.matching(event="message"), [])
        clock.advance(121)
        received = await bob_events.wait_for(event="message", id=message.id).addTimeout(WAIT, reactor)
        self.assertEqual(received["text"], "at the right time")
        await alice_events.wait_for(event="receipt", id=message.id).addTimeout(WAIT, reactor)
        self.assertEqual(await self.history(alice, BOB), [("out", "at the right time", "delivered")])


class NoIntermediaryTests(AgentTestCase):
    async def test_reason_says_the_domain_has_no_intermediary(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        message = await alice.send_text(BOB, "nobody home")
        progress = await alice_events.wait_for(event="progress", id=message.id).addTimeout(WAIT, reactor)
        self.assertIn("offline", progress["text"])
        self.assertIn("example.org has no intermediary", progress["text"])
        self.assertEqual(await self.history(alice, BOB), [("out", "nobody home", "queued")])
        self.assertIn("example.org has no intermediary", alice.status()["intermediary"])


class CrossDomainTests(CrossDomainTestCase):
    timeout = 90

    async def test_offline_recipient_in_another_domain(self) -> None:
        await self.start_domains()
        home, other = self.registries["example.org"], self.registries["example.net"]
        users = {}
        for registry, name in ((home, "intermediary"), (home, "bob"), (other, "intermediary"), (other, "alice")):
            await registry.add_user(name)
            users[(registry.domain, name)] = await registry.issue(name)
        await start_intermediary(self, home, users[("example.org", "intermediary")], trust={"example.net": other.root}, resolver=self.resolver)
        await start_intermediary(self, other, users[("example.net", "intermediary")], trust={"example.org": home.root}, resolver=self.resolver)
        alice_id = Identity.parse("alice@example.net")
        alice_path = self.profile_of(users[("example.net", "alice")], "example.net", "example.org")
        bob_path = self.profile_of(users[("example.org", "bob")], "example.org", "example.net")

        async def agent(registry: RunningRegistry, user: EnrolledUser, path: str, contact: Identity) -> tuple[Agent, EventCollector]:
            started, events = await start_agent(self, registry, user, path=path, resolver=self.resolver)
            assert started.store is not None
            await started.store.add_contact(contact)
            await ready(started)
            return started, events

        bob, _ = await agent(home, users[("example.org", "bob")], bob_path, alice_id)
        await bob.stopService()
        alice, alice_events = await agent(other, users[("example.net", "alice")], alice_path, BOB)
        ids = []
        for n in range(3):
            message = await alice.send_text(BOB, f"across {n}")
            await alice_events.wait_for(event="stored", id=message.id).addTimeout(WAIT, reactor)
            ids.append(message.id)

        bob, bob_events = await agent(home, users[("example.org", "bob")], bob_path, alice_id)
        for message_id in ids:
            await alice_events.wait_for(event="receipt", id=message_id).addTimeout(WAIT, reactor)
        self.assertEqual([event["text"] for event in bob_events.matching(event="message")], [f"across {n}" for n in range(3)])
        assert alice.store is not None
        self.assertEqual([m.state for m in await alice.store.history(BOB)], ["delivered"] * 3)

    async def test_recipient_in_another_domain_reached_through_its_relay(self) -> None:
        """Bob (example.org) accepts no connection; Alice (example.net) dials the relay
        address his registry publishes, and the session runs end to end through
        example.org's relay (her own domain's intermediary plays no part)."""
        await self.start_domains()
        home, other = self.registries["example.org"], self.registries["example.net"]
        users = {}
        for registry, name in ((home, "intermediary"), (home, "bob"), (other, "alice")):
            await registry.add_user(name)
            users[(registry.domain, name)] = await registry.issue(name)
        await start_intermediary(self, home, users[("example.org", "intermediary")], trust={"example.net": other.root}, resolver=self.resolver)
        alice_id = Identity.parse("alice@example.net")
        alice_path = self.profile_of(users[("example.net", "alice")], "example.net", "example.org")
        bob_path = self.profile_of(users[("example.org", "bob")], "example.org", "example.net")
        bob, bob_events = await start_agent(
            self, home, users[("example.org", "bob")], path=bob_path, resolver=self.resolver, listen=(), relay=True
        )
        assert bob.store is not None
        await bob.store.add_contact(alice_id)
        await ready(bob)
        self.assertEqual(bob.ports, [])
        assert bob.mailbox.relay is not None
        self.assertEqual(bob.advertised, [bob.mailbox.relay])
        alice, alice_events = await start_agent(self, other, users[("example.net", "alice")], path=alice_path, resolver=self.resolver)
        message = await alice.send_text(BOB, "across, through the relay")
        await alice_events.wait_for(event="receipt", id=message.id).addTimeout(WAIT, reactor)
        received = await bob_events.wait_for(event="message", id=message.id)
        self.assertNotIn("via", received)  # a session, not a stored message
        self.assertEqual(alice_events.matching(event="stored"), [])
        self.assertIn(alice_id, bob.sessions)
