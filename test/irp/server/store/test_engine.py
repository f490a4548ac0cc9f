"""Tests for :mod:`irp.server.store.engine`: transactions, group commit, security events, unavailable databases.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from common.pki.keyfiles import fingerprint
from irp import errors
from irp.wire.records import Endpoint
from test.irp.server.store.helpers import (
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
    check_integrity,
)


class EngineTestsMixin(RegistryStoreTestsMixin):
    """Transactions, group commit, security events, unavailable databases, on every engine."""

    async def test_group_commit_isolates_failures(self) -> None:
        """Writes committed together: one that fails (unknown user, duplicate certificate)
        is rolled back alone and fails alone; the others are stored."""
        store = await self.store()
        await store.create_user("alice")
        duplicate = await self.add_certificate(store)
        fresh = self.certificate("alice")
        outcomes = await defer.DeferredList(
            [
                store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1001),), 60),
                store.put_addresses("nobody", "online", (Endpoint("192.0.2.1", 1002),), 60),
                store.add_certificate("alice", duplicate, fingerprint(duplicate)),
                store.add_certificate("alice", fresh, fingerprint(fresh)),
                store.put_addresses("alice", "busy", (Endpoint("192.0.2.1", 1003),), 60),
            ],
            consumeErrors=True,
        )
        self.assertEqual([success for success, _ in outcomes], [True, False, False, True, True])
        self.assertIsInstance(outcomes[1][1].value, errors.NotFound)
        self.assertIsInstance(outcomes[2][1].value, errors.Conflict)
        record = await store.get_addresses("alice")
        assert record is not None
        self.assertEqual((record.presence, record.endpoints), ("busy", (Endpoint("192.0.2.1", 1003),)))
        self.assertEqual(len(await store.list_certificates("alice")), 2)
        self.assertEqual(await check_integrity(store), "ok")

    async def test_no_lost_updates(self) -> None:
        """Simultaneous address updates are all applied, one after the other."""
        store = await self.store()
        await store.create_user("alice")
        await defer.gatherResults(
            [store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1000 + i),), 60) for i in range(20)]
        )
        record = await store.get_addresses("alice")
        assert record is not None
        self.assertEqual(record.seq, 21)
        self.verifier.verify(record)

    async def test_security_events(self) -> None:
        """Revocations, new passwords, password-login and administrator changes and deleted
        users each count as a security event; directory and address changes, rehashes and
        new users do not."""
        store = await self.store()
        await store.create_user("root", is_admin=True)
        await store.create_user("alice", password_hash="one")
        certificate = await self.add_certificate(store, "alice")
        self.assertEqual(await store.security_generation(), 0)
        for change in (
            lambda: store.update_user("alice", display_name="Alice"),
            lambda: store.put_addresses("alice", "online", (Endpoint.parse("192.0.2.1", 1),), 60),
            lambda: store.rehash_password("alice", "one", "one, rehashed"),
            lambda: store.create_user("bob"),
        ):
            await change()
        self.assertEqual(await store.security_generation(), 0)
        events = [
            lambda: store.set_password_hash("alice", "two"),
            lambda: store.set_password_login("alice", False),
            lambda: store.set_admin("alice", True),
            lambda: store.revoke_certificate(certificate.serial_number, "superseded"),
            lambda: store.delete_user("bob"),
        ]
        for number, change in enumerate(events, 1):
            await change()
            self.assertEqual(await store.security_generation(), number)


class SQLiteEngineTests(EngineTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""

    async def test_locked_database_is_unavailable(self) -> None:
        """A database that stays locked (or cannot be reached) makes operations fail with
        unavailable (503, try again later), logged; the store works again afterwards."""
        import sqlite3

        store = await self.store()
        await store.create_user("alice")
        await store.pool.runOperation("PRAGMA busy_timeout = 0")  # fail at once, not after 10 s
        other = sqlite3.connect(self.path("registry"), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN EXCLUSIVE")
        logged: list[Any] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        await self.assertFailsWith(errors.Unavailable, store.set_password_login("alice", False))
        self.assertTrue(any("database is unavailable" in (formatEvent(event) or "") for event in logged))
        other.execute("ROLLBACK")
        self.assertEqual((await store.set_password_login("alice", False)).password_login, False)


class PostgreSQLEngineTests(EngineTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
