"""The watch hub on its own: reads only for watched IDs, one timer per ID, stop."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sixid.server.store import StoredRecord
from sixid.server.watches import WatchHub
from test.sixid.server.helpers import NOW, MemoryStore

ID = "a" * 32


class Recorder:
    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def changed(self, stored: StoredRecord) -> None:
        self.told.append(("changed", stored.seq))

    def gone(self, sixid: str) -> None:
        self.told.append(("gone", sixid))


class WatchHubTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        self.hub = WatchHub(self.store, self.clock)

    def put(self, seq: int, expires_at: int) -> StoredRecord:
        stored = StoredRecord(ID, seq, expires_at, "", b"record %d" % seq)
        self.store.rows[ID] = (stored, NOW, expires_at)
        return stored

    def test_feed_reads_only_watched_ids(self) -> None:
        self.hub.followed(ID, 1)
        self.assertEqual(self.store.reads, 0)
        watcher = Recorder()
        self.hub.add(watcher, ID)
        self.put(1, NOW + 10)
        self.hub.followed(ID, 1)
        self.assertEqual((self.store.reads, watcher.told), (1, [("changed", 1)]))
        self.hub.followed(ID, 1)  # known already: no read
        self.assertEqual(self.store.reads, 1)

    def test_older_record_never_told(self) -> None:
        watcher = Recorder()
        self.hub.add(watcher, ID)
        self.hub.committed(self.put(5, NOW + 10))
        self.hub.committed(StoredRecord(ID, 4, NOW + 99, "", b"old"))
        self.hub.current(ID, StoredRecord(ID, 3, NOW + 99, "", b"older"))
        self.assertEqual(watcher.told, [("changed", 5)])
        self.clock.advance(10)
        self.assertEqual(watcher.told, [("changed", 5), ("gone", ID)])

    def test_stop_cancels_timers(self) -> None:
        watcher = Recorder()
        self.hub.add(watcher, ID)
        self.hub.current(ID, self.put(1, NOW + 10))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.hub.stop()
        self.assertEqual((self.clock.getDelayedCalls(), self.hub.watched_ids(), self.hub.watching(watcher)), ([], 0, 0))

    def test_remove(self) -> None:
        first, second = Recorder(), Recorder()
        self.hub.add(first, ID)
        self.hub.add(second, ID)
        self.assertTrue(self.hub.remove(first, ID))
        self.assertFalse(self.hub.remove(first, ID))
        self.hub.committed(self.put(1, NOW + 10))
        self.assertEqual((first.told, second.told), ([], [("changed", 1)]))
        self.hub.remove_all(second)
        self.assertEqual((self.hub.watched_ids(), self.clock.getDelayedCalls()), (0, []))
