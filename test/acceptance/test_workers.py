"""``twistd irp --workers 2`` as an operator runs it: the installed command, real processes
sharing one listening socket and one SQLite database, shipped defaults otherwise (issue 11:
the registry on every core, tested for correctness)."""

from __future__ import annotations

import os
import re
import signal
import time

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
        """Connections are served by both processes; a registration made through either is
        what every later look-up answers, whichever process (and cache) serves it; a worker
        that dies is started again; stopping the main process stops the workers."""
        deployment = Deployment(self)
        registry = deployment.start_registry("example.org", "registry", "--workers", "2")
        deployment.wait_for(registry.service, "Serving with 2 processes", "the line saying the worker started")
        deployment.wait_for(
            registry.service, re.compile(r"\[worker2/irp\.server\.service#info\] IRP registry for example\.org listening"),
            "worker 2's listening line",
        )
        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp", "bob": "irp"})
        alice, bob = profiles["alice"], profiles["bob"]

        # Every command is a new connection: the kernel hands each to one of the two
        # processes. Each registration must be what the next look-ups answer.
        for round_number in range(6):
            address = f"192.0.2.{10 + round_number}"
            deployment.irp("--profile", alice, "register", "--address", address)
            for _ in range(2):
                answer = deployment.irp("--profile", bob, "lookup", "alice").out
                self.assertIn(f"{address}:4605", answer, f"round {round_number}")
                self.assertIn("signature verified", answer)
        for _ in range(20):
            log = registry.service.output.text
            if WORKER_LOGIN.search(log) and MAIN_LOGIN.search(log):
                break
            deployment.irp("--profile", bob, "whoami")
        log = registry.service.output.text
        self.assertRegex(log, WORKER_LOGIN, "no connection was served by the worker")
        self.assertRegex(log, MAIN_LOGIN, "no connection was served by the main process")

        main_pid = registry.service.process.pid
        (worker,) = worker_pids(main_pid)
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
