"""common.caches: values kept only while the data version they were read at holds."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from common.caches import RecentCache, VersionedCache


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
