"""PostgreSQL: following other processes' changes through LISTEN/NOTIFY.

A :class:`ChangeListener` keeps one connection listening on one channel; the reactor reads
it (no thread), so notifications are taken in as soon as they arrive, and each is handed on
as a key and a version (the payload ``"KEY VERSION"``, or ``"KEY"`` alone). Two channels are
followed:

* ``irp_addresses``: the ``addresses`` trigger (schema version 5) notifies it of every row
  written, with the user's name and the new record's sequence number (the name alone for a
  delete). An :class:`AddressListener` keeps them for the registry's answer cache, and what
  may be served from that cache follows from it (:meth:`AddressListener.follow`): not while
  the listening connection is down (when it is lost, or first made, changes may have been
  missed, so every cached answer is forgotten and none is served until it is back); and
  this process's own writes are told at once (the store reports each one when it has
  committed: :meth:`AddressListener.own_change`), so an answer this process just changed is
  never served stale, even for the moment its notification travels.
* ``sixid_changes``: the ``sixid_records`` trigger (schema version 6) notifies it of every
  record written (``"ID SEQ"``); the sixid store hands each to its followers at once (see
  :mod:`irp.server.store.sixid`), and reads the change log to catch up on what a lost
  connection missed.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.db.outage import OutageLog, describe

log = Logger()

#: The channel the ``addresses`` trigger notifies.
CHANNEL = "irp_addresses"
#: Seconds between attempts to make the listening connection again.
RECONNECT_DELAY = 2.0
#: Notifications kept for the next look-up; beyond that every answer is forgotten instead.
PENDING_LIMIT = 10_000


class AddressWatcher(Protocol):
    """What follows the changes of address records (the registry's answer cache)."""

    def evict(self, key: str, version: int | None = None) -> None:
        """The user's record was written (at ``version``; None: deleted)."""

    def clear(self) -> None:
        """Records may have changed, which is not known: forget everything."""


@implementer(IReadDescriptor)
class ChangeListener:
    """One connection listening on ``channel``, read by the reactor; each notification is
    handed to :meth:`notified` (key, version), on the reactor thread.

    ``what`` names what is followed, in log lines. Subclasses may run :meth:`catch_up` on
    the new connection (in a thread, once it listens) and take its result in
    :meth:`caught_up` (on the reactor thread), to learn what was missed while no connection
    listened.
    """

    what = "changes"

    def __init__(self, url: str, reactor: Any, channel: str) -> None:
        self.url = url
        self.reactor = reactor
        self.channel = channel
        self.connection: Any = None
        #: A duplicate of the connection's socket, for the reactor: it stays valid however
        #: libpq closes its own when the connection breaks.
        self._fileno = -1
        self._stopped = False
        self._retry: Any = None
        #: Why the last attempt to listen failed (None: it did not): while attempts keep
        #: failing (the database is down) the log has one line, not one per attempt.
        self._failing: str | None = None
        #: The store's outage log, when set: a lost or failing listening connection is
        #: reported there (one line per outage of the database, whoever notices first).
        self.outage: OutageLog | None = None
        self.ready: Deferred[None] = Deferred()

    # -- to be supplied by subclasses ---------------------------------------------------

    def notified(self, key: str, version: int | None) -> None:
        """A notification arrived: ``key`` was written (at ``version``, when given)."""

    def catch_up(self, connection: Any) -> Any:
        """Run in a thread on a new listening connection; its result goes to :meth:`caught_up`."""
        return None

    def caught_up(self, result: Any) -> None:
        """The result of :meth:`catch_up`, on the reactor thread, before any notification
        of the new connection is read."""

    def made(self) -> None:
        """A listening connection was made (the first, or again after one was lost)."""

    def lost(self) -> None:
        """The listening connection was lost."""

    # -- the connection -----------------------------------------------------------------

    def start(self) -> None:
        """Make the listening connection (in a thread: connecting blocks)."""
        if self._stopped:
            return
        self._retry = None
        threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._connect).addCallbacks(
            self._connected, self._not_connected
        )

    def _connect(self) -> tuple[Any, Any]:
        import psycopg

        connection = psycopg.connect(self.url, autocommit=True)
        try:
            connection.execute(f"LISTEN {self.channel}")
            return connection, self.catch_up(connection)
        except BaseException:
            connection.close()
            raise

    def _connected(self, made: tuple[Any, Any]) -> None:
        connection, caught = made
        if self._stopped:
            connection.close()
            return
        self.connection = connection
        self._fileno = os.dup(connection.pgconn.socket)
        if self.outage is not None:
            self.outage.answered()
        elif self._failing is not None:
            log.info("Listening for {what} again", what=self.what)
        self._failing = None
        self.made()
        self.caught_up(caught)
        self.reactor.addReader(self)
        if not self.ready.called:
            self.ready.callback(None)

    def _not_connected(self, failure: Failure) -> None:
        reason = describe(failure.value) if failure.value is not None else "unknown"
        if self.outage is not None and failure.value is not None:
            self.outage.failed(failure.value)
        elif self._failing is None:
            log.error(
                "Cannot listen for {what}: {error}; trying again every {delay:g} s",
                what=self.what,
                error=reason,
                delay=RECONNECT_DELAY,
            )
        self._failing = reason
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._stopped and self._retry is None:
            self._retry = self.reactor.callLater(RECONNECT_DELAY, self.start)

    def report_lost(self, consequence: str) -> None:
        """Say (once per outage, with the store's outage log) that the listening
        connection was lost, and what follows from it."""
        problem = f"lost the connection listening for {self.what}; {consequence}"
        if self.outage is not None:
            self.outage.failed(ConnectionError(problem))
        else:
            log.warn("{problem}", problem=problem[0].upper() + problem[1:])

    def _lost(self) -> None:
        """The listening connection is gone: make it again."""
        if self.connection is None:
            return
        self._close()
        self.lost()
        self._schedule_retry()

    def _close(self) -> None:
        self.reactor.removeReader(self)
        os.close(self._fileno)
        self._fileno = -1
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
        self.connection = None

    def stop(self) -> None:
        """Close the connection; make no other."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.connection is not None:
            self._close()

    # -- IReadDescriptor ----------------------------------------------------------------

    def fileno(self) -> int:
        """The listening connection's socket (-1 without one)."""
        return self._fileno

    def doRead(self) -> None:
        """Take in the notifications that arrived."""
        pgconn = self.connection.pgconn
        try:
            pgconn.consume_input()
        except Exception:  # noqa: BLE001 - psycopg.OperationalError: the server is gone
            self._lost()
            return
        while True:
            notice = pgconn.notifies()
            if notice is None:
                break
            key, _, version = notice.extra.decode("utf-8").partition(" ")
            self.notified(key, int(version) if version else None)
        if pgconn.status != 0:  # not CONNECTION_OK
            self._lost()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor gave up the socket."""
        self._lost()

    def logPrefix(self) -> str:
        """The name in the reactor's log lines."""
        return type(self).__name__


