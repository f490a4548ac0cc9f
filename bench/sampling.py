"""One run's measurement: pinning to a core, reading the CPU use of processes and cores
from ``/proc``, and the :class:`Sample` a timed window gives (see :mod:`bench.harness`)."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


def measure_loop(step: Callable[[], Mapping[str, int]], warmup: float, duration: float) -> tuple[CpuWindow, Counter[str]]:
    """Run ``step`` over and over in this process (a CPU-only baseline measures itself as
    the server): ``warmup`` seconds, then a timed window of ``duration`` seconds. Each call
    returns what it did (``{"rows": 50, "commits": 1}``); the counts of the timed window are
    returned with the window, ended."""
    window = CpuWindow(os.getpid())
    counts: Counter[str] = Counter()
    begin = time.perf_counter() + warmup
    end = begin + duration
    measuring = False
    while True:
        counts.update(step())
        moment = time.perf_counter()
        if measuring and moment >= end:
            window.end()
            return window, counts
        if not measuring and moment >= begin:
            window.begin()
            counts.clear()
            measuring = True
