"""Figures pg1-pg4: IRP look-ups (realistic mix) and durable registrations/s on PostgreSQL, one and two registry processes, vs one on SQLite.

Three set-ups, started in one run and measured interleaved: ``sqlite`` (the baseline of
every ratio: one process, SQLite, WAL, ``synchronous=FULL``); ``pg-1``, one registry
process on a PostgreSQL database; ``pg-2``, two registry processes of the same domain on
one PostgreSQL database and one data folder (as ``docs/deployment.rst`` describes), the
load generator's 50 connections split evenly between them (:func:`split_evenly`). Each
holds the same directory, :func:`directory_size` (100,000) bulk-loaded users, five times
the answer cache, and 50 load users with certificates. Every registry has its answer cache
on; on PostgreSQL it follows the other process's writes through LISTEN/NOTIFY
(``docs/deployment.rst``, "How fresh a cached look-up answer is").

pg1 and pg2 (operation ``mixed``) measure the realistic mix of figure 1m
(:func:`bench.irp_server.mixed_plan`): 50 persistent TLS connections, each logged in as
its own load user, one request outstanding per connection; one request in 50 a
``<register-address>`` by the connection's own user (answered after its commit), one in
50 a look-up of a registering user, the rest look-ups spread over all 100,000 users. Every
set-up gets the same request list (:func:`mixed_plans`); each run goes on where the
set-up's previous one stopped. The figure is answers/s; each set-up's answer-cache hit
rate (hits over hits plus database reads, warm-ups included, summed over both processes
of ``pg-2``) is in ``details.answer_cache``. **pg2** has the target 0.8; pg1 is
information. pg3 and pg4 (information) measure ``<register-address>`` only, each answered
after its commit. Each run measures the mix on sqlite, pg-1, pg-2, then registrations.

PostgreSQL is the tests' throw-away cluster (:class:`test.pgserver.PostgresServer`,
``fsync=on``, ``synchronous_commit=on``: a commit waits for the WAL flush as SQLite's for
its fsync), started with both cores allowed; without one, the figures are skipped with
the reason.

Two cores only: the registries are pinned to CPU 0 (**both** of ``pg-2`` share that one
core), the load generator to CPU 1, PostgreSQL runs on either. So pg2 shows the cost of
PostgreSQL and of sharing one core and one database, not scaling. The CPU shares of the
registries (``server``), of the PostgreSQL cluster (``tree_cpu.postgres``) and of the load
generator are kept per run; ``server_core_others`` is here the busy time of both cores
used by none of them (PostgreSQL moves between the cores).
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.irp_mixed import cache_totals, next_offset, workload_sizes
from bench.irp_server import (
    OK,
    REGISTER_EVERY,
    answered_names,
    mixed_frames,
    mixed_plan,
    register_frames,
    registry,
    spread_targets,
)
from bench.report import format_number
from bench.sampling import Sample

#: The set-ups, in the order each run measures them.
SETUPS = ("sqlite", "pg-1", "pg-2")
OPERATIONS = ("mixed", "registrations")
SETUP_TITLES = {
    "sqlite": "one registry on SQLite",
    "pg-1": "one registry on PostgreSQL",
    "pg-2": "two registries on one PostgreSQL",
}
#: Figure ids: (operation, set-up) -> id.
FIGURE_IDS = {
    ("mixed", "pg-1"): "pg1",
    ("mixed", "pg-2"): "pg2",
    ("registrations", "pg-1"): "pg3",
    ("registrations", "pg-2"): "pg4",
}
OPERATION_TITLES = {
    "mixed": "IRP look-ups/s (2 % registrations)",
    "registrations": "durable address registrations/s",
}
#: The target of figure pg2 (two registries on PostgreSQL over one on SQLite).
PG2_TARGET = 0.8
TWO_CORES = (
    "2 cores: both registries of pg-2 share one core (CPU 0) with each other, the load generator"
    " has the other, PostgreSQL runs on either; pg2 shows the cost of PostgreSQL and of sharing"
    " one core and one database, not scaling"
)


# ---------------------------------------------------------------------------------------
# PostgreSQL


def start_postgres() -> Any:
    """The run's PostgreSQL server (started once), allowed on every core.

    Raises :class:`test.pgserver.PostgresUnavailable` (or ImportError) when there is none.
    """
    try:
        import psycopg  # noqa: F401 - the registry's driver, needed by every set-up
    except ImportError:
        raise ImportError("the psycopg driver is not installed (pip install '.[postgresql]')") from None
    from test.pgserver import PostgresServer

    # The orchestrator is pinned to the load generator's core, and children inherit it:
    # let PostgreSQL's processes run anywhere.
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    try:
        return PostgresServer.shared()
    finally:
        os.sched_setaffinity(0, before)


def postmaster_pid(server: Any) -> int:
    """The pid of the PostgreSQL server's postmaster (first line of ``postmaster.pid``)."""
    with open(os.path.join(server.directory, "data", "postmaster.pid"), encoding="ascii") as handle:
        return int(handle.readline())


