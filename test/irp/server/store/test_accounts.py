"""Tests for :mod:`irp.server.store.accounts`: reading users.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.trial import unittest

from test.irp.server.store.helpers import (
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
)


class AccountTestsMixin(RegistryStoreTestsMixin):
    """Reading users, on every engine."""

    async def test_get_unknown(self) -> None:
        """Unknown users are None."""
        store = await self.store()
        self.assertIsNone(await store.get_account("nobody"))
        self.assertIsNone(await store.get_addresses("nobody"))

    async def test_count_admins(self) -> None:
        """count_admins counts administrators only."""
        store = await self.store()
        self.assertEqual(await store.count_admins(), 0)
        await store.create_user("root", is_admin=True)
        await store.create_user("alice")
        await store.create_user("bob", is_admin=True)
        self.assertEqual(await store.count_admins(), 2)
        await store.set_admin("bob", False)
        self.assertEqual(await store.count_admins(), 1)

    async def test_list_users(self) -> None:
        """Pages in user-name order with the total; prefixes match literally."""
        store = await self.store()
        for name in ("carol", "alice", "a_b", "axb", "a.c", "bob"):
            await store.create_user(name)
        total, page = await store.list_users(0, 2)
        self.assertEqual((total, [account.username for account in page]), (6, ["a.c", "a_b"]))
        total, page = await store.list_users(2, 3)
        self.assertEqual([account.username for account in page], ["alice", "axb", "bob"])
        total, page = await store.list_users(5, 10)
        self.assertEqual([account.username for account in page], ["carol"])
        total, page = await store.list_users(50, 10)
        self.assertEqual((total, page), (6, []))
        total, page = await store.list_users(0, 10, "a_")
        self.assertEqual((total, [account.username for account in page]), (1, ["a_b"]))
        total, page = await store.list_users(0, 10, "%")
        self.assertEqual((total, page), (0, []))
        total, page = await store.list_users(0, 10, "a\\")
        self.assertEqual((total, page), (0, []))
        total, page = await store.list_users(0, 10, "a")
        self.assertEqual(total, 4)
        for account in page:
            self.verifier.verify(account.record)


class SQLiteAccountTests(AccountTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLAccountTests(AccountTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
