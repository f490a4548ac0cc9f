"""``twistd irp`` options: defaults, every limit reaches the registry, readable refusals."""

from __future__ import annotations

import os
import re
import struct
import sys
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from common.pki.keyfiles import load_certificates
from irp.tap import Options
from test.helpers import REPOSITORY, run_python, run_twistd, taken_port


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
            "--refusal-delay", "0.5", "--concurrent-hashes", "1", "--hash-timeout", "12", "--listen", "tcp:14604",
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
             config.login_lockout, config.login_lockout_max, config.login_refusal_delay, config.concurrent_hashes,
             config.hash_timeout),
            (2, 9, 60.0, 2.0, 8.0, 0.5, 1, 12.0),
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
            ["--domain", "example.org", "--hash-timeout", "0"],
            ["--domain", "example.org", "--refusal-delay", "-1"],
            ["--domain", "example.org", "--database", "mysql://x/y"],
            ["--domain", "example.org", "--registry", "example.net"],
            ["--domain", "example.org", "--trust-domain", "/nonexistent.pem"],
            ["--domain", "example.org", "--sixid-policy", "anyone"],
            ["--domain", "example.org", "--sixid-listen", "nonsense:1"],
            ["--domain", "example.org", "--sixid", "--sixid-max-lifetime", "10"],
            ["--domain", "example.org", "--sixid", "--sixid-max-ids", "0"],
        ):
            with self.subTest(argv=argv):
                self.assertRaises(usage.UsageError, Options().parseOptions, argv)


    def test_key_passphrase_file(self) -> None:
        """--key-passphrase-file (or IRP_KEY_PASSPHRASE_FILE) reaches the settings, kept
        out of the options and the settings' repr; an unsafe or empty file is refused."""
        from common.pki.keyfiles import write_bytes_private

        path = os.path.abspath(self.mktemp())
        write_bytes_private(path, b"s3cret words\n")
        self.assertIsNone(self.parse().settings().key_passphrase)
        settings = self.parse("--key-passphrase-file", path).settings()
        self.assertEqual(settings.key_passphrase, b"s3cret words")
        self.assertNotIn("s3cret", repr(settings))
        self.patch(os, "environ", dict(os.environ, IRP_KEY_PASSPHRASE_FILE=path))
        self.assertEqual(self.parse().settings().key_passphrase, b"s3cret words")
        os.chmod(path, 0o644)
        error = self.assertRaises(usage.UsageError, self.parse, "--key-passphrase-file", path)
        self.assertIn("chmod 600", str(error))
        write_bytes_private(path, b"\n")
        self.assertRaises(usage.UsageError, self.parse, "--key-passphrase-file", path)

    def test_sixid_off_by_default(self) -> None:
        settings = self.parse().settings()
        self.assertIsNone(settings.sixid)

    def test_sixid_defaults(self) -> None:
        """--sixid serves on TCP 4606, IPv6 and IPv4, policy certified, the design's limits."""
        settings = self.parse("--sixid").settings()
        assert settings.sixid is not None
        self.assertEqual(settings.sixid_listen, ["tcp6:4606:interface=\\:\\:"])
        self.assertEqual(
            (settings.sixid.policy, settings.sixid.max_lifetime, settings.sixid.max_ids), ("certified", 86_400, 10_000_000)
        )

    def test_sixid_options(self) -> None:
        """--sixid-listen (repeatable) implies --sixid; the policy and limits reach the server."""
        settings = self.parse(
            "--sixid-listen", "tcp:14606", "--sixid-listen", "tcp6:14607", "--sixid-policy", "listed",
            "--sixid-max-lifetime", "3600", "--sixid-max-ids", "1000",
        ).settings()
        assert settings.sixid is not None
        self.assertEqual(settings.sixid_listen, ["tcp:14606", "tcp6:14607"])
        self.assertEqual((settings.sixid.policy, settings.sixid.max_lifetime, settings.sixid.max_ids), ("listed", 3600, 1000))


