"""Figure 10: a well-behaved client's look-up latency while the registry is attacked (slowloris, a connection flood, password guessing).

``python -m bench.abuse`` (``--quick``: the short run), or ``python -m bench --only abuse``
within the suite. One registry (``bench/irp_server.py``: the real ``RegistryService``, its
own CA, SQLite, log at level info, pinned to the server core) serves three attacks in turn.
It runs with the product's default limits (64 connections per address, 5 failed logins per
user, 20 per address, a 30 s lock-out doubling to 15 min, Argon2id at its default cost:
64 MiB, 3 passes, 4 lanes) except two timeouts, lowered so that attackers are closed and
come back several times within a short run (``twistd irp --handshake-timeout 10
--frame-timeout 5``; ``--quick``: 2 and 1; the defaults are 30 and 30).

The well-behaved client is one TLS connection logged in with its user certificate, from a
loopback address of its own (``127.0.1.6``). It does sequential look-ups of users of a
1,000-user directory (quick: 200), one every 5 ms (the next one at once when an answer took longer),
and records each one's latency. The attack runs in another process on the load
generator's core, at a lower priority (nice 10) so that it does not delay the client's
own process; the client also reads the server's CPU time, run delay and memory every
0.25 s. Each scenario has four phases, told apart afterwards by their time stamps:

* **none**: no attack (6 s; quick 2 s);
* **ramp**: the attack starts (its connections are being opened);
* **during**: the attack is established and kept up (20 s; quick 4 s);
* **after**: the attack's connections are closed; 1 s later, 6 s of the client alone
  (quick 0.5 s, 2 s).

The figure is the client's median latency during the attack over its median with none
(also p90 over p90). The scenarios:

**slowloris** (10a)
    1,000 connections (quick 100), 25 per source address (40 addresses, below the limit of
    64): half are silent TCP connections that never start TLS, half are anonymous TLS
    connections that send two bytes of a frame header and stall. Whenever the server
    closes one, it is opened again at once (at most 64 being opened at a time).
**connection flood** (10b)
    One source address opens TLS connections as fast as the server completes them (32
    handshakes in flight, no client certificate). The first 64 are accepted and held
    silently (the server closes them after the handshake timeout, and the flood takes the
    slots again); every other one gets ``too-many-connections`` right after its handshake
    and is closed and replaced at once.
**password guessing** (10c)
    4 guessers (quick 2), each on its own address with 8 anonymous TLS connections
    (quick 4), send ``<login>`` with a wrong password for one user who has a password,
    one request outstanding per connection, as fast as the server answers. Answers are
    counted by their error name: ``login-failed`` (the password was hashed and
    compared) or ``rate-limited`` (refused before hashing).

Reported besides the latencies: the server's CPU share and memory in each phase, and the
attackers' outcome (connections opened, closed by the server and with which error, after
how long, refusals and answers counted). ``--profile SCENARIO`` samples the server with
``py-spy`` during that attack (``--gil``: only the thread holding the GIL; the latencies
of a profiled run are not comparable).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure, Settings
from bench.irp_server import OK, lookup_frames
from bench.processes import Worker
from bench.report import format_number, machine_info, write_json
from bench.sampling import (
    DISTURBED_SHARE,
    LOAD_CPU,
    SERVER_CPU,
    Sample,
    core_times,
    cpu_pressure,
    own_cpu_seconds,
    pin,
    process_cpu_seconds,
    process_rss,
    process_run_delay,
)

SCENARIOS = ("slowloris", "flood", "guessing")
FIGURE_IDS = {"slowloris": "10a", "flood": "10b", "guessing": "10c"}
LABELS = {"slowloris": "slowloris", "flood": "flood", "guessing": "guessing"}
TITLES = {
    "slowloris": "slowloris",
    "flood": "connection flood from one address",
    "guessing": "password guessing",
}
#: The user the guessers try, and its real password (never sent).
VICTIM = "victim"
VICTIM_PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "password123456"
#: The well-behaved client's own source address.
CLIENT_SOURCE = source_addresses(1, first=5)[0]
#: First source-address indexes of each attack (see :func:`bench.fixtures.source_addresses`).
SLOWLORIS_FIRST, FLOOD_FIRST, GUESSERS_FIRST = 1000, 2000, 2100
#: Two of the four bytes of a frame header: a frame is started, never finished.
PARTIAL_HEADER = b"\x00\x00"
#: The attacker's scheduling priority (the client's process keeps the default, 0).
ATTACKER_NICE = 10
#: How often the client samples the server's CPU time and memory.
TICK = 0.25
_LENGTH = struct.Struct(">I")
_ERROR = re.compile(rb'<error [^>]*name="([^"]+)"[^>]*>([^<]*)</error>')


@dataclass(frozen=True)
class Plan:
    """The sizes and durations of one abuse run (full or ``--quick``)."""

    quick: bool
    key_type: str
    none_seconds: float
    attack_seconds: float
    after_seconds: float
    settle_seconds: float
    #: Seconds between the starts of the client's look-ups.
    interval: float
    handshake_timeout: float
    frame_timeout: float
    slowloris_connections: int
    slowloris_per_address: int
    #: Connections being opened at once (slowloris, guessers) and flood handshakes in flight.
    opening_cap: int
    flood_in_flight: int
    guessers: int
    guesser_connections: int
    directory_users: int

    @classmethod
    def for_settings(cls, settings: Settings) -> Plan:
        """The full or quick plan."""
        if settings.quick:
            return cls(
                quick=True,
                key_type=settings.key_type,
                none_seconds=2.0,
                attack_seconds=4.0,
                after_seconds=2.0,
                settle_seconds=0.5,
                interval=0.005,
                handshake_timeout=2.0,
                frame_timeout=1.0,
                slowloris_connections=100,
                slowloris_per_address=25,
                opening_cap=64,
                flood_in_flight=32,
                guessers=2,
                guesser_connections=4,
                directory_users=200,
            )
        return cls(
            quick=False,
            key_type=settings.key_type,
            none_seconds=6.0,
            attack_seconds=20.0,
            after_seconds=6.0,
            settle_seconds=1.0,
            interval=0.005,
            handshake_timeout=10.0,
            frame_timeout=5.0,
            slowloris_connections=1000,
            slowloris_per_address=25,
            opening_cap=64,
            flood_in_flight=32,
            guessers=4,
            guesser_connections=8,
            directory_users=1000,
        )


# ---------------------------------------------------------------------------------------
# The well-behaved client (load generator process)


def _round_trip(epoll: Any, connection: Any, frame: bytes, timeout: float = 60.0) -> None:
    """Send one request and wait for its answer."""
    from bench.loadgen import LoadError

    deadline = time.monotonic() + timeout
    connection.outstanding += 1
    connection.write(frame)
    while connection.outstanding > 0:
        epoll.poll(1.0)
        connection.flush()
        connection.pump_in()
        if connection.closed:
            raise LoadError("the server closed the well-behaved client's connection")
        if time.monotonic() > deadline:
            raise LoadError(f"a look-up took more than {timeout:.0f} s")
    if connection.bad:
        raise LoadError(f"the well-behaved client's look-up was refused: {connection.bad_sample[:300]!r}")


def _tick(server_pid: int) -> dict[str, Any]:
    """The server's CPU time, run delay and memory, its core's and this process's times, now."""
    busy, total = core_times().get(SERVER_CPU, (0.0, 0.0))
    return {
        "t": time.monotonic(),
        "server_cpu": process_cpu_seconds(server_pid),
        "server_delay": process_run_delay(server_pid),
        "server_rss": process_rss(server_pid),
        "core_busy": busy,
        "core_total": total,
        "client_cpu": own_cpu_seconds(),
        "client_delay": process_run_delay(),
    }


