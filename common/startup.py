"""Starting a twistd service that may fail: bind first, say why in one line, exit non-zero.

``twistd`` exits 0 whenever its reactor stops, and a service that cannot start (its port
is taken, its database cannot be opened) would otherwise leave a traceback in the log and a
process that reports success. The two plugins (``twistd irp``, ``twistd sixchat``) use
:func:`fail_start` for every start-up failure, and the registry binds its listening ports
through a :class:`Gate` before it creates anything on disk.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from common.factory import QuietFactory

#: Exit status of a service that could not start.
START_FAILED = 1


class Gate(QuietFactory):
    """A listening port's factory until the service behind it is ready.

    Ports are bound through a gate first (so that a port in use is found before anything
    is created); connections that arrive before :meth:`open` are closed at once.
    """

    def __init__(self, name: str = "Gate") -> None:
        self.target: Any = None
        self.name = name
        self._held: list[Any] = []

    def logPrefix(self) -> str:
        """What Twisted's "... starting on PORT" line names: the service behind the gate."""
        return self.name

    def hold(self, port: Any) -> None:
        """Accept nothing on ``port`` until :meth:`open` (a socket other processes also
        accept on: the connections it would take and close are theirs to serve)."""
        port.stopReading()
        self._held.append(port)

    def open(self, target: Any) -> None:
        """From now on, connections go to ``target``."""
        self.target = target
        target.doStart()
        for port in self._held:
            port.startReading()
        self._held.clear()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        """The target's protocol, or None (the connection is closed) before it is ready."""
        if self.target is None:
            return None
        protocol: Protocol | None = self.target.buildProtocol(addr)
        return protocol

    def stopFactory(self) -> None:
        """Stop the target too."""
        if self.target is not None:
            self.target.doStop()


#: twistd's own default pid file, shared by every twistd started in one folder.
TWISTD_PIDFILE = "twistd.pid"


def own_pidfile(options: Any, path: str) -> None:
    """Make ``path`` the pid file of this twistd plugin, unless ``--pidfile`` was given.

    ``options`` are the plugin's options (their ``parent`` is twistd's). Each service gets
    its own pid file: with twistd's default, a registry and an agent started in one folder
    would refuse each other ("Another twistd server is running").
    """
    parent = getattr(options, "parent", None)
    if parent is not None and parent.get("pidfile") == TWISTD_PIDFILE:
        parent["pidfile"] = path


def _exit_now(code: int) -> None:
    """The last exit handler: end the process with ``code`` (twistd would exit 0)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def fail_start(
    reactor: Any,
    program: str,
    why: str,
    *,
    at_exit: Callable[..., Any] | None = None,
    stderr: Any = None,
) -> None:
    """A service could not start (the service has logged why): print ``program: why`` as
    one line on the terminal, stop the reactor and make the process exit with
    :data:`START_FAILED`.

    ``at_exit`` registers the exit (default :func:`atexit.register`; twistd removes its
    pid file after the reactor stops, and the process ends with the failure's status once
    twistd has finished); ``stderr`` is where the line goes (default: the process's
    original standard error, which twistd does not redirect into its log).
    """
    terminal = stderr if stderr is not None else sys.__stderr__
    if terminal is not None:
        try:
            print(f"{program}: {why}", file=terminal, flush=True)
        except (OSError, ValueError):
            pass
    if at_exit is None:
        import atexit

        at_exit = atexit.register
    at_exit(_exit_now, START_FAILED)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def describe_port(port: IListeningPort) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a listening port, for log lines."""
    address = port.getHost()
    host = str(getattr(address, "host", "?"))
    return f"[{host}]:{getattr(address, 'port', '?')}" if ":" in host else f"{host}:{getattr(address, 'port', '?')}"


def describe_start_failure(error: BaseException) -> str:
    """One readable line for why a service could not start."""
    from twisted.internet.error import CannotListenError

    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        where = f"[{error.interface}]" if ":" in str(error.interface) else (error.interface or "all interfaces")
        return f"cannot listen on {where} port {error.port}: {text}"
    message = getattr(error, "message", None)
    if isinstance(message, str) and message:
        return message
    return str(error) or type(error).__name__


