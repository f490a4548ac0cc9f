"""Push delivery on a real SQLite store with a fake clock: windows, scheduled delivery,
superseding."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from common.identity import Identity
from intermediary.server.store import IntermediaryStore
from intermediary.server.subscriptions import Subscriptions
from intermediary.wire import Delivery, Event, Superseded, parse_prekey_info
from test.intermediary.helpers import prekey_bytes

ALICE = Identity("alice", "example.net")
NOW = 1_000_000




class SubscriptionTests(TestCase):
    """Subscriptions over a real store; timers on a fake clock."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.store = await IntermediaryStore.open(os.path.join(self.mktemp(), "i.sqlite3"), reactor)
        self.addCleanup(self.store.close)
        data = prekey_bytes(Identity("bob", "example.org"), expires=NOW + 86400)
        await self.store.publish_prekeys("bob", [(parse_prekey_info(data), data)], NOW)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.subscriptions = Subscriptions(self.store, self.clock, window=2)
        self.events: list[Event] = []

    async def settle(self) -> None:
        """Wait until the subscription's reads (in the store's thread) are answered."""
        for subscription in list(self.subscriptions.by_user.values()):
            await subscription.settled()

    async def deposit(self, body: bytes, deliver_at: int = NOW) -> str:
        receipt = await self.store.deposit("bob", ALICE, body, now=NOW, expires=NOW + 3600, deliver_at=deliver_at)
        self.subscriptions.deposited("bob", deliver_at)
        return receipt.message_id

    def delivered(self) -> list[bytes]:
        return [event.envelope for event in self.events if isinstance(event, Delivery)]

    async def test_window_and_acks(self) -> None:
        ids = [await self.deposit(f"m{n}".encode()) for n in range(3)]
        subscription, pending = await self.subscriptions.subscribe("bob", self.events.append)
        self.assertEqual(pending, 3)
        subscription.pump()
        await self.settle()
        self.assertEqual(self.delivered(), [b"m0", b"m1"])  # the window is 2
        await self.store.ack("bob", ids[0])
        subscription.acked(ids[0])
        await self.settle()
        self.assertEqual(self.delivered(), [b"m0", b"m1", b"m2"])

    async def test_new_deposit_pushed_at_once(self) -> None:
        subscription, _ = await self.subscriptions.subscribe("bob", self.events.append)
        subscription.pump()
        await self.settle()
        self.assertEqual(self.delivered(), [])
        await self.deposit(b"fresh")
        await self.settle()
        self.assertEqual(self.delivered(), [b"fresh"])

    async def test_scheduled_not_pushed_early(self) -> None:
        await self.deposit(b"at 100", deliver_at=NOW + 100)
        subscription, pending = await self.subscriptions.subscribe("bob", self.events.append)
        self.assertEqual(pending, 0)
        subscription.pump()
        await self.settle()
        self.clock.advance(99)
        await self.settle()
        self.assertEqual(self.delivered(), [])
        await self.deposit(b"at 50 more", deliver_at=NOW + 150)
        self.clock.advance(1)  # NOW + 100: the timer fires, the database is read once
        await self.settle()
        self.assertEqual(self.delivered(), [b"at 100"])
        self.clock.advance(49)
        await self.settle()
        self.assertEqual(self.delivered(), [b"at 100"])
        self.clock.advance(1)
        await self.settle()
        self.assertEqual(self.delivered(), [b"at 100", b"at 50 more"])

    async def test_new_subscription_supersedes(self) -> None:
        await self.deposit(b"one")
        first: list[Event] = []
        old, _ = await self.subscriptions.subscribe("bob", first.append)
        new, _ = await self.subscriptions.subscribe("bob", self.events.append)
        self.assertEqual(first, [Superseded()])
        old.pump()
        new.pump()
        await self.settle()
        self.assertEqual(first, [Superseded()])
        self.assertEqual(self.delivered(), [b"one"])
        self.subscriptions.unsubscribe(old)  # the old connection's loss does not end the new one
        self.assertIs(self.subscriptions.by_user["bob"], new)
