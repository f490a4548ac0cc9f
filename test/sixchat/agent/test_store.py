"""The agent's store (sixchat/store.py): contacts, history and outbox in a real SQLite file,
with a fake clock for time stamps."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from common.identity import Identity
from irp.wire.records import Endpoint
from sixchat.agent.store import AgentStore

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")
CAROL = Identity.parse("carol@example.org")
ID = "9b2d2c1e-5a4f-4b8e-9f0e-3c1d2b3a4f5e"


class StoreTestCase(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "sixchat.sqlite3")
        self.store = await self.open()

    async def open(self) -> AgentStore:
        store = await AgentStore.open(self.path, reactor, now=self.clock.seconds)
        self.addCleanup(lambda: store.close() if store.pool.running else None)
        return store


class ContactTests(StoreTestCase):
    async def test_add_update_list_remove(self) -> None:
        contact = await self.store.add_contact(BOB, "Bob", ["aa" * 32])
        self.assertEqual((contact.identity, contact.display_name, contact.fingerprints), (BOB, "Bob", ("aa" * 32,)))
        self.assertEqual((contact.blocked, contact.last_endpoint, contact.presence, contact.added_at), (False, None, "offline", 1_800_000_000))
        await self.store.add_contact(ALICE)
        self.clock.advance(10)
        updated = await self.store.add_contact(BOB, "Robert", [])
        self.assertEqual((updated.display_name, updated.fingerprints, updated.added_at), ("Robert", (), 1_800_000_000))
        self.assertEqual([c.identity for c in await self.store.contacts()], [ALICE, BOB])
        self.assertTrue(await self.store.remove_contact(BOB))
        self.assertFalse(await self.store.remove_contact(BOB))
        self.assertIsNone(await self.store.get_contact(BOB))

    async def test_block_a_stranger_and_unblock_by_adding(self) -> None:
        await self.store.set_blocked(CAROL, True)
        contact = await self.store.get_contact(CAROL)
        assert contact is not None
        self.assertTrue(contact.blocked)
        contact = await self.store.add_contact(CAROL, "Carol")
        self.assertFalse(contact.blocked)

    async def test_unblocking_a_stranger_does_not_make_a_contact(self) -> None:
        """Blocking someone who is not a contact records them only to block them:
        unblocking forgets them again, it does not promote them to a contact."""
        await self.store.set_blocked(CAROL, True)
        [blocked] = await self.store.contacts()
        self.assertEqual((blocked.identity, blocked.blocked), (CAROL, True))
        await self.store.set_blocked(CAROL, False)
        self.assertIsNone(await self.store.get_contact(CAROL))
        await self.store.set_blocked(CAROL, False)
        self.assertIsNone(await self.store.get_contact(CAROL))
        # A real contact stays one.
        await self.store.add_contact(BOB, "Bob")
        await self.store.set_blocked(BOB, True)
        await self.store.set_blocked(BOB, False)
        contact = await self.store.get_contact(BOB)
        assert contact is not None
        self.assertEqual((contact.display_name, contact.blocked), ("Bob", False))
        # So does a blocked stranger one adds as a contact.
        await self.store.set_blocked(CAROL, True)
        await self.store.add_contact(CAROL, "Carol")
        await self.store.set_blocked(CAROL, True)
        await self.store.set_blocked(CAROL, False)
        self.assertIsNotNone(await self.store.get_contact(CAROL))

    async def test_endpoint_and_presence_only_for_contacts(self) -> None:
        await self.store.add_contact(BOB)
        self.clock.advance(5)
        await self.store.remember_endpoint(BOB, Endpoint.parse("2001:db8::1", 4605))
        await self.store.set_presence(BOB, "busy")
        await self.store.remember_endpoint(CAROL, Endpoint.parse("192.0.2.1", 4605))
        await self.store.set_presence(CAROL, "online")
        contact = await self.store.get_contact(BOB)
        assert contact is not None
        self.assertEqual((contact.last_endpoint, contact.last_seen, contact.presence), (Endpoint("2001:db8::1", 4605), 1_800_000_005, "busy"))
        self.assertIsNone(await self.store.get_contact(CAROL))


class OutboxTests(StoreTestCase):
    async def test_lifecycle_of_an_outgoing_message(self) -> None:
        message = await self.store.queue_message(BOB, "hello")
        self.assertEqual((message.peer, message.direction, message.state, message.sent_at), (BOB, "out", "queued", 1_800_000_000))
        self.assertEqual([m.id for m in await self.store.pending_for(BOB)], [message.id])
        self.assertEqual(await self.store.pending_peers(), [BOB])
        self.assertTrue(await self.store.set_state(message.id, "sent", only_from=("queued",)))
        self.assertFalse(await self.store.set_state(message.id, "sent", only_from=("queued",)))
        self.assertEqual([m.state for m in await self.store.pending_for(BOB)], ["sent"])
        self.assertTrue(await self.store.set_state(message.id, "delivered", peer=BOB))
        # A second receipt changes nothing.
        self.assertFalse(await self.store.set_state(message.id, "delivered", only_from=("queued", "sent", "undelivered"), peer=BOB))
        self.assertEqual(await self.store.pending_for(BOB), [])
        self.assertEqual(await self.store.pending_peers(), [])

    async def test_receipt_from_someone_else_changes_nothing(self) -> None:
        message = await self.store.queue_message(BOB, "for bob")
        self.assertFalse(await self.store.set_state(message.id, "delivered", peer=CAROL))
        stored = await self.store.get_message(message.id)
        assert stored is not None
        self.assertEqual(stored.state, "queued")

    async def test_pending_in_order(self) -> None:
        ids = []
        for n in range(3):
            ids.append((await self.store.queue_message(BOB, f"m{n}")).id)
        await self.store.queue_message(CAROL, "other")
        self.assertEqual([m.id for m in await self.store.pending_for(BOB)], ids)
        self.assertEqual(sorted(map(str, await self.store.pending_peers())), [str(BOB), str(CAROL)])

    async def test_give_up(self) -> None:
        old = await self.store.queue_message(BOB, "old")
        sent = await self.store.queue_message(BOB, "old but sent")
        await self.store.set_state(sent.id, "sent")
        self.clock.advance(100)
        new = await self.store.queue_message(BOB, "new")
        expired = await self.store.give_up_older_than(self.clock.seconds() - 50)
        self.assertEqual({m.id for m in expired}, {old.id, sent.id})
        self.assertEqual([m.id for m in await self.store.pending_for(BOB)], [new.id])
        self.assertEqual(await self.store.give_up_older_than(self.clock.seconds() - 50), [])
        # A late receipt still counts.
        self.assertTrue(await self.store.set_state(old.id, "delivered", only_from=("queued", "sent", "undelivered"), peer=BOB))


class IncomingTests(StoreTestCase):
    async def test_new_duplicate_conflict(self) -> None:
        self.assertEqual(await self.store.record_incoming(ID, BOB, "hi", 1_799_999_990), "new")
        self.assertEqual(await self.store.record_incoming(ID, BOB, "hi", 1_799_999_990), "duplicate")
        self.assertEqual(await self.store.record_incoming(ID, CAROL, "not hers", 1_799_999_990), "conflict")
        ours = await self.store.queue_message(BOB, "ours")
        self.assertEqual(await self.store.record_incoming(ours.id, BOB, "echo", 0), "conflict")
        [stored] = [m for m in await self.store.history() if m.id == ID]
        self.assertEqual((stored.peer, stored.direction, stored.body, stored.sent_at, stored.created_at, stored.state), (BOB, "in", "hi", 1_799_999_990, 1_800_000_000, "received"))

    async def test_history(self) -> None:
        for n in range(5):
            self.clock.advance(1)
            await self.store.queue_message(BOB if n % 2 == 0 else CAROL, f"m{n}")
        self.assertEqual([m.body for m in await self.store.history()], ["m0", "m1", "m2", "m3", "m4"])
        self.assertEqual([m.body for m in await self.store.history(limit=2)], ["m3", "m4"])
        self.assertEqual([m.body for m in await self.store.history(BOB)], ["m0", "m2", "m4"])
        self.assertEqual([m.body for m in await self.store.history(BOB, limit=1)], ["m4"])
        self.assertIsNone(await self.store.get_message(ID))


class FileTests(StoreTestCase):
    async def test_survives_reopening(self) -> None:
        await self.store.add_contact(BOB, "Bob")
        message = await self.store.queue_message(BOB, "kept")
        self.store.close()
        reopened = await self.open()
        self.assertEqual([m.id for m in await reopened.pending_for(BOB)], [message.id])
        self.assertEqual([c.display_name for c in await reopened.contacts()], ["Bob"])

    async def test_upgrade_from_the_first_schema(self) -> None:
        """A store written by the first release (schema 1) opens and keeps its data; its
        contacts stay contacts."""
        self.store.close()
        os.remove(self.path)
        from common.db.dialect import SQLITE
        from common.db.migrations import upgrade_schema
        from sixchat.agent.store import MIGRATIONS

        connection = sqlite3.connect(self.path, isolation_level=None)
        upgrade_schema(connection.cursor(), SQLITE, MIGRATIONS[:1])
        connection.execute(
            "INSERT INTO contacts VALUES ('bob@example.org', 'Bob', '', 1, NULL, NULL, NULL, 'offline', 1)"
        )
        connection.execute("COMMIT")
        connection.close()
        store = await self.open()
        await store.set_blocked(BOB, False)
        contact = await store.get_contact(BOB)
        assert contact is not None
        self.assertEqual((contact.display_name, contact.blocked), ("Bob", False))

    async def test_private_file_and_schema_version(self) -> None:
        await self.store.queue_message(BOB, "secret")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.store.close()
        with sqlite3.connect(self.path) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertTrue({"contacts", "messages"} <= tables)
        await self.open()


class ReasonTests(StoreTestCase):
    async def test_upgrade_from_schema_2_keeps_messages(self) -> None:
        """A store of schema 2 (before reasons) opens with its messages intact."""
        self.store.close()
        os.remove(self.path)
        from common.db.dialect import SQLITE
        from common.db.migrations import upgrade_schema
        from sixchat.agent.store import MIGRATIONS

        connection = sqlite3.connect(self.path, isolation_level=None)
        upgrade_schema(connection.cursor(), SQLITE, MIGRATIONS[:2])
        connection.execute(f"INSERT INTO messages VALUES ('{ID}', 'bob@example.org', 'out', 'kept', 1, 1, 'queued', 1)")
        connection.execute("COMMIT")
        connection.close()
        store = await self.open()
        [message] = await store.pending_for(BOB)
        self.assertEqual((message.id, message.body, message.state, message.reason), (ID, "kept", "queued", None))
        [failed] = await store.fail_pending(BOB, "no such user")
        self.assertEqual((await store.get_message(ID)).reason, "no such user")  # type: ignore[union-attr]
        self.assertEqual(failed.id, ID)

    async def test_note_cancel_and_give_up_keep_the_reason(self) -> None:
        message = await self.store.queue_message(BOB, "hi")
        self.assertEqual([m.id for m in await self.store.note_problem(BOB, "offline")], [message.id])
        self.assertEqual(await self.store.note_problem(BOB, "offline"), [])
        [expired] = await self.store.give_up_older_than(self.clock.seconds() + 1)
        self.assertEqual((expired.state, expired.reason), ("undelivered", "offline"))
        other = await self.store.queue_message(BOB, "bye")
        self.assertEqual((await self.store.cancel(other.id)).state, "queued")  # type: ignore[union-attr]
        self.assertIsNone(await self.store.cancel(other.id))
        self.assertEqual((await self.store.get_message(other.id)).state, "cancelled")  # type: ignore[union-attr]
        self.assertEqual(await self.store.pending(), [])
