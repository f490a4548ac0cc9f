"""Figure 8: look-ups/s with 1,000,000 registered users vs with 1,000, caches warm (``--quick``: 100,000 vs 1,000).

Two registries, identical but for the size of their directory (bulk-loaded, see
:func:`bench.irp_server.populate`: 10 % of users online, 90 % with long-expired offline
records, as ``create_user`` leaves them). 50 persistent connections to each; every
connection looks up users spread evenly over the whole directory (up to 10,000 distinct
ones, so that the large database's pages are not all in SQLite's cache). Runs interleaved.
Also recorded: how long the registry's periodic sweep of expired records (every 15 s, on
the one database connection) takes on each directory.

Caches warm: nothing commits and the at most 10,000 users looked up fit in the answer
cache, so both sides mostly answer from it (the hit rates are in the figure's details);
figure 1m (:mod:`bench.irp_mixed`) is the realistic mix on the large directory.

Target: ratio >= 0.8.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure, split_samples
from bench.irp_server import OK, lookup_frames, registry
from bench.sampling import Sample

FIGURE_ID = "8"
TARGET = 0.8


def measure(small: dict[str, Any], large: dict[str, Any], settings: Any) -> list[tuple[Sample, Sample]]:
    """Load generator: (small, large) pairs of look-ups/s."""
    from bench.loadgen import connect_tls, round_trips

    count = settings.connections
    opened = {}
    frames = {}
    for name, info in (("small", small), ("large", large)):
        frames[name] = lookup_frames(info["targets"], 8192)
        opened[name] = connect_tls(
            HOST,
            info["port"],
            [client_context(user) for user in info["users"][:count]],
            count,
            sources=source_addresses(count),
            first=frames[name][0],
            check=OK,
        )
    pairs = []
    try:
        for _ in range(settings.runs):
            baseline = round_trips(
                opened["small"], frames["small"], warmup=settings.warmup, duration=settings.duration,
                server_pid=small["pid"],
            )
            figure = round_trips(
                opened["large"], frames["large"], warmup=settings.warmup, duration=settings.duration,
                server_pid=large["pid"],
            )
            pairs.append((baseline, figure))
    finally:
        for connection in [*opened["small"], *opened["large"]]:
            connection.goodbye()
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 8."""
    settings = ctx.settings
    small = registry(ctx, settings.small_users)
    large = registry(ctx, settings.large_users)
    for server in (small, large):
        server.call("cache_stats", reset=True)
    pairs = ctx.worker().run(measure, small.info, large.info, settings)
    cache = {"small": small.call("cache_stats")["answers"], "large": large.call("cache_stats")["answers"]}
    sweeps = {"small": small.call("sweep"), "large": large.call("sweep")}
    ctx.stop_server(f"irp-{settings.large_users}")
    figures, baselines = split_samples(pairs)
    return [
        Figure(
            FIGURE_ID,
            f"IRP look-ups/s with {settings.large_users:,} users, caches warm",
            "/s",
            figures,
            f"with {settings.small_users:,} users",
            "/s",
            baselines,
            target=TARGET,
            parameters={
                "large_users": settings.large_users,
                "small_users": settings.small_users,
                "distinct_targets": {"small": len(small.info["targets"]), "large": len(large.info["targets"])},
                "connections": settings.connections,
            },
            details={
                "populate_seconds": {"small": small.info["populate_seconds"], "large": large.info["populate_seconds"]},
                "sweep": sweeps,
                "answer_cache": {**cache, "counted": "all runs, warm-ups included"},
            },
            notes=[
                "caches warm: look-ups only (nothing commits), of users who all fit in the answer cache",
                *([f"--quick compares {settings.large_users:,} with {settings.small_users:,} users"] if settings.quick else []),
            ],
        )
    ]
