"""``twistd irp --workers 2`` as an operator runs it: the installed command, real processes
sharing one listening socket and one SQLite database, shipped defaults otherwise (issue 11:
the registry on every core, tested for correctness)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment

#: A login served by worker 2 (its log lines come to the main process's log prefixed).
WORKER_LOGIN = re.compile(r"\[worker2/irp\.server\.registry#info\] \S+ logged in")
#: A login served by the main process.
MAIN_LOGIN = re.compile(r"\[irp\.server\.registry#info\] \S+ logged in")


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


def state(pid: int) -> str:
    """The process's state letter (``T`` when stopped)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0].decode()


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Stop ``pid`` (SIGSTOP) until the block ends: the other process sharing the listening
    socket accepts every connection meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        if not wait_until(lambda: state(pid) == "T", 10):
            raise AssertionError(f"process {pid} did not stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_until(condition: object, timeout: float) -> bool:
    """Poll ``condition()`` (a callable) every 0.1 s until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)  # polling another process's state, not timing the product
    return False


class WorkersTests(SynchronousTestCase):
    """Two processes serve one registry consistently, and are supervised."""

    def test_two_processes_serve_one_registry(self) -> None:
        """Both processes serve (each is stopped in turn so that the other takes the
        connections); a registration made through either is what the next look-up answers
        even where the old answer was cached; a worker that dies is started again; stopping
        the main process stops the workers."""
        deployment = Deployment(self)
        registry = deployment.start_registry("example.org", "registry", "--workers", "2")
        deployment.wait_for(registry.service, "Serving with 2 processes", "the line saying the worker started")
        deployment.wait_for(
            registry.service, re.compile(r"\[worker2/irp\.server\.service#info\] IRP registry for example\.org listening"),
            "worker 2's listening line",
        )
        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp", "bob": "irp"})
        alice, bob = profiles["alice"], profiles["bob"]
        main_pid = registry.service.process.pid
        (worker,) = worker_pids(main_pid)

        def served_by(pid: int, *args: str) -> str:
            """Run ``irp ARGS`` while the other process is stopped, so ``pid`` serves it."""
            other = worker if pid == main_pid else main_pid
            with stopped(other):
                return deployment.irp(*args).out

        # Each process caches alice's answer, then the other one changes it: the next
        # look-up must give the change, whichever process answers.
        self.assertIn("192.0.2.1:4605", served_by(main_pid, "--profile", alice, "register", "--address", "192.0.2.1"))
        for reader, writer in ((main_pid, worker), (worker, main_pid)):
            for address in ("192.0.2.2", "192.0.2.3"):
                served_by(reader, "--profile", bob, "lookup", "alice")  # now cached there
                served_by(writer, "--profile", alice, "register", "--address", address)
                answer = served_by(reader, "--profile", bob, "lookup", "alice")
                self.assertIn(f"{address}:4605", answer, f"look-up served by {reader} after a change through {writer}")
                self.assertIn("signature verified", answer)
        address = "192.0.2.3"
        deployment.wait_for(registry.service, WORKER_LOGIN, "a login served by worker 2")
        self.assertRegex(registry.service.output.text, MAIN_LOGIN, "no connection was served by the main process")

        os.kill(worker, signal.SIGKILL)
        deployment.wait_for(registry.service, re.compile(r"Worker 2 ended .* starting it again in 1 s"), "the restart notice")
        self.assertTrue(
            wait_until(lambda: len(worker_pids(main_pid)) == 1 and worker not in worker_pids(main_pid), 30),
            "worker 2 was not started again",
        )
        self.assertIn(f"{address}:4605", deployment.irp("--profile", bob, "lookup", "alice").out)

        # SIGTERM to the main process alone: it stops its worker (by closing its input).
        (restarted,) = worker_pids(main_pid)
        os.kill(main_pid, signal.SIGTERM)
        # twistd ends by re-raising the signal once it has shut down cleanly.
        self.assertIn(registry.service.exited(30), (0, -signal.SIGTERM), "the main process did not stop")
        self.assertIn("Server Shut Down.", registry.service.output.text)
        self.assertTrue(wait_until(lambda: not os.path.exists(f"/proc/{restarted}"), 15), "the worker outlived the main process")

    def test_workers_option_checked(self) -> None:
        """``--workers 0`` is refused before anything starts: one readable line, non-zero
        exit status, no traceback."""
        deployment = Deployment(self)
        result = deployment.run("twistd", "-n", "irp", "--domain", "example.org", "--workers", "0", expect=None)
        self.assertNotEqual(result.code, 0)
        self.assertIn("--workers must be at least 1", result.out + result.err)
        self.assertNotIn("Traceback", result.out + result.err)