def _read_mark(path: str) -> float | None:
    """The time stamp written in ``path`` (None when not there yet; now if unreadable)."""
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    try:
        return float(text)
    except ValueError:
        return time.monotonic()


def _write_mark(path: str, value: float) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(repr(value))
    os.replace(temporary, path)


def well_behaved(info: dict[str, Any], plan: Plan, start_at: float, stop_file: str) -> dict[str, Any]:
    """Client process: sequential look-ups, one every ``plan.interval`` s, from ``start_at``
    until the attack has stopped (``stop_file``) plus the settling and "after" phases.

    Returns every look-up's (start time, latency) and the periodic CPU and memory ticks.
    """
    from bench.loadgen import LoadError, connect_tls

    frames = lookup_frames(info["targets"])
    server_pid = info["pid"]
    (client,) = connect_tls(
        HOST, info["port"], [client_context(info["users"][0])], 1, sources=[CLIENT_SOURCE], first=frames[0], check=OK
    )
    epoll = select.epoll()
    epoll.register(client.fd, select.EPOLLIN)
    lookups: list[tuple[float, float]] = []
    ticks: list[dict[str, Any]] = []
    try:
        for index in range(200):  # warm-up
            _round_trip(epoll, client, frames[index % len(frames)])
        time.sleep(max(start_at - time.monotonic(), 0.0))
        hard_deadline = start_at + plan.none_seconds + plan.attack_seconds + plan.after_seconds + 300.0
        next_tick = time.monotonic()
        end: float | None = None
        index = 0
        while True:
            now = time.monotonic()
            if now >= next_tick:
                ticks.append(_tick(server_pid))
                next_tick = now + TICK
                if end is None:
                    stopped = _read_mark(stop_file)
                    if stopped is not None:
                        end = stopped + plan.settle_seconds + plan.after_seconds
            if end is not None and now >= end:
                break
            if now > hard_deadline:
                raise LoadError("the attack never stopped")
            began = time.monotonic()
            _round_trip(epoll, client, frames[index % len(frames)])
            lookups.append((began, time.monotonic() - began))
            index += 1
            pause = began + plan.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        ticks.append(_tick(server_pid))
    finally:
        epoll.close()
        client.goodbye()
    return {"lookups": lookups, "ticks": ticks}


# ---------------------------------------------------------------------------------------
# Attackers (another process on the load generator's core)


