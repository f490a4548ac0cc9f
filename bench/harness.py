"""The shared benchmark harness: settings, the run context, repeated runs and their
statistics (:class:`Figure`).

Every benchmark runs its server in one process pinned to ``SERVER_CPU`` and its load
generator in another pinned to ``LOAD_CPU`` (both started with the ``spawn`` method, so
neither inherits the other's state: :mod:`bench.processes`). A figure and its baseline are
measured in the same suite run, on the same machine, with the same message sizes, their
runs interleaved (baseline, figure, baseline, figure, ...) so that a burst of load from
elsewhere hits both.

What is kept for each run (:class:`bench.sampling.Sample`): the measured value, the wall
time of the timed window, and how much of one core the server and the load generator used
in that window (:class:`bench.sampling.CpuWindow`). A side near 100 % is the one that
saturates. The table and the JSON are written by :mod:`bench.report`.

This module imports nothing heavy (no Twisted, no OpenSSL) at import time: the statistics
and the writers are unit-tested on synthetic numbers (``test/bench/test_harness.py``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.processes import ServerProcess, Worker
from bench.sampling import (
    DISTURBANCE_KEYS,
    DISTURBED_SHARE,
    LOAD_CPU,
    Sample,
)


@dataclass(frozen=True)
class Stats:
    """Median and spread of several runs."""

    n: int
    median: float
    minimum: float
    maximum: float
    q1: float
    q3: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """Statistics of ``values`` (at least one)."""
        if not values:
            raise ValueError("no values")
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(
            n=len(ordered),
            median=statistics.median(ordered),
            minimum=ordered[0],
            maximum=ordered[-1],
            q1=q1,
            q3=q3,
            mean=statistics.fmean(ordered),
        )

    def to_json(self) -> dict[str, float | int]:
        """The statistics as a JSON object."""
        return {
            "n": self.n,
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
            "q1": self.q1,
            "q3": self.q3,
            "mean": self.mean,
        }


@dataclass
class Figure:
    """A measured figure, its baseline, and the target for their ratio (or for the value).

    ``sense`` is ``">="`` (higher is better) or ``"<="``; ``judged`` says whether the target
    applies to the ratio ``figure / baseline`` (``"ratio"``) or to the figure's own
    median (``"value"``, e.g. a memory ceiling; such a figure has no ratio). A figure with
    ``target`` None is for information only. ``error`` is set when the benchmark failed to run, ``skipped`` (the
    reason) when it could not run here (e.g. no PostgreSQL server): not a failure.
    """

    id: str
    title: str
    unit: str
    samples: list[Sample]
    baseline_title: str
    baseline_unit: str
    baseline_samples: list[Sample]
    target: float | None = None
    sense: str = ">="
    judged: str = "ratio"
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None

    @property
    def stats(self) -> Stats | None:
        """Statistics of the figure's runs."""
        return Stats.of([s.value for s in self.samples]) if self.samples else None

    @property
    def baseline_stats(self) -> Stats | None:
        """Statistics of the baseline's runs."""
        return Stats.of([s.value for s in self.baseline_samples]) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        """The median of the run-by-run ratios (figure run i over baseline run i, measured
        back to back, so that a burst of load from elsewhere weighs on both sides of a
        pair); median over median when the runs are not paired. None for a figure judged on
        its own value (its baseline is context, not a denominator)."""
        if self.judged == "value":
            return None
        paired = self.paired_ratios
        if paired and len(paired) == len(self.samples) == len(self.baseline_samples):
            return statistics.median(paired)
        figure, baseline = self.stats, self.baseline_stats
        if figure is None or baseline is None or baseline.median == 0:
            return None
        return figure.median / baseline.median

    @property
    def paired_ratios(self) -> list[float]:
        """Run-by-run ratios (figure run i over baseline run i), for the spread; none when
        the runs are not paired one to one (different counts), so that the spread is never
        taken over other runs than the ratio, and none for a figure judged on its value."""
        if self.judged == "value" or len(self.samples) != len(self.baseline_samples):
            return []
        return [f.value / b.value for f, b in zip(self.samples, self.baseline_samples, strict=True) if b.value]

    def pair_disturbances(self) -> list[float]:
        """Per pair of runs (figure run i and baseline run i), the largest share of a core
        used that other work took in either; per run when the runs are not paired."""
        if len(self.samples) == len(self.baseline_samples):
            return [max(f.disturbance, b.disturbance) for f, b in zip(self.samples, self.baseline_samples, strict=True)]
        return [sample.disturbance for sample in (*self.samples, *self.baseline_samples)]

    @property
    def disturbance(self) -> float:
        """How disturbed the figure is: the upper median, over its pairs of runs, of each
        pair's worst share of a core used taken by other work (0 when unknown). At or
        above :data:`DISTURBED_SHARE` when half the pairs or more were disturbed (on the
        server's core or on the load generator's), whatever each side's median run says."""
        shares = self.pair_disturbances()
        return statistics.median_high(shares) if shares else 0.0

    def clean_pairs(self) -> list[int]:
        """The indices of the pairs of runs in which no core used was disturbed."""
        if len(self.samples) != len(self.baseline_samples):
            return []
        return [index for index, share in enumerate(self.pair_disturbances()) if share < DISTURBED_SHARE]

    @property
    def ratio_clean(self) -> float | None:
        """The median of the run-by-run ratios of the undisturbed pairs only (None when
        there is none, or no ratio)."""
        if self.judged == "value" or len(self.samples) != len(self.baseline_samples):
            return None
        ratios = [
            self.samples[index].value / self.baseline_samples[index].value
            for index in self.clean_pairs()
            if self.baseline_samples[index].value
        ]
        return statistics.median(ratios) if ratios else None

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None when there is no target or no result)."""
        if self.target is None or self.error is not None or self.skipped is not None:
            return None
        if self.judged == "value":
            stats = self.stats
            judged = None if stats is None else stats.median
        else:
            judged = self.ratio
        if judged is None:
            return None
        return judged >= self.target if self.sense == ">=" else judged <= self.target

    @property
    def disturbed(self) -> bool:
        """Whether other work took :data:`DISTURBED_SHARE` or more of a core used (the
        server's or the load generator's) in half the pairs of runs or more (its verdict
        is then suspect); see :attr:`disturbance`."""
        return self.disturbance >= DISTURBED_SHARE

    def cpu(self, baseline: bool = False) -> dict[str, float | None]:
        """Median CPU shares (fractions of one core) of the server and the load generator."""
        samples = self.baseline_samples if baseline else self.samples
        servers = [s.server_cpu for s in samples if s.server_cpu is not None]
        result: dict[str, float | None] = {
            "server": statistics.median(servers) if servers else None,
            "load_generator": statistics.median([s.load_cpu for s in samples]) if samples else None,
        }
        for key in DISTURBANCE_KEYS:
            others = [s.details[key] for s in samples if s.details.get(key) is not None]
            result[key] = statistics.median(others) if others else None
        return result

    def saturated(self, baseline: bool = False) -> str:
        """Which side ran its core full: "server", "load generator", "both" or "neither"."""
        shares = self.cpu(baseline)
        full = [
            name
            for name, key in (("server", "server"), ("load generator", "load_generator"))
            if (shares[key] or 0.0) >= 0.9
        ]
        if len(full) == 2:
            return "both"
        return full[0] if full else "neither"

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object."""
        figure, baseline = self.stats, self.baseline_stats
        paired = self.paired_ratios
        return {
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "figure": None if figure is None else figure.to_json(),
            "figure_runs": [_sample_json(s) for s in self.samples],
            "baseline_title": self.baseline_title,
            "baseline_unit": self.baseline_unit,
            "baseline": None if baseline is None else baseline.to_json(),
            "baseline_runs": [_sample_json(s) for s in self.baseline_samples],
            "ratio": self.ratio,
            "ratio_runs": paired,
            "ratio_min": min(paired) if paired else None,
            "ratio_max": max(paired) if paired else None,
            "target": self.target,
            "sense": self.sense,
            "judged": self.judged,
            "met": self.met,
            "disturbed": self.disturbed,
            "disturbance": self.disturbance,
            "clean_pairs": self.clean_pairs(),
            "ratio_clean": self.ratio_clean,
            "cpu": {"figure": self.cpu(), "baseline": self.cpu(baseline=True)},
            "saturated": {"figure": self.saturated(), "baseline": self.saturated(baseline=True)},
            "parameters": self.parameters,
            "notes": self.notes,
            "details": self.details,
            "error": self.error,
            "skipped": self.skipped,
        }


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "value": sample.value,
        "wall_s": sample.wall,
        "load_cpu": sample.load_cpu,
        "server_cpu": sample.server_cpu,
        **({"details": sample.details} if sample.details else {}),
    }


