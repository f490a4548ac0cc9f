"""Figure 3: durable address registrations/s (acknowledged after commit) vs IRP look-ups/s.

50 persistent connections, each logged in as its own user, each sending
``<register-address>`` (one endpoint, online) in a closed loop: the registry signs the new
record, writes it in a SQLite transaction with ``synchronous=FULL`` and answers only
after the commit. The baseline is look-ups over the same connections, runs interleaved.

Target: ratio >= 0.5. Also reported (3b, no target): the same registrations/s against raw
``sqlite3`` commits/s of the same row with the same PRAGMAs (:mod:`bench.sqlite_commits`).
"""

from __future__ import annotations

from typing import Any

from bench import sqlite_commits
from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import SERVER_CPU, Context, Figure, Sample, split_samples
from bench.irp_server import OK, lookup_frames, register_frames, registry

FIGURE_ID = "3"
TARGET = 0.5


def measure(irp: dict[str, Any], settings: Any) -> list[tuple[Sample, Sample]]:
    """Load generator: (look-ups, registrations) pairs on the same connections."""
    from bench.loadgen import connect_tls, round_trips

    count = settings.connections
    lookups = lookup_frames(irp["targets"])
    registrations = register_frames()
    connections = connect_tls(
        HOST,
        irp["port"],
        [client_context(user) for user in irp["users"][:count]],
        count,
        sources=source_addresses(count),
        first=lookups[0],
        check=OK,
    )
    pairs = []
    try:
        for _ in range(settings.runs):
            baseline = round_trips(
                connections, lookups, warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"]
            )
            figure = round_trips(
                connections, registrations, warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"]
            )
            pairs.append((baseline, figure))
    finally:
        for connection in connections:
            connection.goodbye()
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 3 (and 3b)."""
    settings = ctx.settings
    irp = registry(ctx, settings.small_users)
    pairs = ctx.worker().run(measure, irp.info, settings)
    path = sqlite_commits.database_path(ctx.path("sqlite"))
    local = ctx.worker(SERVER_CPU)
    local.run(sqlite_commits.prepare, path)
    raw = [local.run(sqlite_commits.commits, path, settings.warmup, settings.duration) for _ in range(settings.runs)]
    figures, baselines = split_samples(pairs)
    parameters = {"connections": settings.connections, "pragmas": "journal_mode=WAL, synchronous=FULL"}
    return [
        Figure(
            FIGURE_ID,
            "durable address registrations/s",
            "/s",
            figures,
            "IRP look-ups/s, same connections",
            "/s",
            baselines,
            target=TARGET,
            parameters=parameters,
            notes=["each registration is answered after its transaction commits (synchronous=FULL)"],
        ),
        Figure(
            "3b",
            "durable address registrations/s",
            "/s",
            figures,
            "raw sqlite3 commits/s, same PRAGMAs and row",
            "/s",
            raw,
            parameters=parameters,
            notes=["information only: the raw loop is one Python thread on the server core, no network, no signing"],
        ),
    ]
