"""Running the installed commands for the acceptance tests.

A :class:`Deployment` belongs to one test: it runs ``twistd irp``, ``twistd sixchat``,
``irp`` and ``sixchat`` (the scripts next to ``sys.executable``, with the shipped defaults)
as child processes, each long-running one in its own temporary folder, collects what they
print, bounds every wait, and at the end of the test stops every child it started (SIGTERM,
then SIGKILL) and removes its folders. Failures carry the output of the commands and the
logs of the running services.

Readiness is read from the services' logs (the line saying which port they listen on, and
the agent's "ready" line), never guessed by sleeping. Services listen on port 0 of loopback
and the real port is read from the log.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from twisted.trial.unittest import SkipTest, SynchronousTestCase

#: Seconds a command may take before it counts as hung (and is killed).
COMMAND_TIMEOUT = 60.0
#: Seconds a service has to say it is ready.
START_TIMEOUT = 30.0
#: Seconds a service has to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Lines of each service's log shown in a failure message.
LOG_TAIL = 60

#: The line a service logs once it listens (the registry and the agent say it alike).
LISTENING = re.compile(r"listening on \S+ port (\d+)")
#: The line an agent logs once it is registered and takes commands.
AGENT_READY = re.compile(r"agent of \S+ is ready")
#: The line a SixChat intermediary logs once it listens and is registered.
INTERMEDIARY_READY = re.compile(r"Intermediary of \S+ is ready")


def command_path(name: str) -> str:
    """The installed script ``name`` next to the running Python (skips the test when it is
    not installed)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SkipTest(
            f"{name} is not installed next to {sys.executable}; the acceptance tests drive the"
            " installed commands ('pip install .' first)"
        )
    return path


class Output:
    """What a child writes to one file descriptor, collected by a thread; tests wait for a
    pattern in it (woken by each write, bounded by a timeout)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text: list[str] = []
        self._changed = threading.Condition()
        self.ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the other end of a pseudo-terminal closed
                data = b""
            with self._changed:
                if data:
                    self._text.append(self._decoder.decode(data))
                else:
                    self._text.append(self._decoder.decode(b"", final=True))
                    self.ended = True
                self._changed.notify_all()
            if not data:
                return

    @property
    def text(self) -> str:
        """Everything written so far."""
        with self._changed:
            return "".join(self._text)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float, start: int = 0) -> re.Match[str] | None:
        """The first match of ``pattern`` in the output (from offset ``start``), waiting at
        most ``timeout`` seconds for it; None when it did not come (or the output ended)."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search("".join(self._text), start)
                if match is not None:
                    return match
                remaining = deadline - time.monotonic()
                if self.ended or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def count(self, pattern: re.Pattern[str], at_least: int, timeout: float) -> int:
        """Wait (at most ``timeout`` seconds) until ``pattern`` occurs ``at_least`` times;
        return how many times it occurs."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = len(pattern.findall("".join(self._text)))
                remaining = deadline - time.monotonic()
                if found >= at_least or self.ended or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the reading thread to finish."""
        self._thread.join(timeout)


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop ``process`` and its process group: SIGTERM, then SIGKILL after ``timeout``
    seconds. True when it stopped on SIGTERM (or had already ended)."""
    if process.poll() is not None:
        return True
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout)
    return False


class Service:
    """A long-running child (``twistd -n ...``) whose output is its log."""

    def __init__(self, label: str, argv: Sequence[str], cwd: str, env: dict[str, str]) -> None:
        self.label = label
        self.argv = list(argv)
        self.cwd = cwd
        self.process = subprocess.Popen(
            self.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert self.process.stdout is not None
        self._stdout: IO[bytes] = self.process.stdout
        self.output = Output(self._stdout.fileno())

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = START_TIMEOUT) -> re.Match[str] | None:
        """The first log line matching ``pattern`` (see :meth:`Output.wait_for`)."""
        return self.output.wait_for(pattern, timeout)

    def exited(self, timeout: float) -> int | None:
        """Its exit status, waiting at most ``timeout`` seconds for it to end (None when it
        still runs); its whole output has been read when this returns a status."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.output.join()
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the service (see :func:`stop_process`); True when SIGTERM was enough."""
        clean = stop_process(self.process, timeout)
        self.output.join()
        self._stdout.close()
        return clean

    def describe(self) -> str:
        """Its command, exit status and the end of its log."""
        code = self.process.poll()
        state = "still running" if code is None else f"exit status {code}"
        lines = self.output.text.splitlines()[-LOG_TAIL:]
        return f"--- {self.label}: {' '.join(self.argv)} ({state}), in {self.cwd}:\n" + "\n".join(lines)


class Terminal:
    """A command run under a real pseudo-terminal (its stdin, stdout and stderr)."""

    def __init__(self, argv: Sequence[str], cwd: str, env: dict[str, str], rows: int = 30, columns: int = 100) -> None:
        self.argv = list(argv)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.master = master
        try:
            self.process = subprocess.Popen(
                self.argv, cwd=cwd, env={**env, "TERM": "xterm"}, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self.output = Output(master)

    def type(self, text: str) -> None:
        """Write ``text`` to the terminal, as typed or pasted."""
        os.write(self.master, text.encode("utf-8"))

    def exited(self, timeout: float) -> int | None:
        """Its exit status, waiting at most ``timeout`` seconds (None when it still runs)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> bool:
        """Stop the command if it still runs; release the terminal."""
        clean = stop_process(self.process)
        self.output.join()
        try:
            os.close(self.master)
        except OSError:
            pass
        return clean

    def describe(self) -> str:
        """What the terminal showed."""
        code = self.process.poll()
        state = "still running" if code is None else f"exit status {code}"
        return f"--- terminal: {' '.join(self.argv)} ({state}) showed:\n{self.output.text!r}"


