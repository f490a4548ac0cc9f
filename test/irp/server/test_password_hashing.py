"""Password hashing inside the running registry: the shipped Argon2id parameters under
concurrent logins over real TLS, and the timeout that bounds every hash (issue 9, item 1)."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from common.pki.keyfiles import load_certificates
from irp import errors
from irp.client import connect
from irp.server.passwords import Argon2Parameters
from irp.server.session import Session
from irp.wire.messages import build_request, parse_request
from test.helpers import DEFAULT_PASSWORD, REPOSITORY, RunningRegistry
from test.irp.server.helpers import RegistryProcess, login_element


class ShippedParametersTests(unittest.TestCase):
    """The registry as shipped: Argon2Parameters() and its real hashing thread pool."""

    async def test_concurrent_logins(self) -> None:
        """Eight password logins at once (right, wrong and unknown users) all get their
        answer, and the registry goes on answering logins afterwards."""
        running = await RunningRegistry(self, argon2=Argon2Parameters()).start()
        self.assertEqual(running.registry.hasher.parameters, Argon2Parameters())
        for name in ("alice", "bob", "carol"):
            await running.add_user(name)
        clients = [await running.client() for _ in range(8)]
        attempts = [
            ("alice", DEFAULT_PASSWORD),
            ("bob", DEFAULT_PASSWORD),
            ("carol", DEFAULT_PASSWORD),
            ("alice", "a wrong password"),
            ("nobody", DEFAULT_PASSWORD),
            ("bob", DEFAULT_PASSWORD),
            ("carol", "another wrong one"),
            ("alice", DEFAULT_PASSWORD),
        ]
        logins = [client.login(name, password) for client, (name, password) in zip(clients, attempts, strict=True)]
        outcomes = await DeferredList(logins, consumeErrors=True)
        for (ok, result), (name, password) in zip(outcomes, attempts, strict=True):
            if password == DEFAULT_PASSWORD and name != "nobody":
                self.assertTrue(ok, result)
                self.assertEqual(str(result.user), f"{name}@example.org")
            else:
                self.assertFalse(ok)
                self.assertIsInstance(result.value, errors.LoginFailed)
        later = await running.client("carol")
        self.assertEqual(str((await later.whoami()).user), "carol@example.org")


class HashTimeoutTests(unittest.TestCase):
    """A hash that does not finish in time fails its own request only."""

    async def test_stuck_hash_fails_one_login(self) -> None:
        """Hashes that never finish (as cryptography's did): each login waiting for one
        fails with ``unavailable`` at the timeout, with one log line; the hashing slots
        and the attempts in flight are given back, so the next login works."""
        running = await RunningRegistry(self).start()
        await running.add_user("alice")
        registry = running.registry
        clock = Clock()
        registry.clock = clock
        real = registry.run_in_thread
        stuck: list[Deferred[Any]] = []

        def never_finishing(function: Any, *args: Any) -> Deferred[Any]:
            stuck.append(Deferred())
            return stuck[-1]

        registry.run_in_thread = never_finishing
        timeout = registry.config.hash_timeout

        def login(password: str) -> Deferred[Any]:
            request = parse_request(build_request(1, login_element("alice", password)))
            return registry.handle(Session(peer_host="192.0.2.1"), request)

        # More attempts than the user's login budget: were they still counted as in
        # flight after failing, the last login below would be rate-limited.
        waiting = [login(DEFAULT_PASSWORD) for _ in range(registry.config.login_failures_per_user + 1)]
        self.assertEqual(len(stuck), registry.config.concurrent_hashes)  # the others wait their turn
        with capturedLogs() as logs:
            clock.advance(timeout)
        for attempt in waiting:
            # The refusal is answered once the audit trail has the login (a real write).
            error = await self.assertFailure(attempt, errors.Unavailable)
            self.assertIn("too long", error.message)
        lines = [event for event in logs if "password hash took" in event.get("log_format", "")]
        self.assertEqual(len(lines), len(waiting))
        registry.run_in_thread = real
        [session] = await login(DEFAULT_PASSWORD)
        self.assertEqual(session.get("user"), "alice@example.org")

    async def test_on_the_wire(self) -> None:
        """The client reads the refusal as ``unavailable`` with its reason."""
        running = await RunningRegistry(self).start()
        await running.add_user("alice")
        registry = running.registry
        registry.config.hash_timeout = 0.01
        registry.run_in_thread = lambda function, *args: Deferred()
        client = await running.client()
        with self.assertRaises(errors.Unavailable) as caught:
            await client.login("alice", DEFAULT_PASSWORD)
        self.assertIn("checking the password took too long", caught.exception.message)


class ShippedProcessTests(unittest.TestCase):
    """``twistd irp`` as shipped (default Argon2 parameters, its own thread pool) in a
    child process."""

    async def test_concurrent_logins_then_sigterm(self) -> None:
        """Eight logins at once all get their answer; SIGTERM then stops the registry
        (a hashing thread that never returned used to keep it running)."""
        data_dir = os.path.abspath(self.mktemp())
        process = RegistryProcess()
        arguments = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile=-",
            "irp", "--domain", "example.org", "--data-dir", data_dir,
            "--listen", "tcp:0:interface=127.0.0.1", "--hostname", "127.0.0.1",
        ]
        reactor.spawnProcess(process, sys.executable, arguments, env=dict(os.environ, PYTHONPATH=REPOSITORY), path=REPOSITORY)
        self.addCleanup(process.kill)
        port = await process.listening
        root = load_certificates(os.path.join(data_dir, "ca", "root.pem"))[0]
        with open(os.path.join(data_dir, "admin-password"), encoding="ascii") as handle:
            admin_password = handle.read().strip()
        clients = [
            await connect(reactor, "127.0.0.1", port, domain="example.org", trust_roots=[root], timeout=60)
            for _ in range(8)
        ]
        for client in clients:
            self.addCleanup(client.close)
        # The administrator, and unknown users (each costs one hash all the same; one
        # user's concurrent attempts would be rate-limited).
        attempts = [("admin", admin_password)] + [(f"nobody{n}", admin_password) for n in range(7)]
        outcomes = await DeferredList(
            [client.login(name, password) for client, (name, password) in zip(clients, attempts, strict=True)],
            consumeErrors=True,
        )
        self.assertTrue(outcomes[0][0], outcomes[0][1])
        for ok, result in outcomes[1:]:
            self.assertFalse(ok)
            self.assertIsInstance(result.value, errors.LoginFailed)
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        ended = process.ended
        ended.addTimeout(60, reactor)  # a bound, not a measurement: it stops in about a second
        await ended
        self.assertIn(b"Server Shut Down", process.output)
