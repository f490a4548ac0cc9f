"""The PostgreSQL figures' workload (``bench.irp_postgres``): pure functions only.

How the load is split over two registry processes, that every set-up gets the same
realistic mix over a directory larger than the answer cache, and how the answer cache's
hit rate of a set-up of two processes is counted. No server, no network, no timing.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from bench.irp_mixed import workload_sizes
from bench.irp_postgres import (
    FIGURE_IDS,
    OPERATIONS,
    answer_cache_totals,
    combined_cache_stats,
    directory_size,
    mixed_plans,
    skipped_figures,
    split_evenly,
)
from bench.irp_server import REGISTER_EVERY
from bench.sampling import Sample
from irp.server.caching import ANSWER_CACHE_SIZE


def counts(hits: int, reads: int) -> dict[str, object]:
    """One process's answer-cache counts, as ``cache_stats()["answers"]`` gives them."""
    return {
        "hits": hits,
        "database_reads": reads,
        "misses": 2 * reads,
        "hit_rate": round(hits / (hits + reads), 4) if hits + reads else None,
    }


def sample(value: float, details: dict[str, object]) -> Sample:
    """A run's sample with ``details``."""
    return Sample(value=value, wall=1.0, load_cpu=0.5, server_cpu=1.0, details=details)


class SplitTests(TestCase):
    """The connections of a set-up split over its registry processes."""

    def test_two_processes_get_half_each(self) -> None:
        """50 connections over two registries: 25 and 25, the first half to the first."""
        self.assertEqual(split_evenly(50, 2), [(0, 25), (25, 50)])

    def test_every_connection_once_sizes_within_one(self) -> None:
        """Any count over any number of processes: contiguous ranges covering every
        connection exactly once, sizes differing by at most one."""
        for count in (1, 7, 50, 51):
            for parts in (1, 2, 3):
                ranges = split_evenly(count, parts)
                self.assertEqual(len(ranges), parts)
                covered = [index for low, high in ranges for index in range(low, high)]
                self.assertEqual(covered, list(range(count)))
                sizes = [high - low for low, high in ranges]
                self.assertLessEqual(max(sizes) - min(sizes), 1)

    def test_one_process_gets_all(self) -> None:
        """A set-up of one process gets every connection."""
        self.assertEqual(split_evenly(50, 1), [(0, 50)])

    def test_no_process_is_an_error(self) -> None:
        """Zero processes cannot take the load."""
        self.assertRaises(ValueError, split_evenly, 50, 0)


