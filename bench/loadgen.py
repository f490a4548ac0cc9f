"""Cheap load generators: non-blocking TLS (pyOpenSSL) and TCP clients on one epoll loop.

The load generator must cost far less per message than the server, or it caps the
figure. So it does not use Twisted and never parses XML: requests are serialised once
before the timed window, and responses are counted by their 4-byte length prefix (for
IRP, the ``status="ok"`` marker of each response is also checked, with one ``find`` in
the receive buffer, so that errors are never counted as successes). Every socket is
non-blocking and driven by one ``epoll`` loop; TLS is pyOpenSSL on the socket itself (no
memory BIOs), so encryption, decryption and handshakes run in C.

The connection classes here are small state machines: :class:`Framed` counts incoming
frames and queues outgoing bytes; :class:`TLSFramed` and :class:`TCPFramed` move them.
:func:`connect_tls` opens many TLS connections at once; :func:`round_trips` runs a closed
loop (one request outstanding per connection); :func:`windowed` keeps a window of
messages outstanding on one connection; :func:`handshake_loop` opens, uses once and
closes connections as fast as the server accepts them.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.sampling import CpuWindow, Sample

_LENGTH = struct.Struct(">I")
_READ_SIZE = 65536
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class LoadError(RuntimeError):
    """The run went wrong (a refused request, a dropped connection, a time-out)."""


class Framed:
    """A non-blocking connection that counts incoming length-prefixed frames."""

    def __init__(self, sock: socket.socket, check: bytes | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        #: Bytes received that do not yet complete a frame.
        self.inbox = bytearray()
        #: Buffers waiting for the socket to accept them, and their total size.
        self.outbox: deque[memoryview] = deque()
        self.queued = 0
        #: Each complete frame must hold this marker (within its first 200 bytes).
        self.check = check
        self.frames = 0
        self.bad = 0
        self.bad_sample = b""
        self.outstanding = 0
        self.closed = False
        self.events = _IN

    # -- transport (overridden) --------------------------------------------------------

    def _recv(self) -> bytes | None:
        """Some bytes; None when nothing is available now; b"" at the end of the stream."""
        raise NotImplementedError

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes now; return the count (0 if it would block)."""
        raise NotImplementedError

    # -- framing -----------------------------------------------------------------------

    def read_available(self) -> bytes:
        """Everything readable now, as raw bytes (sets :attr:`closed` at the end of stream)."""
        chunks = []
        while True:
            data = self._recv()
            if data is None:
                break
            if not data:
                self.closed = True
                break
            chunks.append(data)
        return b"".join(chunks)

    def pump_in(self) -> int:
        """Read everything available; return the number of frames it completed."""
        inbox = self.inbox
        while True:
            data = self._recv()
            if data is None:
                break
            if not data:
                self.closed = True
                break
            inbox += data
        return self._count()

    def _count(self) -> int:
        inbox = self.inbox
        end = len(inbox)
        position = 0
        count = 0
        check = self.check
        while end - position >= 4:
            (length,) = _LENGTH.unpack_from(inbox, position)
            if end - position - 4 < length:
                break
            if check is not None and inbox.find(check, position + 4, position + 4 + min(length, 200)) < 0:
                self.bad += 1
                if not self.bad_sample:
                    self.bad_sample = bytes(inbox[position + 4 : position + 4 + min(length, 400)])
            position += 4 + length
            count += 1
        if position:
            del inbox[:position]
        self.frames += count
        self.outstanding -= count
        return count

    def write(self, data: bytes) -> bool:
        """Send ``data`` now, or queue what does not fit; True if all of it went."""
        if self.outbox:
            self.outbox.append(memoryview(data))
            self.queued += len(data)
            return False
        sent = self._send(data)
        if sent < len(data):
            self.outbox.append(memoryview(data)[sent:])
            self.queued += len(data) - sent
            return False
        return True

    def flush(self) -> bool:
        """Send queued bytes; True once the queue is empty."""
        outbox = self.outbox
        while outbox:
            head = outbox[0]
            sent = self._send(head)
            self.queued -= sent
            if sent < len(head):
                if sent:
                    outbox[0] = head[sent:]
                return False
            outbox.popleft()
        return True

    def close(self) -> None:
        """Close the socket (no goodbye)."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class TCPFramed(Framed):
    """Frames over a plain TCP socket (SixChat records)."""

    def _recv(self) -> bytes | None:
        try:
            return self.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return None
        except ConnectionError:
            return b""

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0


class TLSFramed(Framed):
    """Frames over TLS (pyOpenSSL directly on the non-blocking socket)."""

    def __init__(self, sock: socket.socket, tls: Any, check: bytes | None = None) -> None:
        super().__init__(sock, check)
        self.tls = tls
        from OpenSSL import SSL

        self._want_read = SSL.WantReadError
        self._want_write = SSL.WantWriteError
        self._zero = SSL.ZeroReturnError
        self._error = SSL.Error

    def _recv(self) -> bytes | None:
        try:
            return self.tls.recv(_READ_SIZE)  # type: ignore[no-any-return]
        except (self._want_read, self._want_write):
            return None
        except (self._zero, self._error, ConnectionError):
            return b""

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.tls.send(data)  # type: ignore[no-any-return]
        except (self._want_read, self._want_write):
            return 0

    def goodbye(self) -> None:
        """Send close_notify (best effort), then close."""
        with contextlib.suppress(Exception):  # the peer may be gone already
            self.tls.shutdown()
        self.close()


# ---------------------------------------------------------------------------------------
# Opening connections


def _new_socket(source: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source is not None:
        # Leave the port to connect(), so that ports are shared between destinations.
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    return sock


def start_connect(host: str, port: int, source: str | None) -> socket.socket:
    """A non-blocking socket with its TCP connection under way."""
    sock = _new_socket(source)
    code = sock.connect_ex((host, port))
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(code, f"connect to {host}:{port} failed: {errno.errorcode.get(code, code)}")
    return sock


def connect_tls(
    host: str,
    port: int,
    contexts: Sequence[Any],
    count: int,
    *,
    sources: Sequence[str | None] = (None,),
    per_source: int | None = None,
    concurrency: int = 32,
    first: bytes | Callable[[int], bytes] | None = None,
    check: bytes | None = None,
    timeout: float = 600.0,
) -> list[TLSFramed]:
    """Open ``count`` TLS connections (context ``i % len(contexts)`` for connection ``i``).

    ``concurrency`` handshakes are in flight at once. Connection ``i`` comes from
    ``sources[i // per_source]`` (all from ``sources[0]`` by default). With ``first`` (a
    frame, or a function of the connection's index), each connection sends it once open
    and waits for one answer, which ``check`` must match: then the server has finished
    with the connection's log-in as well.
    """
    epoll = select.epoll()
    openers: dict[int, TLSExchange] = {}
    done: list[TLSFramed] = []
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < count:
            while started < count and len(openers) < concurrency:
                source = sources[(started // per_source) % len(sources)] if per_source else sources[started % len(sources)]
                frame = first(started) if callable(first) else first
                opener = TLSExchange(
                    host, port, contexts[started % len(contexts)], frame,
                    answers=0 if frame is None else 1, check=check, source=source,
                )
                openers[opener.fd] = opener
                epoll.register(opener.fd, _OUT)
                started += 1
            if time.monotonic() > deadline:
                raise LoadError(f"opened only {len(done)} of {count} connections in {timeout:.0f} s")
            for fd, _events in epoll.poll(1.0):
                opener = openers[fd]
                try:
                    wanted = opener.step()
                except Exception as error:
                    raise LoadError(f"opening connection {len(done) + len(openers)} failed: {error!r}") from error
                if wanted:
                    epoll.modify(fd, wanted)
                    continue
                epoll.unregister(fd)
                del openers[fd]
                done.append(opener.framed)  # kept open: no finish()
    finally:
        epoll.close()
    return done


# ---------------------------------------------------------------------------------------
# Measuring


def _drain(epoll: Any, connections: dict[int, Framed], timeout: float = 30.0) -> None:
    """Wait until every connection has its answers (so the next run starts clean).

    Queued requests are flushed on every turn: the server may be waiting for them.
    """
    deadline = time.monotonic() + timeout
    waiting = {fd for fd, connection in connections.items() if connection.outstanding > 0}
    while waiting:
        if time.monotonic() > deadline:
            raise LoadError(f"{len(waiting)} connections never answered")
        for fd in waiting:
            connections[fd].flush()
        epoll.poll(0.05)
        for fd in list(waiting):
            connection = connections[fd]
            connection.flush()
            connection.pump_in()
            if connection.closed:
                raise LoadError("the server closed a connection")
            if connection.outstanding <= 0:
                waiting.discard(fd)


def round_trips(
    connections: Sequence[Framed],
    frames: Sequence[bytes],
    *,
    warmup: float,
    duration: float,
    server_pid: int | Sequence[int] | None,
    limit: int | None = None,
    trees: Mapping[str, int] | None = None,
    depth: int = 1,
) -> Sample:
    """Closed loop: each connection sends a request, waits for its answer, sends the next.

    With ``depth`` above 1, each connection keeps that many requests outstanding
    (pipelined: the requests sent for the answers read at once go in one write).
    Requests cycle through ``frames`` (pre-serialised). The value is answers per second
    in the timed window that follows ``warmup`` seconds of the same load. Answers that
    fail the connection's ``check`` make the run fail. With ``limit``, no connection sends
    more than that many requests: the window closes early when the first one reaches it.
    ``server_pid`` may list several server processes (their CPU shares are summed);
    ``trees`` names other process trees whose CPU to record (see :class:`CpuWindow`).
    """
    epoll = select.epoll()
    by_fd = {connection.fd: connection for connection in connections}
    count_frames = len(frames)
    sent = 0
    window = CpuWindow(server_pid, trees)
    try:
        for connection in connections:
            epoll.register(connection.fd, _IN)
            connection.outstanding += depth
            connection.write(b"".join(frames[(sent + index) % count_frames] for index in range(depth)))
            sent += depth
        answered = 0
        measuring = False
        now = time.perf_counter()
        begin = now + warmup
        end = begin + duration
        poll = epoll.poll
        budget = {connection.fd: (limit or 0) - 1 for connection in connections}
        exhausted = False
        backlog: set[Framed] = {connection for connection in connections if connection.outbox}
        while True:
            for fd, _events in poll(0.005 if backlog else 0.2):
                connection = by_fd[fd]
                got = connection.pump_in()
                if got:
                    answered += got
                    if limit is not None:
                        budget[fd] -= 1
                        if budget[fd] < 0:
                            exhausted = True
                            continue
                    if depth == 1:
                        request, more = frames[sent % count_frames], 1
                    else:  # as many new requests as answers read: ``depth`` outstanding
                        request, more = b"".join(frames[(sent + index) % count_frames] for index in range(got)), got
                    connection.outstanding += more
                    if not connection.write(request):
                        backlog.add(connection)
                    sent += more
                elif connection.closed:
                    raise LoadError("the server closed a connection")
            if backlog:
                for connection in list(backlog):
                    if connection.flush():
                        backlog.discard(connection)
            now = time.perf_counter()
            if exhausted and not measuring:
                raise LoadError(f"the request limit ({limit}) was reached during the warm-up")
            if measuring:
                if now >= end or exhausted:
                    window.end()
                    result = answered
                    break
            elif now >= begin:
                window.begin()
                answered = 0
                measuring = True
        bad = sum(connection.bad for connection in connections)
        if bad:
            sample = next(connection.bad_sample for connection in connections if connection.bad_sample)
            raise LoadError(f"{bad} answers were errors, e.g. {sample[:300]!r}")
        _drain(epoll, by_fd)
    finally:
        epoll.close()
    return window.sample(result / window.wall, answers=result, connections=len(connections))


def latencies(connection: Framed, frames: Sequence[bytes], count: int) -> list[float]:
    """Sequential round trips on one connection; each one's latency in seconds."""
    epoll = select.epoll()
    epoll.register(connection.fd, _IN)
    result = []
    try:
        for index in range(count):
            started = time.perf_counter()
            connection.outstanding += 1
            connection.write(frames[index % len(frames)])
            while connection.outstanding > 0:
                epoll.poll(1.0)
                connection.flush()
                connection.pump_in()
                if connection.closed:
                    raise LoadError("the server closed the connection")
            result.append(time.perf_counter() - started)
    finally:
        epoll.close()
    if connection.bad:
        raise LoadError(f"answers were errors, e.g. {connection.bad_sample[:300]!r}")
    return result


def windowed(
    connection: Framed,
    produce: Callable[[], bytes],
    *,
    window: int,
    answers_per_message: int = 1,
    warmup: float,
    duration: float,
    server_pid: int | None,
    record_per_message: bool = False,
) -> Sample:
    """Keep ``window`` messages outstanding on one connection; count answered messages.

    ``produce()`` returns the next message's bytes (it may encrypt, as SixChat's record
    layer needs a fresh sequence number per record). Each message is answered by
    ``answers_per_message`` frames. Messages due at once are joined into one write
    (over TLS, a byte stream in records of up to 16 KiB), or with ``record_per_message``
    written one by one (over TLS, one record per message; see :func:`send_messages`).
    """
    epoll = select.epoll()
    epoll.register(connection.fd, _IN)
    timer = CpuWindow(server_pid)
    try:
        send_messages(connection, produce, window, record_per_message=record_per_message)
        connection.outstanding += window * answers_per_message
        answered = 0
        measuring = False
        begin = time.perf_counter() + warmup
        end = begin + duration
        while True:
            wanted = _IN | (_OUT if connection.outbox else 0)
            epoll.modify(connection.fd, wanted)
            for _fd, events in epoll.poll(0.2):
                if events & _OUT:
                    connection.flush()
                got = connection.pump_in()
                if connection.closed:
                    raise LoadError("the server closed the connection")
                messages = got // answers_per_message if answers_per_message > 1 else got
                if messages:
                    answered += messages
                    send_messages(connection, produce, messages, record_per_message=record_per_message)
                    connection.outstanding += messages * answers_per_message
            now = time.perf_counter()
            if measuring:
                if now >= end:
                    timer.end()
                    result = answered
                    break
            elif now >= begin:
                timer.begin()
                answered = 0
                measuring = True
        _drain(epoll, {connection.fd: connection})
    finally:
        epoll.close()
    return timer.sample(result / timer.wall, messages=result, window=window)


def send_messages(
    connection: Framed, produce: Callable[[], bytes], count: int, *, record_per_message: bool = False
) -> None:
    """Send the next ``count`` messages of ``produce()``: joined into one write, or with
    ``record_per_message`` one write each (over TLS, each write of up to 16 KiB is one
    record; what the socket does not take stays queued as separate writes)."""
    if record_per_message:
        for _ in range(count):
            connection.write(produce())
        return
    batch = bytearray()
    for _ in range(count):
        batch += produce()
    connection.write(bytes(batch))


def send_and_wait(connection: Framed, chunks: Callable[[], bytes | None], timeout: float = 300.0) -> None:
    """Stream ``chunks()`` until it returns None, then wait for one frame back (bulk).

    The caller's last chunk must make the server answer once everything has arrived.
    """
    epoll = select.epoll()
    epoll.register(connection.fd, _IN | _OUT)
    deadline = time.monotonic() + timeout
    connection.outstanding += 1
    exhausted = False
    try:
        while connection.outstanding > 0:
            if time.monotonic() > deadline:
                raise LoadError("the bulk transfer did not finish in time")
            # Keep about one megabyte queued: enough to fill the socket, little copying.
            while not exhausted and connection.queued < 1 << 20:
                chunk = chunks()
                if chunk is None:
                    exhausted = True
                    break
                connection.outbox.append(memoryview(chunk))
                connection.queued += len(chunk)
            connection.flush()
            epoll.modify(connection.fd, _IN | (_OUT if connection.outbox or not exhausted else 0))
            for _fd, events in epoll.poll(1.0):
                if events & _IN or events & _ERR:
                    connection.pump_in()
                    if connection.closed:
                        raise LoadError("the server closed the connection")
    finally:
        epoll.close()


def handshake_loop(
    open_session: Callable[[int], HandshakeSession],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pid: int | None,
    max_errors: int = 20,
) -> Sample:
    """Open sessions as fast as the server completes them, ``concurrency`` at a time.

    ``open_session(i)`` starts session ``i`` (connect, handshake, one exchange, close:
    see :class:`HandshakeSession`). The value is completed sessions per second.
    """
    epoll = select.epoll()
    slots: dict[int, HandshakeSession] = {}
    started = 0
    completed = 0
    errors: list[str] = []
    window = CpuWindow(server_pid)

    def launch() -> None:
        nonlocal started
        session = open_session(started)
        started += 1
        slots[session.fd] = session
        epoll.register(session.fd, session.wanted)

    try:
        for _ in range(concurrency):
            launch()
        measuring = False
        begin = time.perf_counter() + warmup
        end = begin + duration
        while True:
            for fd, _events in epoll.poll(0.2):
                session = slots.get(fd)
                if session is None:
                    continue
                try:
                    wanted = session.step()
                except Exception as error:  # noqa: BLE001 - counted, then the run fails
                    wanted = -1
                    errors.append(repr(error))
                if wanted > 0:
                    if wanted != session.wanted:
                        session.wanted = wanted
                        epoll.modify(fd, wanted)
                    continue
                epoll.unregister(fd)
                del slots[fd]
                session.finish()
                if wanted == 0:
                    completed += 1
                if len(errors) > max_errors:
                    raise LoadError(f"{len(errors)} sessions failed, e.g. {errors[0]}")
                launch()
            now = time.perf_counter()
            if measuring:
                if now >= end:
                    window.end()
                    result = completed
                    break
            elif now >= begin:
                window.begin()
                completed = 0
                errors.clear()
                measuring = True
        if errors:
            raise LoadError(f"{len(errors)} sessions failed in the timed window, e.g. {errors[0]}")
        # Let the sessions still open finish, so the server is idle for the next run.
        deadline = time.monotonic() + 30
        while slots and time.monotonic() < deadline:
            for fd, _events in epoll.poll(0.2):
                session = slots.get(fd)
                if session is None:
                    continue
                try:
                    wanted = session.step()
                except Exception:  # noqa: BLE001
                    wanted = -1
                if wanted > 0:
                    session.wanted = wanted
                    epoll.modify(fd, wanted)
                    continue
                epoll.unregister(fd)
                del slots[fd]
                session.finish()
    finally:
        for session in slots.values():
            session.finish()
        epoll.close()
    return window.sample(result / window.wall, sessions=result, concurrency=concurrency)


class HandshakeSession:
    """One short-lived session for :func:`handshake_loop` (subclassed per protocol).

    :meth:`step` is called whenever the socket is ready; it returns the epoll events to
    wait for next, 0 once the session completed, or -1 if it failed.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.wanted = _OUT

    def step(self) -> int:
        """Advance the session (see the class docstring)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Close (politely where the protocol allows)."""
        try:
            self.sock.close()
        except OSError:
            pass


class TLSExchange(HandshakeSession):
    """TLS handshake (with the context's client certificate), then optionally one request
    and ``answers`` frames back, then close_notify and close."""

    def __init__(
        self,
        host: str,
        port: int,
        context: Any,
        request: bytes | None,
        *,
        answers: int = 1,
        check: bytes | None = None,
        source: str | None = None,
    ) -> None:
        from OpenSSL import SSL

        super().__init__(start_connect(host, port, source))
        tls = SSL.Connection(context, self.sock)
        tls.set_connect_state()
        self.framed = TLSFramed(self.sock, tls, check)
        self.request = request
        self.answers = answers
        self.state = "connect"
        self._SSL = SSL

    def step(self) -> int:
        """Connect, handshake, exchange."""
        SSL = self._SSL
        framed = self.framed
        if self.state == "connect":
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, errno.errorcode.get(error, str(error)))
            self.state = "handshake"
        if self.state == "handshake":
            try:
                framed.tls.do_handshake()
            except SSL.WantReadError:
                return _IN
            except SSL.WantWriteError:
                return _OUT
            self.state = "exchange"
            framed.outstanding = self.answers
            if self.request is not None:
                framed.write(self.request)
        framed.flush()
        framed.pump_in()
        if framed.bad:
            raise LoadError(f"refused: {framed.bad_sample[:200]!r}")
        if framed.outstanding <= 0:
            return 0
        if framed.closed:
            raise LoadError("the server closed the connection before answering")
        return _IN | (_OUT if framed.outbox else 0)

    def finish(self) -> None:
        """close_notify, then close."""
        if self.state == "exchange":
            self.framed.goodbye()
        else:
            self.framed.close()
