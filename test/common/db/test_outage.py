"""Tests for :mod:`common.db.outage`: which errors are outages, and one line per outage."""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from common.db.outage import REASON_LIMIT, OutageLog, describe, is_outage


class ClassificationTests(unittest.TestCase):
    """Outages against bugs and conflicts."""

    def test_sqlite(self) -> None:
        """Locked, unreadable and lost are outages; bad SQL and conflicts are not."""
        self.assertTrue(is_outage(sqlite3.OperationalError("database is locked"), sqlite3))
        self.assertTrue(is_outage(sqlite3.DatabaseError("file is not a database"), sqlite3))
        self.assertTrue(is_outage(adbapi.ConnectionLost(), sqlite3))
        self.assertFalse(is_outage(sqlite3.IntegrityError("UNIQUE constraint failed"), sqlite3))
        self.assertFalse(is_outage(sqlite3.ProgrammingError("no such table"), sqlite3))
        self.assertFalse(is_outage(ValueError("a bug"), sqlite3))

    def test_psycopg(self) -> None:
        """A stopped server and a lost connection are outages; a conflict is not."""
        try:
            import psycopg
        except ImportError:
            raise unittest.SkipTest("psycopg is not installed") from None
        self.assertTrue(is_outage(psycopg.errors.AdminShutdown("terminating connection"), psycopg))
        self.assertTrue(is_outage(psycopg.OperationalError("the connection is lost"), psycopg))
        self.assertTrue(is_outage(psycopg.InterfaceError("the connection is closed"), psycopg))
        self.assertFalse(is_outage(psycopg.errors.UniqueViolation("duplicate key"), psycopg))
        self.assertFalse(is_outage(psycopg.errors.UndefinedTable("no such table"), psycopg))

    def test_describe(self) -> None:
        """One line, capped."""
        self.assertEqual(describe(sqlite3.OperationalError("connection failed:\n\tIs the server running?")),
                         "connection failed: Is the server running?")
        self.assertEqual(len(describe(sqlite3.OperationalError("x" * 1000))), REASON_LIMIT)
        self.assertEqual(describe(adbapi.ConnectionLost()), "ConnectionLost")


class OutageLogTests(unittest.TestCase):
    """One line when an outage starts, one when it ends."""

    def test_one_line_each_way(self) -> None:
        logged: list[Any] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        outage = OutageLog()
        outage.answered()
        for _ in range(3):
            outage.failed(sqlite3.OperationalError("disk I/O error"))
        self.assertTrue(outage.down)
        outage.answered()
        outage.answered()
        self.assertFalse(outage.down)
        lines = [formatEvent(event) for event in logged if event.get("log_namespace") == "common.db.outage"]
        self.assertEqual(lines, ["The database is unavailable: disk I/O error", "The database is back"])