class EarlyPorts:
    """A service's listening ports, bound in ``privilegedStartService`` through a :class:`Gate`.

    Binding before the reactor runs lets a daemonizing ``twistd`` learn that a port is taken
    before it reports a successful start (see :class:`ReportingParent`); the service opens
    the gate once it is ready. Stream endpoints on TCP and UNIX sockets bind at once.
    """

    def __init__(
        self,
        reactor: Any,
        descriptions: list[str],
        name: str = "Gate",
        *,
        adopted: Sequence[tuple[int, int]] = (),
    ) -> None:
        from twisted.internet.endpoints import serverFromString

        self.gate = Gate(name)
        self._listening: list[Deferred[IListeningPort]]
        if adopted:
            # Listening sockets another process bound and handed over as (file descriptor,
            # address family): this process accepts on them too (see irp.server.workers).
            # They accept nothing before the service is ready (see Gate.hold).
            self._listening = [adopt_listening(reactor, fd, family, self.gate) for fd, family in adopted]
        else:
            self._listening = [serverFromString(reactor, description).listen(self.gate) for description in descriptions]
        self._failures: list[Failure] = []
        for listening in self._listening:
            listening.addErrback(self._noted)

    def _noted(self, failure: Failure) -> Failure:
        self._failures.append(failure)
        return failure

    def release(self) -> None:
        """Let go of every port bound (the service will not start)."""

        def close(results: list[tuple[bool, Any]]) -> None:
            for ok, port in results:
                # None: a failed bind whose error ports() already consumed.
                if ok and port is not None:
                    port.stopListening()

        DeferredList(self._listening, consumeErrors=True).addCallback(close)

    def failure(self) -> BaseException | None:
        """The first binding error known so far, or None."""
        return self._failures[0].value if self._failures else None

    async def ports(self) -> list[IListeningPort]:
        """Every port, once bound; on a failure the bound ones are let go and it is raised."""
        results: list[tuple[bool, Any]] = await DeferredList(self._listening, consumeErrors=True)
        bound = [result for ok, result in results if ok]
        for ok, result in results:
            if not ok:
                for port in bound:
                    port.stopListening()
                result.raiseException()
        return bound


def adopt_listening(reactor: Any, fd: int, family: int, factory: Any) -> Deferred[IListeningPort]:
    """Accept connections for ``factory`` on the listening socket ``fd`` (an inherited one);
    the reactor keeps a duplicate, so ``fd`` itself is closed here."""
    try:
        port = reactor.adoptStreamPort(fd, family, factory)
    except Exception:  # noqa: BLE001 - handed to the caller like a failed listen
        return fail()
    finally:
        os.close(fd)
    if isinstance(factory, Gate):
        factory.hold(port)
    return succeed(port)


class StartFailed(Exception):
    """A service found before the reactor ran that it cannot start; ``str()`` says why."""


class ReportingParent(MultiService):
    """The plugin's top service: a daemonizing ``twistd`` hears of a port that cannot be
    bound (its parent process prints why and exits non-zero); in the foreground the service
    reports it itself (:func:`fail_start`)."""

    def __init__(self, daemon: bool, pidfile: str | None = None) -> None:
        super().__init__()
        self.daemon = daemon
        #: twistd's pid file, removed before a daemon reports a failed start: the process
        #: that started it exits as soon as it hears, and nothing may be left behind then.
        self.pidfile = pidfile

    @classmethod
    def for_options(cls, options: Any) -> ReportingParent:
        """The parent for a plugin's parsed ``options`` (daemonizing or not, its pid file)."""
        parent = getattr(options, "parent", None)
        pidfile = parent.get("pidfile") if parent is not None else None
        return cls(daemonizing(options), pidfile or None)

    def privilegedStartService(self) -> None:
        """Bind the children's ports; raise :class:`StartFailed` when daemonizing and one failed."""
        super().privilegedStartService()
        if not self.daemon:
            return
        for child in self:
            for early in bound_early(child):
                error = early.failure()
                if error is not None:
                    if self.pidfile:
                        with contextlib.suppress(OSError):
                            os.remove(self.pidfile)
                    raise StartFailed(describe_start_failure(error))


def bound_early(service: Any) -> list[EarlyPorts]:
    """The ports ``service`` bound before the reactor ran and serves later: its
    ``every_early_ports`` (a service with several listeners: None for one it does not
    have), else its ``early_ports``."""
    every = getattr(service, "every_early_ports", None)
    if every is None:
        early = getattr(service, "early_ports", None)
        every = [early]
    return [early for early in every if early is not None]


def daemonizing(options: Any) -> bool:
    """Whether the ``twistd`` that parsed ``options`` (a plugin's) will daemonize."""
    parent = getattr(options, "parent", None)
    return parent is not None and not parent.get("nodaemon", True)
