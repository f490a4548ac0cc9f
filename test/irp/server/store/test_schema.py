"""Tests for :mod:`irp.server.store.schema`: the schema and its migrations.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from common.db.migrations import upgrade_schema
from common.pki.keyfiles import fingerprint
from irp.server.store.schema import LATEST_VERSION, MIGRATIONS
from test.irp.server.store.helpers import (
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
    check_integrity,
    revocation_generation,
)


class SchemaTestsMixin(RegistryStoreTestsMixin):
    """The schema and its migrations, on every engine."""

    async def test_upgrade_from_empty(self) -> None:
        """An empty database gets the latest schema, usable at once."""
        store = await self.make_store()
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        self.assertIsNone(await store.get_account("alice"))
        self.assertEqual(await revocation_generation(store), 0)

    async def test_upgrade_idempotent(self) -> None:
        """Upgrading again (also from a second process) changes nothing and loses nothing."""
        store = await self.store()
        await store.create_user("alice", email="alice@example.org")
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        again = await self.store()
        account = await again.get_account("alice")
        assert account is not None
        self.assertEqual(account.record.email, "alice@example.org")
        self.assertEqual(await again.upgrade(), LATEST_VERSION)

    async def test_newer_schema_refused(self) -> None:
        """A database from newer software is refused, not damaged."""
        store = await self.store()
        await store.pool.runOperation(store.dialect.sql("UPDATE schema_version SET version = ?"), (LATEST_VERSION + 1,))
        error = await self.assertFailsWith(RuntimeError, store.upgrade())
        self.assertIn("newer", str(error))

    async def test_upgrade_from_version_1(self) -> None:
        """A database of the first schema gets the security-event counter (at 0) and its
        users a password version, and keeps its data."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:1])
        await store.pool.runOperation(
            store.dialect.sql(
                "INSERT INTO users (username, display_name, email, attributes, is_admin, password_hash,"
                " password_login, created_at, updated_at, record_seq, record_signed_at, record_signature)"
                " VALUES (?, '', '', '[]', 0, 'hash', 1, 1, 1, 1, 1, ?)"
            ),
            ("alice", b"\x00" * 64),
        )
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        self.assertEqual(await store.security_generation(), 0)
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual((account.password_hash, account.password_version), ("hash", 0))

    async def test_upgrade_from_version_3(self) -> None:
        """Certificates stored under the schema keyed by serial keep everything, revocations
        included, when the table is rebuilt keyed by fingerprint."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:3])
        certificate = self.certificate_with_serial("alice", 0xABC)
        der = certificate.public_bytes(serialization.Encoding.DER)
        await store.pool.runOperation(
            store.dialect.sql(
                "INSERT INTO certificates (serial, fingerprint, username, origin, not_before, not_after,"
                " issued_at, revoked_at, revocation_reason, der) VALUES ('abc', ?, 'alice', 'issued', 1, ?, 1, 5, 'superseded', ?)"
            ),
            (fingerprint(certificate), 2**40, der),
        )
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        info = await store.get_certificate(0xABC)
        assert info is not None
        self.assertEqual((info.fingerprint, info.revoked_at, info.revocation_reason, info.der), (fingerprint(certificate), 5, "superseded", der))
        self.assertEqual(await check_integrity(store), "ok")

    async def test_integrity_check(self) -> None:
        """A fresh database passes the engine's integrity check."""
        store = await self.store()
        self.assertEqual(await check_integrity(store), "ok")


class SQLiteSchemaTests(SchemaTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLSchemaTests(SchemaTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
