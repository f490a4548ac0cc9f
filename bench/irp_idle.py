"""Figure 9: 10,000 idle authenticated IRP connections held by one registry (``--quick``: a few hundred).

A fresh registry (1,000 users). First, with no other connection, an active client logged
in with its certificate does sequential look-ups; its median latency is measured several
times, and the server's resident memory (RSS) read. Then the load generator opens the idle
connections (each a TLS handshake with a user certificate, so each is logged in, and one
look-up, then silence; spread over loopback source addresses, as the registry allows 64
connections per address) and the same measurements are repeated while they are held.
Last, the idle connections are closed and the latency measured again: the baseline is
the runs before and after, so that a change in the machine's load during the long
opening shows in its spread rather than in the ratio.

Targets: (9a) RSS <= 1 GiB with 10,000 held (``--quick`` extrapolates linearly from the
few hundred it opens, and says so); (9b) the active client's median look-up latency at
most 2x what it is with none held.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, CpuWindow, Figure, Sample, process_rss
from bench.irp_server import OK, lookup_frames, registry

TARGET_RSS_MIB = 1024.0
TARGET_LATENCY_RATIO = 2.0
#: The connections the target is about.
TARGET_CONNECTIONS = 10_000
#: Connections per source address (the registry's default limit is 64).
PER_ADDRESS = 50


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


def measure(irp: dict[str, Any], settings: Any, idle: int) -> dict[str, Any]:
    """Load generator: latencies and RSS without, then with, ``idle`` held connections."""
    from bench.loadgen import connect_tls

    frames = lookup_frames(irp["targets"])
    count = 300 if settings.quick else 2000
    users = irp["users"]
    (active,) = connect_tls(HOST, irp["port"], [client_context(users[0])], 1, first=frames[0], check=OK)
    latencies(active, frames, 200)  # warm-up
    none_latency, none_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    contexts = [client_context(user) for user in users]
    started = time.perf_counter()
    held = connect_tls(
        HOST,
        irp["port"],
        contexts,
        idle,
        sources=source_addresses(idle // PER_ADDRESS + 1, first=300),
        per_source=PER_ADDRESS,
        concurrency=32,
        first=lambda index: frames[index % len(frames)],
        check=OK,
    )
    opening = time.perf_counter() - started
    settle = 0.5 if settings.quick else 2.0
    time.sleep(settle)
    held_latency, held_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    client_rss = process_rss(os.getpid())
    for connection in held:
        connection.close()
    time.sleep(settle)
    # Measured again once they are gone, so that drift in the machine's load during the
    # run shows in the baseline's spread instead of in the ratio.
    after_latency, after_memory = latency_runs(active, frames, settings.runs, count, irp["pid"])
    active.goodbye()
    return {
        "none": (none_latency + after_latency, none_memory),
        "after_rss_mib": [sample.value for sample in after_memory],
        "held": (held_latency, held_memory),
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
    irp = registry(ctx, settings.small_users, key="irp-idle")
    result = ctx.worker().run(measure, irp.info, settings, idle)
    ctx.stop_server("irp-idle")
    none_latency, none_memory = result["none"]
    held_latency, held_memory = result["held"]
    baseline_rss = statistics.median(sample.value for sample in none_memory)
    per_connection_kib = (statistics.median(sample.value for sample in held_memory) - baseline_rss) * 1024 / idle
    extrapolated = idle < TARGET_CONNECTIONS
    judged_memory = held_memory
    if extrapolated:
        judged_memory = [
            Sample(
                baseline_rss + (sample.value - baseline_rss) * TARGET_CONNECTIONS / idle,
                sample.wall,
                sample.load_cpu,
                sample.server_cpu,
                {"measured_mib": sample.value, "held": idle},
            )
            for sample in held_memory
        ]
    held_text = f"{TARGET_CONNECTIONS:,}" + (f" (extrapolated from {idle:,})" if extrapolated else "")
    details = {
        "held_connections": idle,
        "per_connection_kib": per_connection_kib,
        "opening_seconds": result["opening_seconds"],
        "load_generator_rss_mib": result["load_generator_rss_mib"],
        "rss_after_closing_mib": result["after_rss_mib"],
    }
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
            parameters={"idle_connections": idle, "connections_per_address": PER_ADDRESS},
            details=details,
            notes=[f"{per_connection_kib:.1f} KiB per held connection"]
            + ([f"--quick holds {idle:,} connections; the 10,000 figure is extrapolated linearly"] if extrapolated else []),
        ),
        Figure(
            "9b",
            f"active client's median look-up latency with {idle:,} idle connections held",
            "ms",
            held_latency,
            "with none held",
            "ms",
            none_latency,
            target=TARGET_LATENCY_RATIO,
            sense="<=",
            parameters={"idle_connections": idle, "sequential_lookups_per_run": 300 if settings.quick else 2000},
            details=details,
        ),
    ]
