"""Tests for :mod:`common.cliutil`: what the ``irp`` and ``sixchat`` commands share.

The commands themselves run as processes in ``test/irp/test_cli.py`` and
``test/sixchat/test_cli.py``; here, the helpers on their own.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from common import cliutil
from common.cliutil import CommandError, Context, check_endpoint, parse_endpoint, read_secret, server_argument
from common.endpoint import Endpoint
from common.pki import keyfiles


class SecretPromptTests(unittest.SynchronousTestCase):
    """A password asked at a terminal."""

    def test_end_of_input_at_the_prompt(self) -> None:
        """Ctrl-D at the prompt: a readable refusal, not a traceback."""

        def eof(prompt: str = "") -> str:
            raise EOFError

        self.patch(cliutil.getpass, "getpass", eof)
        self.patch(sys.stdin, "isatty", lambda: True)
        with self.assertRaises(CommandError) as caught:
            read_secret(argparse.Namespace(password_file=None), "Password: ")
        self.assertIn("no password was typed", str(caught.exception))

    def test_mistyped_repetition(self) -> None:
        """A new password is asked twice; differing entries ask again, and three misses give up."""
        answers = iter(["one", "two", "three", "three"])
        self.patch(cliutil.getpass, "getpass", lambda prompt="": next(answers))
        self.patch(sys.stdin, "isatty", lambda: True)
        self.assertEqual(read_secret(argparse.Namespace(), "New: ", confirm=True), "three")
        self.patch(cliutil.getpass, "getpass", lambda prompt="": prompt)
        with self.assertRaises(CommandError) as caught:
            read_secret(argparse.Namespace(), "New: ", confirm=True)
        self.assertIn(f"differed {cliutil.CONFIRM_ATTEMPTS} times", str(caught.exception))

    def test_password_file(self) -> None:
        """--password-file: its first line; refused when others may read it."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("s3cret\r\nignored\n")
        os.chmod(path, 0o600)
        self.assertEqual(read_secret(argparse.Namespace(password_file=path), "Password: "), "s3cret")
        os.chmod(path, 0o644)
        self.assertRaises(keyfiles.KeyFileError, read_secret, argparse.Namespace(password_file=path), "Password: ")


class ArgumentTests(unittest.SynchronousTestCase):
    """--server, addresses and listening endpoints typed by a person."""

    def test_server(self) -> None:
        """HOST[:PORT], port 4604 by default; a bad one is a CommandError naming --server."""
        self.assertEqual(server_argument("registry.example.org"), ("registry.example.org", 4604))
        self.assertEqual(server_argument("[::1]:5000"), ("::1", 5000))
        error = self.assertRaises(CommandError, server_argument, "host:99999")
        self.assertIn("--server", str(error))

    def test_endpoint(self) -> None:
        """ADDRESS, IPv4:PORT or [IPv6]:PORT; a bad one is a CommandError with the reason."""
        self.assertEqual(parse_endpoint("2001:db8::1", 4605), Endpoint("2001:db8::1", 4605))
        self.assertEqual(parse_endpoint("[2001:db8::1]:7", 4605), Endpoint("2001:db8::1", 7))
        self.assertEqual(parse_endpoint("192.0.2.1:7", 4605), Endpoint("192.0.2.1", 7))
        error = self.assertRaises(CommandError, parse_endpoint, "::ffff:192.0.2.1", 4605)
        self.assertIn("register 192.0.2.1 instead", str(error))
        self.assertRaises(CommandError, parse_endpoint, "example.org:1", 4605)

    def test_check_endpoint(self) -> None:
        """A Twisted endpoint description is checked at once (a usage error when bad)."""
        self.assertEqual(check_endpoint("tcp:0:interface=127.0.0.1"), "tcp:0:interface=127.0.0.1")
        self.assertRaises(usage.UsageError, check_endpoint, "nonsense:1")


class ContextTests(unittest.SynchronousTestCase):
    """The command's context."""

    def test_config_overrides(self) -> None:
        """--server and --user override the profile's; close without a connection is fine."""
        from common.profile import ProfileConfig

        folder = self.mktemp()
        args = argparse.Namespace(profile=folder, server="[::1]:5000", user="bob")
        ctx = Context(MemoryReactorClock(), args)
        self.patch(ctx.profile, "load_config", lambda: ProfileConfig(server="r.example.org", port=4604, domain="example.org", username="alice"))
        config = ctx.config()
        self.assertEqual((config.server, config.port, config.username), ("::1", 5000, "bob"))
        ctx.close()


class _RunOnceReactor:
    """Runs what is scheduled at once: a command that never waits completes in ``run``."""

    def __init__(self) -> None:
        self.stopped = False
        self._start: object = None

    def callWhenRunning(self, function: object) -> None:  # noqa: N802
        self._start = function

    def run(self) -> None:
        self._start()  # type: ignore[operator]

    def callLater(self, delay: float, function: object) -> None:  # noqa: N802
        function()  # type: ignore[operator]

    def stop(self) -> None:
        self.stopped = True


class _FinishingContext(Context):
    finished: list[str] = []

    async def finish(self) -> None:
        self.finished.append(self.args.name)


class RunCommandTests(unittest.SynchronousTestCase):
    """run_command: the chosen command with its context, finished however it ends."""

    def test_exit_code_and_finish(self) -> None:
        """The command's code is the exit code; the context is finished."""
        self.patch(_FinishingContext, "finished", [])

        async def command(ctx: Context) -> int:
            return 3

        args = argparse.Namespace(profile=self.mktemp(), function=command, name="ok")
        reactor = _RunOnceReactor()
        self.assertEqual(cliutil.run_command("prog", args, reactor, _FinishingContext, lambda error: None), 3)
        self.assertEqual(_FinishingContext.finished, ["ok"])
        self.assertTrue(reactor.stopped)

    def test_failure_explained_and_finished(self) -> None:
        """A failure ``explain`` knows gives its code; the context is finished all the same."""
        self.patch(_FinishingContext, "finished", [])
        self.patch(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115
        self.addCleanup(sys.stderr.close)

        async def command(ctx: Context) -> int:
            raise CommandError("no", 4)

        args = argparse.Namespace(profile=self.mktemp(), function=command, name="failed")
        explain = lambda error: (str(error), error.exit_code) if isinstance(error, CommandError) else None  # noqa: E731
        self.assertEqual(cliutil.run_command("prog", args, _RunOnceReactor(), _FinishingContext, explain), 4)
        self.assertEqual(_FinishingContext.finished, ["failed"])

    def test_broken_pipe_is_quiet(self) -> None:
        """The reader of the output went away (``| head``): exit 141, nothing on stderr."""
        self.patch(_FinishingContext, "finished", [])
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)

        async def command(ctx: Context) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        args = argparse.Namespace(profile=self.mktemp(), function=command, name="piped")
        self.assertEqual(cliutil.run_command("prog", args, _RunOnceReactor(), _FinishingContext, lambda error: ("no", 2)), 141)
        self.assertEqual(errors.getvalue(), "")
        self.assertEqual(_FinishingContext.finished, ["piped"])

    def test_console_main(self) -> None:
        """Files are created private; run's code ends the process."""
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        with self.assertRaises(SystemExit) as exit_:
            cliutil.console_main(lambda: 7)
        self.assertEqual(exit_.exception.code, 7)
        self.assertEqual(os.umask(0o022), 0o077)