class MixTests(TestCase):
    """Every set-up gets the same realistic mix, over more users than the cache holds."""

    def test_directory_larger_than_answer_cache(self) -> None:
        """The directory holds every user the look-ups spread over, several times the
        answer cache's capacity (so a cached answer cannot serve them all)."""
        users = directory_size(ANSWER_CACHE_SIZE)
        self.assertGreaterEqual(users, 2 * ANSWER_CACHE_SIZE)
        for quick in (False, True):
            spread_count, _ = workload_sizes(ANSWER_CACHE_SIZE, quick)
            self.assertLessEqual(spread_count, users)

    def test_same_mix_on_every_setup(self) -> None:
        """The set-ups' plans differ only in the names of their own registering users:
        the same look-ups and registrations at the same places."""
        registrants = {
            "sqlite": [f"load{index:05d}" for index in range(50)],
            "pg-2": [f"other{index:05d}" for index in range(50)],
        }
        plans = mixed_plans(registrants, 1000, 1000, 2000)
        sqlite, pg = plans["sqlite"], plans["pg-2"]
        self.assertEqual(len(sqlite), 2000)
        self.assertEqual(len(pg), 2000)
        own = {name: set(names) for name, names in registrants.items()}
        for first, second in zip(sqlite, pg, strict=True):
            if first in own["sqlite"]:
                self.assertIn(second, own["pg-2"])
            else:
                self.assertEqual(first, second)
        self.assertEqual(sqlite.count(None), 2000 // REGISTER_EVERY)
        self.assertIn("load00000", sqlite)
        self.assertNotIn("load00000", pg)


class CacheCountTests(TestCase):
    """The answer cache's hit rate of a set-up, over its processes and runs."""

    def test_two_processes_are_summed_not_averaged(self) -> None:
        """One process answering 9 of 10 from its cache and one answering none of 90:
        the set-up answered 9 of 100 from a cache (not the mean of 0.9 and 0)."""
        combined = combined_cache_stats([counts(9, 1), counts(0, 90)])
        self.assertEqual(combined["hits"], 9)
        self.assertEqual(combined["database_reads"], 91)
        self.assertEqual(combined["hit_rate"], 0.09)
        self.assertEqual(combined["hit_rate_processes"], [0.9, 0.0])

    def test_no_lookups_no_rate(self) -> None:
        """A run without look-ups has no hit rate (not zero)."""
        self.assertIsNone(combined_cache_stats([counts(0, 0), counts(0, 0)])["hit_rate"])

    def test_totals_over_runs(self) -> None:
        """The figure's hit rate is over all runs' counts; runs without counts (the
        registrations) give none."""
        runs = [
            sample(100.0, {"answer_cache": combined_cache_stats([counts(30, 70)])}),
            sample(100.0, {"answer_cache": combined_cache_stats([counts(10, 90)])}),
        ]
        totals = answer_cache_totals(runs)
        assert totals is not None
        self.assertEqual(totals["hits"], 40)
        self.assertEqual(totals["hit_rate"], 0.2)
        self.assertEqual(totals["hit_rate_runs"], [0.3, 0.1])
        self.assertIsNone(answer_cache_totals([sample(100.0, {})]))


class FigureTests(TestCase):
    """pg1 and pg2 measure the mixed workload, pg3 and pg4 registrations."""

    def test_figure_ids(self) -> None:
        """pg2 is the mix on two registries on PostgreSQL; the ids are unchanged."""
        self.assertEqual(FIGURE_IDS[("mixed", "pg-2")], "pg2")
        self.assertEqual(FIGURE_IDS[("mixed", "pg-1")], "pg1")
        self.assertEqual(FIGURE_IDS[("registrations", "pg-1")], "pg3")
        self.assertEqual(FIGURE_IDS[("registrations", "pg-2")], "pg4")
        self.assertEqual(OPERATIONS[0], "mixed")

    def test_skipped_without_postgresql(self) -> None:
        """Without a server, all four figures are skipped with the reason."""
        figures = skipped_figures("no initdb")
        self.assertEqual([figure.id for figure in figures], ["pg1", "pg2", "pg3", "pg4"])
        self.assertTrue(all("no initdb" in (figure.skipped or "") for figure in figures))

    def test_summary_has_hit_rates_of_the_mix(self) -> None:
        """The module's table gives each set-up's hit rate for the mix, over its runs,
        and none for registrations."""
        from bench.irp_postgres import render_summary, summary_rows

        def runs(hits: int, reads: int) -> list[Sample]:
            stats = combined_cache_stats([counts(hits, reads), counts(hits, reads)])
            return [sample(1000.0, {"answer_cache": stats}), sample(1000.0, {"answer_cache": stats})]

        results = {
            "mixed": {"sqlite": runs(25, 75), "pg-1": runs(10, 90), "pg-2": runs(5, 95)},
            "registrations": {name: [sample(500.0, {})] for name in ("sqlite", "pg-1", "pg-2")},
        }
        rows = summary_rows(results)
        rates = {(row["operation"], row["setup"]): row["answer_cache_hit_rate"] for row in rows}
        self.assertEqual(rates[("mixed", "sqlite")], 0.25)
        self.assertEqual(rates[("mixed", "pg-2")], 0.05)
        self.assertIsNone(rates[("registrations", "pg-2")])
        self.assertIn("cache hit%", render_summary(rows))