class MetricsOptionsTests(SynchronousTestCase):
    """``--metrics-listen``: off by default, repeatable, checked against --workers."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--domain", "example.org", *argv])
        return options

    def test_off_by_default(self) -> None:
        self.assertEqual(self.parse().settings().metrics_listen, [])

    def test_given(self) -> None:
        settings = self.parse("--metrics-listen", "tcp:9604:interface=127.0.0.1", "--metrics-listen", "tcp6:9604:interface=\\:\\:1").settings()
        self.assertEqual(settings.metrics_listen, ["tcp:9604:interface=127.0.0.1", "tcp6:9604:interface=\\:\\:1"])
        self.parse("--workers", "4", "--metrics-listen", "tcp:9604")

    def test_refusals(self) -> None:
        for argv, text in [
            (["--metrics-listen", "bogus:1"], "invalid endpoint"),
            (["--workers", "2", "--metrics-listen", "unix:/tmp/irp-metrics.sock"], "not a tcp or tcp6 endpoint"),
            (["--workers", "3", "--metrics-listen", "tcp:65534"], "past 65535"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                self.parse(*argv)
            self.assertIn(text, str(raised.exception), argv)


class PidFileTests(SynchronousTestCase):
    """twistd's pid file: each service its own, so that the README's registry and agents
    run side by side in one folder (twistd's default 'twistd.pid' made the second refuse
    to start: "Another twistd server is running")."""

    def test_default_beside_the_data_directory(self) -> None:
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions(["irp", "--domain", "example.org", "--data-dir", "/srv/irp-data"])
        self.assertEqual(options["pidfile"], "/srv/irp-data.pid")

    def test_given_pidfile_kept(self) -> None:
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions(["--pidfile", "/run/mine.pid", "irp", "--domain", "example.org"])
        self.assertEqual(options["pidfile"], "/run/mine.pid")


class FailedStartTests(TestCase):
    """``twistd irp`` that cannot start, run as users run it (a separate process)."""

    async def test_port_in_use(self) -> None:
        """The port is taken: exit non-zero, one readable line on stderr, no traceback
        anywhere, and no CA, data folder or pid file left behind."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        with taken_port() as port:
            result = await run_twistd(
                ["-n", "irp", "--domain", "example.org", "--listen", f"tcp:{port}:interface=127.0.0.1", "--argon2-memory", "8192"],
                home=home,
            )
        self.assertNotEqual(result.code, 0, result)
        self.assertNotIn("Traceback", result.out + result.err)
        lines = result.err.strip().splitlines()
        self.assertEqual(len(lines), 1, result.err)
        self.assertIn(f"cannot listen on 127.0.0.1 port {port}", lines[0])
        self.assertTrue(lines[0].startswith("twistd irp: "), lines[0])
        self.assertEqual(os.listdir(home), [])

    async def test_other_ports_in_use(self) -> None:
        """The metrics or sixid port is taken: the same one line, naming it, and nothing
        created."""
        for option in ("--metrics-listen", "--sixid-listen"):
            home = os.path.abspath(self.mktemp())
            os.makedirs(home)
            with taken_port() as port:
                result = await run_twistd(
                    ["-n", "irp", "--domain", "example.org", "--listen", "tcp:0:interface=127.0.0.1",
                     option, f"tcp:{port}:interface=127.0.0.1", "--argon2-memory", "8192"],
                    home=home,
                )
            self.assertNotEqual(result.code, 0, (option, result))
            self.assertNotIn("Traceback", result.out + result.err)
            lines = result.err.strip().splitlines()
            self.assertEqual(lines, [f"twistd irp: cannot listen on 127.0.0.1 port {port}: Address already in use"], option)
            self.assertEqual(os.listdir(home), [], option)

    async def test_port_in_use_daemon(self) -> None:
        """The same as a daemon (no -n, the README's form for agents): the process that
        was started exits non-zero and says why; no CA, data folder or pid file."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        with taken_port() as port:
            result = await run_twistd(
                ["--logfile", "irp.log", "irp", "--domain", "example.org", "--listen", f"tcp:{port}:interface=127.0.0.1",
                 "--argon2-memory", "8192"],
                home=home,
            )
        self.assertNotEqual(result.code, 0, result)
        self.assertNotIn("Traceback", result.out + result.err)
        self.assertIn(f"cannot listen on 127.0.0.1 port {port}: Address already in use", result.err)
        self.assertEqual(sorted(os.listdir(home)), ["irp.log"])

    async def test_other_ports_in_use_daemon(self) -> None:
        """The metrics, sixid or HTTP port taken, as a daemon: each time the started process
        exits non-zero and says why; nothing created."""
        for option in ("--metrics-listen", "--sixid-listen", "--http-listen"):
            home = os.path.abspath(self.mktemp())
            os.makedirs(home)
            with taken_port() as port:
                result = await run_twistd(
                    ["--logfile", "irp.log", "irp", "--domain", "example.org", "--listen", "tcp:0:interface=127.0.0.1",
                     option, f"tcp:{port}:interface=127.0.0.1", "--argon2-memory", "8192"],
                    home=home,
                )
            self.assertNotEqual(result.code, 0, (option, result))
            self.assertNotIn("Traceback", result.out + result.err)
            self.assertIn(f"cannot listen on 127.0.0.1 port {port}: Address already in use", result.err, option)
            self.assertEqual(sorted(os.listdir(home)), ["irp.log"], option)


class StartingProcess(ProcessProtocol):
    """A ``twistd -n irp`` process: its output, and the first line holding a text."""

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted
        self.output = b""
        self.found: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.output = (self.output + data)[-1_000_000:]
        for line in self.output.decode("utf-8", "replace").splitlines():
            if self.wanted in line and not self.found.called:
                self.found.callback(line)

    errReceived = outReceived  # noqa: N815 - Twisted's name

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        if not self.found.called:
            self.found.errback(Exception(f"twistd ended without {self.wanted!r}: {self.output.decode('utf-8', 'replace')}"))
        self.ended.callback(None)


def start_twistd(testcase: TestCase, wanted: str, *options: str) -> tuple[str, StartingProcess]:
    """``twistd -n irp --domain example.org --listen tcp:0:interface=127.0.0.1 OPTIONS`` in a
    new home folder (cheap password hashing), stopped (SIGTERM) at the test's end; returns
    the folder and the process, whose ``found`` fires with the first line holding ``wanted``."""
    home = os.path.abspath(testcase.mktemp())
    os.makedirs(home)
    process = StartingProcess(wanted)
    environment = {"PYTHONPATH": REPOSITORY, "HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    arguments = ["-n", "irp", "--domain", "example.org", "--listen", "tcp:0:interface=127.0.0.1", "--argon2-memory", "8192", *options]
    transport = global_reactor.spawnProcess(  # type: ignore[attr-defined]
        process, sys.executable, [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments],
        env=environment, path=home,
    )

    def stop() -> Deferred[None]:
        try:
            transport.signalProcess("TERM")
        except ProcessExitedAlready:
            pass
        return process.ended

    testcase.addCleanup(stop)
    return home, process


class SixidStartTests(TestCase):
    """``twistd irp --sixid`` run as users run it (a separate process)."""

    async def test_starts_serving_sixid(self) -> None:
        """It says where sixid serves and with which policy, and answers there over TLS
        with the registry's certificate (a ping)."""
        home, process = start_twistd(self, "sixid serving on", "--sixid-listen", "tcp:0:interface=127.0.0.1", "--sixid-policy", "open")
        line = await process.found.addTimeout(60, global_reactor)
        found = re.search(r"sixid serving on 127\.0\.0\.1:(\d+) \(policy open\)", line)
        assert found is not None, line
        root = load_certificates(os.path.join(home, "irp-data", "ca", "root.pem"))[0]
        port = int(found.group(1))
        answer = await ping(root, port)
        self.assertEqual(answer, b'<response id="1"><pong/></response>')


    async def test_workers_serve_sixid_too(self) -> None:
        """With --workers 2 the worker adopts sixid's listening socket as well as IRP's,
        and serves it on the same port."""
        home, process = start_twistd(self, "] sixid serving on", "--workers", "2", "--sixid-listen", "tcp:0:interface=127.0.0.1")
        await process.found.addTimeout(60, global_reactor)
        lines: list[str] = []
        for _ in range(600):  # the worker starts after the main process: up to 60 s
            lines = [line for line in process.output.decode("utf-8", "replace").splitlines() if "sixid serving on" in line]
            if any("[worker2/" in line for line in lines):
                break
            await deferLater(global_reactor, 0.1, lambda: None)
        self.assertEqual(len(lines), 2, process.output.decode("utf-8", "replace"))
        ports = {found.group(1) for line in lines if (found := re.search(r"sixid serving on 127\.0\.0\.1:(\d+)", line))}
        self.assertEqual(len(ports), 1, lines)
        root = load_certificates(os.path.join(home, "irp-data", "ca", "root.pem"))[0]
        port = int(ports.pop())
        answers = [await ping(root, port) for _ in range(4)]
        self.assertEqual(answers, [b'<response id="1"><pong/></response>'] * 4)