class AddressListener(ChangeListener):
    """Listens on :data:`CHANNEL`; keeps the address changes notified until the next
    :meth:`follow`."""

    what = "address changes"

    def __init__(self, url: str, reactor: Any, channel: str = CHANNEL) -> None:
        super().__init__(url, reactor, channel)
        self._pending: list[tuple[str, int | None]] = []
        self._overflow = False
        #: Forget every answer at the next follow (set when made or lost).
        self._must_clear = True

    def made(self) -> None:
        """Changes may have been missed: forget every answer at the next follow."""
        self._must_clear = True

    def lost(self) -> None:
        """Serve nothing cached until the connection is back."""
        self.report_lost("answers are not cached until it is back")
        self._must_clear = True

    def notified(self, key: str, version: int | None) -> None:
        """Keep the change for the next :meth:`follow`."""
        self.own_change(key, version)

    def own_change(self, username: str, seq: int | None) -> None:
        """The user's record was written (at ``seq``; None: deleted or not known), to be
        told at the next :meth:`follow`."""
        if len(self._pending) >= PENDING_LIMIT:
            self._overflow = True
            self._pending.clear()
        if not self._overflow:
            self._pending.append((username, seq))

    def follow(self, watcher: AddressWatcher) -> bool:
        """Tell ``watcher`` of the changes notified since the last call; return whether
        cached answers may be served now."""
        if self._must_clear or self._overflow:
            watcher.clear()
            self._pending.clear()
            self._overflow = False
            self._must_clear = self.connection is None
        pending, self._pending = self._pending, []
        for username, seq in pending:
            watcher.evict(username, seq)
        return self.connection is not None
