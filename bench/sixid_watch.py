"""Figure 13c: time from sending a sixid registration to a watcher receiving its push, one registry process and across two workers.

The registry runs as an operator runs it: ``twistd -n irp --sixid-listen ...
--sixid-policy open`` (the shipped defaults otherwise: limits, lifetimes, Argon2), in a
process pinned to the server core; then the same with ``--workers 2`` (both processes on
that core: two cores are all this machine has, and the load generator has the other).

One watcher connection watches 100 IDs (quick 20; their device keys are the load
generator's); one registrant connection registers them in turn, one at a time: each
registration is made and signed first, then the clock starts, the frame is sent, and the
clock is read when the watcher's push for it arrives (its record decoded and checked to be
that ID's) and when the registrant's answer arrives (both awaited before the next). A
random pause of 0 to 25 ms between registrations spreads them over the phase of the
store's 20 ms poll (how another process's commits are noticed on SQLite), which a
back-to-back loop would lock onto. 500 registrations per set-up (quick 50), split into the
suite's runs.

Across two workers, the watcher is connected while the worker is stopped (SIGSTOP: the main
process accepts it) and the registrant while the main process is stopped (the worker
accepts it); which process holds each connection is then checked in ``/proc`` (the
server side of the TCP connection, found by its ports in ``/proc/net/tcp``, among each
process's open sockets). The figure says whether that check passed.

The figure is each run's median push latency; the baseline, for comparison, the median
latency of the registrant's own answer in the same run (sent after the commit, by the
process that took the registration). Information only: no target.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.sampling import SERVER_CPU, CpuWindow
from bench.sixid_data import DOMAIN
from bench.sixid_load import OK, FreshRegistrations, device_keys, frame, frames_of

FIGURE_ID = "13c"
WORKERS_ID = "13c-w2"
#: Registrations per set-up (quick: a tenth) and IDs watched (quick 20).
REGISTRATIONS = 500
WATCHED = 100
#: The longest pause between two registrations, seconds.
MAX_PAUSE = 0.025
#: How long to wait for a registry to start, and for one push.
START_TIMEOUT = 120.0
ANSWER_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------
# The registry as ``twistd`` (orchestrator side)


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_twistd(folder: str, workers: int, key_type: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """``twistd -n irp`` with sixid on a free loopback port, pinned to the server core;
    returns (process, sixid port, log path) once every process serves sixid."""
    port = free_port()
    log_path = os.path.join(folder, "twistd.log")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    command = [
        os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile", "",
        "irp", "--domain", DOMAIN, "--data-dir", os.path.join(folder, "data"), "--key-type", key_type,
        "--listen", f"tcp:0:interface={HOST}",
        "--sixid-listen", f"tcp:{port}:interface={HOST}", "--sixid-policy", "open",
        "--workers", str(workers),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=environment,
            preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),  # noqa: PLW1509 - no threads yet
        )
    deadline = time.monotonic() + START_TIMEOUT
    while sixid_lines(log_path) < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_twistd(process)
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                raise RuntimeError(f"twistd irp with sixid did not start:\n{handle.read()[-3000:]}")
        time.sleep(0.2)  # waiting for another process's log, not timing the product
    return process, port, log_path


def sixid_lines(log_path: str) -> int:
    """How many processes said they serve sixid (``sixid serving on ...``)."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        return handle.read().count("sixid serving on")


