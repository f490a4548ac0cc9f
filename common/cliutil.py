"""What the command-line programs (``irp``, ``sixchat``, ``sixid``) share: the command's
context (profile and options), readable failures, secrets input, endpoint arguments, and
running a command in a reactor started for it (:func:`run_command`, :func:`console_main`).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from common.endpoint import Endpoint, split_host_port
from common.pki import keyfiles
from common.ports import IRP_PORT
from common.profile import Profile, ProfileConfig
from common.version import describe_version


class CommandError(Exception):
    """A readable failure of the command itself; ``exit_code`` says which kind."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def show(text: str = "") -> None:
    """Print one line of normal output."""
    print(text)


# -- reading secrets -----------------------------------------------------------------


#: Times a person may mistype the repeated entry of a new password before the command gives up.
CONFIRM_ATTEMPTS = 3


def read_secret_file(path: str) -> str:
    """The first line of a password file. Like a key file, it is refused (with the
    ``chmod`` that fixes it) when the group or others may read or write it."""
    data = keyfiles.read_bytes_private(path, max_size=64 * 1024)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text") from None
    return text.split("\n", 1)[0].rstrip("\r")


def read_secret(args: argparse.Namespace, prompt: str, *, file_option: str = "password_file", confirm: bool = False) -> str:
    """Read a password: from ``--password-file``, from stdin when not a terminal, or a prompt
    (asked twice when ``confirm``; a mistyped repetition asks again)."""
    path = getattr(args, file_option, None)
    if path:
        return read_secret_file(path)
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise CommandError(f"{prompt.rstrip(': ')} is needed: give --password-file or type it at a terminal")
        return line.rstrip("\r\n")
    for attempt in range(CONFIRM_ATTEMPTS):
        try:
            secret = getpass.getpass(prompt)
            if not confirm or getpass.getpass("Again: ") == secret:
                return secret
        except EOFError:
            print(file=sys.stderr)
            raise CommandError("no password was typed (end of input); nothing was done") from None
        if attempt + 1 < CONFIRM_ATTEMPTS:
            print("The two entries differ; please type it again.", file=sys.stderr)
    raise CommandError(f"the two entries differed {CONFIRM_ATTEMPTS} times; nothing was changed")


# -- arguments -----------------------------------------------------------------------


def server_argument(text: str) -> tuple[str, int]:
    """Parse ``--server HOST[:PORT]``, a registry (port 4604 by default; a readable error,
    not a traceback, when bad)."""
    try:
        return split_host_port(text, IRP_PORT)
    except ValueError as error:
        raise CommandError(f"--server: {error}") from None


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """Parse ``ADDRESS``, ``IPv4:PORT`` or ``[IPv6]:PORT``."""
    try:
        if text.startswith("[") or text.count(":") == 1:
            host, port = split_host_port(text, default_port)
            return Endpoint.parse(host, port)
        return Endpoint.parse(text, default_port)
    except ValueError as error:
        raise CommandError(f"bad address {text!r}: {getattr(error, 'message', error)}") from None


def check_endpoint(description: str) -> str:
    """Refuse an endpoint string Twisted cannot parse (raises UsageError)."""
    try:
        serverFromString(None, description)
    except (ValueError, KeyError, TypeError) as error:
        raise usage.UsageError(f"invalid endpoint {description!r}: {error}") from None
    return description


# -- the command's context -----------------------------------------------------------


class Context:
    """Profile, options and (once opened) a registry connection for one command run.

    :func:`irp.client.open_registry` opens the connection (``client``); the context only
    keeps it, to close it when the command ends.
    """

    #: The command being run (named in messages that say how to fix a profile).
    program = "irp"

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.profile = Profile(args.profile, self.program)
        #: The registry connection (an :class:`irp.client.RegistryClient`), once opened.
        self.client: Any = None
        #: The DNS resolver for finding registries by SRV (None: the system's).
        self.resolver: Any = None

    def config(self) -> ProfileConfig:
        """The profile's configuration, with ``--server`` and ``--user`` applied."""
        config = self.profile.load_config()
        if self.args.server:
            config.server, config.port = server_argument(self.args.server)
        dns_server = getattr(self.args, "dns_server", None)
        if dns_server:
            config.dns_server = dns_server
        user = getattr(self.args, "user", None)
        if user:
            config.username = user
        return config

    def close(self) -> None:
        """Close the connection, if any."""
        if self.client is not None:
            self.client.close()

    async def finish(self) -> None:
        """The command ended: release what it opened (here: :meth:`close`)."""
        self.close()


