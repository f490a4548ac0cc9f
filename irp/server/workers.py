"""Worker processes: one registry on every core (``twistd irp --workers N``).

The main process binds the listening ports, creates what must exist once (the CA, the
schema, the administrator) and serves like any registry process. Once it is ready it starts
``N - 1`` worker processes (``python -m irp.server.worker``) with the same options; each
inherits the listening sockets (the kernel hands every new connection to one of the
processes accepting on them) and opens the same data directory and database. They share
what every process of a domain shares (docs/deployment.rst): the database, whose commits
each process notices before it answers from a cache, the CA on disk, and the CRL.

The main process supervises them:

* a worker's log events come to the main process as JSON lines on its standard output
  (namespace, level, text), and are logged there with the worker's number in their
  namespace (``worker2/...``);
* a worker that ends while the registry runs is started again, after a pause that doubles
  from 1 to 60 seconds while it keeps failing (and goes back to 1 once it has run for a
  minute);
* when the main process stops, it closes each worker's standard input (a worker stops when
  it reads end-of-file there, so none outlives the main process) and waits for them, then
  kills any still running after :data:`STOP_GRACE` seconds.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.python.failure import Failure

log = Logger()

#: Seconds a stopping worker has to finish before it is killed.
STOP_GRACE = 10.0
#: The first and the longest pause before a failed worker is started again, in seconds.
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A worker that ran this long is healthy: its next restart waits the first delay again.
HEALTHY_AFTER = 60.0
#: The longest log line accepted from a worker (a longer one is cut).
MAX_LOG_LINE = 1 << 20
#: The first inherited listening socket's descriptor in a worker (then 4, 5, ...).
FIRST_INHERITED_FD = 3


def listening_sockets(ports: Sequence[IListeningPort]) -> list[tuple[int, int]]:
    """Each listening port's (file descriptor, address family), to hand to a worker."""
    return [(port.fileno(), port.socket.family) for port in ports]  # type: ignore[attr-defined]


def worker_command(number: int, sockets: Sequence[tuple[int, int]], arguments: Sequence[str]) -> list[str]:
    """The command line of worker ``number``: the inherited sockets (numbered from
    :data:`FIRST_INHERITED_FD` in the worker) and the registry's own options."""
    inherited = ",".join(
        f"{FIRST_INHERITED_FD + index}:{family}" for index, (_fd, family) in enumerate(sockets)
    )
    return [sys.executable, "-m", "irp.server.worker", "--number", str(number), "--sockets", inherited, "--", *arguments]


class WorkerProcess(ProcessProtocol):
    """One worker, seen from the main process: relays its log and reports its end."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.started_at = pool.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        """Log the worker's events (one JSON object per line)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LOG_LINE:
            lines.append(self._partial[:MAX_LOG_LINE])
            self._partial = b""
        for line in lines:
            self._relay(line)

    def errReceived(self, data: bytes) -> None:
        """Anything the worker writes on standard error (it should not) is logged as is."""
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {number}: {line}", number=self.number, line=line)

    def _relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if not text.strip():
            return
        try:
            record = json.loads(text)
            level = LogLevel.levelWithName(record["level"])
            namespace, message = str(record["namespace"]), str(record["text"])
        except (ValueError, KeyError, TypeError, InvalidLogLevelError):
            log.warn("worker {number}: {line}", number=self.number, line=text)
            return
        Logger(namespace=f"worker{self.number}/{namespace}").emit(level, "{text}", text=message)

    def processEnded(self, reason: Failure) -> None:
        """Tell the pool; it decides whether to start the worker again."""
        self.ended.callback(None)
        self.pool.worker_ended(self, reason)


class WorkerPool(service.Service):
    """Starts and supervises the worker processes of one registry."""

    def __init__(self, reactor: Any, count: int, arguments: Sequence[str]) -> None:
        self.reactor = reactor
        self.count = count
        self.arguments = list(arguments)
        self.sockets: list[tuple[int, int]] = []
        self.workers: dict[int, WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}

    def start_workers(self, ports: Sequence[IListeningPort]) -> None:
        """Start workers 2 to ``count`` on the main process's listening ``ports``."""
        self.sockets = listening_sockets(ports)
        for number in range(2, self.count + 1):
            self._spawn(number)
        log.info(
            "Serving with {count} processes: this one and {workers} workers",
            count=self.count,
            workers=self.count - 1,
        )

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if not self.running:
            return
        worker = WorkerProcess(self, number)
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for index, (fd, _family) in enumerate(self.sockets):
            child_fds[FIRST_INHERITED_FD + index] = fd
        self.reactor.spawnProcess(
            worker,
            sys.executable,
            worker_command(number, self.sockets, self.arguments),
            env=dict(os.environ),
            childFDs=child_fds,
        )
        self.workers[number] = worker

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """A worker ended: start it again unless the registry is stopping."""
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if not self.running:
            return
        ran = self.reactor.seconds() - worker.started_at
        delay = self._delays.get(worker.number, FIRST_RESTART_DELAY)
        if ran >= HEALTHY_AFTER:
            delay = FIRST_RESTART_DELAY
        self._delays[worker.number] = min(delay * 2, MAX_RESTART_DELAY)
        how = "exited normally" if reason.check(ProcessDone) else str(reason.value)
        log.error(
            "Worker {number} ended ({how}) after {ran:.0f} s; starting it again in {delay:.0f} s",
            number=worker.number,
            how=how,
            ran=ran,
            delay=delay,
        )
        self._restarts[worker.number] = self.reactor.callLater(delay, self._spawn, worker.number)

    def stopService(self) -> Deferred[None]:
        """Stop every worker: close its standard input, then kill it after the grace time."""
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waiting = []
        for worker in list(self.workers.values()):
            transport = worker.transport
            if transport is None:
                continue
            transport.closeStdin()
            kill = self.reactor.callLater(STOP_GRACE, self._kill, worker)
            worker.ended.addBoth(self._cancel, kill)
            waiting.append(worker.ended)
        finished: Deferred[None] = DeferredList(waiting).addCallback(lambda _: None)
        return finished

    @staticmethod
    def _cancel(result: object, call: IDelayedCall) -> object:
        if call.active():
            call.cancel()
        return result

    @staticmethod
    def _kill(worker: WorkerProcess) -> None:
        log.warn("Worker {number} did not stop in time; killing it", number=worker.number)
        try:
            if worker.transport is not None:
                worker.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
