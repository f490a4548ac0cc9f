"""Profile the product's side of a benchmark: ``python -m bench.profile SCENARIO``.

Starts the same server the benchmark uses (pinned to the server core), drives it with the
same load generator (pinned to the other core) for ``--seconds``, and meanwhile samples
the server with ``py-spy`` (all threads; install it with ``pip install py-spy``) or, with
``--cprofile``, profiles the reactor thread with ``cProfile``. Prints the top functions by
own time and by inclusive time, and the rate reached while profiled (lower than in the
benchmark: profiling costs the server time).

Scenarios: ``lookups`` (figure 1), ``sessions`` (2), ``registrations`` (3), ``issuance``
(4), ``sixchat-handshakes`` (5), ``sixchat-messages`` (6), ``sixchat-bulk`` (7),
``large-lookups`` (8, with ``--users``), ``mixed`` (1m: 2 % registrations, look-ups
spread wider than the answer cache, ``--users`` directory), ``idle-lookups`` (9: look-ups on one connection
while ``--idle`` connections are held), ``sixid-lookups`` (13a: cold sixid look-ups over
``--users`` IDs, from :mod:`bench.sixid_data`'s kept data), ``sixid-registrations`` (13b). With ``--postgres``, the registry of the IRP
scenarios stores in a PostgreSQL database (:mod:`bench.irp_postgres`) instead of SQLite.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.fixtures import HOST, Pki, client_context, source_addresses
from bench.harness import Context, Settings
from bench.irp_server import OK, lookup_frames, register_frames, registry
from bench.processes import Worker
from bench.sampling import LOAD_CPU, CpuWindow, Sample, pin

SCENARIOS = (
    "lookups",
    "sessions",
    "registrations",
    "issuance",
    "sixchat-handshakes",
    "sixchat-messages",
    "sixchat-bulk",
    "large-lookups",
    "idle-lookups",
    "mixed",
    "sixid-lookups",
    "sixid-registrations",
)


# ---------------------------------------------------------------------------------------
# Load generator side (run in the pinned worker)


def drive(scenario: str, info: dict[str, Any], seconds: float, extra: dict[str, Any]) -> Sample:
    """Run ``scenario``'s load against the server described by ``info`` for ``seconds``."""
    from bench import loadgen

    if scenario.startswith("sixid-"):
        from bench.sixid_load import OK as ANSWERED
        from bench.sixid_load import FreshRegistrations, UniformLookups, device_keys
        from bench.sixid_lookups import ping_frame

        requests: Any
        if scenario == "sixid-lookups":
            with open(info["ids_path"], "rb") as handle:
                requests = UniformLookups(handle.read())
        else:
            requests = FreshRegistrations(device_keys(5000))
        connections = loadgen.connect_tls(
            HOST, info["port"], [client_context(None)], 50, sources=source_addresses(50), first=ping_frame(), check=ANSWERED
        )
        try:
            return loadgen.round_trips(connections, requests, warmup=0.5, duration=seconds, server_pid=info["pid"])
        finally:
            for connection in connections:
                connection.close()
    if scenario in ("lookups", "registrations", "large-lookups", "issuance", "idle-lookups", "mixed"):
        count = 1 if scenario == "idle-lookups" else 50
        users = extra.get("users") or info["users"][:count]
        frames = {
            "registrations": register_frames(),
            "issuance": extra.get("frames"),
            "mixed": extra.get("frames"),
        }.get(scenario) or lookup_frames(info["targets"])
        first = None if scenario == "issuance" else lookup_frames(info["targets"], 1)[0]
        held = []
        if scenario == "idle-lookups":
            held = loadgen.connect_tls(
                HOST,
                info["port"],
                [client_context(user) for user in info["users"]],
                extra["idle"],
                sources=source_addresses(extra["idle"] // 50 + 1, first=300),
                per_source=50,
                first=first,
                check=OK,
            )
        connections = loadgen.connect_tls(
            HOST,
            info["port"],
            [client_context(user) for user in users],
            len(users),
            sources=source_addresses(len(users)),
            first=first,
            check=OK,
        )
        try:
            return loadgen.round_trips(
                connections,
                frames,
                warmup=0.5,
                duration=seconds,
                server_pid=info["pid"],
                limit=45 if scenario == "issuance" else None,
                trees={"postgres": extra["postmaster"]} if extra.get("postmaster") else None,
            )
        finally:
            for connection in [*connections, *held]:
                connection.close()
    if scenario == "sessions":
        from bench.tls_handshakes import tls_sessions

        contexts = [client_context(user) for user in info["users"]]
        request = lookup_frames(info["targets"], 1)[0]
        return tls_sessions(info["port"], info["pid"], contexts, request, warmup=0.5, duration=seconds, check=OK)
    pki: Pki = extra["pki"]
    if scenario == "sixchat-handshakes":
        from bench.sixchat_handshakes import sixchat_sessions

        return sixchat_sessions(info["port"], info["pid"], pki, warmup=0.5, duration=seconds)
    if scenario in ("sixchat-messages", "sixchat-bulk"):
        from bench.sixchat_messages import WINDOW, chat_bodies
        from bench.sixchat_server import credentials, open_session
        from common.identity import Identity
        from sixchat.record import InnerType
        from sixchat.wire.application import Ping

        framed, session = open_session(info["port"], credentials(pki, pki.users[0]), Identity(pki.server.name, pki.domain))
        try:
            if scenario == "sixchat-messages":
                bodies = chat_bodies()
                counter = iter(range(1 << 62))

                def next_record() -> bytes:
                    return session._seal(InnerType.APPLICATION, bodies[next(counter) % len(bodies)])  # type: ignore[no-any-return]

                return loadgen.windowed(
                    framed, next_record, window=WINDOW, warmup=0.5, duration=seconds, server_pid=info["pid"]
                )
            payload = os.urandom(65536)
            window = CpuWindow(info["pid"])
            window.begin()
            sent = 0
            while time.perf_counter() - window._start < seconds:
                batch = [session.send_data(payload) for _ in range(512)]
                batch.append(session.send_message(Ping()))
                batch.reverse()
                pending: list[bytes] = batch

                def take_record(pending: list[bytes] = pending) -> bytes | None:
                    return pending.pop() if pending else None

                loadgen.send_and_wait(framed, take_record)
                sent += 512 * 65536
            window.end()
            return window.sample(sent / window.wall / 1e6)
        finally:
            framed.close()
    raise ValueError(scenario)


# ---------------------------------------------------------------------------------------
# Reading py-spy's collapsed stacks


#: Leaf frames where a thread waits rather than works (py-spy samples them anyway).
IDLE_LEAVES = (
    "EPollReactor.doPoll (",
    "Condition.wait (",
    "_recv_bytes (",
    "_recv (multiprocessing",
    "poll (multiprocessing",
)


def summarise(collapsed: str, top: int = 25) -> str:
    """Top functions by own and by inclusive samples, from py-spy's raw (collapsed)
    output, as shares of the samples in which the server was working (not waiting)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = [frame for frame in stack.split(";") if frame]
        # py-spy's raw lines may start with the process or thread.
        frames = [frame for frame in parts if not frame.startswith(("process ", "thread "))]
        thread = next((frame for frame in parts if frame.startswith("thread ")), "")
        total += count
        if not frames:
            continue
        leaf = _short(frames[-1])
        if leaf.startswith(IDLE_LEAVES):
            idle += count
            continue
        own[leaf] += count
        threads[_thread_role([thread, *frames])] += count
        for name in {_short(frame) for frame in frames}:
            inclusive[name] += count
        del thread
    busy = max(total - idle, 1)
    lines = [f"{total} samples, {busy} busy ({idle} waiting in epoll, locks or pipes); shares of busy samples", ""]
    lines += ["by thread: " + ", ".join(f"{name} {100 * count / busy:.1f}%" for name, count in threads.most_common()), ""]
    lines += ["by own time:"]
    lines += [f"  {100 * count / busy:5.1f}%  {name}" for name, count in own.most_common(top)]
    lines += ["", "by inclusive time:"]
    lines += [f"  {100 * count / busy:5.1f}%  {name}" for name, count in inclusive.most_common(top)]
    return "\n".join(lines)


def _thread_role(frames: list[str]) -> str:
    """"reactor" for the reactor thread, "pool" for thread-pool workers, else "other"."""
    text = ";".join(frames[:8])
    if "MainThread" in text or "mainLoop" in text:
        return "reactor"
    if "PoolThread" in text or "_threadworker" in text:
        return "pool"
    return "other"


def _short(frame: str) -> str:
    """``function (path/to/file.py:123)`` without the line number and with a short path."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


# ---------------------------------------------------------------------------------------
# Orchestration


def main(argv: list[str] | None = None) -> int:
    """Profile one scenario."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--users", type=int, default=1_000_000, help="directory size for large-lookups and mixed, IDs for sixid-lookups")
    parser.add_argument("--idle", type=int, default=2000, help="held connections for idle-lookups")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL")
    parser.add_argument("--output", default=None, help="also keep py-spy's collapsed stacks here")
    parser.add_argument("--postgres", action="store_true", help="the registry on PostgreSQL (IRP scenarios but large-lookups)")
    parser.add_argument("--cprofile", action="store_true", help="cProfile of the reactor thread (call counts) instead of py-spy")
    arguments = parser.parse_args(argv)
    pin(LOAD_CPU)
    workdir = tempfile.mkdtemp(prefix="irp-profile-")
    settings = Settings()
    ctx = Context(settings, workdir)
    extra: dict[str, Any] = {}
    try:
        scenario = arguments.scenario
        if scenario == "sixid-lookups":
            from bench.sixid_lookups import start_registry

            server = start_registry(ctx, arguments.users)
        elif scenario == "sixid-registrations":
            from bench.sixid_server import UNLIMITED

            server = ctx.server(
                "sixid-registrations",
                "bench.sixid_server:serve_sixid",
                {"data_dir": ctx.path("sixid-registrations"), "policy": "open", "sixid": dict(UNLIMITED)},
            )
        elif scenario.startswith("sixchat"):
            from bench.sixchat_handshakes import sixchat_pki, sixchat_server

            pki = sixchat_pki(ctx)
            server = sixchat_server(ctx)
            extra["pki"] = pki
        else:
            bulk = arguments.users if scenario in ("large-lookups", "mixed") else settings.small_users
            if arguments.postgres:
                if scenario == "large-lookups":
                    parser.error("--postgres loads the small directory only")
                from bench.irp_postgres import postgres_registry, postmaster_pid, start_postgres

                postgres = start_postgres()
                server = postgres_registry(ctx, "pg-profile", postgres.create_database(), ctx.path("pg-profile"), bulk)
                extra["postmaster"] = postmaster_pid(postgres)
            else:
                server = registry(ctx, bulk)
            if scenario == "issuance":
                from bench.irp_issuance import checked_frames

                extra["users"] = server.call("cohort", count=50, prefix="prof")
                extra["frames"] = checked_frames(settings.key_type)
            if scenario == "mixed":
                # Figure 1m's requests: 2 % registrations, look-ups spread wider than the
                # answer cache (see bench.irp_mixed).
                from bench.irp_mixed import workload_sizes
                from bench.irp_server import mixed_frames, mixed_plan, spread_targets
                from irp.server.caching import ANSWER_CACHE_SIZE

                registrants = [user.name for user in server.info["users"][: settings.connections]]
                server.call("register", names=registrants)
                spread_count, request_count = workload_sizes(ANSWER_CACHE_SIZE, False)
                plan = mixed_plan(spread_targets(bulk, spread_count), registrants, request_count)
                extra["frames"] = mixed_frames(plan)
            extra["idle"] = arguments.idle
        output = arguments.output or os.path.join(workdir, "stacks.txt")
        # The idle scenario spends a while opening connections before the timed window.
        delay = arguments.idle / 250 if scenario == "idle-lookups" else 0.0
        with Worker() as worker:
            future_args = (scenario, server.info, arguments.seconds + 0.5, extra)
            command = [
                shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
                "record", "-p", str(server.pid), "-d", str(int(arguments.seconds)), "-r", str(arguments.rate),
                "-f", "raw", "-o", output,
            ]
            # Native frames need the process stopped for each sample; otherwise do not.
            command.append("--native" if arguments.native else "--nonblocking")
            command.append("--threads")
            if arguments.gil:
                command.append("--gil")
            executor = worker._executor
            assert executor is not None
            future = executor.submit(drive, *future_args)
            time.sleep(1.0 + delay)
            if arguments.cprofile:
                server.call("profile_start")
                time.sleep(arguments.seconds)
                report = server.call("profile_stop", top=arguments.top)
                sample = future.result(timeout=arguments.seconds + delay + 600)
                print(report)
                print(f"rate while profiled: {sample.value:,.0f}/s (cProfile slows the server down)")
                return 0
            profiler = subprocess.run(command, capture_output=True, text=True, check=False)
            sample = future.result(timeout=arguments.seconds + delay + 600)
        if profiler.returncode != 0:
            print(profiler.stderr, file=sys.stderr)
            return 1
        with open(output, encoding="utf-8") as handle:
            print(summarise(handle.read(), arguments.top))
        print(
            f"\nrate while profiled: {sample.value:,.0f}/s; server CPU {100 * (sample.server_cpu or 0):.0f}%,"
            f" load generator CPU {100 * sample.load_cpu:.0f}%"
            + (f", PostgreSQL CPU {100 * sample.details['tree_cpu']['postgres']:.0f}%" if "tree_cpu" in sample.details else "")
        )
        return 0
    finally:
        ctx.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
