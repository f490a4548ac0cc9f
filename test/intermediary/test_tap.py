"""``twistd intermediary`` options and service (intermediary/tap.py)."""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.python import usage
from twisted.trial.unittest import TestCase

from intermediary.server.service import IntermediaryService
from intermediary.tap import Options, makeService
from irp.wire.records import Endpoint
from test.helpers import RunningRegistry, make_profile


class FakeReactor:
    """Just enough reactor for makeService."""

    running = True

    def stop(self) -> None:
        pass


class OptionsTests(TestCase):
    """Defaults, every option, refusals, the profile check."""

    async def setUp(self) -> None:  # type: ignore[override]
        registry = await RunningRegistry(self).start()
        base = os.path.abspath(self.mktemp())
        self.profile = make_profile(registry, await registry.enrol("intermediary"), os.path.join(base, "intermediary"))
        self.bob = make_profile(registry, await registry.enrol("bob"), os.path.join(base, "bob"))

    def parse(self, *argv: str, profile: str | None = None) -> Options:
        options = Options()
        options.parseOptions(["--profile", profile or self.profile, *argv])
        return options

    def test_defaults(self) -> None:
        settings = self.parse().settings()
        self.assertEqual(settings.listen, ["tcp6:4605:interface=\\:\\:"])
        self.assertEqual(settings.database_url, os.path.join(self.profile, "intermediary.sqlite3"))
        self.assertEqual((settings.relay_ports, settings.relay_interface, settings.register_ttl), (range(46050, 46100), "::", 300))
        self.assertEqual((settings.quotas.recipient_messages, settings.quotas.pair_messages, settings.limits.max_lifetime), (1000, 200, 30 * 86400))
        self.assertEqual(settings.connection_limits.idle_timeout, 600.0)

    def test_everything(self) -> None:
        settings = self.parse(
            "--listen", "tcp:4700:interface=127.0.0.1", "--advertise", "[2001:db8::1]:4700",
            "--database", "postgresql://im@db/im", "--relay-ports", "5000-5009", "--relay-interface", "2001:db8::1",
            "--relay-address", "2001:db8::9", "--ttl", "60", "--max-messages", "10", "--max-mailbox-bytes", "1000",
            "--max-sender-messages", "5", "--max-sender-bytes", "500", "--deposits-per-hour", "7", "--fetches-per-hour", "3",
            "--max-lifetime", "2", "--idle-timeout", "30", "--connections-per-address", "4", "--no-register",
        ).settings()
        self.assertEqual(settings.listen, ["tcp:4700:interface=127.0.0.1"])
        self.assertEqual(settings.advertise, [Endpoint("2001:db8::1", 4700)])
        self.assertEqual(settings.database_url, "postgresql://im@db/im")
        self.assertEqual((settings.relay_ports, settings.relay_interface, settings.relay_address), (range(5000, 5010), "2001:db8::1", "2001:db8::9"))
        self.assertEqual((settings.register, settings.register_ttl), (False, 60))
        quotas, limits = settings.quotas, settings.limits
        self.assertEqual((quotas.recipient_messages, quotas.recipient_bytes, quotas.pair_messages, quotas.pair_bytes), (10, 1000, 5, 500))
        self.assertEqual((limits.deposits_per_hour, limits.fetches_per_hour, limits.max_lifetime), (7, 3, 2 * 86400))
        self.assertEqual((settings.connection_limits.idle_timeout, settings.connection_limits.max_connections_per_address), (30.0, 4))

    def test_refusals(self) -> None:
        for argv, text in (
            (["--relay-ports", "9-1"], "--relay-ports"),
            (["--relay-ports", "a-b"], "--relay-ports"),
            (["--ttl", "10"], "--ttl"),
            (["--max-messages", "0"], "--max-messages must be at least 1"),
            (["--idle-timeout", "0"], "--idle-timeout"),
            (["--listen", "nonsense:1"], "invalid endpoint"),
            (["--advertise", "not-an-address"], "bad address"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(text, str(caught.exception), argv)

    def test_pidfile_beside_the_profile(self) -> None:
        from twisted.scripts.twistd import ServerOptions

        parent = ServerOptions()
        parent.parseOptions(["--nodaemon", "intermediary", "--profile", self.profile])
        self.assertEqual(parent["pidfile"], os.path.join(self.profile, "intermediary.pid"))

    def test_profile_must_be_the_intermediary_account(self) -> None:
        with self.assertRaises(SystemExit) as exited:
            makeService(self.parse(profile=self.bob), reactor=FakeReactor())
        self.assertIn("runs as intermediary@example.org", str(exited.exception))
        missing = os.path.abspath(self.mktemp())
        with self.assertRaises(SystemExit) as exited:
            makeService(self.parse(profile=missing), reactor=FakeReactor())
        self.assertIn("no profile", str(exited.exception))

    def test_service(self) -> None:
        parent = makeService(self.parse(), reactor=FakeReactor())
        self.assertIsInstance(parent, MultiService)
        [service] = list(IService(parent))  # type: ignore[call-overload]
        self.assertIsInstance(service, IntermediaryService)