class Intruder:
    """One attacking connection: a TCP connection from ``source`` and, with a TLS
    ``context``, a handshake; then it sends what it is told and reads the server's
    frames until the server closes it."""

    def __init__(self, port: int, source: str, context: Any, role: str, slot: int) -> None:
        from OpenSSL import SSL

        from bench.loadgen import start_connect

        self._SSL = SSL
        self.role = role
        self.slot = slot
        self.source = source
        self.started = time.monotonic()
        self.opened_at: float | None = None
        self.sock = start_connect(HOST, port, source)
        self.fd = self.sock.fileno()
        self.tls: Any = None
        if context is not None:
            self.tls = SSL.Connection(context, self.sock)
            self.tls.set_connect_state()
        self.state = "connect"
        self.wanted = select.EPOLLOUT
        self.inbox = bytearray()
        self.outbox = b""
        self.frames_seen = 0
        self.last_error: tuple[str, str] | None = None
        self.end_reason: str | None = None
        self.ended_at: float | None = None

    @property
    def opening(self) -> bool:
        """Whether the TCP connection or the TLS handshake is still under way."""
        return self.state in ("connect", "handshake")

    def write(self, data: bytes) -> None:
        """Send ``data`` (queued if the socket is full)."""
        self.outbox += data
        self._flush()

    def _flush(self) -> None:
        if not self.outbox:
            return
        try:
            sent = self.tls.send(self.outbox) if self.tls is not None else self.sock.send(self.outbox)
        except (BlockingIOError, self._SSL.WantReadError, self._SSL.WantWriteError):
            sent = 0
        except (OSError, self._SSL.Error):
            sent = len(self.outbox)  # the peer is gone; the read side will tell
        self.outbox = self.outbox[sent:]

    def _end(self, reason: str) -> None:
        self.state = "closed"
        self.end_reason = reason
        self.ended_at = time.monotonic()

    def step(self) -> list[bytes]:
        """Advance after a readiness event; return the frames that arrived (whole payloads).

        Sets :attr:`state` to ``"closed"`` and :attr:`end_reason` when the connection ended.
        """
        SSL = self._SSL
        if self.state == "connect":
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._end(f"connect failed ({errno.errorcode.get(error, error)})")
                return []
            if self.tls is None:
                self.state = "open"
                self.opened_at = time.monotonic()
                self.wanted = select.EPOLLIN
                return []
            self.state = "handshake"
        if self.state == "handshake":
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                self.wanted = select.EPOLLIN
                return []
            except SSL.WantWriteError:
                self.wanted = select.EPOLLOUT
                return []
            except (SSL.Error, OSError) as error:
                self._end(f"closed during the TLS handshake ({type(error).__name__})")
                return []
            self.state = "open"
            self.opened_at = time.monotonic()
        self._flush()
        self.wanted = select.EPOLLIN | (select.EPOLLOUT if self.outbox else 0)
        ended: str | None = None
        while True:
            try:
                data = self.tls.recv(65536) if self.tls is not None else self.sock.recv(65536)
            except (BlockingIOError, SSL.WantReadError, SSL.WantWriteError):
                break
            except SSL.ZeroReturnError:
                ended = "close_notify"
                break
            except (ConnectionResetError, SSL.SysCallError) as error:
                reset = isinstance(error, ConnectionResetError) or (error.args and error.args[0] == errno.ECONNRESET)
                ended = "reset" if reset else "eof"
                break
            except (OSError, SSL.Error):
                ended = "eof"
                break
            if not data:
                ended = "eof"
                break
            self.inbox += data
        frames = []
        inbox = self.inbox
        position = 0
        while len(inbox) - position >= 4:
            (length,) = _LENGTH.unpack_from(inbox, position)
            if len(inbox) - position - 4 < length:
                break
            frames.append(bytes(inbox[position + 4 : position + 4 + length]))
            position += 4 + length
        if position:
            del inbox[:position]
        for frame in frames:
            self.frames_seen += 1
            found = _ERROR.search(frame)
            if found:
                self.last_error = (found.group(1).decode(), found.group(2).decode(errors="replace"))
        if ended is not None:
            self._end(self.describe_end(ended))
        return frames

    def describe_end(self, how: str) -> str:
        """Why the connection ended, from the last error frame received (if any)."""
        if self.last_error is not None:
            name, message = self.last_error
            return f"{name}: {message}"
        return {"reset": "reset without a word", "close_notify": "closed (close_notify) without a word"}.get(
            how, "closed without a word"
        )

    def close(self) -> None:
        """Close the socket (no close_notify)."""
        try:
            self.sock.close()
        except OSError:
            pass


def _error_of(frame: bytes) -> str:
    """``ok`` or the error name of an IRP answer."""
    found = _ERROR.search(frame)
    if found:
        return found.group(1).decode()
    return "ok" if OK in frame[:200] else "unreadable"


