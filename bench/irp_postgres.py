"""Figures pg1-pg4: IRP look-ups and durable registrations/s on PostgreSQL, one and two registry processes, vs one on SQLite.

Three set-ups of the same registry are started in one run and measured interleaved:

``sqlite``
    The suite's registry of figures 1 and 3 (:func:`bench.irp_server.registry`): one
    process, a SQLite file (WAL, ``synchronous=FULL``). The baseline of every ratio.
``pg-1``
    One registry process on a PostgreSQL database (``twistd irp --database
    postgresql://...``).
``pg-2``
    Two registry processes of the same domain on one PostgreSQL database and one data
    folder (the same CA and signing keys, as ``docs/deployment.rst`` describes), each
    listening on its own port. The load generator's connections are split evenly between
    them (25 and 25).

Each holds the same directory: 1,000 bulk-loaded users (:func:`bench.irp_server.populate`,
into the database the registry then uses; ``VACUUM ANALYZE`` after loading on PostgreSQL)
and 50 load users with certificates. The load is that of figures 1 and 3, with the same
pre-serialised frames: 50 persistent TLS connections, each logged in with its own user's
certificate, one request outstanding per connection; ``<lookup>`` of random bulk-loaded
users (figure 1's frames), then ``<register-address>`` (figure 3's frames), each
registration answered only after its commit. For every run and operation the three
set-ups are measured one after the other (sqlite, pg-1, pg-2).

PostgreSQL is the throw-away cluster of the tests (:class:`test.pgserver.PostgresServer`:
``initdb``, then ``pg_ctl`` on a free loopback port, ``fsync=on``, default
``synchronous_commit=on``), so a registration's commit waits for the WAL flush as
SQLite's waits for its fsync. It is started with both cores allowed (the suite's
orchestrator is pinned to the load generator's core). When it cannot be started, the
figures are skipped with the reason, as the tests are.

Two cores only: the registries are pinned to CPU 0 as in the suite (both of ``pg-2`` on
it), the load generator to CPU 1, PostgreSQL runs wherever the scheduler puts it. Two
processes on one core cannot show scaling: ``pg-2`` shows that two processes work
together on one database, and what sharing costs, not what a second machine would add.
The CPU shares of the registries (``server``), of the whole PostgreSQL cluster
(``tree_cpu.postgres``) and of the load generator are kept per run; ``server_core_others``
here is the busy time of both cores not used by any of them (PostgreSQL moves between the
cores, so the usual per-core figure cannot tell it from other work).

No targets: information only.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure, Sample, format_number
from bench.irp_server import OK, lookup_frames, register_frames, registry

#: The set-ups, in the order each run measures them.
SETUPS = ("sqlite", "pg-1", "pg-2")
OPERATIONS = ("lookups", "registrations")
SETUP_TITLES = {
    "sqlite": "one registry on SQLite",
    "pg-1": "one registry on PostgreSQL",
    "pg-2": "two registries on one PostgreSQL",
}
#: Figure ids: (operation, set-up) -> id.
FIGURE_IDS = {
    ("lookups", "pg-1"): "pg1",
    ("lookups", "pg-2"): "pg2",
    ("registrations", "pg-1"): "pg3",
    ("registrations", "pg-2"): "pg4",
}
OPERATION_TITLES = {
    "lookups": "IRP look-ups/s",
    "registrations": "durable address registrations/s",
}
TWO_CORES = (
    "the PostgreSQL server, the registries and the load generator share the machine's cores"
    " (registries pinned to CPU 0, PostgreSQL unpinned): two processes on one core cannot show"
    " scaling, only that they work together and what sharing one database costs"
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


def postgres_registry(ctx: Context, key: str, url: str, data_dir: str, *, first: bool = True, log_name: str = "registry.log") -> Any:
    """Registry process ``key`` on the PostgreSQL database ``url`` (pinned to CPU 0).

    The ``first`` process of a database creates the CA in ``data_dir`` (when it is new),
    loads the directory (the suite's small one) and enrols the load users; a later one
    finds all of them in the shared data folder and database.
    """
    settings = ctx.settings
    params: dict[str, Any] = {
        "key_type": settings.key_type,
        "data_dir": data_dir,
        "database": url,
        "log_name": log_name,
        "users": settings.connections if first else 0,
        "bulk_users": settings.small_users if first else 0,
        "sample": min(settings.small_users, 10_000),
    }
    return ctx.server(key, "bench.irp_server:serve_registry", params)


def registries(ctx: Context, server: Any) -> dict[str, list[Any]]:
    """The three set-ups' registry processes (started on first use, shared by reruns)."""
    sqlite = registry(ctx, ctx.settings.small_users)
    one_url = ctx.shared("postgres-database-1", server.create_database)
    two_url = ctx.shared("postgres-database-2", server.create_database)
    one = postgres_registry(ctx, "pg-1", one_url, ctx.path("pg-1"))
    first = postgres_registry(ctx, "pg-2a", two_url, ctx.path("pg-2"))
    second = postgres_registry(ctx, "pg-2b", two_url, ctx.path("pg-2"), first=False, log_name="registry-2.log")
    return {"sqlite": [sqlite], "pg-1": [one], "pg-2": [first, second]}


# ---------------------------------------------------------------------------------------
# Load generator side


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
    setups: dict[str, dict[str, Any]], targets: list[str], settings: Any, postmaster: int
) -> dict[str, dict[str, list[Sample]]]:
    """Load generator: per operation and set-up, one sample per run (interleaved).

    ``setups`` maps a set-up to its registries' ``ports`` and ``pids`` and the load
    ``users``; with several ports, connection ``i`` of ``n`` goes to port ``i * ports // n``
    (an even split).
    """
    from bench.loadgen import connect_tls, round_trips

    count = settings.connections
    frames = {"lookups": lookup_frames(targets), "registrations": register_frames()}
    sources = source_addresses(count)
    connections: dict[str, list[Any]] = {}
    results: dict[str, dict[str, list[Sample]]] = {op: {name: [] for name in setups} for op in OPERATIONS}
    try:
        for name, setup in setups.items():
            users, ports = setup["users"][:count], setup["ports"]
            opened: list[Any] = []
            for index, port in enumerate(ports):
                low, high = index * count // len(ports), (index + 1) * count // len(ports)
                opened += connect_tls(
                    HOST,
                    port,
                    [client_context(user) for user in users[low:high]],
                    high - low,
                    sources=sources[low:high],
                    first=frames["lookups"][0],
                    check=OK,
                )
            connections[name] = opened
        for _ in range(settings.runs):
            for operation in OPERATIONS:
                for name, setup in setups.items():
                    sample = round_trips(
                        connections[name],
                        frames[operation],
                        warmup=settings.warmup,
                        duration=settings.duration,
                        server_pid=setup["pids"],
                        trees={"postgres": postmaster},
                    )
                    sample.details["processes"] = len(setup["pids"])
                    results[operation][name].append(_adjust(sample))
    finally:
        for opened in connections.values():
            for connection in opened:
                connection.goodbye()
    return results


