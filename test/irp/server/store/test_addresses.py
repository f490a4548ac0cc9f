"""Tests for :mod:`irp.server.store.addresses`: address records.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.trial import unittest

from irp import errors
from irp.wire.records import Endpoint
from test.irp.server.store.helpers import (
    START,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
)


class AddressTestsMixin(RegistryStoreTestsMixin):
    """Address records, on every engine."""

    async def test_put_addresses(self) -> None:
        """Addresses are replaced with the next seq, an expiry and a fresh signature."""
        store = await self.store()
        await store.create_user("alice")
        endpoints = (Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 4605))
        self.clock.advance(3)
        record = await store.put_addresses("alice", "online", endpoints, 300)
        self.assertEqual((record.presence, record.endpoints, record.seq), ("online", endpoints, 2))
        self.assertEqual((record.signed_at, record.expires_at), (START + 3, START + 303))
        self.verifier.verify(record)
        self.assertEqual(await store.get_addresses("alice"), record)
        record = await store.put_addresses("alice", "away", (), 60)
        self.assertEqual((record.presence, record.endpoints, record.seq), ("away", (), 3))
        self.assertEqual(await store.get_addresses("alice"), record)

    async def test_put_addresses_unknown(self) -> None:
        """Only existing users have addresses."""
        store = await self.store()
        await self.assertFailsWith(errors.NotFound, store.put_addresses("nobody", "online", (), 60))

    async def test_expire_addresses(self) -> None:
        """Expired records become signed offline records, once."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        await store.create_user("carol")
        await store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1),), 30)
        await store.put_addresses("bob", "busy", (Endpoint("192.0.2.2", 1),), 300)
        self.assertEqual(await store.expire_addresses(), 0)
        self.clock.advance(30)
        self.assertEqual(await store.expire_addresses(), 1)
        alice = await store.get_addresses("alice")
        assert alice is not None
        self.assertEqual((alice.presence, alice.endpoints, alice.seq, alice.signed_at), ("offline", (), 3, START + 30))
        self.verifier.verify(alice)
        bob = await store.get_addresses("bob")
        assert bob is not None
        self.assertEqual(bob.presence, "busy")
        carol = await store.get_addresses("carol")
        assert carol is not None
        self.assertEqual(carol.seq, 1)  # already offline: not rewritten
        self.assertEqual(await store.expire_addresses(), 0)


class SQLiteAddressTests(AddressTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLAddressTests(AddressTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
