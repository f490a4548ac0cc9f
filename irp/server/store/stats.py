"""Totals of the registry's tables, for the metrics endpoint (read periodically, never
during a scrape: see :mod:`irp.server.metrics`).

Every count is answered from an index, so it stays cheap on large tables (a million
certificates: about 5 ms; a scan of the certificates table itself would read all of it,
about 350 ms). That is why certificates are told apart as revoked or not (the index on
``revoked_at``), not as expired (``not_after`` has no index). On SQLite the counting runs on
a read-only connection of its own in the reactor's thread pool (WAL lets it read beside the
writer), never on the single writer connection nor on the reactor thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from common.db.pools import direct_sqlite_reader
from irp.server.store.engine import StoreEngine, Transaction


@dataclass(frozen=True)
class StoreTotals:
    """What the database holds now, across every registry process sharing it."""

    #: Registered users.
    users: int
    #: Users with a current address record, by presence (online, away, busy; an expired
    #: record or an offline one does not count).
    online: dict[str, int] = field(default_factory=dict)
    #: Stored certificates: revoked, and not revoked (current or expired).
    certificates: dict[str, int] = field(default_factory=dict)
    #: sixid device IDs held.
    sixid_ids: int = 0


class StatsTable(StoreEngine):
    """Counts over the users, addresses, certificates and sixid tables."""

    def totals(self) -> Deferred[StoreTotals]:
        """Fire with the current :class:`StoreTotals` (in a thread: see the module);
        Unavailable when the database cannot be read."""
        now = self._now()
        if self.direct_reader is None or self.reactor is None:
            return self._pool_read(self._totals, now)
        path = self.pool.connargs[0]
        pool = self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, self._sqlite_totals, path, now).addErrback(self._unavailable)

    def _sqlite_totals(self, path: str, now: int) -> StoreTotals:
        connection = direct_sqlite_reader(path)
        try:
            cursor = connection.cursor()
            return self._totals(cursor, now)
        finally:
            connection.close()

    def _totals(self, txn: Transaction, now: int) -> StoreTotals:
        users = int(self._fetchone(txn, "SELECT COUNT(*) FROM users")[0])
        online = {
            str(presence): int(count)
            for presence, count in self._fetchall(
                txn,
                "SELECT presence, COUNT(*) FROM addresses WHERE expires_at > ? AND presence <> 'offline'"
                " GROUP BY presence",
                (now,),
            )
        }
        stored = int(self._fetchone(txn, "SELECT COUNT(*) FROM certificates")[0])
        revoked = int(self._fetchone(txn, "SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL")[0])
        row = self._fetchone(txn, "SELECT value FROM counters WHERE name = 'sixid_records'")
        return StoreTotals(
            users=users,
            online=online,
            certificates={"revoked": revoked, "not-revoked": stored - revoked},
            sixid_ids=int(row[0]) if row is not None else 0,
        )
