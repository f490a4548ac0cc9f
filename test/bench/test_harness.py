"""The benchmark harness's statistics and writers, on synthetic numbers.

Not a speed test: nothing here measures anything. It keeps ``bench/`` importable and its
arithmetic right (``python -m bench --quick`` in CI keeps the benchmarks themselves
running).
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import TestCase

from bench import MODULES, OPT_IN
from bench.__main__ import disturbance, run_module, selected_modules
from bench.harness import Figure, Stats, failed_figure
from bench.profile import summarise
from bench.report import format_number, render_table, write_json
from bench.sampling import LOAD_CPU, SERVER_CPU, CpuWindow, Sample


def samples(*values: float, server: float = 1.0, load: float = 0.3) -> list[Sample]:
    """Synthetic runs."""
    return [Sample(value, 2.0, load, server, {"server_core_others": 0.02}) for value in values]


def figure(values: tuple[float, ...], baseline: tuple[float, ...], **options: object) -> Figure:
    """A synthetic figure."""
    return Figure("1", "things/s", "/s", samples(*values), "bare things/s", "/s", samples(*baseline), **options)  # type: ignore[arg-type]


class StatsTests(TestCase):
    """Median, quartiles and extremes."""

    def test_odd(self) -> None:
        """Five values: the middle one, quartiles by the inclusive method."""
        stats = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
        self.assertEqual((stats.n, stats.median, stats.minimum, stats.maximum), (5, 3.0, 1.0, 5.0))
        self.assertEqual((stats.q1, stats.q3), (2.0, 4.0))
        self.assertEqual(stats.mean, 3.0)

    def test_even(self) -> None:
        """Four values: the median is the mean of the middle two."""
        self.assertEqual(Stats.of([1.0, 2.0, 3.0, 10.0]).median, 2.5)

    def test_single(self) -> None:
        """One run: every statistic is that run."""
        stats = Stats.of([7.0])
        self.assertEqual((stats.median, stats.q1, stats.q3, stats.minimum, stats.maximum), (7.0,) * 5)

    def test_empty(self) -> None:
        """No runs is an error, not a zero."""
        self.assertRaises(ValueError, Stats.of, [])


class FigureTests(TestCase):
    """Ratios and verdicts."""

    def test_median_of_paired_ratios(self) -> None:
        """The ratio is the median of the run-by-run ratios, so it always lies within the
        spread shown; unpaired runs fall back to median over median."""
        result = figure((50.0, 60.0, 70.0), (100.0, 100.0, 200.0), target=0.55)
        self.assertEqual(result.paired_ratios, [0.5, 0.6, 0.35])
        self.assertEqual(result.ratio, 0.5)
        self.assertFalse(result.met)  # median over median (0.6) would have met it
        unpaired = figure((50.0, 60.0, 70.0), (100.0,), target=0.5)
        self.assertAlmostEqual(unpaired.ratio or 0.0, 0.6)

    def test_unequal_runs_have_no_spread(self) -> None:
        """Runs of different counts are not paired: the ratio is median over median and no
        spread is drawn from a subset of the baseline's runs (D2: 9b once paired its held
        runs with the first half of twice as many baseline runs)."""
        result = figure((1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 3.0, 3.0, 3.0))
        self.assertEqual(result.paired_ratios, [])
        self.assertEqual(result.ratio, 0.5)
        entry = result.to_json()
        self.assertEqual((entry["ratio_runs"], entry["ratio_min"], entry["ratio_max"]), ([], None, None))
        self.assertNotIn("[", render_table([result]).splitlines()[2].split()[1])

    def test_missed(self) -> None:
        """Below a ">=" target is a miss."""
        self.assertFalse(figure((40.0,), (100.0,), target=0.5).met)

    def test_lower_is_better(self) -> None:
        """A "<=" target on the ratio (latency with and without load)."""
        self.assertTrue(figure((1.5,), (1.0,), target=2.0, sense="<=").met)
        self.assertFalse(figure((2.5,), (1.0,), target=2.0, sense="<=").met)

    def test_value_target(self) -> None:
        """A target on the figure's own median (a memory ceiling), whatever the ratio."""
        result = figure((900.0, 1100.0, 1000.0), (60.0,), target=1024.0, sense="<=", judged="value")
        self.assertTrue(result.met)
        result = figure((1100.0,), (60.0,), target=1024.0, sense="<=", judged="value")
        self.assertFalse(result.met)

    def test_no_target(self) -> None:
        """Information-only figures are neither met nor missed."""
        self.assertIsNone(figure((1.0,), (2.0,)).met)

    def test_saturation(self) -> None:
        """The side at 90 % or more of its core is the one that saturates."""
        result = figure((1.0,), (2.0,))
        self.assertEqual(result.saturated(), "server")
        self.assertEqual(result.cpu()["server_core_others"], 0.02)

    def test_failed(self) -> None:
        """A crashed benchmark has no verdict and says why in the table."""
        failed = failed_figure("4", "issuances", "Traceback...\nValueError: boom")
        self.assertIsNone(failed.met)
        self.assertIn("ValueError: boom", render_table([failed]))

    def test_skipped(self) -> None:
        """A benchmark that cannot run here (no PostgreSQL) is skipped with its reason."""
        from bench import irp_postgres

        skipped = irp_postgres.skipped_figures("initdb is missing")
        self.assertEqual([f.id for f in skipped], ["pg1", "pg2", "pg3", "pg4"])
        self.assertTrue(all(f.met is None and f.error is None for f in skipped))
        text = render_table(skipped)
        self.assertIn("SKIPPED", text)
        self.assertIn("no PostgreSQL server: initdb is missing", text)
        self.assertEqual(skipped[0].to_json()["skipped"], "no PostgreSQL server: initdb is missing")