def postgres_version(url: str) -> str:
    """The server's version string."""
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def postgres_registry(
    ctx: Context, key: str, url: str, data_dir: str, users: int, *, first: bool = True, log_name: str = "registry.log"
) -> Any:
    """Registry process ``key`` on the PostgreSQL database ``url`` (pinned to CPU 0).

    The ``first`` process of a database creates the CA in ``data_dir`` (when it is new),
    loads the directory of ``users`` bulk-loaded users and enrols the load users; a later
    one finds all of them in the shared data folder and database.
    """
    settings = ctx.settings
    params: dict[str, Any] = {
        "key_type": settings.key_type,
        "data_dir": data_dir,
        "database": url,
        "log_name": log_name,
        "users": settings.connections if first else 0,
        "bulk_users": users if first else 0,
        "sample": min(users, 10_000),
    }
    return ctx.server(key, "bench.irp_server:serve_registry", params)


def registries(ctx: Context, server: Any, users: int) -> dict[str, list[Any]]:
    """The three set-ups' registry processes, each directory with ``users`` bulk-loaded
    users (started on first use, shared by reruns)."""
    sqlite = registry(ctx, users)
    one_url = ctx.shared("postgres-database-1", server.create_database)
    two_url = ctx.shared("postgres-database-2", server.create_database)
    one = postgres_registry(ctx, "pg-1", one_url, ctx.path("pg-1"), users)
    first = postgres_registry(ctx, "pg-2a", two_url, ctx.path("pg-2"), users)
    second = postgres_registry(ctx, "pg-2b", two_url, ctx.path("pg-2"), users, first=False, log_name="registry-2.log")
    return {"sqlite": [sqlite], "pg-1": [one], "pg-2": [first, second]}


