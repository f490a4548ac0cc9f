"""The intermediary's store on real SQLite files (and PostgreSQL when a server can run)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from common.identity import Identity
from intermediary import errors
from intermediary.server.store import IntermediaryStore, Quotas
from intermediary.wire import parse_prekey_info
from test.intermediary.helpers import prekey_bytes

ALICE = Identity("alice", "other.example")
CAROL = Identity("carol", "example.org")
NOW = 1_000_000


def prekeys(owner: str, count: int, kind: str = "one-time", expires: int = NOW + 86400) -> list[tuple[Any, bytes]]:
    """``count`` parsed prekeys of ``owner``@example.org."""
    found = []
    for _ in range(count):
        data = prekey_bytes(Identity(owner, "example.org"), kind=kind, expires=expires)
        found.append((parse_prekey_info(data), data))
    return found


class StoreTests(TestCase):
    """Prekeys, deposits, quotas, expiry, acknowledgements."""

    quotas = Quotas(recipient_messages=5, recipient_bytes=10_000, pair_messages=3, pair_bytes=5_000, one_time_prekeys=10)

    async def open_store(self) -> IntermediaryStore:
        return await IntermediaryStore.open(self.url(), reactor, quotas=self.quotas)

    def url(self) -> str:
        self.path = os.path.join(self.mktemp(), "intermediary.sqlite3")
        return self.path

    async def store(self) -> IntermediaryStore:
        store = await self.open_store()
        self.addCleanup(store.close)
        await store.publish_prekeys("bob", prekeys("bob", 2), NOW)
        return store

    async def test_publish_counts_and_last_resort_replaced(self) -> None:
        store = await self.store()
        await store.publish_prekeys("bob", prekeys("bob", 1, "last-resort"), NOW)
        counts = await store.publish_prekeys("bob", prekeys("bob", 1, "last-resort"), NOW)
        self.assertEqual(counts, (2, True))

    async def test_one_time_cap(self) -> None:
        store = await self.store()
        with self.assertRaises(errors.QuotaExceeded):
            await store.publish_prekeys("bob", prekeys("bob", 9), NOW)
        self.assertEqual(await store.prekey_counts("bob", NOW), (2, False))  # nothing stored

    async def test_one_time_prekey_handed_out_once_even_concurrently(self) -> None:
        store = await self.store()
        published = [data for _, data in prekeys("carl", 3)]
        await store.publish_prekeys("carl", [(parse_prekey_info(data), data) for data in published], NOW)
        last = prekeys("carl", 1, "last-resort")
        await store.publish_prekeys("carl", last, NOW)
        fetched = await gatherResults([store.fetch_prekey("carl", NOW) for _ in range(5)])
        one_time = [data for data in fetched if data in published]
        self.assertEqual(sorted(one_time), sorted(published))  # each exactly once
        self.assertEqual(sorted(fetched, key=fetched.count), [*one_time, last[0][1], last[0][1]])  # then the last-resort one
        self.assertEqual(await store.prekey_counts("carl", NOW), (0, True))

    async def test_one_time_prekeys_oldest_first(self) -> None:
        store = await self.store()
        published = [data for _, data in prekeys("carl", 3)]
        await store.publish_prekeys("carl", [(parse_prekey_info(data), data) for data in published], NOW)
        self.assertEqual([await store.fetch_prekey("carl", NOW) for _ in range(3)], published)

    async def test_expired_prekey_never_served(self) -> None:
        store = await self.open_store()
        self.addCleanup(store.close)
        await store.publish_prekeys("dan", prekeys("dan", 1, expires=NOW + 10), NOW)
        with self.assertRaises(errors.UnknownUser):
            await store.fetch_prekey("dan", NOW + 10)
        with self.assertRaises(errors.UnknownUser):
            await store.fetch_prekey("nobody", NOW)

    async def test_deposit_committed_before_answer(self) -> None:
        store = await self.store()
        receipt = await store.deposit("bob", ALICE, b"sealed", now=NOW, expires=NOW + 60, deliver_at=NOW)
        # Another connection sees the row as soon as the Deferred fired: committed.
        with sqlite3.connect(self.path) as other:
            row = other.execute("SELECT recipient, sender, envelope FROM messages WHERE message_id = ?", (receipt.message_id,)).fetchone()
            synchronous = other.execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(row, ("bob", str(ALICE), b"sealed"))
        self.assertEqual(synchronous, "wal")
        self.assertEqual(receipt.queued, 1)

    async def test_group_commit_keeps_order_and_failures_alone(self) -> None:
        store = await self.store()
        deposits = [store.deposit("bob", ALICE, bytes([n]), now=NOW, expires=NOW + 60, deliver_at=NOW) for n in range(4)]
        deposits.append(store.deposit("nobody", ALICE, b"x", now=NOW, expires=NOW + 60, deliver_at=NOW))
        outcomes: list[Any] = []
        for deposit in deposits:
            try:
                outcomes.append(await deposit)
            except errors.IntermediaryError as error:
                outcomes.append(error)
        self.assertEqual([type(o).__name__ for o in outcomes[:3]], ["DepositReceipt"] * 3)
        self.assertIsInstance(outcomes[3], errors.QuotaExceeded)  # 3 per sender per recipient
        self.assertIsInstance(outcomes[4], errors.UnknownUser)
        messages = await store.due_messages("bob", now=NOW, limit=10)
        self.assertEqual([m.envelope for m in messages], [b"\x00", b"\x01", b"\x02"])

    async def test_recipient_quotas(self) -> None:
        store = await self.store()
        for n in range(5):
            sender = Identity(f"s{n}", "other.example")
            await store.deposit("bob", sender, b"m", now=NOW, expires=NOW + 60, deliver_at=NOW)
        with self.assertRaises(errors.QuotaExceeded):
            await store.deposit("bob", CAROL, b"m", now=NOW, expires=NOW + 60, deliver_at=NOW)
        with self.assertRaises(errors.UnknownUser):
            await store.deposit("carl", CAROL, b"m", now=NOW, expires=NOW + 60, deliver_at=NOW)  # never published
        big = b"x" * 5_001
        await store.publish_prekeys("erin", prekeys("erin", 1), NOW)
        with self.assertRaises(errors.QuotaExceeded):
            await store.deposit("erin", CAROL, big, now=NOW, expires=NOW + 60, deliver_at=NOW)

    async def test_scheduled_not_due_early_and_pending(self) -> None:
        store = await self.store()
        await store.deposit("bob", ALICE, b"later", now=NOW, expires=NOW + 600, deliver_at=NOW + 100)
        await store.deposit("bob", ALICE, b"now", now=NOW, expires=NOW + 600, deliver_at=NOW)
        self.assertEqual([m.envelope for m in await store.due_messages("bob", now=NOW + 99, limit=10)], [b"now"])
        self.assertEqual(await store.pending("bob", NOW), (1, NOW + 100))
        due = await store.due_messages("bob", now=NOW + 100, limit=10)
        self.assertEqual([m.envelope for m in due], [b"later", b"now"])  # deposit order
        self.assertEqual([m.envelope for m in await store.due_messages("bob", now=NOW + 100, limit=10, exclude=[due[0].seq])], [b"now"])

    async def test_ack_deletes_only_own(self) -> None:
        store = await self.store()
        receipt = await store.deposit("bob", ALICE, b"m", now=NOW, expires=NOW + 60, deliver_at=NOW)
        with self.assertRaises(errors.UnknownMessage):
            await store.ack("carl", receipt.message_id)
        await store.ack("bob", receipt.message_id)
        with self.assertRaises(errors.UnknownMessage):
            await store.ack("bob", receipt.message_id)
        self.assertEqual(await store.due_messages("bob", now=NOW, limit=10), [])

    async def test_expiry(self) -> None:
        store = await self.store()
        await store.deposit("bob", ALICE, b"short", now=NOW, expires=NOW + 10, deliver_at=NOW)
        await store.deposit("bob", CAROL, b"long", now=NOW, expires=NOW + 1000, deliver_at=NOW)
        self.assertEqual([m.envelope for m in await store.due_messages("bob", now=NOW + 10, limit=10)], [b"long"])
        self.assertEqual(await store.expire(NOW + 10), (1, 0))
        self.assertEqual(await store.expire(NOW + 86400), (1, 2))

    async def test_reopen_keeps_everything(self) -> None:
        store = await self.store()
        await store.deposit("bob", ALICE, b"kept", now=NOW, expires=NOW + 60, deliver_at=NOW)
        store.close()
        again = await IntermediaryStore.open(self.path, reactor)
        self.addCleanup(again.close)
        self.assertEqual([m.envelope for m in await again.due_messages("bob", now=NOW, limit=10)], [b"kept"])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)


class PostgresStoreTests(StoreTests):
    """The same on a real PostgreSQL server (skipped without one)."""

    def url(self) -> str:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            self.skipTest(str(error))
        return server.create_database()

    async def test_deposit_committed_before_answer(self) -> None:
        store = await self.store()
        receipt = await store.deposit("bob", ALICE, b"sealed", now=NOW, expires=NOW + 60, deliver_at=NOW)
        messages = await store.due_messages("bob", now=NOW, limit=10)
        self.assertEqual([m.message_id for m in messages], [receipt.message_id])

    async def test_reopen_keeps_everything(self) -> None:
        pass

    test_reopen_keeps_everything.skip = "SQLite file permissions only"  # type: ignore[attr-defined]