class IdleFigureTests(TestCase):
    """Figure 9's arithmetic: the quick extrapolation and the paired baseline."""

    def test_extrapolation_from_the_marginal_slope(self) -> None:
        """--quick extrapolates from the slope between its two levels, not from zero (D5:
        the slope from zero included memory already mapped at start-up)."""
        from bench.irp_idle import extrapolate_rss, hold_levels

        self.assertAlmostEqual(extrapolate_rss([(0, 60.0), (300, 70.0), (1200, 130.0)], 10_000), 716.67, places=2)
        self.assertAlmostEqual(extrapolate_rss([(0, 60.0), (300, 70.0)], 10_000), 393.33, places=2)
        self.assertRaises(ValueError, extrapolate_rss, [(300, 70.0)], 10_000)
        self.assertEqual(hold_levels(1_200), (300, 1_200))
        self.assertEqual(hold_levels(10_000), (10_000,))

    def test_one_baseline_run_per_run(self) -> None:
        """9b's baseline has one run per held run (the mean of the runs before and after),
        so its ratio and spread come from the same pairs (D2)."""
        from bench.irp_idle import idle_baseline

        before = [Sample(1.0, 1.0, 0.1, 0.5, {"server_core_others": 0.0}) for _ in range(3)]
        after = [Sample(3.0, 1.0, 0.1, 0.7, {"server_core_others": 0.2}) for _ in range(3)]
        baseline = idle_baseline(before, after)
        self.assertEqual([sample.value for sample in baseline], [2.0, 2.0, 2.0])
        self.assertEqual(baseline[0].details["before"], 1.0)
        self.assertEqual(baseline[0].details["after"], 3.0)
        self.assertEqual(baseline[0].details["server_core_others"], 0.2)
        self.assertAlmostEqual(baseline[0].server_cpu or 0.0, 0.6)
        held = Figure("9b", "x", "ms", samples(2.0, 3.0, 4.0), "y", "ms", baseline, target=2.0, sense="<=")
        self.assertEqual(held.paired_ratios, [1.0, 1.5, 2.0])
        self.assertEqual(held.ratio, 1.5)
        self.assertRaises(ValueError, idle_baseline, before, after[:2])