# -- running a command ---------------------------------------------------------------

#: The exit code of a command whose output's reader went away (128 + SIGPIPE, as a shell
#: reports a process that SIGPIPE ended).
BROKEN_PIPE_EXIT = 141


def run_until_done(
    reactor: Any,
    program: str,
    command: Callable[[], Coroutine[Any, Any, int]],
    explain: Callable[[BaseException], tuple[str, int] | None],
) -> int:
    """Run ``command`` in a reactor started for it; return its exit code.

    A failure ``explain`` knows becomes one readable line on stderr and its exit code; any
    other prints a traceback and exits 70. The reactor stops one turn after the command so
    that connections close cleanly. Shared by the ``irp`` and ``sixchat`` commands.
    """
    outcome: dict[str, int] = {}

    def failed(failure: Any) -> None:
        error = failure.value
        if isinstance(error, KeyboardInterrupt):
            outcome["code"] = 130
            return
        if isinstance(error, BrokenPipeError):
            # Whoever read the output went away (``| head``): stop quietly, as other tools do.
            outcome["code"] = BROKEN_PIPE_EXIT
            return
        explained = explain(error)
        if explained is None:
            print(f"{program}: unexpected failure:", file=sys.stderr)
            failure.printTraceback(file=sys.stderr)
            outcome["code"] = 70
            return
        message, code = explained
        print(f"{program}: {message}", file=sys.stderr)
        outcome["code"] = code

    async def wrapped() -> None:
        outcome["code"] = await command()

    def start() -> None:
        done: Deferred[None] = Deferred.fromCoroutine(wrapped())
        done.addErrback(failed)
        done.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome.get("code", 1)


def run_command(
    program: str,
    args: argparse.Namespace,
    reactor: Any,
    make_context: Callable[[Any, argparse.Namespace], Context],
    explain: Callable[[BaseException], tuple[str, int] | None],
) -> int:
    """Run the command ``args.function`` chose with the context ``make_context(reactor,
    args)`` (``reactor`` None: the global one), finishing the context however it ends;
    return the exit code (see :func:`run_until_done`)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    ctx = make_context(reactor, args)

    async def command() -> int:
        try:
            code: int = await args.function(ctx)
            return code
        finally:
            await ctx.finish()

    return run_until_done(reactor, program, command, explain)


def console_main(run: Callable[[], int]) -> NoReturn:
    """A console entry point: files are created private (umask 077), then ``run``'s exit
    code ends the process. After a broken pipe, standard output goes nowhere, so that
    Python's last flush at exit does not complain about it."""
    os.umask(0o077)
    code = run()
    if code == BROKEN_PIPE_EXIT:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(code)


class VersionOption:
    """``--version`` for a twistd plugin's options (``usage.Options`` turns ``opt_version``
    into the flag); subclasses name their plugin in :attr:`plugin`."""

    plugin: str = ""

    def opt_version(self) -> None:
        """Print this program's version, and what it runs on, and exit."""
        print(describe_version(f"twistd {self.plugin}"))
        sys.exit(0)


class EndpointOptions(VersionOption, usage.Options):
    """``--listen`` and ``--advertise`` (both repeatable) for a twistd plugin's options:
    the SixChat agent's and the intermediary's. Subclasses set :attr:`default_port` (the
    port of an ``--advertise`` address given without one)."""

    default_port: int = 4605

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["advertise"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (repeatable); default tcp6:4605:interface=\\:\\: (IPv6 and IPv4)."""
        self["listen"].append(check_endpoint(description))

    def opt_advertise(self, address: str) -> None:
        """Address to register with the registry: ADDRESS, [v6]:PORT or v4:PORT (repeatable;
        default: the listening addresses, or the host's primary addresses for a wildcard)."""
        try:
            self["advertise"].append(parse_endpoint(address, self.default_port))
        except CommandError as error:
            raise usage.UsageError(str(error)) from None
