"""Figure 13b's raw baseline and figure 13c's bookkeeping, run briefly (never speeds).

The raw loop does per row what the registry's store does for a registration (its upsert,
verbatim, in a savepoint of a group commit) plus one Ed25519 signature of a record of the
real size; figure 13c finds which process holds a connection and summarises latencies.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time

from twisted.trial.unittest import TestCase

from bench import sixid_registrations, sixid_watch
from sixid.records import SignedRecord


class RawRegistrationsTests(TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "raw.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        sixid_registrations.prepare(self.path)

    def test_the_registry_upsert(self) -> None:
        """The raw loop's upsert is the store's own statement."""
        from irp.server.store import sixid as store

        self.assertEqual(sixid_registrations.UPSERT, store._UPSERT_RECORD)

    def test_groups_of_signed_rows(self) -> None:
        """Each commit holds ``group`` rows, each with its own signed record of the figure's
        shape; every row is updated again with a higher sequence number."""
        sample = sixid_registrations.grouped_registrations(self.path, 0.01, 0.05, group=5, keys=5)
        details = sample.details
        self.assertGreater(details["commits"], 0)
        self.assertEqual(details["rows"], details["commits"] * 5)
        self.assertEqual(details["signatures"], details["rows"])
        self.assertAlmostEqual(sample.value, details["rows"] / sample.wall)
        self.assertIsNotNone(sample.server_cpu)
        self.assertIn("server_core_others", details)
        database = sqlite3.connect(self.path)
        try:
            rows = database.execute("SELECT sixid, seq, record FROM sixid_records").fetchall()
        finally:
            database.close()
        self.assertEqual(len(rows), 5)
        for sixid, seq, record in rows:
            parsed = SignedRecord.from_bytes(record)
            self.assertEqual(str(parsed.record.sixid), sixid)
            self.assertEqual(len(parsed.signature), 64)
            self.assertGreater(seq, int(time.time() * 1_000_000) - 10**8)
        # A second run goes on above the first's sequence numbers.
        sixid_registrations.grouped_registrations(self.path, 0.01, 0.02, group=5, keys=5)


class WatchBookkeepingTests(TestCase):
    def test_holder_of_a_connection(self) -> None:
        """The process holding the server's side of a loopback connection is found."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        port, client_port = listener.getsockname()[1], client.getsockname()[1]
        self.assertEqual(sixid_watch.holder(port, client_port, [os.getpid()]), os.getpid())
        self.assertIsNone(sixid_watch.holder(port, client_port, []))

    def test_summary(self) -> None:
        latencies = [0.001 * value for value in range(1, 101)]
        summary = sixid_watch.summary(latencies)
        self.assertEqual(summary["count"], 100)
        self.assertAlmostEqual(summary["median_ms"], 50.5)
        self.assertAlmostEqual(summary["p99_ms"], 99.01)
        self.assertAlmostEqual(summary["max_ms"], 100.0)


class VerifiedRawRegistrationsTests(TestCase):
    def test_each_row_checks_its_device_signature(self) -> None:
        """13b-v's raw loop verifies one device signature per row, besides 13b's work."""
        path = os.path.join(self.mktemp(), "raw.sqlite3")
        os.makedirs(os.path.dirname(path))
        sixid_registrations.prepare(path)
        sample = sixid_registrations.grouped_registrations(path, 0.01, 0.05, group=5, keys=5, verify=True)
        self.assertEqual(sample.details["verifications"], sample.details["rows"])
        self.assertEqual(sample.details["signatures"], sample.details["rows"])
