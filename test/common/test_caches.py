"""common.caches: values kept only while the data version they were read at holds, and
answers kept per key until a write to that key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from common.caches import AnswerCache, RecentCache, VersionedCache


class VersionedCacheTests(SynchronousTestCase):
    def test_current_version_only(self) -> None:
        cache: VersionedCache[str, int] = VersionedCache(4)
        cache.put("alice", 7, 1)
        self.assertEqual(cache.get("alice", 7), 1)
        self.assertIsNone(cache.get("alice", 8))
        self.assertIsNone(cache.get("bob", 7))

    def test_no_version_keeps_nothing(self) -> None:
        """Without a version (no cheap change signal) nothing is kept or answered."""
        cache: VersionedCache[str, int] = VersionedCache(4)
        cache.put("alice", None, 1)
        self.assertEqual(len(cache), 0)
        cache.put("alice", 7, 1)
        self.assertIsNone(cache.get("alice", None))

    def test_least_recently_used_goes(self) -> None:
        cache: VersionedCache[str, int] = VersionedCache(2)
        cache.put("a", 1, 1)
        cache.put("b", 1, 2)
        cache.put("a", 1, 3)  # used again: "b" is now the oldest
        cache.put("c", 1, 4)
        self.assertEqual((cache.get("a", 1), cache.get("b", 1), cache.get("c", 1)), (3, None, 4))
        self.assertEqual(len(cache), 2)

    def test_size_must_be_positive(self) -> None:
        self.assertRaises(ValueError, VersionedCache, 0)


class RecentCacheTests(SynchronousTestCase):
    def test_bounded_least_recently_used_first(self) -> None:
        cache: RecentCache[str, int] = RecentCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.get("a"), 1)  # "b" is now the oldest
        cache.put("c", 3)
        self.assertNotIn("b", cache)
        self.assertEqual((cache.get("a"), cache.get("c"), len(cache)), (1, 3, 2))
        cache.clear()
        self.assertEqual(len(cache), 0)


class CountsTests(SynchronousTestCase):
    def test_hits_and_misses_counted(self) -> None:
        """Every cache counts its hits and misses, for the benchmarks' hit rates."""
        recent: RecentCache[str, int] = RecentCache(4)
        recent.put("a", 1)
        recent.get("a")
        recent.get("b")
        self.assertEqual(recent.stats(), {"hits": 1, "misses": 1})
        versioned: VersionedCache[str, int] = VersionedCache(4)
        versioned.put("a", 7, 1)
        versioned.get("a", 7)
        versioned.get("a", 8)
        versioned.get("a", None)
        self.assertEqual(versioned.stats(), {"hits": 1, "misses": 2})


class AnswerCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cache: AnswerCache[str, bytes] = AnswerCache(4)

    def store(self, key: str, value: bytes, version: int = 1) -> bool:
        return self.cache.put(key, self.cache.reading(key), value, version)

    def test_kept_until_a_write_to_its_key(self) -> None:
        """An answer stays however much else is written; a write to its key evicts it."""
        self.assertTrue(self.store("alice", b"a1"))
        self.assertTrue(self.store("bob", b"b1"))
        for _ in range(10):
            self.cache.evict("carol")
        self.assertEqual(self.cache.get("alice"), b"a1")
        self.cache.evict("alice", 2)
        self.assertIsNone(self.cache.get("alice"))
        self.assertEqual(self.cache.get("bob"), b"b1")
        self.assertEqual(self.cache.stats()["evicted"], 1)

    def test_write_already_shown_keeps_the_answer(self) -> None:
        """A write reported at a version the answer already shows (this process's own,
        replaced, then read back from the change log) keeps it; a delete (no version)
        never does."""
        self.cache.replace("alice", self.cache.reading("alice"), b"a5", 5)
        self.cache.evict("alice", 5)
        self.assertEqual(self.cache.get("alice"), b"a5")
        self.cache.evict("alice", 4)
        self.assertEqual(self.cache.get("alice"), b"a5")
        self.cache.evict("alice", None)
        self.assertIsNone(self.cache.get("alice"))

    def test_read_racing_a_write_is_not_stored(self) -> None:
        """A read that started before a write to its key was reported stores nothing; one
        of another key, or one that started after, does."""
        ticket = self.cache.reading("alice")
        other = self.cache.reading("bob")
        self.cache.evict("alice", 2)
        self.assertFalse(self.cache.put("alice", ticket, b"old", 1))
        self.assertIsNone(self.cache.get("alice"))
        self.assertTrue(self.cache.put("bob", other, b"b1", 1))
        self.assertTrue(self.store("alice", b"a2", 2))
        self.assertEqual(self.cache.stats()["refused"], 1)

    def test_replace_after_own_write(self) -> None:
        """The writer's new answer replaces the old one and refuses reads in flight; if
        another write to the key was reported while it wrote, it is forgotten instead."""
        self.store("alice", b"a1", 1)
        reading = self.cache.reading("alice")
        writing = self.cache.reading("alice")
        self.assertTrue(self.cache.replace("alice", writing, b"a2", 2))
        self.assertEqual(self.cache.get("alice"), b"a2")
        self.assertFalse(self.cache.put("alice", reading, b"a1", 1))
        self.assertEqual(self.cache.get("alice"), b"a2")
        writing = self.cache.reading("alice")
        self.cache.evict("alice", 4)  # another process's write, seen meanwhile
        self.assertFalse(self.cache.replace("alice", writing, b"a3", 3))
        self.assertIsNone(self.cache.get("alice"))

    def test_clear_refuses_reads_in_flight(self) -> None:
        self.store("alice", b"a1")
        ticket = self.cache.reading("bob")
        self.cache.clear()
        self.assertIsNone(self.cache.get("alice"))
        self.assertFalse(self.cache.put("bob", ticket, b"b1", 1))
        self.assertTrue(self.store("bob", b"b1"))
        self.assertEqual(self.cache.stats()["cleared"], 1)

    def test_forgotten_writes_refuse_older_reads(self) -> None:
        """Only so many writes are remembered: a read older than a forgotten one is
        refused (it cannot tell whether its key was written), a newer one is not."""
        cache: AnswerCache[str, bytes] = AnswerCache(4, writes_remembered=2)
        old = cache.reading("alice")
        cache.evict("alice")
        cache.evict("bob")
        cache.evict("carol")  # alice's write forgotten
        self.assertFalse(cache.put("alice", old, b"a0", 0))
        self.assertFalse(cache.put("dave", old, b"d0", 0))
        self.assertTrue(cache.put("dave", cache.reading("dave"), b"d1", 1))

    def test_bounded_and_counted(self) -> None:
        for index in range(6):
            self.store(f"user{index}", b"x")
        self.assertEqual(len(self.cache), 4)
        self.assertIsNone(self.cache.get("user0"))
        self.assertEqual(self.cache.get("user5"), b"x")
        stats = self.cache.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["reads"], stats["size"]), (1, 1, 6, 4))
