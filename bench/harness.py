"""The shared benchmark harness: processes, pinning, timing, repeated runs, stats, output.

Every benchmark runs its server in one process pinned to :data:`SERVER_CPU` and its load
generator in another pinned to :data:`LOAD_CPU` (both started with the ``spawn`` method, so
neither inherits the other's state). A figure and its baseline are measured in the same
suite run, on the same machine, with the same message sizes, their runs interleaved
(baseline, figure, baseline, figure, ...) so that a burst of load from elsewhere hits both.

What is kept for each run (:class:`Sample`): the measured value, the wall time of the timed
window, and how much of one core the server and the load generator used in that window
(from ``/proc/<pid>/stat`` and ``getrusage``). A side near 100 % is the one that saturates.

This module imports nothing heavy (no Twisted, no OpenSSL) at import time: the statistics
and the writers are unit-tested on synthetic numbers (``test/bench/test_harness.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Self

#: The core the servers run on, and the core the load generators run on.
SERVER_CPU = 0
LOAD_CPU = 1
#: Other work taking this share of a core the benchmark uses (the server's or the load
#: generator's) makes a run suspect; see :meth:`Figure.disturbance`.
DISTURBED_SHARE = 0.15
#: Seconds a server process may take to start (CA creation, bulk population...).
SERVER_START_TIMEOUT = 600.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------------------------------
# Processes: pinning, limits, CPU and memory


def pin(cpu: int | None) -> None:
    """Pin the calling process (all its threads to come) to one CPU, where possible."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    if cpu in os.sched_getaffinity(0) or cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def raise_open_files(wanted: int = 1 << 20) -> int:
    """Raise the soft limit on open files towards ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime); the split drops the first two.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    """User plus system CPU seconds used so far by this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_run_delay(pid: int | str = "self") -> float:
    """Seconds the threads of process ``pid`` have spent runnable but waiting for a CPU
    (``/proc/<pid>/task/*/schedstat``): time taken from us by other processes."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as handle:
                total += int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def core_jiffies() -> dict[int, tuple[float, float, float]]:
    """Per CPU: (busy, interrupts, total) jiffies so far, from ``/proc/stat``.

    ``busy`` is everything but idle and iowait (user, nice, system, irq, softirq, steal);
    ``interrupts`` is the irq and softirq part of it: the kernel's packet processing,
    which on loopback is done on the core of whichever side sends.
    """
    result = {}
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                numbers = [float(value) for value in values[:8]]
                idle = numbers[3] + numbers[4]
                total = sum(numbers)
                interrupts = sum(numbers[5:7])
                result[int(name[3:])] = (total - idle, interrupts, total)
    except OSError:
        pass
    return result


def core_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, total) jiffies so far, from ``/proc/stat``."""
    return {cpu: (busy, total) for cpu, (busy, _interrupts, total) in core_jiffies().items()}


def cpu_pressure() -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (PSI)."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as handle:
            first = handle.readline().split()
    except OSError:
        return None
    for item in first:
        if item.startswith("avg10="):
            return float(item[6:]) / 100
    return None


def process_rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def process_tree(root: int) -> list[int]:
    """Process ``root`` and all its descendants (e.g. a PostgreSQL server and its backends)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _tree_cpu_seconds(root: int) -> dict[int, float]:
    seconds = {}
    for pid in process_tree(root):
        try:
            seconds[pid] = process_cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
    return seconds


def load_average() -> tuple[float, float, float]:
    """The system's 1, 5 and 15 minute load averages."""
    return os.getloadavg()


