"""Figure 1m: IRP look-ups/s with 1,000,000 users, 2 % of requests registrations, vs bare TLS echo.

A realistic mix on the large registry of figure 8 (``--quick``: 100,000 users): 50
persistent TLS connections, each logged in as its own load user, in a closed loop (one
request outstanding per connection). One request in 50 is a ``<register-address>`` (by
the connection's user, committed before it is answered); one in 50 looks up one of the
registering users (so a changed answer is asked for again); the rest look up users
chosen at random from an even spread of the directory larger than the registry's
answer cache (:data:`irp.server.caching.ANSWER_CACHE_SIZE`), so a cached answer cannot
serve them all (see :func:`bench.irp_server.mixed_plan`). Each run starts where the
previous one stopped in the request list, so no run repeats another's look-ups.

The baseline is the bare Twisted TLS server of :mod:`bench.tls_echo` over as many
connections, in the same window, answering the same request frames with frames of the
mean size of the registry's answers to them.

1m-off is the same workload with all of the registry's caches switched off (same
process, same database, same connections: the ``use_caches`` command of
:func:`bench.irp_server.serve_registry`); runs go echo, caches on, caches off, and again.
The answer cache's hit rate over the cache-on runs (warm-ups included) is in the
figure's details.

Target: ratio >= 0.5 (1m); 1m-off is reported, no target.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import Pki, shared_pki
from bench.harness import Context, Figure
from bench.irp_lookups import connect_both, echo_server
from bench.irp_server import (
    REGISTER_EVERY,
    answered_names,
    mixed_frames,
    mixed_plan,
    registry,
    spread_targets,
)
from bench.sampling import Sample

FIGURE_ID = "1m"
CACHE_OFF_ID = "1m-off"
TARGET = 0.5
#: Answers whose sizes make the echo server's answer size (a sample of the plan's).
SIZE_SAMPLE = 1000


def workload_sizes(cache_size: int, quick: bool) -> tuple[int, int]:
    """(distinct users to spread the look-ups over, requests in the list): more users
    and more requests than the answer cache holds (fewer requests in ``--quick``, whose
    runs send fewer)."""
    return 5 * cache_size, (2 if quick else 4) * cache_size


def next_offset(offset: int, answers: int, settings: Any, total: int) -> int:
    """Where the next run starts in the request list: past what this run sent (its
    timed ``answers`` scaled up by the warm-up, plus the requests still outstanding)."""
    window = settings.duration
    sent = round(answers * (settings.warmup + window) / window) + settings.connections
    return (offset + sent) % total


# ---------------------------------------------------------------------------------------
# Load generator side: the connections stay open in the worker between runs, so that the
# main process can switch the registry's caches between them.

_OPEN: dict[str, Any] = {}


def open_connections(irp: dict[str, Any], echo: dict[str, Any], pki: Pki, plan: list[str | None], settings: Any) -> int:
    """Load generator: serialise the requests, open both sides' connections; return the
    number of requests."""
    frames = mixed_frames(plan)
    _OPEN["frames"] = frames
    # A module run again (a disturbed attempt) goes on where the last one stopped.
    _OPEN.setdefault("offset", 0)
    _OPEN["irp"], _OPEN["echo"] = connect_both(irp, echo, pki, settings.connections, frames[0])
    return len(frames)


def measure_run(side: str, server_pid: int, settings: Any) -> Sample:
    """Load generator: one closed-loop run on ``side`` ("irp" or "echo"), starting where
    the previous IRP run stopped in the request list."""
    from bench.loadgen import round_trips

    frames: list[bytes] = _OPEN["frames"]
    offset = _OPEN["offset"]
    sample = round_trips(
        _OPEN[side],
        frames[offset:] + frames[:offset],
        warmup=settings.warmup,
        duration=settings.duration,
        server_pid=server_pid,
    )
    if side == "irp":
        _OPEN["offset"] = next_offset(offset, sample.details["answers"], settings, len(frames))
    return sample


def close_connections() -> None:
    """Load generator: say goodbye on every connection."""
    for side in ("irp", "echo"):
        for connection in _OPEN.pop(side, []):
            connection.goodbye()
    _OPEN.pop("frames", None)


# ---------------------------------------------------------------------------------------


def run(ctx: Context) -> list[Figure]:
    """Measure figures 1m and 1m-off."""
    from irp.server.caching import ANSWER_CACHE_SIZE

    settings = ctx.settings
    irp = registry(ctx, settings.large_users)
    registrants = [user.name for user in irp.info["users"][: settings.connections]]
    # Their records as they are while they register (online, one endpoint).
    irp.call("register", names=registrants)
    spread_count, request_count = workload_sizes(ANSWER_CACHE_SIZE, settings.quick)
    spread = spread_targets(settings.large_users, spread_count)
    plan = mixed_plan(spread, registrants, request_count)
    size = round(irp.call("response_size", names=answered_names(plan[:SIZE_SAMPLE], registrants)))
    echo = echo_server(ctx, size)
    worker = ctx.worker()
    worker.run(open_connections, irp.info, echo.info, shared_pki(ctx), plan, settings)
    baselines: list[Sample] = []
    cached: list[Sample] = []
    uncached: list[Sample] = []
    try:
        for _ in range(settings.runs):
            baselines.append(worker.run(measure_run, "echo", echo.info["pid"], settings))
            irp.call("use_caches", on=True)
            irp.call("cache_stats", reset=True)
            sample = worker.run(measure_run, "irp", irp.info["pid"], settings)
            sample.details["answer_cache"] = irp.call("cache_stats")["answers"]
            cached.append(sample)
            irp.call("use_caches", on=False)
            uncached.append(worker.run(measure_run, "irp", irp.info["pid"], settings))
    finally:
        irp.call("use_caches", on=True)
        worker.run(close_connections)
    looked_up = {name for name in plan if name is not None}
    parameters = {
        "connections": settings.connections,
        "users": settings.large_users,
        "registrations_per_request": f"1/{REGISTER_EVERY}",
        "registrant_lookups_per_request": f"1/{REGISTER_EVERY}",
        "requests_in_list": len(plan),
        "distinct_lookup_targets": len(looked_up),
        "answer_cache_size": ANSWER_CACHE_SIZE,
        "response_bytes": size,
        "outstanding_per_connection": 1,
    }
    notes = [
        'closed loop, one request outstanding per connection; each IRP answer is checked for status="ok"',
        "registrations commit (synchronous=FULL) before they are answered",
        "the echo server answers with frames of the mean size of the registry's answers to the same requests",
    ]
    if settings.quick:
        notes.append(f"--quick: {settings.large_users:,} users")
    return [
        Figure(
            FIGURE_ID,
            f"IRP look-ups/s, {settings.large_users:,} users, 2 % registrations, caches on",
            "/s",
            cached,
            "bare Twisted TLS echo round trips/s",
            "/s",
            baselines,
            target=TARGET,
            parameters=parameters,
            details={"answer_cache": cache_totals([s.details["answer_cache"] for s in cached])},
            notes=notes,
        ),
        Figure(
            CACHE_OFF_ID,
            f"IRP look-ups/s, {settings.large_users:,} users, 2 % registrations, caches off",
            "/s",
            uncached,
            "bare Twisted TLS echo round trips/s",
            "/s",
            baselines,
            parameters={**parameters, "caches_off": "all (answers, certificates, usernames)"},
            notes=[*notes, "information only: the registry's caches switched off between runs (same process and data)"],
        ),
    ]


def cache_totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer cache's counts summed over ``runs`` (each as ``cache_stats`` gives them)."""
    hits = sum(run["hits"] for run in runs)
    reads = sum(run["database_reads"] for run in runs)
    return {
        "hits": hits,
        "database_reads": reads,
        "hit_rate": round(hits / (hits + reads), 4) if hits + reads else None,
        "hit_rate_runs": [run["hit_rate"] for run in runs],
        "counted": "cache-on runs, warm-ups included",
    }