class OutputTests(TestCase):
    """The table and the JSON document."""

    def test_table(self) -> None:
        """One block per figure: ratio, spread, target, verdict, both medians."""
        text = render_table(
            [
                figure((50.0, 60.0, 70.0), (100.0, 100.0, 200.0), target=0.5),
                Figure("9a", "RSS", "MiB", samples(700.0), "RSS idle", "MiB", samples(60.0), target=1024.0, sense="<=", judged="value"),
            ]
        )
        row_9a = next(line for line in text.splitlines() if line.startswith("9a "))
        self.assertEqual(row_9a.split()[1], "-")
        self.assertIn("0.500 [0.350-0.600]", text)
        self.assertIn(">= 0.500", text)
        self.assertIn("yes", text)
        self.assertIn("things/s: 60.0 /s [50.0-70.0]", text)
        self.assertIn("vs bare things/s: 100 /s [100-200]", text)
        self.assertIn("<= 1,024 MiB", text)

    def test_value_judged_has_no_ratio(self) -> None:
        """A figure judged on its own value (a memory ceiling) has no ratio: its baseline is
        context, not a denominator (D3: 9a printed held RSS / idle RSS)."""
        memory = Figure("9a", "RSS", "MiB", samples(700.0), "RSS idle", "MiB", samples(60.0), target=256.0, sense="<=", judged="value")
        self.assertIsNone(memory.ratio)
        entry = memory.to_json()
        self.assertIsNone(entry["ratio"])
        self.assertEqual(entry["ratio_runs"], [])
        self.assertFalse(memory.met)

    def test_json(self) -> None:
        """Every figure with its stats, runs, ratio, target and CPU shares."""
        path = os.path.join(self.mktemp(), "results.json")
        write_json(path, [figure((50.0, 70.0), (100.0, 100.0), target=0.5)], {"quick": True})
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        self.assertEqual(document["meta"], {"quick": True})
        (entry,) = document["figures"]
        self.assertEqual(entry["figure"]["median"], 60.0)
        self.assertEqual(entry["baseline"]["min"], 100.0)
        self.assertEqual(entry["ratio"], 0.6)
        self.assertEqual(entry["ratio_runs"], [0.5, 0.7])
        self.assertEqual(entry["target"], 0.5)
        self.assertTrue(entry["met"])
        self.assertEqual(entry["cpu"]["figure"]["load_generator"], 0.3)
        self.assertEqual(len(entry["figure_runs"]), 2)

    def test_postgres_summary(self) -> None:
        """Rates, ratios to SQLite and CPU per answer of the PostgreSQL set-ups."""
        from bench.irp_postgres import _adjust, render_summary, summary_rows

        def run(value: float, server: float, postgres: float) -> Sample:
            details = {"tree_cpu": {"postgres": postgres}, "core_busy": {"0": 1.0, "1": 0.6}, "server_core_others": 0.0}
            return _adjust(Sample(value, 1.0, 0.1, server, details))

        results = {
            operation: {
                "sqlite": [run(4000.0, 1.0, 0.0), run(5000.0, 1.0, 0.0)],
                "pg-1": [run(2000.0, 0.9, 0.3), run(3000.0, 0.9, 0.3)],
                "pg-2": [run(1000.0, 1.0, 0.4), run(1500.0, 1.0, 0.4)],
            }
            for operation in ("lookups", "registrations")
        }
        sample = results["lookups"]["pg-1"][0]
        self.assertAlmostEqual(sample.details["server_core_others"], 0.3)  # 1.6 busy - 0.9 - 0.1 - 0.3
        self.assertEqual(sample.details["server_cpu_us_per_answer"], 600.0)
        rows = summary_rows(results)
        pg1 = next(row for row in rows if row["operation"] == "lookups" and row["setup"] == "pg-1")
        self.assertAlmostEqual(pg1["ratio_to_sqlite"], 2500 / 4500)
        self.assertEqual((pg1["ratio_runs_min"], pg1["ratio_runs_max"]), (0.5, 0.6))
        text = render_summary(rows)
        self.assertIn("2,500 [2,000-3,000]", text)
        self.assertIn("0.556 [0.500-0.600]", text)
        self.assertIn("90/30/10/30", text)
        self.assertIn("360+120", text)  # 0.9 and 0.3 of a core at 2,500/s

    def test_numbers(self) -> None:
        """Three significant digits, thousands separated."""
        self.assertEqual(
            [format_number(v) for v in (12345.6, 123.4, 12.34, 1.234, 0.01234, None)],
            ["12,346", "123", "12.3", "1.23", "0.012", "-"],
        )