class Raid:
    """The attack's event loop: opens :class:`Intruder` connections, reacts to what the
    server does with them (hooks of the subclasses), and keeps the attack up for
    ``plan.attack_seconds`` once it is established."""

    name = "raid"

    def __init__(self, info: dict[str, Any], plan: Plan, established_file: str) -> None:
        self.port = int(info["port"])
        self.plan = plan
        self.established_file = established_file
        self.epoll = select.epoll()
        self.by_fd: dict[int, Intruder] = {}
        self.queue: deque[int] = deque()
        self.attempts = 0
        self.opened = 0
        self.opening = 0
        #: (role, why) of every connection the server ended, and how long each lived.
        self.ends: Counter[tuple[str, str]] = Counter()
        self.lifetimes: dict[tuple[str, str], list[float]] = {}
        self.started_at = 0.0
        self.established_at: float | None = None
        self.stopped_at: float | None = None
        #: Connections open now, the most at once, and the slots that were ever up.
        self.open_now = 0
        self.max_open = 0
        self.ever_up: set[int] = set()

    # -- hooks ------------------------------------------------------------------------

    def begin(self) -> None:
        """Queue the first connections."""

    def make(self, slot: int) -> Intruder:
        """A new connection for ``slot``."""
        raise NotImplementedError

    def on_open(self, intruder: Intruder) -> None:
        """The connection is up (TCP connected, or TLS handshake done)."""

    def on_frames(self, intruder: Intruder, frames: list[bytes]) -> None:
        """Frames arrived on an open connection."""

    def on_end(self, intruder: Intruder) -> None:
        """The server ended the connection (or it failed to open): open it again."""
        self.queue.append(intruder.slot)

    def is_established(self) -> bool:
        """Whether the attack is fully in place."""
        raise NotImplementedError

    def may_open(self) -> bool:
        """Whether another queued connection may be opened now."""
        return self.opening < self.plan.opening_cap

    def summary(self) -> dict[str, Any]:
        """What this attack adds to the common outcome."""
        return {}

    # -- the loop ---------------------------------------------------------------------

    def _launch(self) -> None:
        while self.queue and self.may_open():
            slot = self.queue.popleft()
            try:
                intruder = self.make(slot)
            except OSError as error:
                self.ends[("connect", f"connect failed ({error})")] += 1
                self.queue.append(slot)
                return
            self.attempts += 1
            self.opening += 1
            self.by_fd[intruder.fd] = intruder
            self.epoll.register(intruder.fd, intruder.wanted)

    def _finish(self, intruder: Intruder) -> None:
        if intruder.opened_at is not None:
            self.open_now -= 1
        self.epoll.unregister(intruder.fd)
        del self.by_fd[intruder.fd]
        intruder.close()

    def _record_end(self, intruder: Intruder) -> None:
        key = (intruder.role, intruder.end_reason or "?")
        self.ends[key] += 1
        self.lifetimes.setdefault(key, []).append((intruder.ended_at or time.monotonic()) - intruder.started)

    def end_now(self, intruder: Intruder, reason: str | None = None) -> None:
        """The attacker closes ``intruder`` itself after an answer that ends it (the
        server closes it next): counted as ended by the server, for ``reason`` (by
        default the error the server sent)."""
        if intruder.state != "closed":
            intruder._end(intruder.describe_end("eof"))
        if reason is not None:
            intruder.end_reason = reason
        self._record_end(intruder)
        self._finish(intruder)
        self.on_end(intruder)

    def run(self) -> dict[str, Any]:
        """Attack until ``plan.attack_seconds`` after it is established; close everything."""
        plan = self.plan
        cpu_before = own_cpu_seconds()
        delay_before = process_run_delay()
        self.started_at = time.monotonic()
        self.begin()
        give_up = self.started_at + 120.0
        try:
            while True:
                now = time.monotonic()
                if self.established_at is None and self.is_established():
                    self.established_at = now
                    _write_mark(self.established_file, now)
                if self.established_at is not None and now >= self.established_at + plan.attack_seconds:
                    break
                if self.established_at is None and now > give_up:
                    raise RuntimeError(f"{self.name}: the attack was not in place after 120 s")
                self._launch()
                for fd, _events in self.epoll.poll(0.02):
                    intruder = self.by_fd.get(fd)
                    if intruder is None:
                        continue
                    was_opening = intruder.opening
                    frames = intruder.step()
                    if was_opening and not intruder.opening:
                        self.opening -= 1
                        if intruder.opened_at is not None:
                            self.opened += 1
                            self.open_now += 1
                            self.max_open = max(self.max_open, self.open_now)
                            self.ever_up.add(intruder.slot)
                            if intruder.state == "open":
                                self.on_open(intruder)
                    if frames:
                        self.on_frames(intruder, frames)
                    if intruder.state == "closed":
                        if fd in self.by_fd:  # not already ended by a hook
                            self._record_end(intruder)
                            self._finish(intruder)
                            self.on_end(intruder)
                        continue
                    if fd in self.by_fd:
                        self.epoll.modify(fd, intruder.wanted)
        finally:
            still_open = Counter(intruder.role for intruder in self.by_fd.values() if intruder.state == "open")
            for intruder in list(self.by_fd.values()):
                intruder.close()
            self.by_fd.clear()
            self.epoll.close()
            self.stopped_at = time.monotonic()
        wall = self.stopped_at - self.started_at
        lifetimes = {
            f"{role}: {why}": {
                "count": len(values),
                "median_s": statistics.median(values),
                "min_s": min(values),
                "max_s": max(values),
            }
            for (role, why), values in self.lifetimes.items()
        }
        return {
            "scenario": self.name,
            "started_at": self.started_at,
            "established_at": self.established_at,
            "stopped_at": self.stopped_at,
            "connections_opened": self.attempts,
            "connections_up": self.opened,
            "most_open_at_once": self.max_open,
            "open_at_the_end": dict(still_open),
            "ended": {f"{role}: {why}": count for (role, why), count in self.ends.most_common()},
            "lifetimes": lifetimes,
            "attacker_cpu": (own_cpu_seconds() - cpu_before) / wall,
            "attacker_wait": (process_run_delay() - delay_before) / wall,
            **self.summary(),
        }