# ---------------------------------------------------------------------------------------
# Pure helpers: the split over processes, the workload's sizes, the cache counts


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """The ``[low, high)`` index ranges that split ``count`` connections evenly over
    ``parts`` registry processes (part ``i`` gets indices ``i * count // parts`` up to
    ``(i + 1) * count // parts``; the sizes differ by at most one)."""
    if parts < 1:
        raise ValueError("at least one part")
    return [(index * count // parts, (index + 1) * count // parts) for index in range(parts)]


def directory_size(cache_size: int) -> int:
    """Users bulk-loaded into every set-up's directory: as many as the mixed look-ups are
    spread over (:func:`bench.irp_mixed.workload_sizes`), five times the answer cache."""
    return workload_sizes(cache_size, quick=False)[0]


def mixed_plans(
    registrants: dict[str, list[str]], users: int, spread_count: int, request_count: int
) -> dict[str, list[str | None]]:
    """Each set-up's mixed request list (:func:`bench.irp_server.mixed_plan`) over a
    directory of ``users``: the same look-ups of the same spread at the same places, and
    registrations at the same places, for every set-up; only the registering users'
    names are the set-up's own (``registrants``, its load users)."""
    spread = spread_targets(users, spread_count)
    return {name: mixed_plan(spread, names, request_count) for name, names in registrants.items()}


def combined_cache_stats(per_process: list[dict[str, Any]]) -> dict[str, Any]:
    """One set-up's answer-cache counts over one run, summed over its registry processes
    (each as ``cache_stats()["answers"]`` gives them); ``hit_rate`` is hits over hits plus
    database reads (None before any look-up), ``hit_rate_processes`` each process's."""
    hits = sum(stats["hits"] for stats in per_process)
    reads = sum(stats["database_reads"] for stats in per_process)
    return {
        "hits": hits,
        "database_reads": reads,
        "misses": sum(stats.get("misses", 0) for stats in per_process),
        "hit_rate": round(hits / (hits + reads), 4) if hits + reads else None,
        "hit_rate_processes": [stats["hit_rate"] for stats in per_process],
    }


def answer_cache_totals(samples: list[Sample]) -> dict[str, Any] | None:
    """The answer cache's counts over the runs of ``samples`` (those of the mixed
    workload, each with ``details["answer_cache"]``), or None when they have none."""
    runs = [sample.details["answer_cache"] for sample in samples if "answer_cache" in sample.details]
    return cache_totals(runs) if runs else None


# ---------------------------------------------------------------------------------------
# Load generator side: the connections stay open in the worker between runs, so that the
# main process can read the registries' cache counts between them (as figure 1m does).

_OPEN: dict[str, Any] = {}


def open_connections(
    setups: dict[str, dict[str, Any]], plans: dict[str, list[str | None]], settings: Any
) -> dict[str, int]:
    """Load generator: serialise each set-up's mixed requests (``plans``) and open its
    connections, split evenly over its registries' ``ports`` (:func:`split_evenly`);
    return the number of connections per port."""
    from bench.loadgen import connect_tls

    count = settings.connections
    sources = source_addresses(count)
    _OPEN["frames"] = {"registrations": register_frames()}
    _OPEN.setdefault("offsets", {})
    _OPEN.setdefault("connections", {})
    opened_per_port: dict[str, int] = {}
    for name, setup in setups.items():
        mixed = mixed_frames(plans[name])
        _OPEN["frames"][name] = mixed
        _OPEN["offsets"].setdefault(name, 0)
        users, ports = setup["users"][:count], setup["ports"]
        opened: list[Any] = []
        for port, (low, high) in zip(ports, split_evenly(count, len(ports)), strict=True):
            opened += connect_tls(
                HOST,
                port,
                [client_context(user) for user in users[low:high]],
                high - low,
                sources=sources[low:high],
                first=mixed[0],
                check=OK,
            )
            opened_per_port[f"{name}:{port}"] = high - low
        _OPEN["connections"][name] = opened
    return opened_per_port


def measure_run(name: str, operation: str, pids: list[int], postmaster: int, settings: Any) -> Sample:
    """Load generator: one closed-loop run of ``operation`` on set-up ``name``; a mixed
    run starts where the set-up's previous one stopped in its request list."""
    from bench.loadgen import round_trips

    if operation == "mixed":
        frames: list[bytes] = _OPEN["frames"][name]
        offset = _OPEN["offsets"][name]
        frames = frames[offset:] + frames[:offset]
    else:
        frames = _OPEN["frames"]["registrations"]
    sample = round_trips(
        _OPEN["connections"][name],
        frames,
        warmup=settings.warmup,
        duration=settings.duration,
        server_pid=pids,
        trees={"postgres": postmaster},
    )
    if operation == "mixed":
        total = len(_OPEN["frames"][name])
        _OPEN["offsets"][name] = next_offset(_OPEN["offsets"][name], sample.details["answers"], settings, total)
    sample.details["processes"] = len(pids)
    return _adjust(sample)


def close_connections() -> None:
    """Load generator: say goodbye on every connection."""
    for opened in _OPEN.pop("connections", {}).values():
        for connection in opened:
            connection.goodbye()
    _OPEN.pop("frames", None)


def _adjust(sample: Sample) -> Sample:
    """Per-run derived figures: the CPU others used (on either core), and the CPU time the
    registries and PostgreSQL spent per answer."""
    details = sample.details
    postgres = details.get("tree_cpu", {}).get("postgres", 0.0)
    server = sample.server_cpu or 0.0
    busy = details.get("core_busy", {})
    if busy:
        details["server_core_others_own_core"] = details.get("server_core_others")
        details["server_core_others"] = round(max(sum(busy.values()) - server - sample.load_cpu - postgres, 0.0), 3)
    if sample.value:
        details["server_cpu_us_per_answer"] = round((server + postgres) / sample.value * 1e6, 1)
    return sample


def measure(
    ctx: Context, processes: dict[str, list[Any]], setups: dict[str, dict[str, Any]], plans: dict[str, list[str | None]], postmaster: int
) -> dict[str, dict[str, list[Sample]]]:
    """Per operation and set-up, one sample per run (interleaved: each run measures the
    mixed workload on every set-up, then registrations on every set-up). Each mixed
    sample's details hold the set-up's answer-cache counts over that run (warm-up
    included), summed over its processes."""
    settings = ctx.settings
    worker = ctx.worker()
    results: dict[str, dict[str, list[Sample]]] = {op: {name: [] for name in setups} for op in OPERATIONS}
    split = worker.run(open_connections, setups, plans, settings)
    ctx.log(f"  connections per registry: {split}")
    try:
        for _ in range(settings.runs):
            for operation in OPERATIONS:
                for name, setup in setups.items():
                    group = processes[name]
                    if operation == "mixed":
                        for process in group:
                            process.call("cache_stats", reset=True)
                    sample = worker.run(measure_run, name, operation, setup["pids"], postmaster, settings)
                    if operation == "mixed":
                        sample.details["answer_cache"] = combined_cache_stats(
                            [process.call("cache_stats")["answers"] for process in group]
                        )
                    results[operation][name].append(sample)
    finally:
        worker.run(close_connections)
    return results


# ---------------------------------------------------------------------------------------
# Figures and the summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary_rows(results: dict[str, dict[str, list[Sample]]]) -> list[dict[str, Any]]:
    """Per operation and set-up: median and range of the rate, the ratio to SQLite (of
    medians, and the range of the run-by-run ratios), median CPU shares, and the CPU time
    per answer (the median of the runs', and its split between the registries and
    PostgreSQL), and the answer cache's hit rate over the runs (mixed workload only)."""
    rows: list[dict[str, Any]] = []
    for operation in results:
        sqlite = [s.value for s in results[operation]["sqlite"]]
        for name in SETUPS:
            samples = results[operation][name]
            values = [s.value for s in samples]
            paired = [v / b for v, b in zip(values, sqlite, strict=False) if b]
            base = _median(sqlite)
            rows.append(
                {
                    "operation": operation,
                    "setup": name,
                    "processes": samples[0].details.get("processes", 1) if samples else None,
                    "median": _median(values),
                    "min": min(values, default=None),
                    "max": max(values, default=None),
                    "ratio_to_sqlite": (_median(values) or 0.0) / base if base else None,
                    "ratio_runs_min": min(paired, default=None),
                    "ratio_runs_max": max(paired, default=None),
                    "cpu_registries": _median([s.server_cpu or 0.0 for s in samples]),
                    "cpu_postgres": _median([s.details.get("tree_cpu", {}).get("postgres", 0.0) for s in samples]),
                    "cpu_load_generator": _median([s.load_cpu for s in samples]),
                    "cpu_others": _median([s.details.get("server_core_others", 0.0) for s in samples]),
                    "server_cpu_us_per_answer": _median(
                        [s.details["server_cpu_us_per_answer"] for s in samples if "server_cpu_us_per_answer" in s.details]
                    ),
                }
            )
            row = rows[-1]
            cache = answer_cache_totals(samples)
            row["answer_cache_hit_rate"] = cache["hit_rate"] if cache else None
            for part, key in (("registries", "cpu_registries"), ("postgres", "cpu_postgres")):
                # Median share over median rate: how the CPU per answer splits.
                row[f"{part}_cpu_us_per_answer"] = row[key] / row["median"] * 1e6 if row["median"] else None
    return rows


def render_summary(rows: list[dict[str, Any]]) -> str:
    """The module's own table: absolute rates, ratios to SQLite, and who used the CPU."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}"

    header: tuple[str, ...] = ("operation", "set-up", "median/s [min-max]", "vs SQLite [runs]")
    header += ("CPU% registries/postgres/load/others", "CPU us/answer: registries+postgres", "cache hit%")
    lines = [header]
    for row in rows:
        ratio = "1" if row["setup"] == "sqlite" else format_number(row["ratio_to_sqlite"])
        if row["setup"] != "sqlite" and row["ratio_runs_min"] is not None:
            ratio += f" [{format_number(row['ratio_runs_min'])}-{format_number(row['ratio_runs_max'])}]"
        lines.append(
            (
                row["operation"],
                row["setup"],
                f"{format_number(row['median'])} [{format_number(row['min'])}-{format_number(row['max'])}]",
                ratio,
                "/".join(percent(row[key]) for key in ("cpu_registries", "cpu_postgres", "cpu_load_generator", "cpu_others")),
                "+".join(
                    format_number(value) if value else "0"
                    for value in (row["registries_cpu_us_per_answer"], row["postgres_cpu_us_per_answer"])
                ),
                percent(row.get("answer_cache_hit_rate")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def skipped_figures(reason: str) -> list[Figure]:
    """The four figures, skipped with ``reason``."""
    return [
        Figure(
            figure_id,
            f"{OPERATION_TITLES[operation]}, {SETUP_TITLES[name]}",
            "/s",
            [],
            f"{OPERATION_TITLES[operation]}, {SETUP_TITLES['sqlite']}",
            "/s",
            [],
            skipped=f"no PostgreSQL server: {reason}",
        )
        for (operation, name), figure_id in FIGURE_IDS.items()
    ]


def run(ctx: Context) -> list[Figure]:
    """Measure figures pg1-pg4."""
    from irp.server.caching import ANSWER_CACHE_SIZE

    settings = ctx.settings
    try:
        server = start_postgres()
    except Exception as error:  # PostgresUnavailable, or test.pgserver not importable
        reason = str(error) or error.__class__.__name__
        ctx.log(f"  skipped: no PostgreSQL server: {reason}")
        return skipped_figures(reason)
    postmaster = postmaster_pid(server)
    version = postgres_version(server.url())
    users = directory_size(ANSWER_CACHE_SIZE)
    spread_count, request_count = workload_sizes(ANSWER_CACHE_SIZE, settings.quick)
    processes = registries(ctx, server, users)
    # The first process of each set-up enrolled the load users.
    setups = {
        name: {"ports": [p.info["port"] for p in group], "pids": [p.pid for p in group], "users": group[0].info["users"]}
        for name, group in processes.items()
    }
    registrants = {name: [user.name for user in setup["users"][: settings.connections]] for name, setup in setups.items()}
    for name, names in registrants.items():
        # Their records as they are while they register (online, one endpoint).
        processes[name][0].call("register", names=names)
    plans = mixed_plans(registrants, users, spread_count, request_count)
    pids = ", ".join(f"{name} {setup['pids']}" for name, setup in setups.items())
    ctx.log(
        f"  PostgreSQL {version} (postmaster {postmaster}, CPUs {sorted(os.sched_getaffinity(postmaster))});"
        f" registries {pids} on CPU 0; load average {os.getloadavg()[0]:.2f}"
    )
    results = measure(ctx, processes, setups, plans, postmaster)
    rows = summary_rows(results)
    ctx.log(render_summary(rows))
    ctx.log(f"  note: {TWO_CORES}")
    sqlite = processes["sqlite"][0]
    response_size = round(sqlite.call("response_size", names=answered_names(plans["sqlite"][:1000], registrants["sqlite"])))
    parameters = {
        "connections": settings.connections,
        "users": users,
        "registrations_per_request": f"1/{REGISTER_EVERY}",
        "registrant_lookups_per_request": f"1/{REGISTER_EVERY}",
        "requests_in_list": request_count,
        "distinct_lookup_targets": spread_count,
        "answer_cache_size": ANSWER_CACHE_SIZE,
        "request_bytes": {
            "mixed": round(statistics.mean(len(frame) - 4 for frame in mixed_frames(plans["sqlite"][:1000]))),
            "registrations": len(register_frames(1)[0]) - 4,
        },
        "mixed_response_bytes": response_size,
        "outstanding_per_connection": 1,
        "postgresql": {"version": version, "fsync": "on", "synchronous_commit": "on", "pinned": False},
        "registries_cpu": 0,
        "sqlite_pragmas": "journal_mode=WAL, synchronous=FULL",
    }
    notes = [
        TWO_CORES,
        "server% is the registries' (summed over both processes in pg-2); PostgreSQL's share is in each run's tree_cpu",
        "(+n) and server_core_others: busy time of both cores used by neither the registries, PostgreSQL nor the load generator",
        'closed loop, one request outstanding per connection; every answer checked for status="ok"',
    ]
    mixed_notes = [
        f"mixed: 1 request in {REGISTER_EVERY} a <register-address> by the connection's own user (committed before"
        f" it is answered), 1 in {REGISTER_EVERY} a look-up of a registering user, the rest look-ups spread over"
        f" {spread_count:,} users ({spread_count // ANSWER_CACHE_SIZE}x the answer cache); each run goes on where"
        " the set-up's previous one stopped",
        "details.answer_cache: hits over hits plus database reads, over the runs (warm-ups included),"
        " summed over the set-up's processes",
    ]
    figures = []
    for (operation, name), figure_id in FIGURE_IDS.items():
        details: dict[str, Any] = {"summary": rows} if figure_id == "pg1" else {}
        if operation == "mixed":
            details["answer_cache"] = {side: answer_cache_totals(results[operation][side]) for side in (name, "sqlite")}
        figures.append(
            Figure(
                figure_id,
                f"{OPERATION_TITLES[operation]}, {SETUP_TITLES[name]}",
                "/s",
                results[operation][name],
                f"{OPERATION_TITLES[operation]}, {SETUP_TITLES['sqlite']}",
                "/s",
                results[operation]["sqlite"],
                target=PG2_TARGET if figure_id == "pg2" else None,
                parameters={**parameters, "operation": operation, "setup": name, "processes": len(setups[name]["pids"])},
                notes=notes + mixed_notes if operation == "mixed" else notes,
                details=details,
            )
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.irp_postgres [--quick] [--runs N] ...``: ``python -m bench --only
    postgres`` (the table, and JSON in ``bench/results/postgres[-quick].json``)."""
    from bench.__main__ import main as bench_main

    return bench_main(["--only", "postgres", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
