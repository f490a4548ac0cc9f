"""Logs as JSON lines, for log collectors: a log observer factory for twistd.

``twistd --logger=common.jsonlog.observer irp ...`` (or ``sixchat``, ``intermediary``)
writes every log event as one line of JSON in twisted.logger's own format
(:func:`twisted.logger.eventAsJSON`: the event's fields, ``log_format``, ``log_level``,
``log_namespace``, ``log_time``, and ``log_flattened`` with the formatted fields), without
the record separator twisted puts before each by default: plain newline-delimited JSON
("JSON lines"). twistd's ``--logger`` takes no arguments, so the rest comes from the
environment:

* ``IRP_LOG_JSON_FILE``: append to this file (created mode 0600) instead of standard
  output. To rotate it, rename it and send the process SIGUSR1: the file is opened again
  under its name (as twistd does for its own ``--logfile``; no line is lost). logrotate's
  ``copytruncate`` works as well (the file is opened for appending).
* ``IRP_LOG_JSON_LEVEL``: the lowest level written: ``debug``, ``info`` (the default),
  ``warn``, ``error`` or ``critical``.

JSON carries every field of an event, not only those its message shows. So that no secret
can reach it, fields whose names say they hold one (password, passphrase, secret, token,
private key, PKCS#12 data, credentials: :data:`SECRET_FIELD`) are replaced by
``"[redacted]"`` before the event is written, in nested dictionaries too. (The project's
log calls pass no secret as a field; this is the net under them.) Failures are written as
twisted writes them: the exception's type and the stack's function names, files and lines,
without the exception's message or local variables.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)
from zope.interface import implementer

__all__ = ["REDACTED", "SECRET_FIELD", "RedactingObserver", "ReopenableFile", "observer", "open_output"]

#: Field names that hold secrets (matched anywhere in the name, any case).
SECRET_FIELD = re.compile(r"passw|passphrase|secret|token|private|pkcs12|p12|credential|authori[sz]ation|cookie", re.IGNORECASE)
#: What a secret field is replaced by.
REDACTED = "[redacted]"
#: The environment variables read.
FILE_VARIABLE = "IRP_LOG_JSON_FILE"
LEVEL_VARIABLE = "IRP_LOG_JSON_LEVEL"
#: How deep nested dictionaries are redacted (deeper ones are dropped whole).
DEPTH_LIMIT = 8


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, Mapping):
        if depth >= DEPTH_LIMIT:
            return REDACTED
        return {
            key: REDACTED if isinstance(key, str) and SECRET_FIELD.search(key) else _redact(item, depth + 1)
            for key, item in value.items()
        }
    return value


@implementer(ILogObserver)
class RedactingObserver:
    """Hands each event to ``observer`` with secret fields replaced (a copy: other
    observers see the event as it was)."""

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Redact, then pass on."""
        self.observer(_redact(event))


class ReopenableFile:
    """A log file opened for appending (created 0600) that :meth:`reopen` opens again
    under its name, after it was renamed for rotation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handle = self._open()

    def _open(self) -> IO[str]:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(descriptor, "a", encoding="utf-8", buffering=1)

    def write(self, text: str) -> int:
        """Write (line buffered: each event reaches the file at once)."""
        return self.handle.write(text)

    def flush(self) -> None:
        """Flush."""
        self.handle.flush()

    def reopen(self) -> None:
        """Open the file again under its name (a new one when it was renamed)."""
        old, self.handle = self.handle, self._open()
        old.close()

    def close(self) -> None:
        """Close."""
        self.handle.close()

    def reopen_on_sigusr1(self) -> None:
        """Reopen when the process gets SIGUSR1 (unless something else handles it)."""
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
            return

        def handler(_signal: int, _frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(self.reopen)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, handler)


def open_output(environ: Mapping[str, str] | None = None) -> IO[str] | ReopenableFile:
    """Where the JSON goes: ``$IRP_LOG_JSON_FILE`` (appended to, created 0600, reopened
    on SIGUSR1), else standard output."""
    environ = os.environ if environ is None else environ
    path = environ.get(FILE_VARIABLE)
    if not path:
        return sys.stdout
    output = ReopenableFile(path)
    output.reopen_on_sigusr1()
    return output


def _level(environ: Mapping[str, str]) -> LogLevel:
    name = environ.get(LEVEL_VARIABLE, "info").strip().lower() or "info"
    try:
        return LogLevel.levelWithName(name)
    except Exception:  # noqa: BLE001 - InvalidLogLevelError: say which names work
        names = ", ".join(level.name for level in LogLevel.iterconstants())
        raise SystemExit(f"{LEVEL_VARIABLE}={name!r} is not a log level ({names})") from None


def observer(environ: Mapping[str, str] | None = None, output: IO[str] | ReopenableFile | None = None) -> ILogObserver:
    """The observer ``twistd --logger=common.jsonlog.observer`` makes: JSON lines (see the
    module's docstring) on standard output or ``$IRP_LOG_JSON_FILE``, from
    ``$IRP_LOG_JSON_LEVEL`` (default info) up, secret fields redacted."""
    environ = os.environ if environ is None else environ
    level = _level(environ)
    target = output if output is not None else open_output(environ)
    writer = jsonFileLogObserver(target, recordSeparator="")  # type: ignore[arg-type]
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(RedactingObserver(writer), [predicate])