# ---------------------------------------------------------------------------------------
# Figures and the summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary_rows(results: dict[str, dict[str, list[Sample]]]) -> list[dict[str, Any]]:
    """Per operation and set-up: median and range of the rate, the ratio to SQLite (of
    medians, and the range of the run-by-run ratios), median CPU shares, and the CPU time
    per answer (the median of the runs', and its split between the registries and
    PostgreSQL)."""
    rows: list[dict[str, Any]] = []
    for operation in OPERATIONS:
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
            for part, key in (("registries", "cpu_registries"), ("postgres", "cpu_postgres")):
                # Median share over median rate: how the CPU per answer splits.
                row[f"{part}_cpu_us_per_answer"] = row[key] / row["median"] * 1e6 if row["median"] else None
    return rows


def render_summary(rows: list[dict[str, Any]]) -> str:
    """The module's own table: absolute rates, ratios to SQLite, and who used the CPU."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}"

    header = (
        "operation",
        "set-up",
        "median/s [min-max]",
        "vs SQLite [runs]",
        "CPU% registries/postgres/load/others",
        "CPU us/answer: registries+postgres",
    )
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
    settings = ctx.settings
    try:
        server = start_postgres()
    except Exception as error:  # PostgresUnavailable, or test.pgserver not importable
        reason = str(error) or error.__class__.__name__
        ctx.log(f"  skipped: no PostgreSQL server: {reason}")
        return skipped_figures(reason)
    postmaster = postmaster_pid(server)
    version = postgres_version(server.url())
    processes = registries(ctx, server)
    sqlite = processes["sqlite"][0]
    targets = sqlite.info["targets"]
    setups = {
        name: {
            "ports": [process.info["port"] for process in group],
            "pids": [process.pid for process in group],
            # The first process of each set-up enrolled the load users.
            "users": group[0].info["users"],
        }
        for name, group in processes.items()
    }
    pids = ", ".join(f"{name} {setup['pids']}" for name, setup in setups.items())
    ctx.log(
        f"  PostgreSQL {version} (postmaster {postmaster}, CPUs {sorted(os.sched_getaffinity(postmaster))});"
        f" registries {pids} on CPU 0; load average {os.getloadavg()[0]:.2f}"
    )
    results = ctx.worker().run(measure, setups, targets, settings, postmaster)
    rows = summary_rows(results)
    ctx.log(render_summary(rows))
    ctx.log(f"  note: {TWO_CORES}")
    response_size = round(sqlite.call("response_size", names=targets[:200]))
    parameters = {
        "connections": settings.connections,
        "users": settings.small_users,
        "request_bytes": {
            "lookups": len(lookup_frames(targets, 64)[0]) - 4,
            "registrations": len(register_frames(1)[0]) - 4,
        },
        "lookup_response_bytes": response_size,
        "outstanding_per_connection": 1,
        "postgresql": {"version": version, "fsync": "on", "synchronous_commit": "on", "pinned": False},
        "registries_cpu": 0,
        "sqlite_pragmas": "journal_mode=WAL, synchronous=FULL",
    }
    notes = [
        TWO_CORES,
        "server% is the registries' (summed over both processes in pg-2); PostgreSQL's share is in each run's tree_cpu",
        "(+n) and server_core_others: busy time of both cores used by neither the registries, PostgreSQL nor the load generator",
        "closed loop, one request outstanding per connection; every answer checked for status=\"ok\"",
    ]
    figures = []
    for (operation, name), figure_id in FIGURE_IDS.items():
        figures.append(
            Figure(
                figure_id,
                f"{OPERATION_TITLES[operation]}, {SETUP_TITLES[name]}",
                "/s",
                results[operation][name],
                f"{OPERATION_TITLES[operation]}, {SETUP_TITLES['sqlite']}",
                "/s",
                results[operation]["sqlite"],
                parameters={**parameters, "operation": operation, "setup": name, "processes": len(setups[name]["pids"])},
                notes=notes,
                details={"summary": rows} if figure_id == "pg1" else {},
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
