"""Figure 1: IRP look-ups/s over 50 persistent TLS connections, caches warm, vs bare TLS echo round trips/s.

The registry holds 1,000 users (plus the 50 the load generator logs in as); each of the
50 connections is logged in with its own user's certificate and looks up random users,
one request outstanding per connection (a closed loop). The baseline is the bare Twisted
TLS server of :mod:`bench.tls_echo` with the same TLS settings, answering the very same
request frames with frames of the mean size of the registry's answers.

Caches warm: nothing commits and the users looked up all fit in the registry's answer
cache, so after the first look-up of each, answers come from the cache (the hit rate is
in the figure's details). Figure 1m (:mod:`bench.irp_mixed`) is the realistic mix.

Target: ratio >= 0.5.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import HOST, Pki, client_context, shared_pki, source_addresses
from bench.harness import Context, Figure, split_samples
from bench.irp_server import OK, lookup_frames, registry
from bench.sampling import Sample

FIGURE_ID = "1"
TARGET = 0.5


def echo_server(ctx: Context, response_size: int) -> Any:
    """The shared bare TLS echo server answering with ``response_size``-byte frames."""
    return ctx.server(
        f"echo-{response_size}",
        "bench.tls_echo:serve_echo",
        {"pki": shared_pki(ctx), "response_size": response_size, "nodelay": True},
    )


def connect_both(irp: dict[str, Any], echo: dict[str, Any], pki: Pki, count: int, first: bytes) -> tuple[list[Any], list[Any]]:
    """Load generator: ``count`` TLS connections to the registry (each logged in as its own
    load user; ``first`` must be answered ok) and as many to the echo server."""
    from bench.loadgen import connect_tls

    sources = source_addresses(count)
    irp_connections = connect_tls(
        HOST, irp["port"], [client_context(user) for user in irp["users"][:count]], count, sources=sources, first=first, check=OK
    )
    echo_connections = connect_tls(HOST, echo["port"], [client_context(pki.users[0])], count, sources=sources, first=first)
    return irp_connections, echo_connections


def measure(
    irp: dict[str, Any], echo: dict[str, Any], pki: Pki, settings: Any
) -> list[tuple[Sample, Sample]]:
    """Load generator: (baseline, figure) pairs of closed-loop round-trip rates."""
    from bench.loadgen import round_trips

    frames = lookup_frames(irp["targets"])
    irp_connections, echo_connections = connect_both(irp, echo, pki, settings.connections, frames[0])
    pairs = []
    try:
        for _ in range(settings.runs):
            baseline = round_trips(
                echo_connections, frames, warmup=settings.warmup, duration=settings.duration, server_pid=echo["pid"]
            )
            figure = round_trips(
                irp_connections, frames, warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"]
            )
            pairs.append((baseline, figure))
    finally:
        for connection in [*irp_connections, *echo_connections]:
            connection.goodbye()
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 1."""
    settings = ctx.settings
    irp = registry(ctx, settings.small_users)
    size = round(irp.call("response_size", names=irp.info["targets"][:200]))
    echo = echo_server(ctx, size)
    irp.call("cache_stats", reset=True)
    pairs = ctx.worker().run(measure, irp.info, echo.info, shared_pki(ctx), settings)
    cache = irp.call("cache_stats")["answers"]
    figures, baselines = split_samples(pairs)
    request_size = len(lookup_frames(irp.info["targets"], 64)[0]) - 4
    return [
        Figure(
            FIGURE_ID,
            f"IRP look-ups/s, {settings.connections} persistent TLS connections, caches warm",
            "/s",
            figures,
            "bare Twisted TLS echo round trips/s",
            "/s",
            baselines,
            target=TARGET,
            parameters={
                "connections": settings.connections,
                "users": settings.small_users,
                "request_bytes": request_size,
                "response_bytes": size,
                "outstanding_per_connection": 1,
            },
            details={"answer_cache": {**cache, "counted": "all runs, warm-ups included"}},
            notes=[
                "caches warm: look-ups only (nothing commits), of users who all fit in the answer cache",
                "closed loop, one request outstanding per connection; answers counted by their length prefix",
                "each IRP answer is checked for status=\"ok\"; the echo server answers with frames of the IRP answers' mean size",
            ],
        )
    ]
