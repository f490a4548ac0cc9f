"""``twistd sixchat`` options and service (sixchat/tap.py)."""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from irp.records import Endpoint
from sixchat.agent import Agent
from sixchat.tap import Options, makeService
from test.helpers import RunningRegistry, make_profile


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
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--profile", os.path.abspath(self.mktemp())])
        self.assertIn("no profile", str(caught.exception))

    def test_service(self) -> None:
        reactor = FakeReactor()
        parent = makeService(self.parse("--policy", "anyone"), reactor=reactor)
        self.assertIsInstance(parent, MultiService)
        [agent] = list(IService(parent))  # type: ignore[call-overload]
        self.assertIsInstance(agent, Agent)
        self.assertEqual((agent.settings.policy, str(agent.identity)), ("anyone", "alice@example.org"))

    def test_a_failed_start_stops_twistd(self) -> None:
        """An agent that cannot start (its port is taken) must not leave a process behind
        that does nothing."""
        reactor = FakeReactor()
        parent = makeService(self.parse(), reactor=reactor)
        [agent] = list(parent)  # type: ignore[call-overload]
        agent.ready.errback(Failure(CannotListenError("::", 4605, OSError("Address already in use"))))
        self.assertEqual(reactor.stopped, 1)
        self.assertEqual(self.flushLoggedErrors(), [])