class MetricsStartTests(TestCase):
    """``twistd irp --metrics-listen`` run as users run it (separate processes)."""

    async def test_workers_serve_their_own(self) -> None:
        """With --workers 2 each process serves its own metrics on a port of its own (port
        0: each a free one, named in its log line), both scraped over HTTP."""
        from test.helpers import sample, scrape

        home, process = start_twistd(self, "[worker2/common.metrics#info] IRP registry metrics at", "--workers", "2", "--metrics-listen", "tcp:0:interface=127.0.0.1")
        await process.found.addTimeout(60, global_reactor)
        output = process.output.decode("utf-8", "replace")
        ports = [int(port) for port in re.findall(r"IRP registry metrics at http://127\.0\.0\.1:(\d+)/metrics", output)]
        self.assertEqual(len(set(ports)), 2, output)
        for port in ports:
            # A process serves its metrics before its registry is up: its totals come once
            # it is (up to 60 s).
            samples = await scrape(port)
            for _ in range(600):
                if sample(samples, "irp_database_totals_timestamp_seconds"):
                    break
                await deferLater(global_reactor, 0.1, lambda: None)
                samples = await scrape(port)
            self.assertEqual(sample(samples, "irp_users_registered"), 1)  # the administrator
            self.assertEqual(sample(samples, "irp_connections_open"), 0)
            self.assertIn(("process_cpu_seconds_total", ()), samples)