def stop_twistd(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then a kill if it has not ended within 15 s (its workers stop with it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def worker_pids(parent: int) -> list[int]:
    """The worker processes (``python -m irp.server.worker``) whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == parent and b"irp.server.worker" in command:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------------------------------
# Which process holds a connection (load generator side)


def socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's side of the loopback TCP connection between the two ports."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1].rsplit(":", 1), fields[2].rsplit(":", 1)
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                return int(fields[9])
    return None


def holder(server_port: int, client_port: int, pids: Sequence[int]) -> int | None:
    """Which of ``pids`` holds the server's side of the connection from ``client_port``."""
    inode = socket_inode(server_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for descriptor in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{descriptor}") == wanted:
                        return pid
    return None


@contextlib.contextmanager
def stopped(pid: int | None) -> Iterator[None]:
    """``pid`` stopped (SIGSTOP) until the block ends, so that the other process sharing the
    listening socket accepts the connections made meanwhile (nothing stopped for None)."""
    if pid is None:
        yield
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while _state(pid) != "T":
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {pid} did not stop")
            time.sleep(0.01)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0].decode()


# ---------------------------------------------------------------------------------------
# The measurement (load generator side)


def connect_one(port: int, source: str) -> Any:
    """One anonymous TLS connection that answered a ping."""
    from bench.loadgen import connect_tls
    from bench.sixid_lookups import ping_frame

    (connection,) = connect_tls(HOST, port, [client_context(None)], 1, sources=[source], first=ping_frame(), check=OK)
    return connection


def push_sixid(payload: bytes) -> str | None:
    """The ID of the record a ``<changed>`` push carries (None: not such a push)."""
    from sixid.records import SignedRecord
    from sixid.wire import Changed, parse_answer

    message = parse_answer(payload)
    if not isinstance(message, Changed):
        return None
    return str(SignedRecord.from_bytes(message.record).record.sixid)


def measure(port: int, pids: list[int], registrations: int, watched: int, runs: int, seed: int = 4606) -> dict[str, Any]:
    """Load generator: watch ``watched`` IDs on one connection, register them in turn on
    another, ``registrations`` times; each run's push and answer latencies (seconds)."""
    from bench.loadgen import LoadError

    main, worker = pids[0], pids[1] if len(pids) > 1 else None
    sources = source_addresses(2, first=400)
    with stopped(worker):
        watcher = connect_one(port, sources[0])
    with stopped(main if worker is not None else None):
        registrant = connect_one(port, sources[1])
    holders = {
        "watcher": holder(port, watcher.sock.getsockname()[1], pids),
        "registrant": holder(port, registrant.sock.getsockname()[1], pids),
    }
    loads = FreshRegistrations(device_keys(watched), lifetime=600)
    ids = [str(sixid) for sixid in loads.ids]
    inbox = {watcher.fd: bytearray(), registrant.fd: bytearray()}
    epoll = select.epoll()
    for connection in (watcher, registrant):
        epoll.register(connection.fd, select.EPOLLIN)

    def wait_frames(connection: Any, deadline: float) -> list[bytes]:
        while True:
            connection.flush()
            inbox[connection.fd] += connection.read_available()
            found = frames_of(inbox[connection.fd])
            if found:
                return found
            if connection.closed:
                raise LoadError("the server closed a connection")
            if time.perf_counter() > deadline:
                raise LoadError("no answer in time")
            epoll.poll(0.05)

    from sixid.ids import SixId
    from sixid.wire import Request, Watch, encode_request

    for index, sixid in enumerate(ids):
        watcher.write(frame(encode_request(Request(1 + index, Watch(SixId.parse(sixid))))))
        (answer,) = wait_frames(watcher, time.perf_counter() + ANSWER_TIMEOUT)
        if not answer.startswith(OK):
            raise LoadError(f"watch refused: {answer[:300]!r}")
    chooser = random.Random(seed)
    results: list[dict[str, Any]] = []
    try:
        for run_index in range(runs):
            per_run = registrations // runs + (1 if run_index < registrations % runs else 0)
            window = CpuWindow(pids)
            window.begin()
            push: list[float] = []
            answered: list[float] = []
            for _ in range(per_run):
                time.sleep(chooser.uniform(0.0, MAX_PAUSE))  # spread over the poll's phase (see the docstring)
                index = loads.made
                request = loads[index]
                expected = ids[index % watched]
                started = time.perf_counter()
                registrant.write(request)
                got_push = got_answer = None
                deadline = started + ANSWER_TIMEOUT
                while got_push is None or got_answer is None:
                    for fd, _events in epoll.poll(0.05):
                        connection = watcher if fd == watcher.fd else registrant
                        inbox[fd] += connection.read_available()
                        now = time.perf_counter()
                        for payload in frames_of(inbox[fd]):
                            if connection is watcher:
                                if push_sixid(payload) != expected:
                                    raise LoadError(f"unexpected push: {payload[:300]!r}")
                                got_push = now - started
                            else:
                                if not payload.startswith(OK):
                                    raise LoadError(f"registration refused: {payload[:300]!r}")
                                got_answer = now - started
                    if time.perf_counter() > deadline:
                        raise LoadError(f"no push or answer within {ANSWER_TIMEOUT} s (push {got_push}, answer {got_answer})")
                push.append(got_push)
                answered.append(got_answer)
            window.end()
            results.append({"push": push, "answer": answered, "sample": window})
    finally:
        epoll.close()
        watcher.goodbye()
        registrant.goodbye()
    return {
        "runs": [
            {
                "push": run["push"],
                "answer": run["answer"],
                "push_sample": run["sample"].sample(1000 * statistics.median(run["push"]), registrations=len(run["push"])),
                "answer_sample": run["sample"].sample(1000 * statistics.median(run["answer"]), registrations=len(run["answer"])),
            }
            for run in results
        ],
        "holders": holders,
        "pids": pids,
    }


def summary(latencies: list[float]) -> dict[str, float | int]:
    """Median, p99 and the worst of ``latencies`` (seconds) in milliseconds, and the count."""
    ordered = sorted(latencies)
    p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 else ordered[0]
    return {
        "count": len(ordered),
        "median_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * p99, 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }


# ---------------------------------------------------------------------------------------


def one_setup(ctx: Context, workers: int, registrations: int, watched: int) -> dict[str, Any]:
    """Start ``twistd irp`` with ``workers`` processes, measure, stop it."""
    folder = tempfile.mkdtemp(prefix=f"sixid-watch-{workers}-", dir=ctx.workdir)
    process, port, log_path = start_twistd(folder, workers, ctx.settings.key_type)
    try:
        pids = [process.pid]
        if workers > 1:
            found = worker_pids(process.pid)
            if len(found) != workers - 1:
                raise RuntimeError(f"expected {workers - 1} workers, found {found}")
            pids += found
        ctx.log(f"  started twistd irp --workers {workers} (pids {pids}), sixid on port {port}")
        result = ctx.worker().run(measure, port, pids, registrations, watched, ctx.settings.runs)
    finally:
        stop_twistd(process)
    result["log"] = log_path
    return result


def figure_of(figure_id: str, title: str, result: dict[str, Any], parameters: dict[str, Any], notes: list[str]) -> Figure:
    """The figure of one set-up: per run, the median push latency (figure) and answer
    latency (baseline), in ms; the summaries over all registrations in the details."""
    runs = result["runs"]
    push = [latency for run in runs for latency in run["push"]]
    answered = [latency for run in runs for latency in run["answer"]]
    return Figure(
        figure_id,
        title,
        "ms",
        [run["push_sample"] for run in runs],
        "the registrant's own answer (after the commit), same registrations",
        "ms",
        [run["answer_sample"] for run in runs],
        sense="<=",
        parameters=parameters,
        details={"push": summary(push), "answer": summary(answered), "holders": result["holders"], "pids": result["pids"]},
        notes=[f"push latency over all {len(push)} registrations: median {summary(push)['median_ms']} ms,"
               f" p99 {summary(push)['p99_ms']} ms", *notes],
    )  # fmt: skip


def run(ctx: Context) -> list[Figure]:
    """Measure figure 13c in both set-ups."""
    settings = ctx.settings
    registrations = REGISTRATIONS // 10 if settings.quick else REGISTRATIONS
    watched = 20 if settings.quick else WATCHED
    parameters = {"registrations": registrations, "watched_ids": watched, "max_pause_ms": 1000 * MAX_PAUSE, "policy": "open"}
    one = one_setup(ctx, 1, registrations, watched)
    two = one_setup(ctx, 2, registrations, watched)
    pids = two["pids"]
    holders = two["holders"]
    steered = holders["watcher"] == pids[0] and holders["registrant"] == pids[1]
    crossing = (
        "the watcher's connection was held by the main process and the registrant's by the worker (checked in /proc)"
        if steered
        else f"NOT steered as meant: connections held by {holders} (main {pids[0]}, worker {pids[1:]}); the latencies"
        " are of whatever processes those are"
    )
    return [
        figure_of(
            FIGURE_ID,
            "registration -> watcher push latency, one registry process",
            one,
            {**parameters, "workers": 1},
            ["the watcher and the registrant on the same process: the push is sent after the commit"],
        ),
        figure_of(
            WORKERS_ID,
            "registration -> watcher push latency across two registry workers (SQLite)",
            two,
            {**parameters, "workers": 2, "steered": steered},
            [crossing, "the watcher's process learns of the other's commit by polling the change log every 20 ms"],
        ),
    ]
