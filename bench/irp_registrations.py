"""Figure 3b: durable signed address registrations/s vs raw SQLite group commits of the same (and 3: vs IRP look-ups/s).

50 persistent connections, each logged in as its own user, each sending
``<register-address>`` (one endpoint, online) in a closed loop: the registry signs the new
record (Ed25519), writes it in a group commit (one SQLite transaction for the
registrations waiting, a savepoint per row) with ``synchronous=FULL`` and answers only
after the commit.

3b (target: ratio >= 0.5): against :mod:`bench.sqlite_commits` on the server core, raw
``sqlite3`` with the same PRAGMAs, the same group size (50: one registration in flight per
connection), a savepoint and one Ed25519 signature per row. 3 (kept, target: ratio >= 0.5):
against IRP look-ups over the same connections.

Each run is a look-up run, a registration run, then a raw run (the load generator keeps
its connections open between runs), so that both baselines are interleaved with the
registrations they are paired with.
"""

from __future__ import annotations

from typing import Any

from bench import sqlite_commits
from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.irp_server import OK, lookup_frames, register_frames, registry
from bench.sampling import SERVER_CPU, Sample

FIGURE_ID = "3"
TARGET = 0.5
TARGET_RAW = 0.5

#: The load generator's open connections, per registry port, kept between runs.
_CONNECTIONS: dict[int, list[Any]] = {}


def connect(irp: dict[str, Any], settings: Any) -> None:
    """Load generator: open the connections, each logged in as its own user."""
    from bench.loadgen import connect_tls

    count = settings.connections
    _CONNECTIONS[irp["port"]] = connect_tls(
        HOST,
        irp["port"],
        [client_context(user) for user in irp["users"][:count]],
        count,
        sources=source_addresses(count),
        first=lookup_frames(irp["targets"])[0],
        check=OK,
    )


def measure(irp: dict[str, Any], settings: Any) -> tuple[Sample, Sample]:
    """Load generator: one (look-ups, registrations) pair on the open connections."""
    from bench.loadgen import round_trips

    connections = _CONNECTIONS[irp["port"]]
    baseline = round_trips(
        connections, lookup_frames(irp["targets"]), warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"]
    )
    figure = round_trips(
        connections, register_frames(), warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"]
    )
    return baseline, figure


def disconnect(irp: dict[str, Any]) -> None:
    """Load generator: close the connections."""
    for connection in _CONNECTIONS.pop(irp["port"], []):
        connection.goodbye()


def run(ctx: Context) -> list[Figure]:
    """Measure figures 3 and 3b."""
    settings = ctx.settings
    irp = registry(ctx, settings.small_users)
    group = settings.connections
    path = sqlite_commits.database_path(ctx.path("sqlite"))
    load, local = ctx.worker(), ctx.worker(SERVER_CPU)
    local.run(sqlite_commits.prepare, path, max(group, sqlite_commits.ROWS))
    figures: list[Sample] = []
    lookups: list[Sample] = []
    raw: list[Sample] = []
    load.run(connect, irp.info, settings)
    try:
        for _ in range(settings.runs):
            baseline, figure = load.run(measure, irp.info, settings)
            lookups.append(baseline)
            figures.append(figure)
            raw.append(local.run(sqlite_commits.grouped_commits, path, settings.warmup, settings.duration, group))
    finally:
        load.run(disconnect, irp.info)
    parameters = {
        "connections": settings.connections,
        "pragmas": "journal_mode=WAL, synchronous=FULL",
        "raw_group_size": group,
    }
    return [
        Figure(
            FIGURE_ID,
            "durable address registrations/s",
            "/s",
            figures,
            "IRP look-ups/s, same connections",
            "/s",
            lookups,
            target=TARGET,
            parameters=parameters,
            notes=["each registration is answered after its transaction commits (synchronous=FULL)"],
        ),
        Figure(
            "3b",
            "durable signed address registrations/s",
            "/s",
            figures,
            f"raw sqlite3 signed registrations/s, same PRAGMAs, groups of {group}, a savepoint and an Ed25519 signature per row",
            "/s",
            raw,
            target=TARGET_RAW,
            parameters=parameters,
            notes=[
                "the raw loop is one Python thread on the server core: no network, no XML, no thread hop;"
                " run i of each side back to back"
            ],
        ),
    ]
