"""The agent's sealed-message state (sixchat/agent/prekeystore.py) and the outgoing states
``stored`` and ``scheduled`` (sixchat/agent/store.py), in a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat.agent.prekeystore import KEEP_AFTER_EXPIRY, SecretRow
from sixchat.agent.store import RECEIPT_FROM, AgentStore

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")
NOW = 1_800_000_000


class SealedStoreTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "sixchat.sqlite3")
        self.store = await AgentStore.open(self.path, reactor, now=self.clock.seconds)
        self.addCleanup(lambda: self.store.close() if self.store.pool.running else None)

    def test_file_is_private(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_one_time_secret_deleted_when_used(self) -> None:
        sealed = self.store.sealed
        await sealed.add_secrets([
            SecretRow("a" * 32, "one-time", b"secret-a", NOW, NOW + 100, False),
            SecretRow("b" * 32, "one-time", b"secret-b", NOW, NOW + 100, False),
            SecretRow("c" * 32, "last-resort", b"secret-c", NOW, NOW + 100, False),
        ])
        self.assertEqual(await sealed.unused_one_time(NOW), 2)
        found = await sealed.secret("a" * 32)
        assert found is not None
        self.assertEqual((found.kind, found.secret), ("one-time", b"secret-a"))
        await sealed.used("a" * 32)
        self.assertIsNone(await sealed.secret("a" * 32))
        self.assertEqual(await sealed.unused_one_time(NOW), 1)
        # Gone from the file itself, not only hidden.
        with sqlite3.connect(self.path) as raw:
            self.assertEqual(raw.execute("SELECT COUNT(*) FROM prekey_secrets WHERE id = ?", ("a" * 32,)).fetchone()[0], 0)
        # A last-resort secret stays (other messages may be sealed to it), marked used.
        await sealed.used("c" * 32)
        last = await sealed.newest_last_resort()
        assert last is not None
        self.assertEqual((last.id, last.used), ("c" * 32, True))
        # Expired ones no longer count as available.
        self.assertEqual(await sealed.unused_one_time(NOW + 100), 0)

    async def test_prune_keeps_secrets_while_messages_may_wait(self) -> None:
        sealed = self.store.sealed
        await sealed.add_secrets([SecretRow("a" * 32, "one-time", b"x", NOW, NOW + 10, False)])
        self.assertEqual(await sealed.prune(NOW + 10 + KEEP_AFTER_EXPIRY), 0)
        self.assertEqual(await sealed.prune(NOW + 11 + KEEP_AFTER_EXPIRY), 1)
        self.assertIsNone(await sealed.secret("a" * 32))

    async def test_newest_last_resort(self) -> None:
        sealed = self.store.sealed
        self.assertIsNone(await sealed.newest_last_resort())
        await sealed.add_secrets([SecretRow("a" * 32, "last-resort", b"old", NOW, NOW + 10, False)])
        await sealed.add_secrets([SecretRow("b" * 32, "last-resort", b"new", NOW + 5, NOW + 15, False)])
        newest = await sealed.newest_last_resort()
        assert newest is not None
        self.assertEqual(newest.id, "b" * 32)

    async def test_sequence_numbers_per_peer_survive_a_restart(self) -> None:
        sealed = self.store.sealed
        self.assertEqual([await sealed.next_sequence(BOB) for _ in range(3)], [1, 2, 3])
        self.assertEqual(await sealed.next_sequence(ALICE), 1)
        self.store.close()
        self.store = await AgentStore.open(self.path, reactor, now=self.clock.seconds)
        self.assertEqual(await self.store.sealed.next_sequence(BOB), 4)
        # A number never used is taken again; one taken since is not given back.
        await self.store.sealed.give_back_sequence(BOB, 4)
        self.assertEqual(await self.store.sealed.next_sequence(BOB), 4)
        await self.store.sealed.next_sequence(BOB)
        await self.store.sealed.give_back_sequence(BOB, 4)
        self.assertEqual(await self.store.sealed.next_sequence(BOB), 6)

    async def test_tracker_state(self) -> None:
        sealed = self.store.sealed
        self.assertIsNone(await sealed.tracker_state(BOB))
        await sealed.save_tracker_state(BOB, "one")
        await sealed.save_tracker_state(BOB, "two")
        self.assertEqual(await sealed.tracker_state(BOB), "two")
        self.assertIsNone(await sealed.tracker_state(ALICE))


class StoredAndScheduledTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "sixchat.sqlite3")
        self.store = await AgentStore.open(self.path, reactor, now=self.clock.seconds)
        self.addCleanup(self.store.close)

    async def test_stored_is_not_resent_nor_given_up_but_a_receipt_delivers_it(self) -> None:
        message = await self.store.queue_message(BOB, "hi")
        why = "stored at example.org's intermediary, will be delivered when bob@example.org is online"
        self.assertTrue(await self.store.set_state(message.id, "stored", reason=why))
        self.assertEqual(await self.store.pending_for(BOB), [])
        self.assertEqual(await self.store.pending_peers(), [])
        [listed] = await self.store.pending()
        self.assertEqual((listed.state, listed.reason), ("stored", why))
        self.clock.advance(10_000)
        self.assertEqual(await self.store.give_up_older_than(self.clock.seconds()), [])
        self.assertTrue(await self.store.set_state(message.id, "delivered", only_from=RECEIPT_FROM, peer=BOB))
        self.assertFalse(await self.store.set_state(message.id, "delivered", only_from=RECEIPT_FROM, peer=BOB))

    async def test_scheduled_message_is_not_due_before_its_time(self) -> None:
        later = await self.store.queue_message(BOB, "later", deliver_at=NOW + 600)
        now = await self.store.queue_message(BOB, "now")
        self.assertEqual(later.deliver_at, NOW + 600)
        self.assertEqual([m.id for m in await self.store.pending_for(BOB)], [now.id])
        self.assertEqual({m.id for m in await self.store.pending()}, {later.id, now.id})
        stored = await self.store.get_message(later.id)
        assert stored is not None
        self.assertEqual(stored.deliver_at, NOW + 600)
        # Not given up for waiting its turn: its age counts from when it is due.
        self.clock.advance(500)
        self.assertEqual([m.id for m in await self.store.give_up_older_than(self.clock.seconds() - 100)], [now.id])
        self.clock.advance(100)
        self.assertEqual([m.id for m in await self.store.pending_for(BOB)], [later.id])

    async def test_deposits_given_up_once_expired(self) -> None:
        stored = await self.store.queue_message(BOB, "stored")
        await self.store.set_state(stored.id, "stored", reason="at the intermediary")
        scheduled = await self.store.queue_message(BOB, "scheduled", deliver_at=NOW + 1000)
        await self.store.set_state(scheduled.id, "scheduled")
        self.assertEqual(await self.store.give_up_deposited(NOW, "expired"), [])
        [given_up] = await self.store.give_up_deposited(NOW + 1, "expired")
        self.assertEqual((given_up.id, given_up.state, given_up.reason), (stored.id, "undelivered", "expired"))
        self.assertEqual([m.id for m in await self.store.give_up_deposited(NOW + 1001, "expired")], [scheduled.id])


class UpgradeTests(TestCase):
    async def test_a_version_3_store_is_upgraded_keeping_its_messages(self) -> None:
        from common.db.dialect import SQLITE
        from common.db.migrations import upgrade_schema
        from sixchat.agent.store import MIGRATIONS

        path = os.path.join(os.path.abspath(self.mktemp()), "sixchat.sqlite3")
        os.makedirs(os.path.dirname(path))
        with sqlite3.connect(path, isolation_level=None) as raw:
            cursor = raw.cursor()
            self.assertEqual(upgrade_schema(cursor, SQLITE, MIGRATIONS[:3]), 3)
            cursor.execute("COMMIT")
            cursor.execute(
                "INSERT INTO messages (id, peer, direction, body, sent_at, created_at, state, updated_at, reason)"
                " VALUES ('m1', 'bob@example.org', 'out', 'old', 1, 1, 'queued', 1, NULL)"
            )
        store = await AgentStore.open(path, reactor, now=lambda: NOW)
        self.addCleanup(store.close)
        [message] = await store.pending_for(BOB)
        self.assertEqual((message.id, message.body, message.deliver_at), ("m1", "old", None))
        self.assertEqual(await store.sealed.next_sequence(BOB), 1)
