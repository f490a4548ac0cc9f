"""Figure 2: IRP new sessions/s (TLS with client certificate + one look-up) vs bare TLS handshakes/s with client certificates.

Each session: TCP connect, TLS handshake presenting a user certificate the registry issued
(the registry then logs the connection in with it: chain check, certificate and account
look-ups), one ``<lookup>``, close. 16 sessions are in flight at once, their certificates
rotating over 50 users. The baseline does the same against a bare Twisted TLS server with
the same TLS settings and key types, with one request/answer of the same sizes.

Target: ratio >= 0.8.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import Pki, client_context, shared_pki
from bench.harness import Context, Figure, split_samples
from bench.irp_server import OK, lookup_frames, registry
from bench.sampling import Sample
from bench.tls_handshakes import (
    CONCURRENCY,
    handshake_server,
    tls_sessions,
    user_contexts,
)

FIGURE_ID = "2"
TARGET = 0.9


def measure(irp: dict[str, Any], echo: dict[str, Any], pki: Pki, settings: Any) -> list[tuple[Sample, Sample]]:
    """Load generator: (baseline, figure) pairs of sessions/s."""
    request = lookup_frames(irp["targets"], 1)[0]
    irp_contexts = [client_context(user) for user in irp["users"]]
    echo_contexts = user_contexts(pki)
    pairs = []
    for _ in range(settings.runs):
        baseline = tls_sessions(
            echo["port"], echo["pid"], echo_contexts, request, warmup=settings.warmup, duration=settings.duration
        )
        figure = tls_sessions(
            irp["port"], irp["pid"], irp_contexts, request, warmup=settings.warmup, duration=settings.duration, check=OK
        )
        pairs.append((baseline, figure))
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 2."""
    settings = ctx.settings
    irp = registry(ctx, settings.small_users)
    size = round(irp.call("response_size", names=irp.info["targets"][:200]))
    pki = shared_pki(ctx)
    echo = handshake_server(ctx, pki, key=f"echo-{size}", response_size=size, nodelay=True)
    pairs = ctx.worker().run(measure, irp.info, echo.info, pki, settings)
    figures, baselines = split_samples(pairs)
    return [
        Figure(
            FIGURE_ID,
            "IRP new sessions/s (TLS + client certificate + one look-up)",
            "/s",
            figures,
            "bare Twisted TLS handshakes/s with client certificates (+ one echo)",
            "/s",
            baselines,
            target=TARGET,
            parameters={
                "concurrency": CONCURRENCY,
                "key_type": settings.key_type,
                "client_certificates": len(irp.info["users"]),
                "response_bytes": size,
            },
            notes=[
                "TLS 1.3 (TLS_AES_256_GCM_SHA384, X25519MLKEM768) negotiated in both; no session resumption",
                "the load generator presents its certificate but does not verify the server's",
            ],
        )
    ]
