"""Tests for :mod:`irp.server.workers` and :mod:`irp.server.worker`: starting, relaying the
log of, restarting and stopping worker processes (with a fake process reactor; the real
processes are in test/acceptance/test_workers.py)."""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from irp.server import workers
from irp.server.worker import LineObserver, parse_sockets
from irp.server.workers import WorkerPool, worker_command


class FakeProcess:
    """What spawnProcess returns: records stdin closing and signals."""

    def __init__(self) -> None:
        self.stdin_closed = False
        self.signals: list[str] = []

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


class ProcessReactor(Clock):
    """A clock that records spawned processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None, childFDs: Any = None) -> FakeProcess:
        process = FakeProcess()
        protocol.makeConnection(process)
        self.spawned.append({"protocol": protocol, "executable": executable, "args": args, "childFDs": childFDs, "process": process})
        return process


class FakeListeningPort:
    def __init__(self, fd: int, family: int) -> None:
        self._fd = fd
        self.socket = type("Socket", (), {"family": family})()

    def fileno(self) -> int:
        return self._fd


def started_pool(count: int = 3) -> tuple[WorkerPool, ProcessReactor]:
    reactor = ProcessReactor()
    pool = WorkerPool(reactor, count, ["--domain", "example.org", "--workers", str(count)])
    pool.startService()
    pool.start_workers([FakeListeningPort(7, socket.AF_INET6), FakeListeningPort(9, socket.AF_INET)])  # type: ignore[list-item]
    return pool, reactor


class CommandTests(SynchronousTestCase):
    def test_command_and_sockets(self) -> None:
        """A worker gets the sockets renumbered from 3, with their families, and the
        registry's own options after ``--``."""
        command = worker_command(2, [(7, socket.AF_INET6), (9, socket.AF_INET)], ["--domain", "example.org"])
        self.assertEqual(command[:3], [sys.executable, "-m", "irp.server.worker"])
        sockets = command[command.index("--sockets") + 1]
        self.assertEqual(parse_sockets(sockets), [(3, socket.AF_INET6), (4, socket.AF_INET)])
        self.assertEqual(command[command.index("--") + 1 :], ["--domain", "example.org"])


class StartTests(SynchronousTestCase):
    def test_starts_count_minus_one(self) -> None:
        """The main process serves too: ``--workers 3`` starts workers 2 and 3, each
        inheriting the listening sockets as descriptors 3 and 4."""
        pool, reactor = started_pool(3)
        self.assertEqual(sorted(pool.workers), [2, 3])
        self.assertEqual(len(reactor.spawned), 2)
        for spawned in reactor.spawned:
            self.assertEqual(spawned["childFDs"], {0: "w", 1: "r", 2: "r", 3: 7, 4: 9})
            self.assertEqual(spawned["args"][-4:], ["--domain", "example.org", "--workers", "3"])


class LogRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_lines_become_events(self) -> None:
        """Each JSON line is logged in the worker's namespace at its level, even when it
        arrives in pieces; a line that is not one is logged as it is."""
        pool, reactor = started_pool(2)
        worker = reactor.spawned[0]["protocol"]
        line = json.dumps({"namespace": "irp.server.registry", "level": "warn", "text": "alice ✓ logged in"}).encode()
        worker.outReceived(line[:10])
        worker.outReceived(line[10:] + b"\nnot json\n")
        relayed = [event for event in self.events if event.get("log_namespace", "").startswith("worker2/")]
        self.assertEqual(len(relayed), 1)
        self.assertEqual(relayed[0]["log_namespace"], "worker2/irp.server.registry")
        self.assertEqual(relayed[0]["log_level"].name, "warn")
        self.assertEqual(relayed[0]["text"], "alice ✓ logged in")
        raw = [event for event in self.events if event.get("line") == "not json"]
        self.assertEqual(len(raw), 1)

    def test_worker_side_formats(self) -> None:
        """The worker formats each event where its values are (format specs included)."""
        written: list[str] = []
        stream = type("Stream", (), {"write": lambda self, text: written.append(text), "flush": lambda self: None})()
        observer = LineObserver(stream)  # type: ignore[arg-type]
        from twisted.logger import LogLevel

        observer({"log_format": "serial {serial:x}", "serial": 255, "log_namespace": "irp.x", "log_level": LogLevel.info})
        record = json.loads(written[0])
        self.assertEqual(record, {"namespace": "irp.x", "level": "info", "text": "serial ff"})


class RestartTests(SynchronousTestCase):
    def test_restarted_with_growing_pause(self) -> None:
        """A worker that keeps failing is started again after 1, 2, 4... seconds; one that
        ran for a minute starts the count again."""
        pool, reactor = started_pool(2)
        crash = Failure(ProcessTerminated(exitCode=1))
        for expected_delay in (1.0, 2.0, 4.0):
            worker = pool.workers[2]
            worker.processEnded(crash)
            self.assertNotIn(2, pool.workers)
            reactor.advance(expected_delay - 0.01)
            self.assertNotIn(2, pool.workers)
            reactor.advance(0.01)
            self.assertIn(2, pool.workers)
        reactor.advance(workers.HEALTHY_AFTER)
        pool.workers[2].processEnded(crash)
        reactor.advance(1.0)
        self.assertIn(2, pool.workers)

    def test_no_restart_when_stopping(self) -> None:
        pool, reactor = started_pool(2)
        worker = pool.workers[2]
        stopped = pool.stopService()
        worker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        reactor.advance(120)
        self.assertEqual(len(reactor.spawned), 1)


class StopTests(SynchronousTestCase):
    def test_stop_closes_input_then_kills(self) -> None:
        """Stopping closes each worker's input; one still running after the grace time is
        killed; the stop completes when every worker has ended."""
        pool, reactor = started_pool(3)
        stopped = pool.stopService()
        processes = [spawned["process"] for spawned in reactor.spawned]
        self.assertTrue(all(process.stdin_closed for process in processes))
        pool.workers[2].processEnded(Failure(ProcessDone(0)))
        self.assertNoResult(stopped)
        reactor.advance(workers.STOP_GRACE)
        self.assertEqual(processes[0].signals, [])  # it ended in time
        self.assertEqual(processes[1].signals, ["KILL"])
        pool.workers[3].processEnded(Failure(ProcessTerminated(signal=9)))
        self.successResultOf(stopped)
