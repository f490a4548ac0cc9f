"""The CPU-only baselines (raw SQLite registrations, raw certificate signing), run briefly.

Not a speed test: each runs for a few hundredths of a second to check what one operation
is and that each run carries the same CPU record as every other sample.
"""

from __future__ import annotations

import sqlite3

from twisted.trial.unittest import TestCase

from bench import cert_signing, sqlite_commits


class SqliteCommitsTests(TestCase):
    """Figure 3b's baseline: grouped, signed, durable registrations."""

    def setUp(self) -> None:
        folder = self.mktemp()
        self.path = sqlite_commits.database_path(folder)
        sqlite_commits.prepare(self.path, users=5)

    def test_groups_of_signed_rows(self) -> None:
        """Each commit holds ``group`` rows, each row its own signature (D9: the baseline
        was one unsigned row per commit)."""
        sample = sqlite_commits.grouped_commits(self.path, 0.01, 0.05, group=5)
        details = sample.details
        self.assertGreater(details["commits"], 0)
        self.assertEqual(details["rows"], details["commits"] * 5)
        self.assertEqual(details["signatures"], details["rows"])
        self.assertEqual(details["group"], 5)
        self.assertAlmostEqual(sample.value, details["rows"] / sample.wall)
        database = sqlite3.connect(self.path)
        try:
            rows = database.execute("SELECT presence, seq, length(signature) FROM addresses").fetchall()
        finally:
            database.close()
        self.assertEqual(len(rows), 5)
        self.assertTrue(all(presence == "online" and seq > 1 and size == 64 for presence, seq, size in rows))

    def test_full_cpu_record(self) -> None:
        """A raw run has the CPU record every sample has: the server's share (this
        process, on the server's core) and what else ran there (D4: none was kept)."""
        sample = sqlite_commits.grouped_commits(self.path, 0.01, 0.05, group=5)
        self.assertIsNotNone(sample.server_cpu)
        self.assertEqual(sample.load_cpu, 0.0)
        self.assertIn("server_core_others", sample.details)
        self.assertIn("core_busy", sample.details)
        self.assertIn("server_wait", sample.details)


class CertSigningTests(TestCase):
    """Figure 4's baseline: raw certificate signing."""

    def test_full_cpu_record(self) -> None:
        """A raw signing run has the full CPU record (D4)."""
        csrs = cert_signing.make_csrs("ed25519", count=2)
        sample = cert_signing.signing_rate("ed25519", csrs, 0.01, 0.05)
        self.assertGreater(sample.details["certificates"], 0)
        self.assertIsNotNone(sample.server_cpu)
        self.assertIn("server_core_others", sample.details)
        self.assertIn("core_busy", sample.details)