def failed_figure(figure_id: str, title: str, error: str) -> Figure:
    """A placeholder for a benchmark that crashed (reported, never hidden)."""
    return Figure(figure_id, title, "", [], "", "", [], error=error)


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure (``--quick`` shrinks everything)."""

    quick: bool = False
    runs: int = 5
    warmup: float = 1.0
    duration: float = 2.0
    #: Persistent connections of the throughput runs.
    connections: int = 50
    #: Users in the small database of the scale figure, and in the large one.
    small_users: int = 1_000
    large_users: int = 1_000_000
    #: sixid records in the look-up figure's registry (13a).
    sixid_ids: int = 1_000_000
    #: Idle authenticated connections held by one registry (figure 9; quick holds a
    #: quarter of them, then all, and extrapolates from the slope between the two).
    idle_connections: int = 10_000
    #: Key type of every CA, server and user key (the product's default).
    key_type: str = "p384"

    @classmethod
    def for_mode(cls, quick: bool, runs: int | None = None, key_type: str = "p384") -> Settings:
        """The quick (CI) or full settings."""
        if quick:
            base = cls(
                quick=True,
                runs=3,
                warmup=0.15,
                duration=0.3,
                large_users=100_000,
                sixid_ids=20_000,
                idle_connections=1_200,
                key_type=key_type,
            )
        else:
            base = cls(key_type=key_type)
        return dataclasses.replace(base, runs=runs) if runs else base


class Context:
    """What a benchmark module gets: the settings, a scratch folder and shared servers."""

    def __init__(self, settings: Settings, workdir: str, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.workdir = workdir
        self.log = log
        self._servers: dict[str, ServerProcess] = {}
        self._shared: dict[str, Any] = {}
        self._workers: dict[int, Worker] = {}

    def worker(self, cpu: int = LOAD_CPU) -> Worker:
        """The suite's worker process pinned to ``cpu`` (the load generator by default;
        :data:`SERVER_CPU` for CPU-only baselines), started on first use."""
        worker = self._workers.get(cpu)
        if worker is None:
            worker = self._workers[cpu] = Worker(cpu).__enter__()
        return worker

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """A value made once per suite run (e.g. a PKI) and shared by the modules."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def server(self, key: str, target: str, params: dict[str, Any]) -> ServerProcess:
        """The server process ``key``, started on first use and shared by later modules."""
        server = self._servers.get(key)
        if server is None or not server.alive:
            server = ServerProcess(key, target, params)
            self._servers[key] = server
            started = time.perf_counter()
            server.start()
            self.log(f"  started server {key} (pid {server.pid}) in {time.perf_counter() - started:.1f} s")
        return server

    def stop_server(self, key: str) -> None:
        """Stop a shared server that no later module needs."""
        server = self._servers.pop(key, None)
        if server is not None:
            server.stop()

    def path(self, name: str) -> str:
        """A path in the scratch folder."""
        return os.path.join(self.workdir, name)

    def close(self) -> None:
        """Stop every server and worker still running."""
        for worker in self._workers.values():
            worker.__exit__(None, None, None)
        self._workers.clear()
        for key in list(self._servers):
            self.stop_server(key)


def split_samples(pairs: Sequence[tuple[Sample, Sample]]) -> tuple[list[Sample], list[Sample]]:
    """Split interleaved (baseline, figure) pairs into the figure's and the baseline's runs."""
    return [figure for _, figure in pairs], [baseline for baseline, _ in pairs]
