"""PostgreSQL: following other processes' address changes through LISTEN/NOTIFY.

The ``addresses`` trigger (schema version 5) notifies the channel ``irp_addresses`` of every
row written, with the user's name and the new record's sequence number (the name alone for
a delete). An :class:`AddressListener` keeps one connection listening on that channel; the
reactor reads it (no thread), so notifications are taken in as soon as they arrive.

What may be served from a cache follows from it (:meth:`AddressListener.follow`):

* not while the listening connection is down: when it is lost (or first made), changes may
  have been missed, so every cached answer is forgotten and none is served until the
  connection is back;
* this process's own writes are told at once (the store reports each one when it has
  committed: :meth:`AddressListener.own_change`), so an answer this process just changed
  is never served stale, even for the moment its notification travels.
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
class AddressListener:
    """One connection listening on :data:`CHANNEL`, read by the reactor."""

    def __init__(self, url: str, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor
        self.connection: Any = None
        #: A duplicate of the connection's socket, for the reactor: it stays valid however
        #: libpq closes its own when the connection breaks.
        self._fileno = -1
        self._pending: list[tuple[str, int | None]] = []
        self._overflow = False
        #: Forget every answer at the next follow (set when made or lost).
        self._must_clear = True
        self._stopped = False
        self._retry: Any = None
        self.ready: Deferred[None] = Deferred()

    # -- the connection -----------------------------------------------------------------

    def start(self) -> None:
        """Make the listening connection (in a thread: connecting blocks)."""
        if self._stopped:
            return
        self._retry = None
        threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._connect).addCallbacks(
            self._connected, self._not_connected
        )

    def _connect(self) -> Any:
        import psycopg

        connection = psycopg.connect(self.url, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def _connected(self, connection: Any) -> None:
        if self._stopped:
            connection.close()
            return
        self.connection = connection
        self._fileno = os.dup(connection.pgconn.socket)
        self._must_clear = True
        self.reactor.addReader(self)
        if not self.ready.called:
            self.ready.callback(None)

    def _not_connected(self, failure: Failure) -> None:
        log.error("Cannot listen for address changes: {error}", error=str(failure.value))
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._stopped and self._retry is None:
            self._retry = self.reactor.callLater(RECONNECT_DELAY, self.start)

    def _lost(self) -> None:
        """The listening connection is gone: serve nothing cached until it is back."""
        if self.connection is None:
            return
        log.warn("Lost the connection listening for address changes; answers are not cached until it is back")
        self._close()
        self._must_clear = True
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
            self._received(notice.extra.decode("utf-8"))
        if pgconn.status != 0:  # not CONNECTION_OK
            self._lost()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor gave up the socket."""
        self._lost()

    def logPrefix(self) -> str:
        """The name in the reactor's log lines."""
        return "AddressListener"

    # -- notifications ------------------------------------------------------------------

    def _received(self, payload: str) -> None:
        username, _, seq = payload.partition(" ")
        self.own_change(username, int(seq) if seq else None)

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