class CpuWindow:
    """Measures a timed window: wall time and the CPU share of this process and the server.

    Use as ``with CpuWindow(server_pid) as window: ...`` and read :attr:`wall`,
    :attr:`load_cpu` and :attr:`server_cpu` (fractions of one core) afterwards. With
    several server pids (several processes serving one figure), :attr:`server_cpu` is
    their sum. ``trees`` names other processes to watch by the pid of their root (e.g.
    ``{"postgres": postmaster_pid}``): the CPU share of each whole tree goes to
    :attr:`tree_cpu` and to the sample's ``tree_cpu`` detail.

    Disturbance, per core used (see :meth:`sample`): ``server_core_others`` is the busy
    share of :data:`SERVER_CPU` not used by the server processes; ``load_core_others`` the
    busy share of :data:`LOAD_CPU`, less its interrupt time (irq and softirq: on loopback
    the kernel's TCP work for the bench's own traffic runs there), not used by this process
    (the load generator) nor by the watched trees (with tick-based CPU accounting, softirq
    work done while the load generator is running is in its own share as well, so it may
    be subtracted twice: the check errs towards "not disturbed"; and the interrupt work of
    another process's traffic is not counted). When this process is itself the server
    (a CPU-only baseline on the server core: ``CpuWindow(os.getpid())``), its share is the
    server's, :attr:`load_cpu` is 0 and only the server's core is checked.
    """

    def __init__(self, server_pid: int | Sequence[int] | None = None, trees: Mapping[str, int] | None = None) -> None:
        self.server_pid = server_pid
        self._server_pids: tuple[int, ...] = (
            () if not server_pid else (server_pid,) if isinstance(server_pid, int) else tuple(server_pid)
        )
        self.trees = dict(trees or {})
        self.tree_cpu: dict[str, float] = {}
        self._trees: dict[str, dict[int, float]] = {}
        self.wall = 0.0
        self.load_cpu = 0.0
        self.server_cpu: float | None = None
        #: Shares of the window each side spent runnable but waiting for its CPU.
        self.load_wait = 0.0
        self.server_wait: float | None = None
        self._start = 0.0
        self._own = 0.0
        self._server = 0.0
        self._own_delay = 0.0
        self._server_delay = 0.0
        self._cores: dict[int, tuple[float, float, float]] = {}
        #: Per CPU, the share of the window it was busy (anything: us, others, the kernel).
        self.core_busy: dict[int, float] = {}
        #: Per CPU, the share of the window spent in interrupts (irq and softirq).
        self.core_interrupts: dict[int, float] = {}
        #: Whether this process is the one measured as the server (a CPU-only baseline).
        self.self_is_server = os.getpid() in self._server_pids

    def __enter__(self) -> Self:
        self.begin()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def begin(self) -> None:
        """Start the window now."""
        self._own = own_cpu_seconds()
        self._own_delay = process_run_delay()
        self._cores = core_jiffies()
        self._trees = {name: _tree_cpu_seconds(root) for name, root in self.trees.items()}
        if self._server_pids:
            self._server = sum(process_cpu_seconds(pid) for pid in self._server_pids)
            self._server_delay = sum(process_run_delay(pid) for pid in self._server_pids)
        self._start = time.perf_counter()

    def end(self) -> None:
        """Close the window now and compute the shares."""
        self.wall = max(time.perf_counter() - self._start, 1e-9)
        self.load_cpu = 0.0 if self.self_is_server else (own_cpu_seconds() - self._own) / self.wall
        self.load_wait = 0.0 if self.self_is_server else (process_run_delay() - self._own_delay) / self.wall
        for cpu, (busy, interrupts, total) in core_jiffies().items():
            before = self._cores.get(cpu)
            if before is not None and total > before[2]:
                self.core_busy[cpu] = (busy - before[0]) / (total - before[2])
                self.core_interrupts[cpu] = (interrupts - before[1]) / (total - before[2])
        if self._server_pids:
            self.server_cpu = (sum(process_cpu_seconds(pid) for pid in self._server_pids) - self._server) / self.wall
            self.server_wait = (
                sum(process_run_delay(pid) for pid in self._server_pids) - self._server_delay
            ) / self.wall
        for name, root in self.trees.items():
            started = self._trees.get(name, {})
            # A process started within the window counts from zero; one that ended is lost.
            used = sum(seconds - started.get(pid, 0.0) for pid, seconds in _tree_cpu_seconds(root).items())
            self.tree_cpu[name] = max(used, 0.0) / self.wall

    def sample(self, value: float, **details: Any) -> Sample:
        """A :class:`Sample` for ``value`` measured in this window."""
        details.setdefault("load_wait", round(self.load_wait, 4))
        if self.server_wait is not None:
            details.setdefault("server_wait", round(self.server_wait, 4))
        pressure = cpu_pressure()
        if pressure is not None:
            details.setdefault("cpu_pressure_avg10", pressure)
        if self.tree_cpu:
            details.setdefault("tree_cpu", {name: round(share, 4) for name, share in self.tree_cpu.items()})
        if self.core_busy:
            details.setdefault("core_busy", {str(cpu): round(share, 3) for cpu, share in self.core_busy.items()})
            # What else ran on the server's core in the window (other processes; also
            # the kernel's share of our own network traffic).
            if self.server_cpu is not None and SERVER_CPU in self.core_busy:
                details.setdefault("server_core_others", round(max(self.core_busy[SERVER_CPU] - self.server_cpu, 0.0), 3))
            # What else ran on the load generator's core: not its interrupt time (the
            # kernel's TCP work for the bench's own traffic), not this process, not the
            # watched trees (bench processes the scheduler may put on either core).
            if not self.self_is_server and LOAD_CPU != SERVER_CPU and LOAD_CPU in self.core_busy:
                own = self.load_cpu + sum(self.tree_cpu.values())
                others = self.core_busy[LOAD_CPU] - self.core_interrupts.get(LOAD_CPU, 0.0) - own
                details.setdefault("load_core_others", round(max(others, 0.0), 3))
                details.setdefault("load_core_interrupts", round(self.core_interrupts.get(LOAD_CPU, 0.0), 3))
        return Sample(value, self.wall, self.load_cpu, self.server_cpu, details)


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class Sample:
    """One run: the value, its timed window, and each side's CPU share in that window."""

    value: float
    wall: float
    load_cpu: float
    server_cpu: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def disturbance(self) -> float:
        """The largest share of a core used by the run (the server's or the load
        generator's) that other work took (0 when not recorded)."""
        return max((self.details.get(key) or 0.0 for key in DISTURBANCE_KEYS), default=0.0)


