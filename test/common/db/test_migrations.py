"""Tests for :mod:`common.db.migrations`: numbered migrations on a SQLite connection.

The registry's store tests run the same function on PostgreSQL (test/irp/server/store).
"""

from __future__ import annotations

import sqlite3

from twisted.trial import unittest

from common.db.dialect import SQLITE
from common.db.migrations import describe_upgrade, upgrade_schema, upgrade_schema_from

MIGRATIONS = [
    ["CREATE TABLE notes (id {ID_PK}, body {BLOB} NOT NULL)"],
    ["ALTER TABLE notes ADD COLUMN at {BIGINT} NOT NULL DEFAULT 0"],
]


class UpgradeSchemaTests(unittest.TestCase):
    """upgrade_schema runs the missing migrations once, and refuses newer databases."""

    def setUp(self) -> None:
        self.connection = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(self.connection.close)

    def upgrade(self, migrations: list[list[str]]) -> int:
        cursor = self.connection.cursor()
        try:
            version = upgrade_schema(cursor, SQLITE, migrations)
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        return version

    def version(self) -> int:
        return int(self.connection.execute("SELECT version FROM schema_version").fetchone()[0])

    def test_from_empty(self) -> None:
        """An empty database runs every migration and records the version."""
        self.assertEqual(self.upgrade(MIGRATIONS), 2)
        self.assertEqual(self.version(), 2)
        self.connection.execute("INSERT INTO notes (body, at) VALUES (x'00', 5)")

    def test_step_by_step(self) -> None:
        """An older database runs only the missing migrations, keeping its rows."""
        self.assertEqual(self.upgrade(MIGRATIONS[:1]), 1)
        self.connection.execute("INSERT INTO notes (body) VALUES (x'01')")
        self.assertEqual(self.upgrade(MIGRATIONS), 2)
        self.assertEqual(self.upgrade(MIGRATIONS), 2)
        self.assertEqual(self.connection.execute("SELECT body, at FROM notes").fetchall(), [(b"\x01", 0)])

    def test_newer_refused(self) -> None:
        """A database newer than the migrations given is refused, unchanged."""
        self.upgrade(MIGRATIONS)
        error = self.assertRaises(RuntimeError, self.upgrade, MIGRATIONS[:1])
        self.assertIn("newer", str(error))
        self.assertEqual(self.version(), 2)

    def test_versions_found_and_reached_and_their_log_line(self) -> None:
        """upgrade_schema_from says what it found and reached; describe_upgrade words it
        (nothing when nothing was done)."""
        cursor = self.connection.cursor()
        self.assertEqual(upgrade_schema_from(cursor, SQLITE, MIGRATIONS[:1]), (0, 1))
        self.connection.execute("COMMIT")
        self.assertEqual(upgrade_schema_from(cursor, SQLITE, MIGRATIONS), (1, 2))
        self.connection.execute("COMMIT")
        self.assertEqual(upgrade_schema_from(cursor, SQLITE, MIGRATIONS), (2, 2))
        self.connection.execute("COMMIT")
        self.assertEqual(describe_upgrade(0, 6), "Created the database schema (version 6)")
        self.assertEqual(describe_upgrade(5, 6), "Upgraded the database schema from version 5 to 6")
        self.assertIsNone(describe_upgrade(6, 6))
