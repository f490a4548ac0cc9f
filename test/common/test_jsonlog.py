"""Tests for :mod:`common.jsonlog`: JSON lines for twistd's ``--logger``, secrets never in them.

The unit tests log through the observer into memory; the integration test runs a real
``twistd --logger=common.jsonlog.observer irp`` process, logs in with passwords over TLS
(right, wrong, changed) and reads every line it wrote.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON
from twisted.python.failure import Failure
from twisted.trial import unittest

from common import jsonlog
from common.pki.keyfiles import load_certificates
from irp import errors
from irp.client import connect
from irp.server.service import ADMIN_PASSWORD_FILE
from test.helpers import REPOSITORY


def lines_of(text: str) -> list[dict[str, Any]]:
    """Each line as an event (every line must be one JSON object)."""
    return [eventFromJSON(line) for line in text.splitlines()]


class ObserverTests(unittest.TestCase):
    """The observer: format, levels, redaction, output."""

    def log_to(self, environ: dict[str, str]) -> tuple[Logger, io.StringIO]:
        output = io.StringIO()
        return Logger(namespace="test", observer=jsonlog.observer(environ, output)), output

    def test_json_lines(self) -> None:
        """One JSON object per line, no record separator; the fields and the format are kept."""
        log, output = self.log_to({})
        log.info("User {user} did {what}", user="alice", what="something\nwith a newline")
        log.warn("Second")
        text = output.getvalue()
        self.assertNotIn("\x1e", text)
        events = lines_of(text)
        self.assertEqual(len(events), 2)
        self.assertEqual((events[0]["user"], events[0]["log_format"]), ("alice", "User {user} did {what}"))
        self.assertEqual(events[0]["log_level"].name, "info")
        self.assertEqual(text.count("\n"), 2)

    def test_levels(self) -> None:
        """Debug is left out by default; IRP_LOG_JSON_LEVEL chooses; a bad level is refused."""
        log, output = self.log_to({})
        log.debug("hidden")
        self.assertEqual(output.getvalue(), "")
        log, output = self.log_to({"IRP_LOG_JSON_LEVEL": "debug"})
        log.debug("shown")
        self.assertEqual(len(lines_of(output.getvalue())), 1)
        log, output = self.log_to({"IRP_LOG_JSON_LEVEL": "error"})
        log.warn("hidden")
        self.assertEqual(output.getvalue(), "")
        with self.assertRaises(SystemExit) as caught:
            jsonlog.observer({"IRP_LOG_JSON_LEVEL": "loud"}, io.StringIO())
        self.assertIn("IRP_LOG_JSON_LEVEL='loud' is not a log level", str(caught.exception))

    def test_secret_fields_redacted(self) -> None:
        """Fields named for secrets are redacted, in the format's output too and in nested
        dictionaries; the event other observers see is left as it was."""
        seen: list[Any] = []
        output = io.StringIO()
        json_observer = jsonlog.observer({}, output)

        def both(event: Any) -> None:
            json_observer(event)
            seen.append(event)

        log = Logger(namespace="test", observer=both)
        log.info(
            "Login {user} with {password}",
            user="alice",
            password="hunter2-secret",
            details={"passphrase": "open sesame", "api_token": "t0k3n", "depth": {"private_key": "-----BEGIN"}},
            current_password="old-one",
        )
        text = output.getvalue()
        for secret in ("hunter2-secret", "open sesame", "t0k3n", "-----BEGIN", "old-one"):
            self.assertNotIn(secret, text)
        event = lines_of(text)[0]
        self.assertEqual((event["password"], event["details"]["passphrase"], event["user"]), ("[redacted]", "[redacted]", "alice"))
        self.assertEqual(seen[0]["password"], "hunter2-secret")

    def test_file(self) -> None:
        """IRP_LOG_JSON_FILE: appended to, created mode 0600; reopened under its name
        after a rename (rotation)."""
        path = os.path.abspath(self.mktemp())
        for round_ in range(2):
            handle = jsonlog.ReopenableFile(path)
            log = Logger(namespace="test", observer=jsonlog.observer({}, handle))
            log.info("Round {round}", round=round_)
            if round_ == 1:
                os.rename(path, path + ".1")
                handle.reopen()
                log.info("Round {round}", round=2)
            handle.close()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path + ".1", encoding="utf-8") as handle:
            self.assertEqual([event["round"] for event in lines_of(handle.read())], [0, 1])
        with open(path, encoding="utf-8") as handle:
            self.assertEqual([event["round"] for event in lines_of(handle.read())], [2])


class JSONRegistry(ProcessProtocol):
    """``twistd --logger=common.jsonlog.observer irp`` writing JSON lines to stdout."""

    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.stdout = b""
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        if self.listening.called:
            return
        for line in self.stdout.splitlines():
            event = json.loads(line)
            if "listening on" in event.get("log_format", "") and "port" in event:
                self.listening.callback(int(event["port"]))
                return

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd ended before listening: {self.stderr[-2000:]!r} {self.stdout[-2000:]!r}"))
        self.ended.callback(None)


class TwistdTests(unittest.TestCase):
    """A real registry process logging JSON lines."""

    timeout = 120

    async def test_no_password_in_the_json(self) -> None:
        """Password logins (right and wrong), a new user's password and a password change
        are logged as events, and none of the passwords appears anywhere in the JSON."""
        data_dir = os.path.abspath(self.mktemp())
        process = JSONRegistry()
        environment = dict(os.environ, PYTHONPATH=REPOSITORY, IRP_LOG_JSON_LEVEL="debug")
        environment.pop("IRP_LOG_JSON_FILE", None)
        arguments = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logger=common.jsonlog.observer",
            "irp", "--domain", "example.org", "--data-dir", data_dir,
            "--listen", "tcp:0:interface=127.0.0.1", "--hostname", "127.0.0.1",
            "--key-type", "p256", "--argon2-memory", "8192",
        ]
        reactor.spawnProcess(process, sys.executable, arguments, env=environment, path=REPOSITORY)

        def stop() -> Deferred[None]:
            if not process.ended.called:
                process.transport.signalProcess("TERM")  # type: ignore[union-attr]
            return process.ended

        self.addCleanup(stop)
        port = await process.listening
        with open(os.path.join(data_dir, ADMIN_PASSWORD_FILE), encoding="ascii") as handle:
            admin_password = handle.read().strip()
        root = load_certificates(os.path.join(data_dir, "ca", "root.pem"))[0]

        async def client() -> Any:
            made = await connect(reactor, "127.0.0.1", port, domain="example.org", trust_roots=[root], timeout=20)
            self.addCleanup(made.close)
            return made

        secrets = {
            "admin": admin_password,
            "first": "alice's first password, quite long",
            "wrong": "a wrong password, also quite long",
            "second": "alice's second password, still long",
        }
        admin = await client()
        await admin.login("admin", secrets["admin"])
        await admin.create_user("alice", password=secrets["first"])
        alice = await client()
        await alice.login("alice", secrets["first"])
        await alice.set_password(None, secrets["second"], current_password=secrets["first"])
        wrong = await client()
        with self.assertRaises(errors.IRPError):
            await wrong.login("alice", secrets["wrong"])
        again = await client()
        await again.login("alice", secrets["second"])
        await stop()

        text = process.stdout.decode("utf-8")
        events = lines_of(text)  # every line is one JSON object
        formats = [event.get("log_format", "") for event in events]
        self.assertIn("{user} logged in with a password from {host}", formats)
        self.assertIn("Failed password login for {user} from {host}", formats)
        for name, secret in secrets.items():
            self.assertNotIn(secret, text, f"the {name} password is in the JSON log")
            self.assertNotIn(json.dumps(secret)[1:-1], text, f"the {name} password is in the JSON log (escaped)")