#: The per-run details holding the share of each core used that other work took.
DISTURBANCE_KEYS = ("server_core_others", "load_core_others")


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


# ---------------------------------------------------------------------------------------
# Output


def format_number(value: float | None) -> str:
    """A compact human form of a figure: 3 significant digits, thousands separated."""
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(stats: Stats | None, unit: str) -> str:
    if stats is None:
        return "-"
    return f"{format_number(stats.median)} {unit} [{format_number(stats.minimum)}-{format_number(stats.maximum)}]"


def _cpu_text(figure: Figure, baseline: bool) -> str:
    shares = figure.cpu(baseline)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}"

    text = f"{percent(shares['server'])}/{percent(shares['load_generator'])}"
    others = shares.get("server_core_others")
    load_others = shares.get("load_core_others")
    if load_others is not None and load_others >= 0.05:
        text += f"(+{percent(others or 0.0)}, load +{percent(load_others)})"
    elif others is not None and others >= 0.05:
        text += f"(+{percent(others)})"
    return text


def render_table(figures: Iterable[Figure]) -> str:
    """A plain-text table: per figure one line with the ratio (and the spread of the
    run-by-run ratios), target, verdict and CPU shares, then the figure's and the
    baseline's medians with their min-max over the runs."""
    header = (
        "#",
        "ratio [runs min-max]",
        "target",
        "met",
        "CPU% server/load(+others on server core, load +others on load core): figure | baseline",
    )
    rows: list[tuple[tuple[str, ...], list[str]]] = []
    for figure in figures:
        if figure.skipped is not None:
            rows.append(((figure.id, "-", "-", "SKIPPED", ""), [f"{figure.title}: {figure.skipped[:200]}"]))
            continue
        if figure.error is not None:
            last = figure.error.strip().splitlines()[-1] if figure.error.strip() else "error"
            rows.append(((figure.id, "-", "-", "FAILED", ""), [f"{figure.title}: {last[:160]}"]))
            continue
        paired = figure.paired_ratios
        ratio = format_number(figure.ratio)
        if paired:
            ratio += f" [{format_number(min(paired))}-{format_number(max(paired))}]"
        if figure.target is None:
            target = "-"
        elif figure.judged == "value":
            target = f"{figure.sense} {format_number(figure.target)} {figure.unit}"
        else:
            target = f"{figure.sense} {format_number(figure.target)}"
        met = {True: "yes", False: "NO", None: "-"}[figure.met]
        if figure.disturbed and figure.met is not None:
            met += "*"
        cpu = f"{_cpu_text(figure, False)} | {_cpu_text(figure, True)}"
        lines = [f"{figure.title}: {_spread(figure.stats, figure.unit)}"]
        if figure.baseline_title:
            lines.append(f"vs {figure.baseline_title}: {_spread(figure.baseline_stats, figure.baseline_unit)}")
        rows.append(((figure.id, ratio, target, met, cpu), lines))
    cells = [header, *(cells for cells, _ in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row)).rstrip()

    text = [line(header), "-" * max(len(line(header)), 60)]
    for row, descriptions in rows:
        text.append(line(row))
        text.extend(f"{'':<{widths[0]}}    {description}" for description in descriptions)
    if any(row[3].endswith("*") for row, _ in rows):
        text.append(
            f"* other processes took {DISTURBED_SHARE:.0%} or more of a core used (the server's, or the load"
            " generator's less its interrupt time) in half the pairs of runs or more:"
            " the verdict is not trustworthy (run again on a quiet machine)"
        )
    return "\n".join(text)


