"""``twistd irp`` options: defaults, every limit reaches the registry, readable refusals."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from irp.tap import Options


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--domain", "example.org", *argv])
        return options

    def test_defaults(self) -> None:
        settings = self.parse().settings()
        self.assertEqual(settings.listen, ["tcp6:4604:interface=\\:\\:"])
        self.assertIn("localhost", settings.hostnames)
        self.assertEqual(settings.limits.max_connections_per_address, 64)
        assert settings.config is not None
        self.assertEqual((settings.config.login_failures_per_user, settings.config.login_failures_per_address), (5, 20))
        self.assertEqual(settings.argon2.memory_kib, 65536)

    def test_every_limit_is_configurable(self) -> None:
        settings = self.parse(
            "--max-connections-per-address", "7", "--max-pipelined", "3", "--handshake-timeout", "4",
            "--frame-timeout", "5", "--idle-timeout", "6", "--max-request", "4096", "--login-failures", "2",
            "--login-failures-per-address", "9", "--login-window", "60", "--lockout", "2", "--max-lockout", "8",
            "--refusal-delay", "0.5", "--concurrent-hashes", "1", "--listen", "tcp:14604",
            "--hostname", "irp.example.org",
        ).settings()
        limits, config = settings.limits, settings.config
        assert config is not None
        self.assertEqual(
            (limits.max_connections_per_address, limits.max_pipelined, limits.handshake_timeout, limits.frame_timeout,
             limits.idle_timeout, limits.max_request),
            (7, 3, 4.0, 5.0, 6.0, 4096),
        )
        self.assertEqual(
            (config.login_failures_per_user, config.login_failures_per_address, config.login_failure_window,
             config.login_lockout, config.login_lockout_max, config.login_refusal_delay, config.concurrent_hashes),
            (2, 9, 60.0, 2.0, 8.0, 0.5, 1),
        )
        self.assertEqual((settings.listen, settings.hostnames), (["tcp:14604"], ["irp.example.org"]))

    def test_refusals(self) -> None:
        for argv in (
            [],  # no --domain
            ["--domain", "not a domain"],
            ["--domain", "example.org", "--listen", "nonsense:1"],
            ["--domain", "example.org", "--key-type", "rsa512"],
            ["--domain", "example.org", "--max-pipelined", "0"],
            ["--domain", "example.org", "--lockout", "0"],
            ["--domain", "example.org", "--refusal-delay", "-1"],
            ["--domain", "example.org", "--database", "mysql://x/y"],
            ["--domain", "example.org", "--registry", "example.net"],
            ["--domain", "example.org", "--trust-domain", "/nonexistent.pem"],
        ):
            with self.subTest(argv=argv):
                self.assertRaises(usage.UsageError, Options().parseOptions, argv)
