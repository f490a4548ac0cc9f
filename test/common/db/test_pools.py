"""Tests for :mod:`common.db.pools`: database URLs, the SQLite pool and direct reader."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.internet import reactor as global_reactor
from twisted.trial import unittest

from common.db.dialect import POSTGRESQL, SQLITE
from common.db.pools import UnsupportedDatabase, direct_sqlite_reader, parse_database_url, sqlite_pool


class DatabaseURLTests(unittest.TestCase):
    """Which engine and which connection argument a URL names."""

    def test_database_urls(self) -> None:
        """SQLite paths and URLs, PostgreSQL URLs; other schemes are refused."""
        self.assertEqual(parse_database_url("registry.db"), (SQLITE, "registry.db"))
        self.assertEqual(parse_database_url("/var/lib/irp/r.db"), (SQLITE, "/var/lib/irp/r.db"))
        self.assertEqual(parse_database_url("sqlite:///r.db"), (SQLITE, "r.db"))
        self.assertEqual(parse_database_url("sqlite:////var/r.db"), (SQLITE, "/var/r.db"))
        self.assertEqual(parse_database_url("postgresql://u@h/db"), (POSTGRESQL, "postgresql://u@h/db"))
        self.assertEqual(parse_database_url("postgres://u@h/db")[0], POSTGRESQL)
        self.assertRaises(UnsupportedDatabase, parse_database_url, "mysql://u@h/db")
        self.assertRaises(UnsupportedDatabase, parse_database_url, "sqlite://")


class SQLitePoolTests(unittest.TestCase):
    """The one-connection SQLite pool and the read-only direct reader."""

    def path(self) -> str:
        return os.path.join(os.path.abspath(self.mktemp()), "sub", "data.sqlite3")

    async def test_pool_creates_private_file(self) -> None:
        """The pool creates the file (and its folder) owner-only, in WAL mode."""
        path = self.path()
        pool = sqlite_pool(path, global_reactor)
        pool.start()
        self.addCleanup(pool.close)
        rows = await pool.runQuery("PRAGMA journal_mode")
        self.assertEqual(rows[0][0], "wal")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_direct_reader_is_read_only(self) -> None:
        """The direct reader sees committed rows and refuses to write."""
        path = self.path()
        os.makedirs(os.path.dirname(path))
        writer = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.execute("INSERT INTO t VALUES (1)")
        reader = direct_sqlite_reader(path)
        self.addCleanup(reader.close)
        self.assertEqual(reader.execute("SELECT x FROM t").fetchall(), [(1,)])
        self.assertRaises(sqlite3.Error, reader.execute, "INSERT INTO t VALUES (2)")