@dataclass(frozen=True)
class Result:
    """What a command did."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str
    seconds: float
    #: True when the command did not finish in time and was killed.
    killed: bool = False

    def describe(self) -> str:
        """The command, its exit status, time and output."""
        return (
            f"$ {' '.join(self.argv)}\n"
            + (f"(killed after {self.seconds:.1f} s: it did not finish)\n" if self.killed else f"(exit status {self.code} after {self.seconds:.1f} s)\n")
            + f"stdout:\n{self.out}\nstderr:\n{self.err}"
        )


@dataclass(frozen=True)
class Registry:
    """A running ``twistd -n irp``."""

    service: Service
    domain: str
    port: int
    folder: str

    @property
    def server(self) -> str:
        """HOST:PORT for ``--server``."""
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> str:
        """Its data folder (the default ``irp-data``, in its own folder)."""
        return os.path.join(self.folder, "irp-data")

    @property
    def root_file(self) -> str:
        """The root CA (PEM) the registry wrote."""
        return os.path.join(self.data_dir, "ca", "root.pem")

    @property
    def admin_password_file(self) -> str:
        """The bootstrap administrator's password file."""
        return os.path.join(self.data_dir, "admin-password")


class Deployment:
    """The processes and folders of one test: made in a fresh temporary folder (never the
    checkout), all stopped and removed when the test ends."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.testcase = testcase
        self.commands = {name: command_path(name) for name in ("twistd", "irp", "irp-ca", "sixchat")}
        self.base = tempfile.mkdtemp(prefix="irp-acceptance-")
        #: $HOME of every child, and where profiles and password files go.
        self.home = self.folder("home")
        self.services: list[Service] = []
        self.terminals: list[Terminal] = []
        #: Commands started and not finished, with what they are to read.
        self.in_flight: dict[subprocess.Popen[bytes], bytes] = {}
        testcase.addCleanup(self.close)

    # -- plumbing --------------------------------------------------------------------

    def folder(self, *parts: str) -> str:
        """A new folder under this deployment's temporary folder."""
        path = os.path.join(self.base, *parts)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def path(self, name: str) -> str:
        """A path in the home folder."""
        return os.path.join(self.home, name)

    def environment(self) -> dict[str, str]:
        """The children's environment: a private $HOME, UTF-8, no PYTHONPATH (so that the
        installed package runs, not the checkout)."""
        return {
            "HOME": self.home,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "TZ": "UTC",
        }

    def argv(self, command: str, *args: str) -> list[str]:
        """The command line of an installed command."""
        return [self.commands[command], *args]

    def logs(self) -> str:
        """The services' logs and terminals' screens, for a failure message."""
        return "\n".join([service.describe() for service in self.services] + [terminal.describe() for terminal in self.terminals])

    def fail(self, message: str) -> NoReturn:
        """Fail the test with ``message`` and the logs."""
        raise self.testcase.failureException(f"{message}\n{self.logs()}")

    def secret(self, name: str, text: str) -> str:
        """A password file (mode 0600) in the home folder."""
        path = self.path(name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        return path

    # -- commands --------------------------------------------------------------------

    def start(self, command: str, *args: str, stdin: bytes = b"") -> tuple[subprocess.Popen[bytes], float]:
        """Start a command in the home folder without waiting; returns it and its start time.
        Finish it with :meth:`finish` (which writes ``stdin`` to it)."""
        process = subprocess.Popen(
            self.argv(command, *args), cwd=self.home, env=self.environment(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.in_flight[process] = stdin
        return process, time.monotonic()

    def finish(self, process: subprocess.Popen[bytes], started: float, deadline: float) -> Result:
        """Wait for a started command until ``deadline`` (a time.monotonic() value); kill it
        then (its result says ``killed``)."""
        killed = False
        try:
            out, err = process.communicate(self.in_flight[process] or None, timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = True
            stop_process(process, 2.0)
            out, err = process.communicate()
        del self.in_flight[process]
        return Result(
            tuple(process.args),  # type: ignore[arg-type]
            process.returncode,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
            killed,
        )

    def run(self, command: str, *args: str, expect: int | None = 0, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run a command to its end (killed after ``timeout`` seconds, which fails the test);
        check that it printed no traceback and (unless ``expect`` is None) its exit status."""
        process, started = self.start(command, *args, stdin=stdin)
        result = self.finish(process, started, started + timeout)
        self.check(result, expect)
        return result

    def check(self, result: Result, expect: int | None = 0) -> None:
        """Fail when the command was killed (hung), printed a traceback or (unless ``expect``
        is None) ended with another exit status than ``expect``."""
        if result.killed:
            self.fail(f"the command did not finish in time:\n{result.describe()}")
        if "Traceback" in result.out + result.err:
            self.fail(f"the command printed a traceback:\n{result.describe()}")
        if expect is not None and result.code != expect:
            self.fail(f"expected exit status {expect}:\n{result.describe()}")

    def irp(self, *args: str, **options: Any) -> Result:
        """Run ``irp ARGS``."""
        return self.run("irp", *args, **options)

    def sixchat(self, *args: str, **options: Any) -> Result:
        """Run ``sixchat ARGS``."""
        return self.run("sixchat", *args, **options)

    # -- services --------------------------------------------------------------------

    def spawn(self, label: str, *args: str) -> Service:
        """Start ``twistd ARGS`` in a new folder named ``label``; stopped at the end."""
        service = Service(label, self.argv("twistd", *args), self.folder(label), self.environment())
        self.services.append(service)
        return service

    def wait_for(self, service: Service, pattern: re.Pattern[str], what: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait for a line of ``service``'s log; fail (with the logs) when it does not come."""
        match = service.wait_for(pattern, timeout)
        if match is None:
            ended = service.process.poll() is not None
            self.fail(f"{service.label}: {what} did not show in its log within {timeout:.0f} s" + (" (it exited)" if ended else ""))
        return match

    def start_registry(self, domain: str = "example.org", label: str = "registry", *options: str) -> Registry:
        """``twistd -n irp --domain DOMAIN [OPTIONS]`` with the shipped defaults otherwise,
        listening on a free loopback port; returns once it says it listens."""
        service = self.spawn(label, "-n", "irp", "--domain", domain, "--listen", "tcp:0:interface=127.0.0.1", *options)
        port = int(self.wait_for(service, LISTENING, "the registry's listening port").group(1))
        return Registry(service, domain, port, service.cwd)

    def terminal(self, command: str, *args: str) -> Terminal:
        """Run a command under a pseudo-terminal in the home folder; closed at the end."""
        terminal = Terminal(self.argv(command, *args), self.home, self.environment())
        self.terminals.append(terminal)
        return terminal

    # -- the README's tours ----------------------------------------------------------

    def init(self, registry: Registry, name: str, user: str, command: str = "irp") -> str:
        """``irp --profile NAME init --server ... --domain ... --ca-file ROOT --user USER``
        (or ``sixchat init``); returns the profile's path."""
        self.run(command, *self._init_arguments(registry, name, user))
        return self.path(name)

    def _init_arguments(self, registry: Registry, name: str, user: str) -> tuple[str, ...]:
        return ("--profile", self.path(name), "init", "--server", registry.server, "--domain", registry.domain,
                "--ca-file", registry.root_file, "--user", user)

    def create_user(self, registry: Registry, admin_profile: str, user: str, password_file: str, *extra: str) -> Result:
        """The administrator creates ``user`` with the password in ``password_file``."""
        return self.irp("--profile", admin_profile, "admin", "--password-file", registry.admin_password_file,
                        "create-user", user, "--new-password-file", password_file, *extra)

    def enrol_users(self, registry: Registry, users: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The README's steps for each of ``users`` (name: the command that makes the
        profile, ``irp`` or ``sixchat``): the administrator's profile ("admin-profile"),
        then a user created with a password, a profile and an enrolment. The profiles are
        made at once; creations and enrolments (which hash passwords) one after the other.
        Returns the administrator's profile and the users' profiles by name."""
        started = [self.start("irp", *self._init_arguments(registry, "admin-profile", "admin"))]
        started += [self.start(command, *self._init_arguments(registry, user, user)) for user, command in users.items()]
        for process, begun in started:
            self.check(self.finish(process, begun, begun + COMMAND_TIMEOUT))
        admin = self.path("admin-profile")
        for user, command in users.items():
            password = self.secret(f"{user}-password", f"{user}-password-{len(user)}x")
            self.create_user(registry, admin, user, password)
            self.run(command, "--profile", self.path(user), "enrol", "--password-file", password)
        return admin, {user: self.path(user) for user in users}

    def start_agents(self, *profiles: str) -> list[Service]:
        """``twistd -n sixchat --profile PROFILE`` for each profile at once, each on a free
        loopback port in its own folder; returns when every agent says it is ready."""
        services = [
            self.spawn(os.path.basename(profile) + "-agent", "-n", "sixchat", "--profile", profile, "--listen", "tcp:0:interface=127.0.0.1")
            for profile in profiles
        ]
        for service in services:
            self.wait_for(service, AGENT_READY, "the agent's ready line")
        return services

    def intermediary_arguments(self, profile: str) -> tuple[str, ...]:
        """``twistd`` arguments of ``intermediary@DOMAIN``'s service from ``profile``, on
        free loopback ports (its service port, one relay port and the join port), with the
        shipped defaults otherwise; the same each time (a restart reuses them)."""
        holders = [taken_port() for _ in range(3)]
        service, relay, join = (holder.getsockname()[1] for holder in holders)
        for holder in holders:
            holder.close()
        return ("-n", "intermediary", "--profile", profile, "--listen", f"tcp:{service}:interface=127.0.0.1",
                "--relay-interface", "127.0.0.1", "--relay-ports", f"{relay}-{relay}", "--relay-join-port", str(join))

    def start_intermediary(self, arguments: Sequence[str], label: str = "intermediary") -> Service:
        """``twistd ARGUMENTS`` (from :meth:`intermediary_arguments`); returns once it says
        it is ready (registered with the registry)."""
        service = self.spawn(label, *arguments)
        self.wait_for(service, INTERMEDIARY_READY, "the intermediary's ready line")
        return service

    # -- the end ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop every child (terminals and commands first, then services in the reverse
        order of their start) and remove the temporary folder."""
        for terminal in self.terminals:
            terminal.close()
        for process in list(self.in_flight):
            stop_process(process, 2.0)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for service in reversed(self.services):
            service.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def taken_port() -> socket.socket:
    """A socket listening on a free loopback port (its port is taken while it is open)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def free_port() -> int:
    """A loopback port free a moment ago (for a command that must be told its port)."""
    holder = taken_port()
    port = int(holder.getsockname()[1])
    holder.close()
    return port
