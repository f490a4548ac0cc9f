"""Figure 13a: sixid look-ups/s over 1,000,000 IDs, 50 anonymous TLS connections, vs bare TLS echo round trips/s.

The registry (``twistd irp --sixid``: :func:`bench.sixid_server.serve_sixid`, policy
``open``) holds 1,000,000 sixid records (``--quick``: 20,000) made by
:mod:`bench.sixid_data`: each with its own Ed25519 device key, a registration signed by it
and the registry's signature, bulk-loaded into the registry's own database and kept
between runs. 50 persistent TLS connections (no client certificate: sixid's clients are
anonymous), from 50 loopback addresses, each in a closed loop (one request outstanding)
sending ``<lookup sixid="ID"/>``; the IDs are spread evenly over all the records
(:class:`bench.sixid_load.UniformLookups`: every ID once per million requests, in an
order unrelated to the database's), and each run starts where the previous one stopped, so
the look-ups are cold: no ID is asked for twice in the whole figure, and nothing the
registry might cache serves a second request. Every answer must be a ``<response>``
(holding the signed record; an error fails the run).

Baseline: the bare Twisted TLS server of :mod:`bench.tls_echo` over as many connections,
in the same window, answering the same request frames with frames of the mean size of
the registry's answers (measured on 200 look-ups before the runs: records padded to a
multiple of 256 bytes; each of them verified as a client verifies a record, with the
key of the registry's ``<signer/>`` chain). Runs alternate echo, sixid, echo, sixid... as
figure 1m's do.

Target: ratio >= 0.8 (the issue: no client authentication, small signed records).

13a-p (information): the same with 8 look-ups pipelined on each connection (and 8 echo
requests on the baseline's), runs interleaved with 13a's: what the path costs when the
per-request cost of TLS records, system calls and reactor turns is shared.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from bench import sixid_data
from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.irp_lookups import echo_server
from bench.sampling import Sample
from bench.sixid_load import OK, UniformLookups, frame, frames_of

FIGURE_ID = "13a"
PIPELINED_ID = "13a-p"
TARGET = 0.8
#: Requests outstanding per connection in the pipelined runs (13a-p, information only).
PIPELINED = 8
#: Look-ups whose answers give the echo server its answer size.
SIZE_SAMPLE = 200

# ---------------------------------------------------------------------------------------
# Load generator side: the connections stay open in the worker between runs.

_OPEN: dict[str, Any] = {}


def ping_frame() -> bytes:
    """A ``<ping/>`` request frame (each connection's first exchange)."""
    from sixid.wire import Ping, Request, encode_request

    return frame(encode_request(Request(1, Ping())))


def answer_sizes(info: dict[str, Any], ids_path: str, count: int = SIZE_SAMPLE) -> list[int]:
    """Load generator: the payload sizes of the answers to ``count`` look-ups (IDs from the
    far end of the list the runs use), one at a time on one connection; each answer is
    verified as a client verifies it (the registry's signature with the record-signing
    key of its ``<signer/>`` chain, the ID, the device's signature, the expiry)."""
    import select

    from cryptography import x509

    from bench.loadgen import LoadError, connect_tls
    from sixid.ids import SixIdAddress
    from sixid.records import verify_record
    from sixid.wire import RecordResult, Request, Response, Signer, SignerChain, encode_request, parse_answer

    with open(ids_path, "rb") as handle:
        lookups = UniformLookups(handle.read(), start=-count)
    (connection,) = connect_tls(HOST, info["port"], [client_context(None)], 1, first=ping_frame(), check=OK)
    buffer = bytearray()
    epoll = select.epoll()
    epoll.register(connection.fd, select.EPOLLIN)

    def ask(request: bytes) -> bytes:
        connection.write(request)
        while True:
            connection.flush()
            buffer.extend(connection.read_available())
            answers = frames_of(buffer)
            if answers:
                if not answers[0].startswith(OK):
                    raise LoadError(f"a request was refused: {answers[0][:300]!r}")
                return answers[0]
            if connection.closed:
                raise LoadError("the server closed the connection")
            epoll.poll(1.0)

    try:
        chain = parse_answer(ask(frame(encode_request(Request(1, Signer())))))
        assert isinstance(chain, Response) and isinstance(chain.result, SignerChain)
        signer = x509.load_der_x509_certificate(chain.result.certificates[0]).public_key()
        sizes = []
        for index in range(count):
            request = lookups[index]
            payload = ask(request)
            answer = parse_answer(payload)
            assert isinstance(answer, Response) and isinstance(answer.result, RecordResult)
            sixid = request.split(b'sixid="', 1)[1].split(b'"', 1)[0].decode("ascii")
            verify_record(
                answer.result.record, expected=SixIdAddress.parse(f"{sixid}@{info['domain']}"), signer=signer, now=time.time()  # type: ignore[arg-type]
            )
            sizes.append(len(payload))
    finally:
        epoll.close()
        connection.goodbye()
    return sizes


def open_connections(sixid: dict[str, Any], echo: dict[str, Any], ids_path: str, count: int) -> None:
    """Load generator: read the IDs, open both sides' connections (anonymous TLS)."""
    from bench.loadgen import connect_tls

    with open(ids_path, "rb") as handle:
        _OPEN["ids"] = handle.read()
    # A module run again (a disturbed attempt) goes on where the last one stopped.
    _OPEN.setdefault("offset", 0)
    _OPEN.setdefault("sent", 0)
    sources = source_addresses(count)
    contexts = [client_context(None)]
    _OPEN["sixid"] = connect_tls(HOST, sixid["port"], contexts, count, sources=sources, first=ping_frame(), check=OK)
    _OPEN["echo"] = connect_tls(HOST, echo["port"], contexts, count, sources=sources, first=ping_frame())


def measure_run(side: str, server_pid: int, settings: Any, depth: int = 1) -> Sample:
    """Load generator: one closed-loop run on ``side`` ("sixid" or "echo"), ``depth``
    requests outstanding per connection, with the look-ups from where the last sixid run
    stopped (echo runs do not move on)."""
    from bench.loadgen import round_trips

    lookups = UniformLookups(_OPEN["ids"], start=_OPEN["offset"])
    sample = round_trips(
        _OPEN[side], lookups, warmup=settings.warmup, duration=settings.duration, server_pid=server_pid, depth=depth
    )
    sample.details["first_lookup"] = _OPEN["offset"]
    sample.details["requests_sent"] = lookups.issued
    if side == "sixid":
        _OPEN["offset"] += lookups.issued
        _OPEN["sent"] += lookups.issued
    return sample


def close_connections() -> int:
    """Load generator: say goodbye on every connection; return the look-ups sent to the
    registry in all (warm-ups included)."""
    for side in ("sixid", "echo"):
        for connection in _OPEN.pop(side, []):
            connection.goodbye()
    return int(_OPEN.get("sent", 0))


# ---------------------------------------------------------------------------------------


def start_registry(ctx: Context, count: int) -> Any:
    """The registry serving a copy of the data folder of ``count`` records."""
    data = sixid_data.ensure(count, ctx.settings.key_type, ctx.log)
    data_dir = sixid_data.copy_registry(data, os.path.join(tempfile.mkdtemp(prefix="sixid-", dir=ctx.workdir), "registry"))
    server = ctx.server(
        f"sixid-{count}",
        "bench.sixid_server:serve_sixid",
        {"data_dir": data_dir, "key_type": ctx.settings.key_type, "policy": "open"},
    )
    server.info["ids_path"] = os.path.join(data, sixid_data.IDS_FILE)
    return server


def run(ctx: Context) -> list[Figure]:
    """Measure figure 13a."""
    settings = ctx.settings
    count = settings.sixid_ids
    server = start_registry(ctx, count)
    ids_path = server.info["ids_path"]
    worker = ctx.worker()
    sizes = worker.run(answer_sizes, server.info, ids_path)
    size = round(statistics.fmean(sizes))
    echo = echo_server(ctx, size)
    baselines: list[Sample] = []
    figures: list[Sample] = []
    piped_baselines: list[Sample] = []
    piped: list[Sample] = []
    worker.run(open_connections, server.info, echo.info, ids_path, settings.connections)
    sent = 0
    try:
        for _ in range(settings.runs):
            baselines.append(worker.run(measure_run, "echo", echo.info["pid"], settings))
            figures.append(worker.run(measure_run, "sixid", server.info["pid"], settings))
            piped_baselines.append(worker.run(measure_run, "echo", echo.info["pid"], settings, PIPELINED))
            piped.append(worker.run(measure_run, "sixid", server.info["pid"], settings, PIPELINED))
        held = server.call("count")
    finally:
        sent = worker.run(close_connections)
        ctx.stop_server(f"sixid-{count}")
    request_size = len(UniformLookups(b"\0" * 20)[0]) - 4
    parameters = {
        "ids": count,
        "ids_held_by_registry": held,
        "connections": settings.connections,
        "request_bytes": request_size,
        "response_bytes": size,
        "response_bytes_range": [min(sizes), max(sizes)],
        "policy": "open",
    }
    details = {
        "lookups_sent": sent,
        "distinct_ids_looked_up": min(sent, count),
        "data": sixid_data.cache_dir(count, settings.key_type),
    }
    notes = [
        "each answer must be a <response> (an error fails the run)",
        "look-ups spread evenly over every ID, none asked for twice (until all have been): cold",
        "the echo server answers the same request frames with frames of the mean size of the registry's answers",
        *([f"--quick: {count:,} IDs"] if settings.quick else []),
    ]
    return [
        Figure(
            FIGURE_ID,
            f"sixid look-ups/s, {count:,} IDs, {settings.connections} anonymous TLS connections, cold",
            "/s",
            figures,
            "bare Twisted TLS echo round trips/s",
            "/s",
            baselines,
            target=TARGET,
            parameters={**parameters, "outstanding_per_connection": 1},
            details=details,
            notes=["closed loop, one request outstanding per connection", *notes],
        ),
        Figure(
            PIPELINED_ID,
            f"sixid look-ups/s, {count:,} IDs, {settings.connections} connections, {PIPELINED} pipelined on each, cold",
            "/s",
            piped,
            f"bare Twisted TLS echo round trips/s, {PIPELINED} pipelined on each connection",
            "/s",
            piped_baselines,
            parameters={**parameters, "outstanding_per_connection": PIPELINED},
            details=details,
            notes=[
                f"information: {PIPELINED} requests outstanding per connection on both sides (the requests for the"
                " answers read at once go in one write); runs interleaved with 13a's",
                "the pipelined echo may be bound by the load generator (its CPU share near 100 %): then the ratio flatters",
                *notes,
            ],
        )
    ]
