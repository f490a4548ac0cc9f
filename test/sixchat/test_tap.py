"""``twistd sixchat`` options and service (sixchat/tap.py)."""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.startup import START_FAILED
from irp.wire.records import Endpoint
from sixchat.agent.service import Agent
from sixchat.tap import Options, makeService
from test.helpers import RunningRegistry, make_profile, run_twistd, taken_port


class FakeReactor:
    """Just enough reactor for makeService: records stop()."""

    running = True

    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class OptionsTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        registry = await RunningRegistry(self).start()
        self.profile = make_profile(registry, await registry.enrol("alice"), os.path.join(os.path.abspath(self.mktemp()), "alice"))

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--profile", self.profile, *argv])
        return options

    def test_limit_options(self) -> None:
        settings = self.parse(
            "--handshakes-per-address", "5", "--max-handshakes", "7", "--stranger-messages", "9", "--stranger-bytes", "11"
        ).settings()
        self.assertEqual(
            (settings.handshakes_per_address, settings.max_handshakes_in_progress, settings.unknown_peer_messages, settings.unknown_peer_bytes),
            (5, 7, 9, 11),
        )

    def test_limit_defaults(self) -> None:
        settings = self.parse().settings()
        self.assertEqual(
            (settings.handshakes_per_address, settings.max_handshakes_in_progress, settings.unknown_peer_messages, settings.unknown_peer_bytes),
            (20, 64, 100, 1 << 20),
        )

    def test_limit_refusals(self) -> None:
        for name in ("--handshakes-per-address", "--max-handshakes", "--stranger-messages", "--stranger-bytes"):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(name, "0")
            self.assertIn(f"{name} must be at least 1", str(caught.exception))

    def test_defaults(self) -> None:
        settings = self.parse().settings()
        self.assertEqual(settings.listen, ["tcp6:4605:interface=\\:\\:"])
        self.assertEqual((settings.policy, settings.register_ttl, settings.undelivered_after, settings.register), ("contacts", 300, 300.0, True))
        self.assertIsNone(settings.advertise)

    def test_everything(self) -> None:
        settings = self.parse(
            "--listen", "tcp6:4605:interface=\\:\\:1", "--listen", "tcp:4606:interface=127.0.0.1",
            "--advertise", "[2001:db8::1]:4605", "--advertise", "192.0.2.1",
            "--policy", "domain", "--ttl", "60", "--undelivered-after", "30", "--no-register",
        ).settings()
        self.assertEqual(settings.listen, ["tcp6:4605:interface=\\:\\:1", "tcp:4606:interface=127.0.0.1"])
        self.assertEqual(settings.advertise, [Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 4605)])
        self.assertEqual((settings.policy, settings.register_ttl, settings.undelivered_after, settings.register), ("domain", 60, 30.0, False))

    def test_metrics(self) -> None:
        """``--metrics-listen``: off by default, repeatable, checked."""
        self.assertEqual(self.parse().settings().metrics_listen, [])
        settings = self.parse("--metrics-listen", "tcp:9605:interface=127.0.0.1", "--metrics-listen", "tcp6:9605").settings()
        self.assertEqual(settings.metrics_listen, ["tcp:9605:interface=127.0.0.1", "tcp6:9605"])
        with self.assertRaises(usage.UsageError):
            self.parse("--metrics-listen", "nonsense:1")

    def test_refusals(self) -> None:
        for argv, text in (
            (["--policy", "everyone"], "--policy"),
            (["--ttl", "10"], "--ttl"),
            (["--undelivered-after", "0"], "--undelivered-after"),
            (["--listen", "nonsense:1"], "invalid endpoint"),
            (["--advertise", "not-an-address"], "bad address"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(text, str(caught.exception), argv)
        options = Options()
        missing = os.path.abspath(self.mktemp())
        options.parseOptions(["--profile", missing])
        with self.assertRaises(SystemExit) as exited:
            makeService(options, reactor=FakeReactor())
        self.assertIn("no profile", str(exited.exception))
        self.assertIn(f"sixchat --profile {missing} init", str(exited.exception))

    def test_intermediary_options(self) -> None:
        settings = self.parse().settings()
        self.assertEqual((settings.intermediary, settings.relay), (True, False))
        settings = self.parse("--relay").settings()
        self.assertEqual((settings.intermediary, settings.relay, settings.listen), (True, True, ["tcp6:4605:interface=\\:\\:"]))
        # --no-listen: nothing to connect to directly, reachable through the relay only.
        settings = self.parse("--no-listen").settings()
        self.assertEqual((settings.listen, settings.relay, settings.intermediary), ([], True, True))
        settings = self.parse("--no-intermediary").settings()
        self.assertEqual((settings.intermediary, settings.relay), (False, False))
        for argv, text in (
            (["--no-listen", "--listen", "tcp:4606"], "--no-listen excludes"),
            (["--no-listen", "--advertise", "192.0.2.1"], "--no-listen excludes"),
            (["--no-listen", "--no-intermediary"], "--no-listen needs the intermediary"),
            (["--relay", "--no-intermediary"], "--relay needs the intermediary"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(text, str(caught.exception), argv)

    def test_service(self) -> None:
        reactor = FakeReactor()
        parent = makeService(self.parse("--policy", "anyone"), reactor=reactor)
        self.assertIsInstance(parent, MultiService)
        [agent] = list(IService(parent))  # type: ignore[call-overload]
        self.assertIsInstance(agent, Agent)
        self.assertEqual((agent.settings.policy, str(agent.identity)), ("anyone", "alice@example.org"))

    def test_a_failed_start_stops_twistd(self) -> None:
        """An agent that cannot start (its port is taken) must not leave a process behind
        that does nothing: one line, the reactor stops, the process will exit 1."""
        reactor = FakeReactor()
        exits: list[tuple[object, ...]] = []
        parent = makeService(self.parse(), reactor=reactor, at_exit=lambda *call: exits.append(call))
        [agent] = list(parent)  # type: ignore[call-overload]
        agent.ready.errback(Failure(CannotListenError("::", 4605, OSError(98, "Address already in use"))))
        self.assertEqual(reactor.stopped, 1)
        self.assertEqual([call[1:] for call in exits], [(START_FAILED,)])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pidfile_in_the_profile(self) -> None:
        """twistd's pid file defaults to one in the profile, so that agents and a registry
        run side by side in one folder."""
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions(["sixchat", "--profile", self.profile])
        self.assertEqual(options["pidfile"], os.path.join(self.profile, "agent.pid"))


class FailedStartTests(TestCase):
    """``twistd sixchat`` that cannot start, run as users run it (a separate process)."""

    async def test_bad_profile(self) -> None:
        """One line naming the command that makes a profile; no usage text, no traceback,
        exit non-zero."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        missing = os.path.join(home, "nobody")
        result = await run_twistd(["-n", "sixchat", "--profile", missing], home=home)
        self.assertNotEqual(result.code, 0, result)
        output = result.out + result.err
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Usage:", output)
        self.assertEqual(len(output.strip().splitlines()), 1, output)
        self.assertIn(f"sixchat --profile {missing} init", output)
        self.assertNotIn("irp init", output)

    async def test_port_in_use(self) -> None:
        """The port is taken: exit non-zero, one readable line on stderr, no traceback."""
        registry = await RunningRegistry(self).start()
        home = os.path.abspath(self.mktemp())
        profile = make_profile(registry, await registry.enrol("alice"), os.path.join(home, "alice"))
        with taken_port() as port:
            result = await run_twistd(
                ["-n", "sixchat", "--profile", profile, "--no-register", "--listen", f"tcp:{port}:interface=127.0.0.1"], home=home
            )
        self.assertNotEqual(result.code, 0, result)
        self.assertNotIn("Traceback", result.out + result.err)
        lines = result.err.strip().splitlines()
        self.assertEqual(len(lines), 1, result.err)
        self.assertEqual(lines[0], f"twistd sixchat: cannot listen on 127.0.0.1 port {port}: Address already in use")
        self.assertFalse(os.path.exists(os.path.join(profile, "agent.pid")))

    async def test_metrics_port_in_use(self) -> None:
        """The metrics port is taken: the same one line, exit non-zero."""
        registry = await RunningRegistry(self).start()
        home = os.path.abspath(self.mktemp())
        profile = make_profile(registry, await registry.enrol("alice"), os.path.join(home, "alice"))
        with taken_port() as port:
            result = await run_twistd(
                ["-n", "sixchat", "--profile", profile, "--no-register", "--no-intermediary", "--listen", "tcp:0:interface=127.0.0.1",
                 "--metrics-listen", f"tcp:{port}:interface=127.0.0.1"],
                home=home,
            )
        self.assertNotEqual(result.code, 0, result)
        self.assertNotIn("Traceback", result.out + result.err)
        self.assertEqual(result.err.strip().splitlines(), [f"twistd sixchat: cannot listen on 127.0.0.1 port {port}: Address already in use"])

    async def test_port_in_use_daemon(self) -> None:
        """As a daemon (the README's form): the started process exits non-zero and says why."""
        registry = await RunningRegistry(self).start()
        home = os.path.abspath(self.mktemp())
        profile = make_profile(registry, await registry.enrol("alice"), os.path.join(home, "alice"))
        with taken_port() as port:
            result = await run_twistd(
                ["--logfile", "alice.log", "sixchat", "--profile", profile, "--no-register",
                 "--listen", f"tcp:{port}:interface=127.0.0.1"],
                home=home,
            )
        self.assertNotEqual(result.code, 0, result)
        self.assertNotIn("Traceback", result.out + result.err)
        self.assertIn(f"cannot listen on 127.0.0.1 port {port}: Address already in use", result.err)
        self.assertFalse(os.path.exists(os.path.join(profile, "agent.pid")))