class Slowloris(Raid):
    """Many slow or silent connections from many addresses, opened again when closed."""

    name = "slowloris"

    def __init__(self, info: dict[str, Any], plan: Plan, established_file: str) -> None:
        super().__init__(info, plan, established_file)
        count = plan.slowloris_connections
        self.sources = source_addresses(-(-count // plan.slowloris_per_address), first=SLOWLORIS_FIRST)
        self.context = client_context(None)

    def begin(self) -> None:
        """Every slot, in order."""
        self.queue.extend(range(self.plan.slowloris_connections))

    def role(self, slot: int) -> str:
        """Even slots are silent TCP, odd ones TLS with a partial frame header."""
        return "silent TCP" if slot % 2 == 0 else "TLS, partial header"

    def make(self, slot: int) -> Intruder:
        """A silent TCP or a TLS connection from the slot's address."""
        role = self.role(slot)
        context = None if role == "silent TCP" else self.context
        return Intruder(self.port, self.sources[slot // self.plan.slowloris_per_address], context, role, slot)

    def on_open(self, intruder: Intruder) -> None:
        """Start a frame and stall."""
        if intruder.tls is not None:
            intruder.write(PARTIAL_HEADER)

    def on_frames(self, intruder: Intruder, frames: list[bytes]) -> None:
        """Any answer here is the server's closing error: leave at once."""
        self.end_now(intruder)

    def is_established(self) -> bool:
        """Every slot up (once: with short timeouts the first ones may already be closed
        and coming back when the last ones open)."""
        return len(self.ever_up) >= self.plan.slowloris_connections

    def summary(self) -> dict[str, Any]:
        """The shape of the attack."""
        return {
            "connections": self.plan.slowloris_connections,
            "source_addresses": len(self.sources),
            "per_address": self.plan.slowloris_per_address,
        }


class Flood(Raid):
    """One address opening TLS connections as fast as the server completes them."""

    name = "flood"

    def __init__(self, info: dict[str, Any], plan: Plan, established_file: str) -> None:
        super().__init__(info, plan, established_file)
        self.source = source_addresses(1, first=FLOOD_FIRST)[0]
        self.context = client_context(None)
        self.next_slot = 0
        self.refused = 0
        self.refusal_times: list[float] = []
        self.handshakes: list[float] = []

    def begin(self) -> None:
        """The first wave."""
        self._refill()

    def _refill(self) -> None:
        while len(self.queue) + self.opening < self.plan.flood_in_flight:
            self.queue.append(self.next_slot)
            self.next_slot += 1

    def may_open(self) -> bool:
        """Keep ``flood_in_flight`` connections being opened (TCP connect or TLS
        handshake); an open one is refused within a round trip, or is held."""
        return self.opening < self.plan.flood_in_flight

    def make(self, slot: int) -> Intruder:
        """A TLS connection without a client certificate, from the flood's one address."""
        return Intruder(self.port, self.source, self.context, "flood", slot)

    def on_open(self, intruder: Intruder) -> None:
        """Note when the handshake completed; open the next one."""
        self.handshakes.append(time.monotonic())
        self._refill()

    def on_frames(self, intruder: Intruder, frames: list[bytes]) -> None:
        """A refusal (or a held connection's time-out): leave and open another."""
        if intruder.last_error is not None and intruder.last_error[0] == "too-many-connections":
            self.refused += 1
            self.refusal_times.append(time.monotonic())
            self.end_now(intruder)
        else:
            self.end_now(intruder, "held, then " + intruder.describe_end("eof"))

    def on_end(self, intruder: Intruder) -> None:
        """Replace it."""
        self._refill()

    def is_established(self) -> bool:
        """Once the first refusal came back: the address's slots are full."""
        self._refill()
        return self.refused > 0

    def summary(self) -> dict[str, Any]:
        """Refusals and handshakes per second while established."""
        begin = self.established_at or self.started_at
        end = self.stopped_at or time.monotonic()
        span = max(end - begin, 1e-9)
        held = sum(count for (role, why), count in self.ends.items() if why.startswith("held"))
        return {
            "source_address": self.source,
            "in_flight": self.plan.flood_in_flight,
            "refused": self.refused,
            "refused_per_s": sum(1 for t in self.refusal_times if begin <= t < end) / span,
            "handshakes_per_s": sum(1 for t in self.handshakes if begin <= t < end) / span,
            "held_then_closed": held,
        }


class Guessing(Raid):
    """Guessers on their own addresses trying wrong passwords for one user."""

    name = "guessing"

    def __init__(self, info: dict[str, Any], plan: Plan, established_file: str) -> None:
        from common.wire.framing import encode_frame
        from common.wire.xmlcodec import make_element, sub_element
        from irp.wire.messages import build_request

        super().__init__(info, plan, established_file)
        self.sources = source_addresses(plan.guessers, first=GUESSERS_FIRST)
        self.context = client_context(None)
        self.frames = []
        for index in range(64):
            operation = make_element("login", {"user": VICTIM})
            sub_element(operation, "password", None, WRONG_PASSWORD)
            self.frames.append(encode_frame(build_request(1 + index, operation)))
        self.sent = 0
        self.answers: Counter[str] = Counter()
        #: (time, error name) of every answer.
        self.timeline: list[tuple[float, str]] = []

    @property
    def slots(self) -> int:
        """Connections of all guessers."""
        return self.plan.guessers * self.plan.guesser_connections

    def begin(self) -> None:
        """Every guesser's connections."""
        self.queue.extend(range(self.slots))

    def make(self, slot: int) -> Intruder:
        """An anonymous TLS connection from the guesser's address."""
        return Intruder(self.port, self.sources[slot // self.plan.guesser_connections], self.context, "guesser", slot)

    def _guess(self, intruder: Intruder) -> None:
        intruder.write(self.frames[self.sent % len(self.frames)])
        self.sent += 1

    def on_open(self, intruder: Intruder) -> None:
        """First guess."""
        self._guess(intruder)

    def on_frames(self, intruder: Intruder, frames: list[bytes]) -> None:
        """Count the answers, guess again."""
        now = time.monotonic()
        for frame in frames:
            name = _error_of(frame)
            self.answers[name] += 1
            self.timeline.append((now, name))
            if intruder.state == "open":
                self._guess(intruder)

    def is_established(self) -> bool:
        """Every connection up."""
        return len(self.ever_up) >= self.slots

    def summary(self) -> dict[str, Any]:
        """Answers by kind, over the whole attack and per second."""
        start = self.started_at
        per_second: dict[int, Counter[str]] = {}
        for moment, name in self.timeline:
            per_second.setdefault(int(moment - start), Counter())[name] += 1
        failed = [moment - start for moment, name in self.timeline if name == "login-failed"]
        end = self.stopped_at or time.monotonic()
        return {
            "guessers": self.plan.guessers,
            "connections_per_guesser": self.plan.guesser_connections,
            "attempts_answered": sum(self.answers.values()),
            "answers": dict(self.answers),
            "answers_per_s": sum(self.answers.values()) / max(end - start, 1e-9),
            "hashed_attempts_at_s": [round(moment, 3) for moment in failed],
            "answers_by_second": {str(second): dict(counts) for second, counts in sorted(per_second.items())},
        }


RAIDS: dict[str, type[Raid]] = {"slowloris": Slowloris, "flood": Flood, "guessing": Guessing}


def attack(scenario: str, info: dict[str, Any], plan: Plan, start_at: float, marks: dict[str, str]) -> dict[str, Any]:
    """Attacker process: wait for ``start_at``, run ``scenario``, write the stop mark."""
    os.setpriority(os.PRIO_PROCESS, 0, ATTACKER_NICE)
    stopped = False
    try:
        raid = RAIDS[scenario](info, plan, marks["established"])
        time.sleep(max(start_at - time.monotonic(), 0.0))
        result = raid.run()
        _write_mark(marks["stopped"], result["stopped_at"])
        stopped = True
        return result
    finally:
        if not stopped:
            _write_mark(marks["stopped"], time.monotonic())


# ---------------------------------------------------------------------------------------
# Phases and figures (orchestrator)


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(int(share * (len(ordered) - 1) + 0.5), len(ordered) - 1)]


def phase(client: dict[str, Any], begin: float, end: float) -> dict[str, Any]:
    """The client's latencies and the server's CPU and memory between ``begin`` and ``end``."""
    values = sorted(latency for moment, latency in client["lookups"] if begin <= moment < end)
    # CPU and memory from the ticks within the phase (none for a phase shorter than a tick).
    ticks = [tick for tick in client["ticks"] if begin <= tick["t"] <= end]
    result: dict[str, Any] = {"seconds": end - begin, "lookups": len(values)}
    if values:
        result.update(
            median_ms=statistics.median(values) * 1000,
            p90_ms=_percentile(values, 0.9) * 1000,
            p99_ms=_percentile(values, 0.99) * 1000,
            max_ms=values[-1] * 1000,
            lookups_per_s=len(values) / max(end - begin, 1e-9),
        )
    if len(ticks) >= 2:
        first, last = ticks[0], ticks[-1]
        wall = max(last["t"] - first["t"], 1e-9)
        server = (last["server_cpu"] - first["server_cpu"]) / wall
        core_total = last["core_total"] - first["core_total"]
        core = (last["core_busy"] - first["core_busy"]) / core_total if core_total > 0 else None
        result.update(
            server_cpu=server,
            server_wait=(last["server_delay"] - first["server_delay"]) / wall,
            server_core_busy=core,
            server_core_others=None if core is None else max(core - server, 0.0),
            server_rss_mib_max=max(tick["server_rss"] for tick in ticks) / 2**20,
            client_cpu=(last["client_cpu"] - first["client_cpu"]) / wall,
            client_wait=(last["client_delay"] - first["client_delay"]) / wall,
        )
    return result


def phases(client: dict[str, Any], raid: dict[str, Any], plan: Plan) -> dict[str, dict[str, Any]]:
    """The four phases of a scenario, from the attacker's time stamps."""
    lookups = client["lookups"]
    first = lookups[0][0] if lookups else raid["started_at"] - plan.none_seconds
    last = client["ticks"][-1]["t"]
    established = raid["established_at"] or raid["stopped_at"]
    result = {
        "none": phase(client, first, raid["started_at"]),
        "ramp": phase(client, raid["started_at"], established),
        "during": phase(client, established, raid["stopped_at"]),
        "after": phase(client, raid["stopped_at"] + plan.settle_seconds, last),
    }
    hashed = raid.get("hashed_attempts_at_s")
    if hashed:
        # Password guessing, in two parts: while passwords are being hashed (until the
        # last login-failed answer), then only refusals (rate-limited) until the end.
        last_hash = min(max(raid["started_at"] + hashed[-1], established), raid["stopped_at"])
        result["during, hashing"] = phase(client, established, last_hash)
        result["during, refusals only"] = phase(client, last_hash, raid["stopped_at"])
    return result


def timeline(client: dict[str, Any], raid: dict[str, Any]) -> list[dict[str, Any]]:
    """Second by second from the attack's start (negative: before it): the client's
    look-ups, median and worst latency, and the server's CPU share."""
    start = raid["started_at"]
    seconds: dict[int, list[float]] = {}
    for moment, latency in client["lookups"]:
        seconds.setdefault(int((moment - start) // 1), []).append(latency)
    ticks = client["ticks"]
    rows = []
    for second, values in sorted(seconds.items()):
        inside = [tick for tick in ticks if start + second <= tick["t"] <= start + second + 1]
        cpu = None
        if len(inside) >= 2:
            cpu = (inside[-1]["server_cpu"] - inside[0]["server_cpu"]) / max(inside[-1]["t"] - inside[0]["t"], 1e-9)
        rows.append(
            {
                "second": second,
                "lookups": len(values),
                "median_ms": round(statistics.median(values) * 1000, 3),
                "max_ms": round(max(values) * 1000, 3),
                "server_cpu": None if cpu is None else round(cpu, 3),
            }
        )
    return rows


def _sample(stats: dict[str, Any]) -> Sample:
    details = {key: value for key, value in stats.items() if key not in ("median_ms", "server_cpu", "client_cpu")}
    return Sample(stats.get("median_ms", float("nan")), stats["seconds"], stats.get("client_cpu", 0.0), stats.get("server_cpu"), details)


def _ratio(stats: dict[str, dict[str, Any]], key: str, of: str = "during") -> float | None:
    base = stats["none"].get(key)
    value = stats[of].get(key)
    if not base or value is None:
        return None
    return float(value / base)


def attack_text(scenario: str, plan: Plan) -> str:
    """One line saying what the attack was."""
    if scenario == "slowloris":
        count = plan.slowloris_connections
        return (
            f"{count:,} connections from {-(-count // plan.slowloris_per_address)} addresses"
            f" ({plan.slowloris_per_address} each): half silent TCP, half TLS with 2 bytes of a frame header"
        )
    if scenario == "flood":
        return f"one address, TLS connections as fast as they complete ({plan.flood_in_flight} in flight)"
    return (
        f"{plan.guessers} guessers x {plan.guesser_connections} TLS connections, wrong passwords for one user,"
        " one request outstanding per connection"
    )


def figure_of(scenario: str, result: dict[str, Any], plan: Plan) -> Figure:
    """The scenario as a harness figure: the client's median latency during the attack
    over its median with none (information only: no target)."""
    stats = result["phases"]
    notes = [
        f"p90 during/none {format_number(_ratio(stats, 'p90_ms'))}x;"
        f" median after/none {format_number(_ratio(stats, 'median_ms', 'after'))}x",
        attack_text(scenario, plan),
    ]
    return Figure(
        FIGURE_IDS[scenario],
        f"well-behaved client's median look-up latency during {TITLES[scenario]}",
        "ms",
        [_sample(stats["during"])],
        "with no attack",
        "ms",
        [_sample(stats["none"])],
        parameters={
            "attack": attack_text(scenario, plan),
            "handshake_timeout": plan.handshake_timeout,
            "frame_timeout": plan.frame_timeout,
            "client_interval_s": plan.interval,
            "client_source": CLIENT_SOURCE,
        },
        details={"phases": stats, "attackers": result["attackers"], "timeline": result["timeline"]},
        notes=notes,
    )


# ---------------------------------------------------------------------------------------
# The readable table


def _ms(value: float | None) -> str:
    return "-" if value is None else format_number(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{format_number(value)}x"


def render(results: dict[str, dict[str, Any]], plan: Plan) -> str:
    """The abuse table: per scenario the client's latency and the server's CPU in each
    phase, the ratios, then what happened to the attackers."""
    lines = [
        f"registry: --handshake-timeout {plan.handshake_timeout:g} --frame-timeout {plan.frame_timeout:g}"
        " (defaults 30, 30); other limits at their defaults (64 connections per address,"
        " 5 failed logins per user, Argon2id 64 MiB x3)",
        f"well-behaved client: one TLS connection with its certificate from {CLIENT_SOURCE},"
        f" a look-up every {plan.interval * 1000:g} ms",
        "",
    ]
    header = ("scenario", "phase", "secs", "look-ups", "median ms", "p90 ms", "p99 ms", "max ms", "server CPU", "others", "RSS MiB")
    rows: list[tuple[str, ...]] = [header]
    for scenario, result in results.items():
        names = ["none", "ramp", "during", *(name for name in result["phases"] if name.startswith("during, ")), "after"]
        for index, name in enumerate(names):
            stats = result["phases"][name]
            rows.append(
                (
                    LABELS[scenario] if index == 0 else "",
                    name.replace("during, ", "  "),
                    f"{stats['seconds']:.1f}",
                    f"{stats['lookups']:,}",
                    _ms(stats.get("median_ms")),
                    _ms(stats.get("p90_ms")),
                    _ms(stats.get("p99_ms")),
                    _ms(stats.get("max_ms")),
                    _percent(stats.get("server_cpu")),
                    _percent(stats.get("server_core_others"))
                    + ("*" if (stats.get("server_core_others") or 0.0) >= DISTURBED_SHARE else ""),
                    _ms(stats.get("server_rss_mib_max")),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i >= 2 else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    lines.append(line(header))
    lines.append("-" * len(line(header)))
    for row in rows[1:]:
        lines.append(line(row))
    if any(
        (stats.get("server_core_others") or 0.0) >= DISTURBED_SHARE
        for result in results.values()
        for stats in result["phases"].values()
    ):
        lines.append(
            f"* other processes took {DISTURBED_SHARE:.0%} or more of the server's core in that phase"
            " (\"others\": the core's busy share minus the server's): its latencies are disturbed"
        )
    lines.append("")
    lines.append("ratios during/none (after/none): median, p90")
    for scenario, result in results.items():
        stats = result["phases"]
        lines.append(
            f"  {TITLES[scenario]:<34} median {_times(_ratio(stats, 'median_ms'))} ({_times(_ratio(stats, 'median_ms', 'after'))}),"
            f" p90 {_times(_ratio(stats, 'p90_ms'))} ({_times(_ratio(stats, 'p90_ms', 'after'))})"
        )
        for name in stats:
            if name.startswith("during, "):
                lines.append(
                    f"    {name[8:]:<32} median {_times(_ratio(stats, 'median_ms', name))},"
                    f" p90 {_times(_ratio(stats, 'p90_ms', name))}"
                )
    lines.append("")
    lines.append("attackers")
    for scenario, result in results.items():
        raid = result["attackers"]
        lines.append(f"  {TITLES[scenario]}: {attack_text(scenario, plan)}")
        ramp = (raid["established_at"] or raid["stopped_at"]) - raid["started_at"]
        lines.append(
            f"    {raid['connections_opened']:,} connections opened, {raid['connections_up']:,} up,"
            f" at most {raid['most_open_at_once']:,} open at once; in place after {ramp:.1f} s;"
            f" attacker CPU {_percent(raid['attacker_cpu'])}; open when it stopped:"
            f" {sum(raid['open_at_the_end'].values()):,}"
        )
        if scenario == "flood":
            lines.append(
                f"    refused with too-many-connections: {raid['refused']:,}"
                f" ({format_number(raid['refused_per_s'])}/s while in place);"
                f" handshakes {format_number(raid['handshakes_per_s'])}/s"
            )
        if scenario == "guessing":
            answers = ", ".join(f"{name} {count:,}" for name, count in sorted(raid["answers"].items()))
            hashed = raid["hashed_attempts_at_s"]
            when = f", from {hashed[0]:.1f} s to {hashed[-1]:.1f} s after the start" if hashed else ""
            lines.append(
                f"    attempts answered {raid['attempts_answered']:,} ({format_number(raid['answers_per_s'])}/s): {answers}"
            )
            lines.append(f"    passwords hashed (login-failed answers): {len(hashed)}{when}")
        lines.append("    ended by the server (count, lifetime median [min-max]):")
        for key, count in raid["ended"].items():
            life = raid["lifetimes"].get(key)
            span = "" if life is None else f"  {life['median_s']:.1f} s [{life['min_s']:.1f}-{life['max_s']:.1f}]"
            lines.append(f"      {count:>6,}  {key}{span}")
        if not raid["ended"]:
            lines.append("           none")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Running


def start_registry(ctx: Context, plan: Plan) -> Any:
    """A fresh registry for the abuse runs (lowered timeouts, real Argon2id cost)."""
    return ctx.server(
        "irp-abuse",
        "bench.irp_server:serve_registry",
        {
            "data_dir": tempfile.mkdtemp(prefix="irp-abuse-", dir=ctx.workdir),
            "key_type": plan.key_type,
            "users": 1,
            "bulk_users": plan.directory_users,
            "sample": plan.directory_users,
            "limits": {"handshake_timeout": plan.handshake_timeout, "frame_timeout": plan.frame_timeout},
            "argon2": "production",
            "password_users": [(VICTIM, VICTIM_PASSWORD)],
        },
    )


def _profile(
    pid: int, marks: dict[str, str], seconds: float, output: str, gil: bool = False
) -> subprocess.CompletedProcess[str] | None:
    """Wait for the attack to be in place, then sample the server with py-spy."""
    deadline = time.monotonic() + 300
    while _read_mark(marks["established"]) is None:
        if _read_mark(marks["stopped"]) is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    command = [
        shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
        "record", "-p", str(pid), "-d", str(max(int(seconds), 1)), "-r", "250",
        "-f", "raw", "-o", output, "--nonblocking", "--threads",
    ]
    if gil:
        command.append("--gil")
    return subprocess.run(command, capture_output=True, text=True, check=False)


def run_scenario(
    ctx: Context, server: Any, attacker: Worker, scenario: str, plan: Plan, profile: bool = False, gil: bool = False
) -> dict[str, Any]:
    """One scenario: the client and the attacker side by side, then the phases."""
    folder = tempfile.mkdtemp(prefix=f"{scenario}-", dir=ctx.workdir)
    marks = {"established": os.path.join(folder, "established"), "stopped": os.path.join(folder, "stopped")}
    start_at = time.monotonic() + 1.0
    with ThreadPoolExecutor(max_workers=3) as pool:
        client_future = pool.submit(ctx.worker().run, well_behaved, server.info, plan, start_at, marks["stopped"])
        attack_future = pool.submit(attacker.run, attack, scenario, server.info, plan, start_at + plan.none_seconds, marks)
        profile_future = None
        if profile:
            stacks = os.path.join(folder, "stacks.txt")
            profile_future = pool.submit(_profile, server.pid, marks, plan.attack_seconds - 1, stacks, gil)
        raid = attack_future.result()
        client = client_future.result()
        profiled = profile_future.result() if profile_future is not None else None
    result = {"attackers": raid, "phases": phases(client, raid, plan), "timeline": timeline(client, raid)}
    if profiled is not None:
        from bench.profile import summarise

        if profiled.returncode == 0:
            with open(stacks, encoding="utf-8") as handle:
                result["profile"] = summarise(handle.read())
        else:
            result["profile"] = f"py-spy failed: {profiled.stderr.strip()}"
    return result


def measure(
    ctx: Context, scenarios: tuple[str, ...] = SCENARIOS, profile: str | None = None, gil: bool = False
) -> tuple[Plan, dict[str, dict[str, Any]]]:
    """Run ``scenarios`` against one registry; return the plan and each one's result."""
    plan = Plan.for_settings(ctx.settings)
    server = start_registry(ctx, plan)
    results: dict[str, dict[str, Any]] = {}
    try:
        with Worker(LOAD_CPU) as attacker:
            for scenario in scenarios:
                ctx.log(f"  {scenario}: {attack_text(scenario, plan)}")
                results[scenario] = run_scenario(ctx, server, attacker, scenario, plan, profile == scenario, gil)
    finally:
        ctx.stop_server("irp-abuse")
    return plan, results


def run(ctx: Context) -> list[Figure]:
    """Measure figures 10a-10c (for ``python -m bench --only abuse``)."""
    plan, results = measure(ctx)
    ctx.log(render(results, plan))
    return [figure_of(scenario, result, plan) for scenario, result in results.items()]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.abuse``: run the scenarios, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, fewer attackers (about 40 s)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--json", default=None, help="where to write the results (default bench/results/abuse[-quick].json)")
    parser.add_argument("--key-type", default="p384", choices=("p384", "p256", "ed25519"))
    parser.add_argument("--profile", default=None, choices=SCENARIOS, help="sample the server with py-spy during this attack")
    parser.add_argument("--gil", action="store_true", help="with --profile: only samples of the thread holding the GIL")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (database, server log)")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scenarios = tuple(name.strip() for name in arguments.only.split(",") if name.strip()) or SCENARIOS
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    settings = Settings.for_mode(arguments.quick, None, arguments.key_type)
    default_name = "abuse-quick.json" if arguments.quick else "abuse.json"
    json_path = arguments.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", default_name)
    pin(LOAD_CPU)
    workdir = tempfile.mkdtemp(prefix="irp-abuse-")
    started = time.time()
    before = machine_info()
    print(
        f"bench.abuse: {'quick' if settings.quick else 'full'} run, server on CPU {SERVER_CPU},"
        f" client and attackers on CPU {LOAD_CPU}; load average {before['load_average'][0]:.2f}",
        flush=True,
    )
    ctx = Context(settings, workdir, log=lambda text: print(text, flush=True))
    try:
        plan, results = measure(ctx, scenarios, arguments.profile, arguments.gil)
    finally:
        ctx.close()
        if not arguments.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(render(results, plan))
    for scenario, result in results.items():
        if "profile" in result:
            print(f"\nprofile of the server during {TITLES[scenario]} (py-spy, all threads):\n{result['profile']}")
    figures = [figure_of(scenario, result, plan) for scenario, result in results.items()]
    meta = {
        "command": " ".join(["python -m bench.abuse", *(sys.argv[1:] if argv is None else argv)]),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "pinning": {"server_cpu": SERVER_CPU, "load_generator_cpu": LOAD_CPU, "attacker_nice": ATTACKER_NICE},
        "machine_before": before,
        "machine_after": {"load_average": os.getloadavg(), "cpu_pressure_avg10": cpu_pressure()},
        "duration_s": round(time.time() - started, 1),
        "workdir": workdir if arguments.keep else None,
    }
    write_json(json_path, figures, meta)
    print(f"\nresults: {json_path} ({meta['duration_s']} s); load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
