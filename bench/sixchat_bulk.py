"""Figure 7: SixChat bulk (64 KiB records, sealed in the window) MB/s vs TLS bulk over Twisted.

The initiator streams ``total`` bytes as SixChat data records of 64 KiB, then a
``<ping/>``; the time runs until the responder's ``<pong/>``. Each record is sealed
(AES-256-GCM) inside the timed window, when the generator asks for it
(:func:`sealing_producer`), as the TLS side encrypts each record inside ``tls.send``. The
baseline streams the same bytes in 64 KiB frames over TLS to the bare Twisted sink of
:mod:`bench.tls_bulk`. MB are 10^6 bytes of payload.

Target: ratio >= 1.0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bench.fixtures import HOST, Pki, client_context
from bench.harness import Context, Figure, split_samples
from bench.sampling import CpuWindow, Sample
from bench.sixchat_handshakes import sixchat_pki, sixchat_server
from bench.tls_bulk import CHUNK, chunks

FIGURE_ID = "7"
TARGET = 1.0


def sealing_producer(session: Any, payload: bytes, count: int) -> Callable[[], bytes | None]:
    """A producer for :func:`bench.loadgen.send_and_wait`: each call seals and returns the
    next of ``count`` data records of ``payload``, then a ``<ping/>`` record, then None.

    Nothing is sealed before the first call: the sealing is part of what is timed.
    """
    from sixchat.wire.application import Ping

    state = {"left": count, "pinged": False}

    def produce() -> bytes | None:
        if state["left"]:
            state["left"] -= 1
            return session.send_data(payload)  # type: ignore[no-any-return]
        if not state["pinged"]:
            state["pinged"] = True
            return session.send_message(Ping())  # type: ignore[no-any-return]
        return None

    return produce


def transfer_size(ctx: Context) -> int:
    """Bytes per run: 128 MiB quick, 512 MiB full."""
    return (128 if ctx.settings.quick else 512) * 1024 * 1024


def measure(
    sixchat: dict[str, Any], tls: dict[str, Any], pki: Pki, settings: Any, total: int
) -> list[tuple[Sample, Sample]]:
    """Load generator: (baseline, figure) pairs of MB/s."""
    from bench.loadgen import connect_tls, send_and_wait
    from bench.sixchat_server import credentials, open_session
    from common.identity import Identity

    framed, session = open_session(sixchat["port"], credentials(pki, pki.users[0]), Identity(pki.server.name, pki.domain))
    (connection,) = connect_tls(HOST, tls["port"], [client_context(pki.users[0])], 1)
    payload = os.urandom(CHUNK)

    def timed(connection: Any, producer: Any, server_pid: int) -> Sample:
        with CpuWindow(server_pid) as window:
            send_and_wait(connection, producer)
        return window.sample(total / window.wall / 1e6, bytes=total)

    warm = 8 * CHUNK
    send_and_wait(connection, chunks(warm))
    send_and_wait(framed, sealing_producer(session, payload, warm // CHUNK))
    pairs = []
    try:
        for _ in range(settings.runs):
            baseline = timed(connection, chunks(total), tls["pid"])
            figure = timed(framed, sealing_producer(session, payload, total // CHUNK), sixchat["pid"])
            pairs.append((baseline, figure))
    finally:
        connection.goodbye()
        framed.write(session.close("bye"))
        framed.close()
    return pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 7."""
    settings = ctx.settings
    pki = sixchat_pki(ctx)
    server = sixchat_server(ctx)
    sink = ctx.server("tls-sink", "bench.tls_bulk:serve_sink", {"pki": pki})
    total = transfer_size(ctx)
    pairs = ctx.worker().run(measure, server.info, sink.info, pki, settings, total)
    figures, baselines = split_samples(pairs)
    return [
        Figure(
            FIGURE_ID,
            "SixChat bulk, 64 KiB data records sealed in the window",
            "MB/s",
            figures,
            "TLS bulk over Twisted, 64 KiB frames",
            "MB/s",
            baselines,
            target=TARGET,
            parameters={"record_bytes": CHUNK, "bytes_per_run": total},
            details={"responder": server.call("counts")},
            notes=["both sides encrypt inside the timed window (SixChat: one record sealed per produce call)"],
        )
    ]
