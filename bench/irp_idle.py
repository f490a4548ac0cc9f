"""Figure 9: 10,000 idle authenticated IRP connections held by one registry (``--quick``: 1,200, extrapolated).

A fresh registry (1,000 users). First, with no other connection, an active client logged
in with its certificate does sequential look-ups; its median latency is measured several
times, and the server's resident memory (RSS) read. Then the load generator opens the idle
connections (each a TLS handshake with a user certificate, so each is logged in, and one
look-up, then silence; spread over loopback source addresses, as the registry allows 64
connections per address) and the same measurements are repeated while they are held.
Last, the idle connections are closed and the latency and RSS measured again.

Targets: (9a) RSS <= 256 MiB with 10,000 held, judged on the value (no ratio: the idle
RSS is shown for context). ``--quick`` holds a quarter of its connections, reads the RSS,
opens the rest, and extrapolates to 10,000 from the slope between the two levels (the
first connections partly fill memory mapped at start-up, so a slope from zero would
underestimate; it says so). (9b) The active client's median look-up latency with them
held at most 2x what it is with none; each baseline run is the mean of the run before
opening and the run after closing with the same index (both kept in its details), so that
drift in the machine's load during the long opening weighs on the baseline rather than
on the ratio, and the ratio and its spread come from the same runs. (9c) The RSS once the
idle connections are closed at most 2x the RSS before they were opened (memory that is
not given back).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.irp_server import OK, lookup_frames, registry
from bench.sampling import DISTURBANCE_KEYS, CpuWindow, Sample, process_rss

TARGET_RSS_MIB = 256.0
TARGET_LATENCY_RATIO = 2.0
TARGET_AFTER_CLOSING_RATIO = 2.0
#: The connections the target is about.
TARGET_CONNECTIONS = 10_000
#: Connections per source address (the registry's default limit is 64).
PER_ADDRESS = 50
#: The first source address index of the idle connections (the active one uses its own).
FIRST_SOURCE = 300


def latency_runs(connection: Any, frames: list[bytes], runs: int, count: int, server_pid: int) -> tuple[list[Sample], list[Sample]]:
    """``runs`` runs of ``count`` sequential look-ups: (latency samples, RSS samples)."""
    from bench.loadgen import latencies

    latency_samples, memory_samples = [], []
    for _ in range(runs):
        with CpuWindow(server_pid) as window:
            times = latencies(connection, frames, count)
        ordered = sorted(times)
        latency_samples.append(
            window.sample(
                statistics.median(times) * 1000,
                p90_ms=ordered[int(0.9 * (len(ordered) - 1))] * 1000,
                max_ms=ordered[-1] * 1000,
                lookups=count,
            )
        )
        memory_samples.append(window.sample(process_rss(server_pid) / 2**20))
    return latency_samples, memory_samples


def hold_levels(idle: int) -> tuple[int, ...]:
    """The numbers of connections at which the RSS is read: all of them, and first a
    quarter of them when the figure is extrapolated to :data:`TARGET_CONNECTIONS`."""
    if idle >= TARGET_CONNECTIONS or idle < 4:
        return (idle,)
    return (idle // 4, idle)


def extrapolate_rss(points: Sequence[tuple[int, float]], target: int) -> float:
    """The RSS (MiB) at ``target`` connections, extrapolated from the slope between the
    last two ``(connections, MiB)`` points (the marginal cost of a connection, not the
    average from zero)."""
    if len(points) < 2:
        raise ValueError("two points at least")
    (before, before_mib), (last, last_mib) = points[-2], points[-1]
    if last == before:
        raise ValueError("two different connection counts")
    slope = (last_mib - before_mib) / (last - before)
    return last_mib + (target - last) * slope


def idle_baseline(before: Sequence[Sample], after: Sequence[Sample]) -> list[Sample]:
    """One baseline sample per run: the mean of run i before the idle connections were
    opened and run i after they were closed (both kept in ``details``); the CPU shares are
    their means, the disturbance the worse of the two."""
    if len(before) != len(after):
        raise ValueError("as many runs before as after")
    samples = []
    for first, second in zip(before, after, strict=True):
        details: dict[str, Any] = {
            "before": first.value,
            "after": second.value,
            "before_details": first.details,
            "after_details": second.details,
        }
        for key in DISTURBANCE_KEYS:
            shares = [s.details[key] for s in (first, second) if s.details.get(key) is not None]
            if shares:
                details[key] = max(shares)
        servers = [s.server_cpu for s in (first, second) if s.server_cpu is not None]
        samples.append(
            Sample(
                (first.value + second.value) / 2,
                first.wall + second.wall,
                (first.load_cpu + second.load_cpu) / 2,
                statistics.fmean(servers) if servers else None,
                details,
            )
        )
    return samples


def measure(irp: dict[str, Any], settings: Any, levels: Sequence[int]) -> dict[str, Any]:
    """Load generator: latencies and RSS without, then with the idle connections held
    (opened up to each of ``levels`` in turn, the RSS read at each), then after closing."""
    from bench.loadgen import connect_tls

    frames = lookup_frames(irp["targets"])
    count = 300 if settings.quick else 2000
    users = irp["users"]
    (active,) = connect_tls(HOST, irp["port"], [client_context(user) for user in users[:1]], 1, first=frames[0], check=OK)
    latencies(active, frames, 200)  # warm-up
    none_latency, none_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    contexts = [client_context(user) for user in users]
    settle = 0.5 if settings.quick else 2.0
    held: list[Any] = []
    points: list[tuple[int, float]] = [(0, statistics.median(sample.value for sample in none_memory))]
    addresses_used = 0
    opening = 0.0
    for level in levels:
        batch = level - len(held)
        offset = len(held) % len(contexts)
        started = time.perf_counter()
        held += connect_tls(
            HOST,
            irp["port"],
            contexts[offset:] + contexts[:offset],
            batch,
            sources=source_addresses(batch // PER_ADDRESS + 1, first=FIRST_SOURCE + addresses_used),
            per_source=PER_ADDRESS,
            concurrency=32,
            first=lambda index: frames[index % len(frames)],
            check=OK,
        )
        opening += time.perf_counter() - started
        addresses_used += batch // PER_ADDRESS + 1
        time.sleep(settle)
        if level != levels[-1]:
            points.append((level, statistics.median(process_rss(irp["pid"]) / 2**20 for _ in range(settings.runs))))
    held_latency, held_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    client_rss = process_rss(os.getpid())
    for connection in held:
        connection.close()
    time.sleep(settle)
    after_latency, after_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    active.goodbye()
    return {
        "none": (none_latency, none_memory),
        "held": (held_latency, held_memory),
        "after": (after_latency, after_memory),
        "points": points,
        "opening_seconds": opening,
        "load_generator_rss_mib": client_rss / 2**20,
    }


def latencies(connection: Any, frames: list[bytes], count: int) -> list[float]:
    """Sequential look-ups on one connection (see :func:`bench.loadgen.latencies`)."""
    from bench.loadgen import latencies as run

    return run(connection, frames, count)  # type: ignore[no-any-return]


def run(ctx: Context) -> list[Figure]:
    """Measure figure 9."""
    settings = ctx.settings
    idle = settings.idle_connections
    levels = hold_levels(idle)
    irp = registry(ctx, settings.small_users, key="irp-idle")
    result = ctx.worker().run(measure, irp.info, settings, levels)
    ctx.stop_server("irp-idle")
    none_latency, none_memory = result["none"]
    held_latency, held_memory = result["held"]
    after_latency, after_memory = result["after"]
    points = [tuple(point) for point in result["points"]]
    held_rss = statistics.median(sample.value for sample in held_memory)
    marginal = [*points, (idle, held_rss)][-2:]
    per_connection_kib = (marginal[1][1] - marginal[0][1]) * 1024 / (marginal[1][0] - marginal[0][0])
    extrapolated = idle < TARGET_CONNECTIONS
    judged_memory = held_memory
    if extrapolated:
        judged_memory = [
            Sample(
                extrapolate_rss([*points, (idle, sample.value)], TARGET_CONNECTIONS),
                sample.wall,
                sample.load_cpu,
                sample.server_cpu,
                {**sample.details, "measured_mib": sample.value, "held": idle},
            )
            for sample in held_memory
        ]
    held_text = f"{TARGET_CONNECTIONS:,}" + (f" (extrapolated from {idle:,})" if extrapolated else "")
    details = {
        "held_connections": idle,
        "rss_points_mib": [[count, mib] for count, mib in [*points, (idle, held_rss)]],
        "per_connection_kib": per_connection_kib,
        "opening_seconds": result["opening_seconds"],
        "load_generator_rss_mib": result["load_generator_rss_mib"],
        "rss_after_closing_mib": [sample.value for sample in after_memory],
    }
    slope_text = (
        f"--quick holds {idle:,} connections; the 10,000 figure is extrapolated from the slope between"
        f" {marginal[0][0]:,} and {idle:,} held"
    )
    return [
        Figure(
            "9a",
            f"registry RSS with {held_text} idle authenticated connections",
            "MiB",
            judged_memory,
            "RSS with none held",
            "MiB",
            none_memory,
            target=TARGET_RSS_MIB,
            sense="<=",
            judged="value",
            parameters={"idle_connections": idle, "connections_per_address": PER_ADDRESS, "levels": list(levels)},
            details=details,
            notes=[f"{per_connection_kib:.1f} KiB per held connection (marginal)"] + ([slope_text] if extrapolated else []),
        ),
        Figure(
            "9b",
            f"active client's median look-up latency with {idle:,} idle connections held",
            "ms",
            held_latency,
            "with none held (mean of the runs before opening and after closing)",
            "ms",
            idle_baseline(none_latency, after_latency),
            target=TARGET_LATENCY_RATIO,
            sense="<=",
            parameters={"idle_connections": idle, "sequential_lookups_per_run": 300 if settings.quick else 2000},
            details=details,
        ),
        Figure(
            "9c",
            f"registry RSS after the {idle:,} idle connections close",
            "MiB",
            after_memory,
            "RSS before they were opened",
            "MiB",
            none_memory,
            target=TARGET_AFTER_CLOSING_RATIO,
            sense="<=",
            parameters={"idle_connections": idle},
            details=details,
            notes=[f"--quick opens and closes {idle:,}, not 10,000"] if extrapolated else [],
        ),
    ]
