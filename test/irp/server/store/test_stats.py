"""Tests for :mod:`irp.server.store.stats`: the totals the metrics endpoint reports.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.trial import unittest

from irp.wire.records import Endpoint
from test.irp.server.store.helpers import PostgreSQLStore, RegistryStoreTestsMixin, SQLiteStore


class StatsTestsMixin(RegistryStoreTestsMixin):
    """Counting users, current address records and certificates revoked or not."""

    async def test_empty(self) -> None:
        totals = await (await self.store()).totals()
        self.assertEqual((totals.users, totals.online, totals.sixid_ids), (0, {}, 0))
        self.assertEqual(totals.certificates, {"revoked": 0, "not-revoked": 0})

    async def test_totals(self) -> None:
        self.use_certificate_time()
        store = await self.store()
        for name in ("alice", "bob", "carol", "dave"):
            await store.create_user(name)
        endpoint = (Endpoint.parse("192.0.2.1", 4605),)
        await store.put_addresses("alice", "online", endpoint, 300)
        await store.put_addresses("bob", "away", endpoint, 600)
        await store.put_addresses("carol", "offline", (), 300)
        first = await self.add_certificate(store, "alice")
        await self.add_certificate(store, "alice")
        await self.add_certificate(store, "bob")
        await store.revoke_certificate(first.serial_number, "key-compromise")
        totals = await store.totals()
        self.assertEqual(totals.users, 4)
        self.assertEqual(totals.online, {"online": 1, "away": 1})
        self.assertEqual(totals.certificates, {"revoked": 1, "not-revoked": 2})
        # Alice's record expires, then Bob's.
        self.clock.advance(301)
        self.assertEqual((await store.totals()).online, {"away": 1})
        self.clock.advance(300)
        self.assertEqual((await store.totals()).online, {})


class SQLiteStatsTests(StatsTestsMixin, SQLiteStore, unittest.TestCase):
    pass


class PostgreSQLStatsTests(StatsTestsMixin, PostgreSQLStore, unittest.TestCase):
    pass
