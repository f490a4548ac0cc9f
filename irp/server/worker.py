"""A registry worker process: ``python -m irp.server.worker`` (started by
:mod:`irp.server.workers` for ``twistd irp --workers N``; not a command for users).

Arguments: ``--number N --sockets FD:FAMILY,... -- <the options of twistd irp>``. The worker
accepts connections on the inherited listening sockets, opens the registry's data
directory and database like the main process, writes its log events as JSON lines on
standard output (the main process logs them), and stops when its standard input reaches
end-of-file (the main process stopped or closed it) or on SIGTERM/SIGINT. Exit status: 0
after a clean stop, 1 when the registry could not start, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()


@implementer(ILogObserver)
class LineObserver:
    """Writes each log event as one JSON line for the main process: its namespace, level
    and text (formatted here, where the event's values are, with a failure's traceback)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.info)
        line = json.dumps(
            {
                "namespace": str(event.get("log_namespace", "-")),
                "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
                "text": text,
            }
        )
        self.stream.write(line + "\n")
        self.stream.flush()


class StopOnEndOfInput(Protocol):
    """Stops the reactor when the worker's standard input closes."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The main process is gone or asked this worker to stop."""
        if self.reactor.running:
            log.info("The main registry process closed this worker's input: stopping")
            self.reactor.stop()


def parse_sockets(text: str) -> list[tuple[int, int]]:
    """``"3:10,4:2"`` -> ``[(3, 10), (4, 2)]`` (file descriptor, address family)."""
    sockets = []
    for item in text.split(","):
        fd, _, family = item.partition(":")
        sockets.append((int(fd), int(family)))
    return sockets


def main(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """Run one worker; returns the process's exit status."""
    parser = argparse.ArgumentParser(prog="python -m irp.server.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, required=True, help="this worker's number (2 and up)")
    parser.add_argument("--sockets", type=parse_sockets, required=True, help="inherited FD:FAMILY,...")
    parser.add_argument("registry_options", nargs=argparse.REMAINDER, help="-- then the options of twistd irp")
    arguments = parser.parse_args(argv)
    options_given = [item for item in arguments.registry_options if item != "--"]

    from irp.server.service import RegistryService
    from irp.tap import Options

    options = Options()
    try:
        options.parseOptions(options_given)
    except usage.UsageError as error:
        print(f"irp worker {arguments.number}: {error}", file=sys.stderr)
        return 2
    settings = options.settings()
    settings.adopted = arguments.sockets
    # Each process serves its own metrics: worker N on the given ports plus N - 1.
    from common.metrics import shift_port

    settings.metrics_listen = [shift_port(item, arguments.number - 1) for item in settings.metrics_listen]

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    globalLogBeginner.beginLoggingTo([LineObserver(sys.stdout)], redirectStandardIO=False)

    from twisted.internet.stdio import StandardIO

    status = {"code": 0}
    registry = RegistryService(settings, reactor)

    def start_failed(failure: Failure) -> None:
        # The service logged why; the main process starts this worker again later.
        status["code"] = 1
        if reactor.running:
            reactor.stop()

    def start() -> None:
        registry.privilegedStartService()
        registry.startService()
        registry.ready.addErrback(start_failed)

    # (mypy reads the Windows signature; the POSIX one takes stdin and stdout.)
    StandardIO(StopOnEndOfInput(reactor), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor)  # type: ignore[call-arg]
    reactor.addSystemEventTrigger("before", "shutdown", lambda: registry.stopService() if registry.running else None)
    reactor.callWhenRunning(start)
    reactor.run()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
