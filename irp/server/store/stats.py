"""Totals of the registry's tables, for the metrics endpoint (read periodically, never
during a scrape: see :mod:`irp.server.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from irp.server.store.engine import StoreEngine, Transaction


@dataclass(frozen=True)
class StoreTotals:
    """What the database holds now, across every registry process sharing it."""

    #: Registered users.
    users: int
    #: Users with a current address record, by presence (online, away, busy; an expired
    #: record or an offline one does not count).
    online: dict[str, int] = field(default_factory=dict)
    #: Stored certificates by state: valid (neither revoked nor expired), revoked, expired.
    certificates: dict[str, int] = field(default_factory=dict)
    #: sixid device IDs held.
    sixid_ids: int = 0


class StatsTable(StoreEngine):
    """Counts over the users, addresses, certificates and sixid tables."""

    def totals(self) -> Deferred[StoreTotals]:
        """Fire with the current :class:`StoreTotals` (in the pool's threads: counting a
        large table must not hold the reactor)."""
        return self._pool_read(self._totals, self._now())

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
        revoked, expired, valid = self._fetchone(
            txn,
            "SELECT"
            " COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN revoked_at IS NULL AND not_after <= ? THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN revoked_at IS NULL AND not_after > ? THEN 1 ELSE 0 END), 0)"
            " FROM certificates",
            (now, now),
        )
        row = self._fetchone(txn, "SELECT value FROM counters WHERE name = 'sixid_records'")
        return StoreTotals(
            users=users,
            online=online,
            certificates={"valid": int(valid), "revoked": int(revoked), "expired": int(expired)},
            sixid_ids=int(row[0]) if row is not None else 0,
        )
