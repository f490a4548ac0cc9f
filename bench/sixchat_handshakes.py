"""Figure 5: SixChat handshakes/s vs Twisted TLS 1.3 handshakes/s with client certificates, same key types.

A SixChat handshake: TCP connect, the three flights (hybrid X25519 + ML-KEM-768, each side
signing the transcript with its P-384 certificate key), the responder checking the
initiator with the agent's ``PeerVerifier`` (chain, CRL, contact look-up), the
responder's first record (``<presence>``), the initiator's authenticated close. 16 in
flight at once. The baseline: TLS 1.3 (X25519MLKEM768, TLS_AES_256_GCM_SHA384) against a
bare Twisted server with the same certificates and keys, OpenSSL verifying the client's
chain to the same root, the server sending a first frame of the same size on completion,
close_notify and close.

Target: ratio >= 1.0.
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import Pki, make_pki, source_addresses
from bench.harness import Context, Figure, Sample, split_samples
from bench.loadgen import handshake_loop
from bench.sixchat_server import SixChatExchange, credentials, record_payload_size
from bench.tls_handshakes import (
    CONCURRENCY,
    SOURCES,
    handshake_server,
    tls_sessions,
    user_contexts,
)

FIGURE_ID = "5"
TARGET = 1.0


def sixchat_pki(ctx: Context) -> Pki:
    """The SixChat PKI: the responder's leaf is a user certificate (bob), 8 initiators."""
    return ctx.shared(  # type: ignore[no-any-return]
        "pki-sixchat", lambda: make_pki(ctx.settings.key_type, users=8, server_user="bob")
    )


def sixchat_server(ctx: Context) -> Any:
    """The shared SixChat responder."""
    return ctx.server(
        "sixchat", "bench.sixchat_server:serve_sixchat", {"pki": sixchat_pki(ctx), "data_dir": ctx.path("sixchat")}
    )


def sixchat_sessions(port: int, server_pid: int, pki: Pki, *, warmup: float, duration: float) -> Sample:
    """One run of SixChat handshakes/s (load generator side)."""
    from common.identity import Identity

    initiators = [credentials(pki, user) for user in pki.users]
    peer = Identity(pki.server.name, pki.domain)
    sources = source_addresses(SOURCES)

    def open_session(index: int) -> SixChatExchange:
        return SixChatExchange(port, initiators[index % len(initiators)], peer, sources[index % len(sources)])

    return handshake_loop(
        open_session, concurrency=CONCURRENCY, warmup=warmup, duration=duration, server_pid=server_pid
    )


def measure(sixchat: dict[str, Any], tls: dict[str, Any], pki: Pki, settings: Any) -> list[tuple[Sample, Sample]]:
    """Load generator: (baseline, figure) pairs of handshakes/s."""
    contexts = user_contexts(pki, tls13_only=True)
    pairs = []
    for _ in range(settings.runs):
        baseline = tls_sessions(
            tls["port"], tls["pid"], contexts, None, warmup=settings.warmup, duration=settings.duration
        )
        figure = sixchat_sessions(
            sixchat["port"], sixchat["pid"], pki, warmup=settings.warmup, duration=settings.duration
        )
        pairs.append((baseline, figure))
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 5."""
    from sixchat.wire.application import Presence

    settings = ctx.settings
    pki = sixchat_pki(ctx)
    server = sixchat_server(ctx)
    hello = record_payload_size(Presence("online"))
    tls = handshake_server(
        ctx, pki, key="tls13-verify", tls13_only=True, verify_clients=True, hello_size=hello, nodelay=False
    )
    pairs = ctx.worker().run(measure, server.info, tls.info, pki, settings)
    counts = server.call("counts")
    figures, baselines = split_samples(pairs)
    return [
        Figure(
            FIGURE_ID,
            "SixChat handshakes/s",
            "/s",
            figures,
            "Twisted TLS 1.3 handshakes/s, client certificates verified",
            "/s",
            baselines,
            target=TARGET,
            parameters={"concurrency": CONCURRENCY, "key_type": settings.key_type, "first_record_bytes": hello},
            details={"responder": counts},
            notes=[
                "SixChat responder: PeerConnection + the agent's PeerVerifier (policy anyone); no per-address handshake limit",
                "TLS 1.3 baseline: X25519MLKEM768 and TLS_AES_256_GCM_SHA384, OpenSSL verifies the client chain",
            ],
        )
    ]
