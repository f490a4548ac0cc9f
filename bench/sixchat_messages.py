"""Figure 6: SixChat 1 KiB messages/s, each acknowledged, vs TLS over Twisted, one record per message and per ack.

One session, 256 messages outstanding: the initiator sends ``<message>`` documents of
exactly 1,024 bytes, each in one AES-256-GCM record; the responder decrypts, parses and
checks each, and answers each with a ``<receipt>`` record (as the agent does). The
baseline (figure 6): one TLS connection to a bare Twisted server, the same window, each
1,024-byte frame (4-byte length prefix) written in a TLS record of its own, each answered
by a TLS record of its own holding a frame the size of the receipt record (Twisted's
plain ``TLSMemoryBIOProtocol``: its default protocol would gather the answers of a
reactor turn into shared records). Neither server turns Nagle off (SixChat's
``PeerConnection`` does not).

Figure 6b keeps the earlier baseline, a byte stream: the generator joins the messages due
at once into one write (about 16 frames per TLS record) and the server's answers of a
reactor turn share records.

The window is deep enough for the servers to run their core full; against the byte
stream (6b), with fewer messages outstanding (32), both servers idle part of the time
waiting for the next batch, the generator's window caps the figure, and the ratio reads
higher (about 0.14) than what the servers can do.

The TLS generator writes each record with its own ``SSL_write`` on the socket (one send
each), the SixChat generator joins the records due at once into one send; both servers
read up to 64 KiB per read, whatever the segments.

Target: ratio >= 0.5 (figure 6; 6b for information).
"""

from __future__ import annotations

from typing import Any

from bench.fixtures import HOST, Pki, client_context
from bench.harness import Context, Figure, split_samples
from bench.sampling import Sample
from bench.sixchat_handshakes import sixchat_pki, sixchat_server
from bench.sixchat_server import open_session, record_payload_size
from bench.tls_echo import frame_of

FIGURE_ID = "6"
STREAM_FIGURE_ID = "6b"
TARGET = 0.5
MESSAGE_BYTES = 1024
WINDOW = 256


def chat_bodies(count: int = 64, size: int = MESSAGE_BYTES) -> list[bytes]:
    """Serialised ``<message>`` documents of exactly ``size`` bytes."""
    from sixchat.wire.application import ChatMessage, encode_application, parse_application

    bodies = []
    for _ in range(count):
        probe = ChatMessage(text="x")
        text = "x" * (size - len(encode_application(probe)) + 1)
        body = encode_application(ChatMessage(text=text, id=probe.id, sent=probe.sent))
        assert len(body) == size, len(body)
        parse_application(body)  # the responder will accept it
        bodies.append(body)
    return bodies


def measure(
    sixchat: dict[str, Any], tls: dict[str, Any], stream: dict[str, Any], pki: Pki, settings: Any
) -> tuple[list[tuple[Sample, Sample]], list[tuple[Sample, Sample]]]:
    """Load generator: (baseline, figure) pairs of messages/s against the record-per-message
    baseline (``tls``) and against the byte-stream one (``stream``), same figure runs."""
    from bench.loadgen import connect_tls, windowed
    from bench.sixchat_server import credentials
    from common.identity import Identity
    from sixchat.record import InnerType

    bodies = chat_bodies()
    framed, session = open_session(sixchat["port"], credentials(pki, pki.users[0]), Identity(pki.server.name, pki.domain))
    counter = {"next": 0}

    def next_record() -> bytes:
        body = bodies[counter["next"] % len(bodies)]
        counter["next"] += 1
        # The record layer's sealing step, without send_message's re-parsing of a
        # document the generator built itself.
        return session._seal(InnerType.APPLICATION, body)  # type: ignore[no-any-return]

    message = frame_of(MESSAGE_BYTES, b"m")
    (connection,) = connect_tls(HOST, tls["port"], [client_context(pki.users[0])], 1)
    (stream_connection,) = connect_tls(HOST, stream["port"], [client_context(pki.users[0])], 1)
    pairs = []
    stream_pairs = []
    try:
        for _ in range(settings.runs):
            baseline = windowed(
                connection, lambda: message, window=WINDOW, warmup=settings.warmup, duration=settings.duration,
                server_pid=tls["pid"], record_per_message=True,
            )
            stream_baseline = windowed(
                stream_connection, lambda: message, window=WINDOW, warmup=settings.warmup,
                duration=settings.duration, server_pid=stream["pid"],
            )
            figure = windowed(
                framed, next_record, window=WINDOW, warmup=settings.warmup, duration=settings.duration,
                server_pid=sixchat["pid"],
            )
            pairs.append((baseline, figure))
            stream_pairs.append((stream_baseline, figure))
    finally:
        connection.goodbye()
        stream_connection.goodbye()
        framed.write(session.close("bye"))
        framed.close()
    return pairs, stream_pairs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 6."""
    from sixchat.wire.application import Receipt

    settings = ctx.settings
    pki = sixchat_pki(ctx)
    server = sixchat_server(ctx)
    receipt = record_payload_size(Receipt("00000000-0000-4000-8000-000000000000"))
    tls = ctx.server(
        f"echo-{receipt}-nagle-records",
        "bench.tls_echo:serve_echo",
        {"pki": pki, "response_size": receipt, "nodelay": False, "record_per_answer": True},
    )
    stream = ctx.server(
        f"echo-{receipt}-nagle",
        "bench.tls_echo:serve_echo",
        {"pki": pki, "response_size": receipt, "nodelay": False},
    )
    pairs, stream_pairs = ctx.worker().run(measure, server.info, tls.info, stream.info, pki, settings)
    figures, baselines = split_samples(pairs)
    stream_figures, stream_baselines = split_samples(stream_pairs)
    parameters = {"message_bytes": MESSAGE_BYTES, "window": WINDOW, "answer_bytes": receipt}
    counts = server.call("counts")
    return [
        Figure(
            FIGURE_ID,
            "SixChat 1 KiB messages/s, each acknowledged, one session",
            "/s",
            figures,
            "Twisted TLS 1 KiB messages/s, one record each, each acked by a record",
            "/s",
            baselines,
            target=TARGET,
            parameters=parameters,
            details={"responder": counts},
            notes=[
                "each message answered (SixChat: a <receipt> record; baseline: a TLS record holding a frame of the same size)",
                "baseline: the generator writes one TLS record per message; the server (TLSMemoryBIOProtocol) one per answer",
            ],
        ),
        Figure(
            STREAM_FIGURE_ID,
            "SixChat 1 KiB messages/s, each acknowledged, one session",
            "/s",
            stream_figures,
            "Twisted TLS byte stream, 1 KiB frames joined in 16 KiB records",
            "/s",
            stream_baselines,
            parameters=parameters,
            details={"responder": counts},
            notes=["for information: the earlier byte-stream baseline (messages and answers share TLS records)"],
        ),
    ]
