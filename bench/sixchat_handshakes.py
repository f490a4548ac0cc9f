"""Figure 5: first-contact SixChat handshakes/s vs Twisted TLS 1.3 handshakes/s, client chains verified.

A SixChat handshake: TCP connect, the three flights (hybrid X25519 + ML-KEM-768, each side
signing the transcript with its P-384 certificate key), the responder checking the
initiator with the agent's ``PeerVerifier`` (chain, CRL, contact look-up), the
responder's first record (``<presence>``), the initiator's authenticated close. 16 in
flight at once. The baseline: TLS 1.3 (X25519MLKEM768, TLS_AES_256_GCM_SHA384) against a
bare Twisted server with certificates and keys from the same CA, OpenSSL verifying the
client's chain to the same root, the server sending a first frame of the same size on
completion, close_notify and close.

Every initiator is new (figure 5): each handshake of every warm-up and every run, on
either side, presents a key and certificate made for it before the run and never shown
before, so the responder's caches of certificates received, verified chains and
contacts are cold for the initiator (the issuing CA's link to the root stays cached, as
it does for a real responder). Figure 5b keeps the earlier measurement, 8 initiators in
rotation, where those caches are warm.

Target: ratio >= 1.0 (figure 5; 5b for information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bench.fixtures import Pem, Pki, issue_users, make_pki, source_addresses
from bench.harness import Context, Figure, Settings, split_samples
from bench.loadgen import handshake_loop
from bench.sampling import LOAD_CPU, SERVER_CPU, Sample
from bench.sixchat_server import SixChatExchange, credentials, record_payload_size
from bench.tls_handshakes import (
    CONCURRENCY,
    SOURCES,
    chain_context,
    fresh_at,
    fresh_tls_sessions,
    handshake_server,
    openssl_credentials,
    tls_sessions,
    user_contexts,
)

FIGURE_ID = "5"
WARM_FIGURE_ID = "5b"
TARGET = 1.0
#: Handshakes/s (per side) the pool of fresh initiators is sized for: about 1.5 times
#: the fastest side on the reference machine. A run that goes faster fails with
#: "out of fresh clients" rather than show an initiator twice.
RATE_CEILING = 800

T = TypeVar("T")


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


def initiators_per_run(settings: Settings) -> int:
    """Fresh initiators one side may use in one run (warm-up and timed window)."""
    return math.ceil(RATE_CEILING * (settings.warmup + settings.duration)) + 2 * CONCURRENCY


def initiator_plan(users: Sequence[T], runs: int, per_run: int) -> list[tuple[Sequence[T], Sequence[T]]]:
    """Split ``users`` into (baseline, figure) pools of ``per_run`` for each run, disjoint:
    no user is planned twice, across runs or sides (ValueError when there are too few)."""
    needed = 2 * runs * per_run
    if len(users) < needed:
        raise ValueError(f"{runs} runs of {per_run} fresh initiators per side need {needed} users, not {len(users)}")
    return [
        (users[2 * run * per_run : (2 * run + 1) * per_run], users[(2 * run + 1) * per_run : (2 * run + 2) * per_run])
        for run in range(runs)
    ]


def fresh_users(ctx: Context, pki: Pki, count: int) -> tuple[Pem, ...]:
    """``count`` new users of ``pki``'s CA, made on both cores before any run."""
    names = [f"fresh{index:06d}" for index in range(count)]
    halves = [names[: count // 2], names[count // 2 :]]
    workers = [ctx.worker(SERVER_CPU), ctx.worker(LOAD_CPU)]
    with ThreadPoolExecutor(len(workers)) as threads:
        parts = list(threads.map(lambda job: job[0].run(issue_users, pki, job[1]), zip(workers, halves, strict=True)))
    return tuple(user for part in parts for user in part)


def sixchat_sessions(port: int, server_pid: int, pki: Pki, *, warmup: float, duration: float) -> Sample:
    """One run of SixChat handshakes/s from ``pki``'s users in rotation (caches warm)."""
    from common.identity import Identity

    initiators = [credentials(pki, user) for user in pki.users]
    peer = Identity(pki.server.name, pki.domain)
    sources = source_addresses(SOURCES)

    def open_session(index: int) -> SixChatExchange:
        return SixChatExchange(port, initiators[index % len(initiators)], peer, sources[index % len(sources)])

    return handshake_loop(
        open_session, concurrency=CONCURRENCY, warmup=warmup, duration=duration, server_pid=server_pid
    )


def fresh_sixchat_sessions(
    port: int, server_pid: int, initiators: Sequence[Any], peer: Any, *, warmup: float, duration: float
) -> Sample:
    """One run of SixChat handshakes/s, each from a new initiator (``initiators``: loaded
    :class:`sixchat.handshake.LocalCredentials`, one per session; never reused)."""
    sources = source_addresses(SOURCES)

    def open_session(index: int) -> SixChatExchange:
        return SixChatExchange(port, fresh_at(initiators, index), peer, sources[index % len(sources)])

    return handshake_loop(
        open_session, concurrency=CONCURRENCY, warmup=warmup, duration=duration, server_pid=server_pid
    )


def measure(
    sixchat: dict[str, Any], tls: dict[str, Any], pki: Pki, settings: Settings, pool: Sequence[Pem]
) -> tuple[list[tuple[Sample, Sample]], list[tuple[Sample, Sample]]]:
    """Load generator: (baseline, figure) pairs of handshakes/s, first contact and warm."""
    from common.identity import Identity

    peer = Identity(pki.server.name, pki.domain)
    warm_contexts = user_contexts(pki, tls13_only=True)
    fresh_context = chain_context(pki, tls13_only=True)
    fresh_pairs = []
    warm_pairs = []
    for tls_users, sixchat_users in initiator_plan(pool, settings.runs, initiators_per_run(settings)):
        # Loaded before the run: the window only hands them to OpenSSL and the handshake.
        tls_clients = openssl_credentials(tls_users)
        initiators = [credentials(pki, user) for user in sixchat_users]
        baseline = fresh_tls_sessions(
            tls["port"], tls["pid"], fresh_context, tls_clients, None, warmup=settings.warmup, duration=settings.duration
        )
        figure = fresh_sixchat_sessions(
            sixchat["port"], sixchat["pid"], initiators, peer, warmup=settings.warmup, duration=settings.duration
        )
        fresh_pairs.append((baseline, figure))
        warm_baseline = tls_sessions(
            tls["port"], tls["pid"], warm_contexts, None, warmup=settings.warmup, duration=settings.duration
        )
        warm_figure = sixchat_sessions(
            sixchat["port"], sixchat["pid"], pki, warmup=settings.warmup, duration=settings.duration
        )
        warm_pairs.append((warm_baseline, warm_figure))
    return fresh_pairs, warm_pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figures 5 (first contact) and 5b (8 initiators, caches warm)."""
    from sixchat.wire.application import Presence

    settings = ctx.settings
    pki = sixchat_pki(ctx)
    per_run = initiators_per_run(settings)
    pool = fresh_users(ctx, pki, 2 * settings.runs * per_run)
    server = sixchat_server(ctx)
    hello = record_payload_size(Presence("online"))
    tls = handshake_server(
        ctx, pki, key="tls13-verify", tls13_only=True, verify_clients=True, hello_size=hello, nodelay=False
    )
    fresh_pairs, warm_pairs = ctx.worker().run(measure, server.info, tls.info, pki, settings, pool)
    counts = server.call("counts")
    parameters = {"concurrency": CONCURRENCY, "key_type": settings.key_type, "first_record_bytes": hello}
    notes = [
        "SixChat responder: PeerConnection + the agent's PeerVerifier (policy anyone); no per-address handshake limit",
        "TLS 1.3 baseline: X25519MLKEM768 and TLS_AES_256_GCM_SHA384, OpenSSL verifies the client chain",
    ]
    figures, baselines = split_samples(fresh_pairs)
    warm_figures, warm_baselines = split_samples(warm_pairs)
    return [
        Figure(
            FIGURE_ID,
            "first-contact SixChat handshakes/s, caches cold",
            "/s",
            figures,
            "Twisted TLS 1.3 handshakes/s, client certificates verified, every client new",
            "/s",
            baselines,
            target=TARGET,
            parameters={**parameters, "fresh_initiators_per_run_and_side": per_run, "fresh_initiators": len(pool)},
            details={"responder": counts},
            notes=[
                *notes,
                "every initiator new: a key and certificate made before the run, used once (warm-up, runs, both sides)",
            ],
        ),
        Figure(
            WARM_FIGURE_ID,
            "SixChat handshakes/s, 8 initiators in rotation, caches warm",
            "/s",
            warm_figures,
            "Twisted TLS 1.3 handshakes/s, client certificates verified, 8 clients",
            "/s",
            warm_baselines,
            parameters={**parameters, "initiators": len(pki.users)},
            details={"responder": counts},
            notes=[*notes, "for information: the responder's certificate, chain and contact caches always hit"],
        ),
    ]
