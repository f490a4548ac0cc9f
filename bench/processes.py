"""Server processes (pinned to :data:`bench.sampling.SERVER_CPU`, driven by commands over a
pipe) and load-generator workers (pinned to :data:`bench.sampling.LOAD_CPU`)."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Self

from bench.sampling import (
    LOAD_CPU,
    SERVER_CPU,
    SERVER_START_TIMEOUT,
    pin,
    process_rss,
    raise_open_files,
)


class ServerError(RuntimeError):
    """A server process failed to start or a command to it failed."""


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


def _server_entry(target: str, connection: Connection, params: dict[str, Any], cpu: int) -> None:
    pin(cpu)
    raise_open_files()
    try:
        _resolve(target)(connection, params)
    except BaseException:
        try:
            connection.send(("error", traceback.format_exc()))
        except OSError:
            pass
        raise


class ServerProcess:
    """A server in its own process, pinned to :data:`SERVER_CPU`.

    ``target`` names a function ``module:function`` called as ``function(connection,
    params)`` in the new process; it must send ``("ready", info)`` once it serves, then
    answer commands (see :func:`serve_twisted`). ``info`` always holds the ``pid``.
    """

    def __init__(self, name: str, target: str, params: dict[str, Any], cpu: int = SERVER_CPU) -> None:
        self.name = name
        self.target = target
        self.params = params
        self.cpu = cpu
        self.info: dict[str, Any] = {}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._process is not None and self._process.pid is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self._process is not None and self._process.is_alive()

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> dict[str, Any]:
        """Start the process; return its ``info`` once it serves."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_server_entry, args=(self.target, child, self.params, self.cpu), name=f"bench-{self.name}", daemon=True
        )
        self._process.start()
        child.close()
        self._connection = parent
        kind, payload = self._receive(timeout)
        if kind != "ready":
            self.stop()
            raise ServerError(f"server {self.name} failed to start:\n{payload}")
        self.info = dict(payload)
        self.info["pid"] = self.pid
        return self.info

    def _receive(self, timeout: float) -> tuple[str, Any]:
        assert self._connection is not None and self._process is not None
        deadline = time.monotonic() + timeout
        while not self._connection.poll(0.2):
            if not self._process.is_alive():
                raise ServerError(f"server {self.name} exited with code {self._process.exitcode}")
            if time.monotonic() > deadline:
                raise ServerError(f"server {self.name} did not answer within {timeout:.0f} s")
        try:
            return self._connection.recv()  # type: ignore[no-any-return]
        except EOFError:
            raise ServerError(f"server {self.name} closed its pipe") from None

    def call(self, command: str, timeout: float = SERVER_START_TIMEOUT, **arguments: Any) -> Any:
        """Run ``command`` in the server (on its reactor thread); return its result."""
        with self._lock:
            assert self._connection is not None
            self._connection.send((command, arguments))
            kind, payload = self._receive(timeout)
        if kind != "ok":
            raise ServerError(f"{self.name}: {command} failed:\n{payload}")
        return payload

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to stop; kill it if it does not."""
        if self._process is None:
            return
        if self._process.is_alive() and self._connection is not None:
            try:
                self._connection.send(("stop", {}))
            except OSError:
                pass
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        if self._connection is not None:
            self._connection.close()
        self._process = None
        self._connection = None


Commands = dict[str, Callable[..., Any]]


def serve_twisted(
    connection: Connection,
    setup: Callable[[Any], Awaitable[tuple[dict[str, Any], Commands]]],
    log_path: str | None = None,
) -> None:
    """Run a Twisted server in this process until told to stop.

    ``setup(reactor)`` starts serving and returns the ``info`` to hand back and the
    commands it answers. Commands run on the reactor thread (they may return Deferreds or
    be coroutines); the built-in ones are ``rss``, ``stop``, ``profile_start`` and
    ``profile_stop`` (cProfile of the reactor thread). With ``log_path``, the
    Twisted log goes to that file at level info, as a deployed server's does.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.threads import blockingCallFromThread

    if log_path is not None:
        from twisted.logger import (
            FilteringLogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        handle = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
        observer = FilteringLogObserver(
            textFileLogObserver(handle), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
        )
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    commands: Commands = {}
    profiler: dict[str, Any] = {}

    def profile_start() -> None:
        import cProfile

        profiler["profile"] = cProfile.Profile()
        profiler["profile"].enable()

    def profile_stop(top: int = 40, sort: str = "tottime") -> str:
        import io
        import pstats

        profile = profiler.pop("profile")
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(sort).print_stats(top)
        return text.getvalue()

    commands["profile_start"] = profile_start
    commands["profile_stop"] = profile_stop

    def run_command(name: str, arguments: dict[str, Any]) -> Any:
        result = commands[name](**arguments)
        if isinstance(result, Deferred):
            return result
        if hasattr(result, "__await__"):
            return ensureDeferred(result)
        return result

    def listen_for_commands() -> None:
        while True:
            try:
                name, arguments = connection.recv()
            except (EOFError, OSError):
                name, arguments = "stop", {}
            if name == "stop":
                reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]
                return
            try:
                if name == "rss":
                    result: Any = process_rss(os.getpid())
                else:
                    result = blockingCallFromThread(reactor, run_command, name, arguments)  # type: ignore[arg-type]
                connection.send(("ok", result))
            except Exception:  # noqa: BLE001 - every failure goes back to the harness
                connection.send(("error", traceback.format_exc()))

    async def start() -> None:
        try:
            info, answers = await setup(reactor)
        except Exception:  # noqa: BLE001
            connection.send(("error", traceback.format_exc()))
            reactor.stop()  # type: ignore[attr-defined]
            return
        commands.update(answers)
        info.setdefault("pid", os.getpid())
        connection.send(("ready", info))
        threading.Thread(target=listen_for_commands, name="bench-commands", daemon=True).start()

    reactor.callWhenRunning(lambda: ensureDeferred(start()))  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined,call-arg]


# ---------------------------------------------------------------------------------------
# Load generator and CPU-only processes


def _worker_init(cpu: int) -> None:
    pin(cpu)
    raise_open_files()


class Worker:
    """One process pinned to a core that runs functions handed to it (load generators,
    and CPU-only baselines on the server core). Use as a context manager."""

    def __init__(self, cpu: int = LOAD_CPU) -> None:
        self.cpu = cpu
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        self._executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.cpu,),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._executor is not None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def run(self, function: Callable[..., Any], *args: Any, timeout: float = 1800.0, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the worker; return its result."""
        assert self._executor is not None
        return self._executor.submit(function, *args, **kwargs).result(timeout=timeout)