def machine_info() -> dict[str, Any]:
    """What the run happened on: CPUs, load, versions, the commit measured."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "affinity_available": hasattr(os, "sched_setaffinity"),
        "load_average": load_average(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for name in ("twisted", "cryptography", "OpenSSL", "lxml"):
        try:
            module = importlib.import_module(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:  # pragma: no cover - reported, not fatal
            info[name] = None
    try:
        from cryptography.hazmat.backends.openssl import backend

        info["openssl"] = backend.openssl_version_text()
    except ImportError:  # pragma: no cover
        info["openssl"] = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        info["git"] = {"commit": commit or None, "dirty": bool(dirty)}
    except OSError:  # pragma: no cover
        info["git"] = None
    return info


def write_json(path: str, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """Write every figure, with the run's metadata, as one JSON document."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    document = {"meta": meta, "figures": [figure.to_json() for figure in figures]}
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")
    os.replace(temporary, path)


def _json_default(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


# ---------------------------------------------------------------------------------------
# Settings and the suite context


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


# ---------------------------------------------------------------------------------------
# Server processes


class ServerError(RuntimeError):
    """A server process failed to start or a command to it failed."""


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


def _server_entry(target: str, connection: Connection, params: dict[str, Any], cpu: int) -> None:
    pin(cpu)
    raise_open_files()
    try:
        _resolve(target)(connection, params)
    except BaseException:
        try:
            connection.send(("error", traceback.format_exc()))
        except OSError:
            pass
        raise


class ServerProcess:
    """A server in its own process, pinned to :data:`SERVER_CPU`.

    ``target`` names a function ``module:function`` called as ``function(connection,
    params)`` in the new process; it must send ``("ready", info)`` once it serves, then
    answer commands (see :func:`serve_twisted`). ``info`` always holds the ``pid``.
    """

    def __init__(self, name: str, target: str, params: dict[str, Any], cpu: int = SERVER_CPU) -> None:
        self.name = name
        self.target = target
        self.params = params
        self.cpu = cpu
        self.info: dict[str, Any] = {}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._process is not None and self._process.pid is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self._process is not None and self._process.is_alive()

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> dict[str, Any]:
        """Start the process; return its ``info`` once it serves."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_server_entry, args=(self.target, child, self.params, self.cpu), name=f"bench-{self.name}", daemon=True
        )
        self._process.start()
        child.close()
        self._connection = parent
        kind, payload = self._receive(timeout)
        if kind != "ready":
            self.stop()
            raise ServerError(f"server {self.name} failed to start:\n{payload}")
        self.info = dict(payload)
        self.info["pid"] = self.pid
        return self.info

    def _receive(self, timeout: float) -> tuple[str, Any]:
        assert self._connection is not None and self._process is not None
        deadline = time.monotonic() + timeout
        while not self._connection.poll(0.2):
            if not self._process.is_alive():
                raise ServerError(f"server {self.name} exited with code {self._process.exitcode}")
            if time.monotonic() > deadline:
                raise ServerError(f"server {self.name} did not answer within {timeout:.0f} s")
        try:
            return self._connection.recv()  # type: ignore[no-any-return]
        except EOFError:
            raise ServerError(f"server {self.name} closed its pipe") from None

    def call(self, command: str, timeout: float = SERVER_START_TIMEOUT, **arguments: Any) -> Any:
        """Run ``command`` in the server (on its reactor thread); return its result."""
        with self._lock:
            assert self._connection is not None
            self._connection.send((command, arguments))
            kind, payload = self._receive(timeout)
        if kind != "ok":
            raise ServerError(f"{self.name}: {command} failed:\n{payload}")
        return payload

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to stop; kill it if it does not."""
        if self._process is None:
            return
        if self._process.is_alive() and self._connection is not None:
            try:
                self._connection.send(("stop", {}))
            except OSError:
                pass
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        if self._connection is not None:
            self._connection.close()
        self._process = None
        self._connection = None


Commands = dict[str, Callable[..., Any]]


def serve_twisted(
    connection: Connection,
    setup: Callable[[Any], Awaitable[tuple[dict[str, Any], Commands]]],
    log_path: str | None = None,
) -> None:
    """Run a Twisted server in this process until told to stop.

    ``setup(reactor)`` starts serving and returns the ``info`` to hand back and the
    commands it answers. Commands run on the reactor thread (they may return Deferreds or
    be coroutines); the built-in ones are ``rss``, ``stop``, ``profile_start`` and
    ``profile_stop`` (cProfile of the reactor thread). With ``log_path``, the
    Twisted log goes to that file at level info, as a deployed server's does.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.threads import blockingCallFromThread

    if log_path is not None:
        from twisted.logger import (
            FilteringLogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        handle = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
        observer = FilteringLogObserver(
            textFileLogObserver(handle), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
        )
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    commands: Commands = {}
    profiler: dict[str, Any] = {}

    def profile_start() -> None:
        import cProfile

        profiler["profile"] = cProfile.Profile()
        profiler["profile"].enable()

    def profile_stop(top: int = 40, sort: str = "tottime") -> str:
        import io
        import pstats

        profile = profiler.pop("profile")
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(sort).print_stats(top)
        return text.getvalue()

    commands["profile_start"] = profile_start
    commands["profile_stop"] = profile_stop

    def run_command(name: str, arguments: dict[str, Any]) -> Any:
        result = commands[name](**arguments)
        if isinstance(result, Deferred):
            return result
        if hasattr(result, "__await__"):
            return ensureDeferred(result)
        return result

    def listen_for_commands() -> None:
        while True:
            try:
                name, arguments = connection.recv()
            except (EOFError, OSError):
                name, arguments = "stop", {}
            if name == "stop":
                reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]
                return
            try:
                if name == "rss":
                    result: Any = process_rss(os.getpid())
                else:
                    result = blockingCallFromThread(reactor, run_command, name, arguments)  # type: ignore[arg-type]
                connection.send(("ok", result))
            except Exception:  # noqa: BLE001 - every failure goes back to the harness
                connection.send(("error", traceback.format_exc()))

    async def start() -> None:
        try:
            info, answers = await setup(reactor)
        except Exception:  # noqa: BLE001
            connection.send(("error", traceback.format_exc()))
            reactor.stop()  # type: ignore[attr-defined]
            return
        commands.update(answers)
        info.setdefault("pid", os.getpid())
        connection.send(("ready", info))
        threading.Thread(target=listen_for_commands, name="bench-commands", daemon=True).start()

    reactor.callWhenRunning(lambda: ensureDeferred(start()))  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined,call-arg]


# ---------------------------------------------------------------------------------------
# Load generator and CPU-only processes


def _worker_init(cpu: int) -> None:
    pin(cpu)
    raise_open_files()


class Worker:
    """One process pinned to a core that runs functions handed to it (load generators,
    and CPU-only baselines on the server core). Use as a context manager."""

    def __init__(self, cpu: int = LOAD_CPU) -> None:
        self.cpu = cpu
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        self._executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.cpu,),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._executor is not None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def run(self, function: Callable[..., Any], *args: Any, timeout: float = 1800.0, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the worker; return its result."""
        assert self._executor is not None
        return self._executor.submit(function, *args, **kwargs).result(timeout=timeout)


def split_samples(pairs: Sequence[tuple[Sample, Sample]]) -> tuple[list[Sample], list[Sample]]:
    """Split interleaved (baseline, figure) pairs into the figure's and the baseline's runs."""
    return [figure for _, figure in pairs], [baseline for baseline, _ in pairs]