class CommandTests(TestCase):
    """Choosing benchmarks and reading profiles."""

    def test_only(self) -> None:
        """--only takes figure ids or module names, and keeps the run order."""
        self.assertEqual(selected_modules("9,1"), ["irp_lookups", "irp_idle"])
        self.assertEqual(selected_modules("sixchat_bulk,3b"), ["irp_registrations", "sixchat_bulk"])
        self.assertEqual(selected_modules(""), [name for name in MODULES if name not in OPT_IN])
        self.assertNotIn("irp_postgres", selected_modules(""))
        self.assertEqual(selected_modules("postgres"), ["irp_postgres"])
        self.assertEqual(selected_modules("pg3,1"), ["irp_lookups", "irp_postgres"])
        self.assertEqual(selected_modules("9c"), ["irp_idle"])
        self.assertRaises(SystemExit, selected_modules, "42")

    def test_disturbance(self) -> None:
        """The worst median share of the server's core that other work took."""
        calm = figure((1.0,), (2.0,))
        busy = Figure("2", "x", "/s", samples(1.0), "y", "/s", [Sample(2.0, 1.0, 0.3, 0.6, {"server_core_others": 0.3})])
        self.assertEqual(disturbance([calm]), 0.02)
        self.assertEqual(disturbance([calm, busy]), 0.3)
        self.assertFalse(calm.disturbed)
        self.assertTrue(busy.disturbed)
        busy.target = 0.1
        self.assertIn("yes*", render_table([busy]))
        self.assertIn("not trustworthy", render_table([busy]))

    def test_load_core_disturbance(self) -> None:
        """Other work on the load generator's core marks the figure disturbed as other work
        on the server's does (D1: only the server's core was checked)."""
        loaded = [Sample(1.0, 1.0, 0.3, 1.0, {"server_core_others": 0.0, "load_core_others": 0.5})]
        result = Figure("1", "x", "/s", loaded, "y", "/s", samples(2.0))
        self.assertTrue(result.disturbed)
        self.assertEqual(disturbance([result]), 0.5)
        result.target = 0.1
        self.assertIn("load +50", render_table([result]))

    def test_disturbed_pairs_behind_a_calm_median(self) -> None:
        """Two disturbed pairs out of three make the figure disturbed even when each side's
        median run is calm (D1: the median hid them)."""

        def run(value: float, others: float) -> Sample:
            return Sample(value, 1.0, 0.3, 1.0, {"server_core_others": others})

        result = Figure(
            "1", "x", "/s", [run(1.0, 0.0), run(1.0, 0.4), run(1.0, 0.0)],
            "y", "/s", [run(2.0, 0.4), run(2.0, 0.0), run(2.0, 0.0)],
        )
        self.assertEqual(result.cpu()["server_core_others"], 0.0)
        self.assertEqual(result.cpu(baseline=True)["server_core_others"], 0.0)
        self.assertTrue(result.disturbed)
        self.assertEqual(result.clean_pairs(), [2])
        self.assertEqual(result.to_json()["clean_pairs"], [2])
        one_bad = Figure("1", "x", "/s", [run(1.0, 0.0)] * 3, "y", "/s", [run(2.0, 0.4), run(2.0, 0.0), run(2.0, 0.0)])
        self.assertFalse(one_bad.disturbed)

    def test_retry_on_load_core_disturbance(self) -> None:
        """A module whose load generator's core was disturbed is run again, and the calmer
        attempt kept."""

        class Module:
            calls = 0

            def run(self, ctx: object) -> list[Figure]:
                self.calls += 1
                others = 0.4 if self.calls == 1 else 0.0
                loaded = [Sample(1.0, 1.0, 0.3, 1.0, {"server_core_others": 0.0, "load_core_others": others})]
                return [Figure("1", "x", "/s", loaded, "y", "/s", samples(2.0))]

        module = Module()
        (result,) = run_module(None, "irp_lookups", module, "x", retries=1)  # type: ignore[arg-type]
        self.assertEqual(module.calls, 2)
        self.assertEqual(result.details["attempt_disturbance"], [0.4, 0.02])
        self.assertFalse(result.disturbed)

    def test_window_checks_both_cores(self) -> None:
        """A window records the other work on the load generator's core, less interrupt
        time (the kernel's TCP work for the bench's own loopback traffic)."""
        window = CpuWindow(os.getppid())
        window.server_cpu = 0.5
        window.load_cpu = 0.2
        window.core_busy = {SERVER_CPU: 0.6, LOAD_CPU: 0.9}
        window.core_interrupts = {SERVER_CPU: 0.0, LOAD_CPU: 0.3}
        details = window.sample(1.0).details
        self.assertEqual(details["server_core_others"], 0.1)
        self.assertEqual(details["load_core_others"], 0.4)
        self.assertEqual(details["load_core_interrupts"], 0.3)

    def test_window_of_a_cpu_only_baseline(self) -> None:
        """A process measuring itself as the server (a CPU-only baseline on the server's
        core) gets a full CPU record: its share is the server's, the load generator's 0."""
        window = CpuWindow(os.getpid())
        with window:
            sum(range(100_000))
        window.core_busy = {SERVER_CPU: 0.9, LOAD_CPU: 0.1}  # a window shorter than a tick has none
        sample = window.sample(1.0)
        self.assertIsNotNone(sample.server_cpu)
        self.assertEqual(sample.load_cpu, 0.0)
        self.assertIn("server_core_others", sample.details)
        self.assertNotIn("load_core_others", sample.details)

    def test_profile_summary(self) -> None:
        """Own and inclusive shares of the busy samples; waits are set apart."""
        stacks = (
            "thread (0x1);main (a.py:1);work (a.py:5);parse (b.py:9) 6",
            "thread (0x1);main (a.py:1);work (a.py:5) 2",
            "thread (0x1);main (a.py:1);EPollReactor.doPoll (twisted/internet/epollreactor.py:3) 12",
        )
        collapsed = "\n".join(stacks)
        text = summarise(collapsed)
        self.assertIn("20 samples, 8 busy", text)
        self.assertIn(" 75.0%  parse (b.py)", text)
        self.assertIn("100.0%  work (a.py)", text)
