"""Database outages: which failures mean "the database cannot be reached or read now",
and one log line when an outage starts and one when it ends.

A stopped PostgreSQL server, a lost connection, a SQLite file that cannot be read (a disk
error, a file that is no longer a database) are outages: the operation that met one is
answered "unavailable, try again later", and the log says so once per outage
(:class:`OutageLog`), not once per request and never with a traceback. Programming errors
(bad SQL) and integrity errors (a conflict) are not outages.

adbapi's own rollback after a failed interaction logs "Rollback failed" with a traceback
when the connection is gone; :class:`QuietConnection` rolls back without that (the
connection is dropped and made again at the next use, as adbapi does).
"""

from __future__ import annotations

from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

__all__ = ["OutageLog", "QuietConnection", "describe", "is_outage", "quiet_pool"]

log = Logger()

#: The most characters of a driver's message kept in the log line (some are long, with
#: hints on several lines).
REASON_LIMIT = 300


def is_outage(error: BaseException, dbapi: Any) -> bool:
    """Whether ``error``, raised by the DB-API module ``dbapi`` (sqlite3, psycopg) or by
    adbapi, means the database cannot be used now (rather than a bug or a conflict)."""
    if isinstance(error, adbapi.ConnectionLost | dbapi.InterfaceError | dbapi.OperationalError):
        return True
    if isinstance(error, dbapi.IntegrityError | dbapi.ProgrammingError | dbapi.DataError | dbapi.NotSupportedError):
        return False
    # sqlite3.DatabaseError itself: "file is not a database", "database disk image is
    # malformed"; InternalError: the server's (PostgreSQL) or the library's trouble.
    return isinstance(error, dbapi.DatabaseError)


def describe(error: BaseException) -> str:
    """The reason an outage error gives, on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


class OutageLog:
    """Whether the database answered the last operation; logs "The database is
    unavailable: <reason>" when an outage starts and "The database is back" when the
    first operation succeeds after it."""

    def __init__(self, what: str = "The database") -> None:
        self.what = what
        #: Why the current outage started (None: the database answers).
        self.reason: str | None = None

    @property
    def down(self) -> bool:
        """Whether an outage is going on."""
        return self.reason is not None

    def failed(self, error: BaseException) -> None:
        """An operation met an outage error: log it if it starts an outage."""
        if self.reason is None:
            self.reason = describe(error)
            log.error("{what} is unavailable: {reason}", what=self.what, reason=self.reason)

    def answered(self) -> None:
        """An operation succeeded: log the end of an outage, if one was going on."""
        if self.reason is not None:
            self.reason = None
            log.info("{what} is back", what=self.what)


class QuietConnection(adbapi.Connection):
    """An adbapi connection whose rollback after a failure logs nothing: when the
    connection is gone, it is dropped (made again at the next use) and the original error
    goes on to the caller, who reports the outage once."""

    def rollback(self) -> None:
        """Roll back; on a reconnecting pool, check the connection still works and drop
        it when it does not."""
        pool = self._pool
        connection: Any = self._connection
        try:
            connection.rollback()
            if pool.reconnect:
                cursor = connection.cursor()
                cursor.execute(pool.good_sql)
                cursor.close()
                connection.commit()
            return
        except BaseException:  # noqa: BLE001 - the connection is broken: dropped below
            pass
        if pool.reconnect:
            try:
                pool.disconnect(connection)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._connection = None


def quiet_pool(pool: adbapi.ConnectionPool) -> adbapi.ConnectionPool:
    """Make ``pool``'s connections :class:`QuietConnection` ones; return it."""
    pool.connectionFactory = QuietConnection  # type: ignore[assignment]
    return pool
