"""Tests for :mod:`common.limits`, driven by a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from common.limits import ConnectionCounter, FailureLimiter, LimitExceeded, SlidingWindow, address_key


def limiter(clock: Clock, **overrides: float) -> FailureLimiter:
    settings: dict[str, float] = {"max_failures": 3, "window": 60.0, "lockout": 10.0, "max_lockout": 35.0}
    settings.update(overrides)
    return FailureLimiter(
        clock,
        max_failures=int(settings["max_failures"]),
        window=settings["window"],
        lockout=settings["lockout"],
        max_lockout=settings["max_lockout"],
        max_keys=int(overrides.get("max_keys", 100_000)),
    )


class FailureLimiterTests(unittest.SynchronousTestCase):
    """FailureLimiter."""

    def fail_times(self, limit: FailureLimiter, key: str, count: int) -> None:
        for _ in range(count):
            limit.record_failure(key)

    def test_allowed_failures(self) -> None:
        """max_failures failures leave the key usable."""
        clock = Clock()
        limit = limiter(clock)
        self.fail_times(limit, "k", 3)
        limit.check("k")

    def test_lockout_after_one_more(self) -> None:
        """The failure after max_failures locks the key for ``lockout`` seconds."""
        clock = Clock()
        limit = limiter(clock)
        self.fail_times(limit, "k", 4)
        error = self.assertRaises(LimitExceeded, limit.check, "k")
        self.assertIn("try again in 10 seconds", error.message)
        clock.advance(9.5)
        error = self.assertRaises(LimitExceeded, limit.check, "k")
        self.assertIn("1 seconds", error.message)
        clock.advance(0.5)
        limit.check("k")

    def test_other_keys_unaffected(self) -> None:
        """A lockout is per key."""
        clock = Clock()
        limit = limiter(clock)
        self.fail_times(limit, "a", 4)
        limit.check("b")
        self.assertRaises(LimitExceeded, limit.check, "a")

    def test_window_forgets_old_failures(self) -> None:
        """Failures older than the window no longer count."""
        clock = Clock()
        limit = limiter(clock)
        self.fail_times(limit, "k", 3)
        clock.advance(61)
        self.fail_times(limit, "k", 3)
        limit.check("k")

    def test_failures_within_window_accumulate(self) -> None:
        """Failures spread inside the window add up."""
        clock = Clock()
        limit = limiter(clock)
        for _ in range(3):
            limit.record_failure("k")
            clock.advance(19)
        limit.record_failure("k")
        self.assertRaises(LimitExceeded, limit.check, "k")

    def test_lockout_doubles_up_to_max(self) -> None:
        """Each further lock-out doubles, capped at max_lockout."""
        clock = Clock()
        limit = limiter(clock)
        durations = []
        for _ in range(4):
            self.fail_times(limit, "k", 4)
            start = clock.seconds()
            while True:
                try:
                    limit.check("k")
                except LimitExceeded:
                    clock.advance(1)
                else:
                    break
            durations.append(clock.seconds() - start)
        self.assertEqual(durations, [10, 20, 35, 35])

    def test_success_clears(self) -> None:
        """A success forgets the failures and the lock-out history."""
        clock = Clock()
        limit = limiter(clock)
        self.fail_times(limit, "k", 4)
        clock.advance(10)
        limit.record_success("k")
        self.fail_times(limit, "k", 3)
        limit.check("k")
        limit.record_failure("k")
        clock.advance(10)
        limit.check("k")  # back to the first lock-out length

    def test_bounded_memory(self) -> None:
        """At most max_keys keys are tracked; the oldest are dropped."""
        clock = Clock()
        limit = limiter(clock, max_keys=2)
        self.fail_times(limit, "old", 4)
        self.fail_times(limit, "b", 1)
        self.fail_times(limit, "c", 1)
        limit.check("old")  # dropped, so no longer locked
        self.assertEqual(len(limit._states), 2)

    def test_recently_failing_key_kept(self) -> None:
        """A key that fails again moves to the young end and survives eviction."""
        clock = Clock()
        limit = limiter(clock, max_keys=2)
        self.fail_times(limit, "a", 4)
        self.fail_times(limit, "b", 1)
        limit.record_failure("a")
        self.fail_times(limit, "c", 1)
        self.assertRaises(LimitExceeded, limit.check, "a")


class AddressKeyTests(unittest.SynchronousTestCase):
    """address_key: what one client address is."""

    def test_ipv4(self) -> None:
        """An IPv4 address is itself."""
        self.assertEqual(address_key("192.0.2.1"), "192.0.2.1")
        self.assertNotEqual(address_key("192.0.2.1"), address_key("192.0.2.2"))

    def test_ipv6_by_64(self) -> None:
        """IPv6 addresses count by /64: a host can pick any address in its /64."""
        self.assertEqual(address_key("2001:db8::1"), "2001:db8::/64")
        self.assertEqual(address_key("2001:db8::1"), address_key("2001:db8::ffff:ffff:ffff:ffff"))
        self.assertNotEqual(address_key("2001:db8::1"), address_key("2001:db8:0:1::1"))
        self.assertEqual(address_key("fe80::1%eth0"), "fe80::/64")

    def test_ipv4_mapped(self) -> None:
        """An IPv4 client of a dual-stack listener counts as its IPv4 address."""
        self.assertEqual(address_key("::ffff:192.0.2.1"), "192.0.2.1")

    def test_not_an_address(self) -> None:
        """Anything else is taken as it is."""
        self.assertEqual(address_key("unknown"), "unknown")


class ConnectionCounterTests(unittest.SynchronousTestCase):
    """ConnectionCounter."""

    def test_ipv6_counts_per_64(self) -> None:
        """Connections from one IPv6 /64 share one budget, whatever the source address."""
        counter = ConnectionCounter(2)
        self.assertTrue(counter.acquire("2001:db8::1"))
        self.assertTrue(counter.acquire("2001:db8::2"))
        self.assertFalse(counter.acquire("2001:db8::3"))
        self.assertTrue(counter.acquire("2001:db8:0:1::1"))
        self.assertTrue(counter.acquire("::ffff:192.0.2.1"))
        self.assertTrue(counter.acquire("192.0.2.1"))
        self.assertFalse(counter.acquire("192.0.2.1"))
        counter.release("2001:db8::1")
        self.assertEqual(counter.count("2001:db8::abcd"), 1)

    def test_limit(self) -> None:
        """Up to ``limit`` connections per host; then refusals; release frees a slot."""
        counter = ConnectionCounter(2)
        self.assertTrue(counter.acquire("h"))
        self.assertTrue(counter.acquire("h"))
        self.assertFalse(counter.acquire("h"))
        self.assertTrue(counter.acquire("other"))
        self.assertEqual(counter.count("h"), 2)
        counter.release("h")
        self.assertEqual(counter.count("h"), 1)
        self.assertTrue(counter.acquire("h"))

    def test_release_forgets_hosts(self) -> None:
        """Hosts with no connections take no memory; extra releases are harmless."""
        counter = ConnectionCounter(1)
        counter.acquire("h")
        counter.release("h")
        counter.release("h")
        self.assertEqual(counter.count("h"), 0)
        self.assertEqual(counter._counts, {})
        self.assertTrue(counter.acquire("h"))


class SlidingWindowTests(unittest.SynchronousTestCase):
    """SlidingWindow: the one sliding-window budget."""

    def test_allow_counts_only_what_it_admits(self) -> None:
        """``allow`` admits ``limit`` events per window; refusals use nothing."""
        clock = Clock()
        window = SlidingWindow(clock, limit=2, window=10.0)
        self.assertTrue(window.allow("k"))
        clock.advance(5)
        self.assertTrue(window.allow("k"))
        self.assertFalse(window.allow("k"))
        self.assertTrue(window.allow("other"))
        clock.advance(5)  # the first event left the window
        self.assertTrue(window.allow("k"))
        self.assertFalse(window.allow("k"))
        self.assertEqual(window.count("k"), 2)

    def test_record_counts_everything(self) -> None:
        """``record`` counts refusals too; past the budget the count stops at limit + 2."""
        clock = Clock()
        window = SlidingWindow(clock, limit=3, window=10.0)
        self.assertEqual([window.record("k") for _ in range(6)], [1, 2, 3, 4, 5, 5])
        clock.advance(9)
        self.assertEqual(window.record("k"), 5)  # a flood keeps its window full
        clock.advance(10)
        self.assertEqual(window.record("k"), 1)

    def test_bounded_memory(self) -> None:
        """Past ``max_keys``, idle keys are forgotten; at most limit + 1 moments per key."""
        clock = Clock()
        window = SlidingWindow(clock, limit=2, window=10.0, max_keys=2)
        window.record("a")
        window.record("b")
        clock.advance(10)
        for _ in range(5):
            window.record("c")
        self.assertEqual(sorted(window._events), ["c"])
        self.assertEqual(len(window._events["c"]), 3)

    def test_many_active_keys(self) -> None:
        """While the keys are all active none is forgotten (their counts stay exact); the
        next scan for idle ones waits until their number has doubled, and then forgets
        them."""
        clock = Clock()
        window = SlidingWindow(clock, limit=1, window=10.0, max_keys=2)
        for key in "abc":
            self.assertTrue(window.allow(key))
        self.assertFalse(window.allow("a"))
        self.assertEqual(len(window._events), 3)
        clock.advance(10)
        for key in "def":
            window.allow(key)
        self.assertEqual(len(window._events), 6)  # the next scan is at 7 keys
        window.allow("g")
        self.assertEqual(sorted(window._events), ["d", "e", "f", "g"])