def ping(root: Any, port: int) -> Deferred[bytes]:
    """Connect to sixid on 127.0.0.1:port over TLS (trusting ``root``), send a ping; fire
    with the answer's payload."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    from common.tls import client_options

    answered: Deferred[bytes] = Deferred()

    class Pinger(Protocol):
        buffer = b""

        def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
            payload = b'<request v="1" id="1"><ping/></request>'
            self.transport.write(struct.pack(">I", len(payload)) + payload)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            self.buffer += data
            if len(self.buffer) >= 4 and len(self.buffer) >= 4 + struct.unpack(">I", self.buffer[:4])[0]:
                answered.callback(self.buffer[4:])
                self.transport.loseConnection()  # type: ignore[union-attr]

    endpoint = wrapClientTLS(client_options("localhost", [root]), TCP4ClientEndpoint(global_reactor, "127.0.0.1", port))
    connectProtocol(endpoint, Pinger()).addErrback(answered.errback)
    return answered.addTimeout(15, global_reactor)


class PluginDiscoveryTests(TestCase):
    """Both plugins are found by Twisted in the installed environment (whatever the
    install style: 'pip install .' or 'pip install -e .'), from outside the checkout."""

    async def test_installed_plugins_are_found(self) -> None:
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        program = (
            "from twisted.application.service import IServiceMaker\n"
            "from twisted.plugin import getPlugins\n"
            "print(' '.join(sorted(plugin.tapname for plugin in getPlugins(IServiceMaker))))\n"
        )
        # -I: no PYTHONPATH, no current directory on the path: only what is installed.
        result = await run_python(["-I", "-c", program], home=home)
        self.assertEqual(result.code, 0, result)
        names = result.out.split()
        self.assertIn("irp", names, result)
        self.assertIn("sixchat", names, result)
