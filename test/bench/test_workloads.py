"""The benchmarks' workloads: what the requests of the mixed look-up figure are made of.

Pure functions only (no server, no network, no timing): the request mix has exactly the
share of registrations it claims, the users who register are looked up too, the look-ups
spread over more users than the registry's answer cache holds, and the bench's count of
cache hits counts what the cache answered.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import TestCase

from bench import MODULES
from bench.__main__ import selected_modules
from bench.irp_mixed import cache_totals, next_offset, workload_sizes
from bench.irp_server import (
    REGISTER_EVERY,
    answer_counts,
    answered_names,
    mixed_frames,
    mixed_plan,
    spread_targets,
    username,
)
from common.caches import AnswerCache
from irp.server.caching import ANSWER_CACHE_SIZE

REGISTRANTS = [f"load{index:05d}" for index in range(50)]


def plan_for(users: int, quick: bool) -> list[str | None]:
    """The mixed figure's request plan for a directory of ``users``."""
    spread_count, request_count = workload_sizes(ANSWER_CACHE_SIZE, quick)
    return mixed_plan(spread_targets(users, spread_count), REGISTRANTS, request_count)


class MixedPlanTests(TestCase):
    """The request mix of figure 1m."""

    def test_one_registration_in_fifty(self) -> None:
        """Exactly one request in 50 is a registration, one in every block of 50."""
        plan = mixed_plan(spread_targets(1000, 1000), REGISTRANTS, 5000)
        self.assertEqual(REGISTER_EVERY, 50)
        self.assertEqual(plan.count(None), 100)
        for start in range(0, len(plan), REGISTER_EVERY):
            self.assertEqual(plan[start : start + REGISTER_EVERY].count(None), 1, start)

    def test_registrants_are_looked_up(self) -> None:
        """Every registering user is a look-up target, once per block of 50 in turn."""
        plan = mixed_plan(spread_targets(1000, 1000), REGISTRANTS, 50 * len(REGISTRANTS))
        looked_up = [name for name in plan if name in REGISTRANTS]
        self.assertEqual(looked_up, REGISTRANTS)

    def test_lookups_exceed_the_answer_cache(self) -> None:
        """In both modes the look-ups name more distinct users than the answer cache
        holds (quick: the 100,000-user directory; full: 1,000,000)."""
        for users, quick in ((100_000, True), (1_000_000, False)):
            plan = plan_for(users, quick)
            distinct = {name for name in plan if name is not None}
            self.assertGreater(len(distinct), ANSWER_CACHE_SIZE, (users, quick))
            self.assertGreater(len(plan), ANSWER_CACHE_SIZE)

    def test_deterministic(self) -> None:
        """The same seed gives the same requests (both sides of a run send the same)."""
        spread = spread_targets(10_000, 5000)
        self.assertEqual(mixed_plan(spread, REGISTRANTS, 500), mixed_plan(spread, REGISTRANTS, 500))
        self.assertNotEqual(mixed_plan(spread, REGISTRANTS, 500), mixed_plan(spread, REGISTRANTS, 500, seed=1))

    def test_spread_covers_the_directory(self) -> None:
        """The spread is even over the whole directory, no name twice."""
        spread = spread_targets(1_000_000, 100_000)
        self.assertEqual(len(spread), 100_000)
        self.assertEqual(len(set(spread)), 100_000)
        self.assertEqual((spread[0], spread[1], spread[-1]), (username(0), username(10), username(999_990)))
        self.assertEqual(spread_targets(300, 1000), [username(index) for index in range(300)])

    def test_frames(self) -> None:
        """The frames follow the plan: a ``<register-address>`` for each registration,
        a ``<lookup>`` of the planned user otherwise."""
        plan = mixed_plan(spread_targets(1000, 1000), REGISTRANTS, 500)
        frames = mixed_frames(plan)
        self.assertEqual(len(frames), 500)
        registrations = [frame for frame in frames if b"<register-address" in frame]
        self.assertEqual(len(registrations), 500 // REGISTER_EVERY)
        for target, frame in zip(plan, frames, strict=True):
            if target is None:
                self.assertIn(b'presence="online"', frame)
            else:
                self.assertIn(b'<lookup user="' + target.encode() + b'"', frame)
            self.assertEqual(int.from_bytes(frame[:4], "big"), len(frame) - 4)

    def test_answered_names(self) -> None:
        """A registration is answered with a registering user's record, a look-up with
        its target's (the echo baseline's answer size is their mean)."""
        self.assertEqual(answered_names(["u1", None, "u2", None], ["a", "b"]), ["u1", "b", "u2", "b"])

    def test_registered_as_a_figure(self) -> None:
        """``--only 1m`` runs the mixed module, and it comes before the scale module,
        which reuses its large registry."""
        self.assertEqual(MODULES["irp_mixed"], ("1m", "1m-off"))
        self.assertEqual(selected_modules("1m"), ["irp_mixed"])
        self.assertEqual(selected_modules("mixed"), ["irp_mixed"])
        order = list(MODULES)
        self.assertLess(order.index("irp_mixed"), order.index("irp_scale"))


class OffsetTests(TestCase):
    """Each run starts where the previous one stopped in the request list."""

    settings = SimpleNamespace(warmup=1.0, duration=2.0, connections=50)

    def test_past_the_run(self) -> None:
        """The offset moves past the warm-up's and the window's requests."""
        self.assertEqual(next_offset(100, 2000, self.settings, 80_000), 100 + 3000 + 50)

    def test_wraps(self) -> None:
        """Past the end, the list starts again."""
        self.assertEqual(next_offset(79_000, 2000, self.settings, 80_000), (79_000 + 3050) % 80_000)


class AnswerCountTests(TestCase):
    """The bench's count of answer-cache hits, from the registry cache's own counts."""

    def test_counts_between_two_stats(self) -> None:
        """Hits and database reads since the last reset; the hit rate is hits over hits
        plus reads."""
        cache: AnswerCache[str, bytes] = AnswerCache(10)
        since = cache.stats()
        self.assertIsNone(cache.get("alice"))
        ticket = cache.reading("alice")
        cache.put("alice", ticket, b"answer", 1)
        self.assertEqual(cache.get("alice"), b"answer")
        self.assertEqual(cache.get("alice"), b"answer")
        counts = answer_counts(cache.stats(), since)
        self.assertEqual((counts["hits"], counts["database_reads"], counts["hit_rate"]), (2, 1, 0.6667))
        self.assertEqual(answer_counts(cache.stats(), cache.stats())["hit_rate"], None)


class TotalsTests(TestCase):
    """Hit rates over several runs."""

    def test_totals(self) -> None:
        """The figure's hit rate is over all its cache-on runs, not a mean of rates."""
        runs = [
            {"hits": 1, "database_reads": 9, "hit_rate": 0.1},
            {"hits": 0, "database_reads": 90, "hit_rate": 0.0},
        ]
        totals = cache_totals(runs)
        self.assertEqual((totals["hits"], totals["database_reads"], totals["hit_rate"]), (1, 99, 0.01))
        self.assertEqual(totals["hit_rate_runs"], [0.1, 0.0])
