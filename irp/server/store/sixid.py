"""sixid's tables (issue 13): each ID's current signed record, the allow list, and the
change log that registry processes sharing the database follow.

:class:`SixidTable` implements :class:`sixid.server.store.SixidStore` on the registry's
store (DESIGN-13 section 5; the schema is migration 5 -> 6 in
:mod:`~irp.server.store.schema`):

- look-ups are point reads: on SQLite on the direct reader, on the calling (reactor)
  thread, an already-fired Deferred (about 10 us); on PostgreSQL in the read pool;
- registrations are upserts in the engine's group commit (one fsync for many), refused
  (:class:`~sixid.server.store.Replayed`) when the stored sequence number is not lower;
- other processes' registrations are followed (:meth:`SixidTable.follow_sixid_changes`):
  on SQLite by reading the ``sixid_changes`` log whenever the database's data version moved
  (asked every 20 ms while anyone follows); on PostgreSQL through LISTEN on the channel
  ``sixid_changes`` (see :mod:`~irp.server.store.listener`), catching up from the log when
  the listening connection was lost. This process's own writes are not told to followers
  (the sixid server tells its watchers of them itself, at once).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from irp.server.store.engine import StoreEngine, Transaction
from irp.server.store.listener import ChangeListener
from sixid.server.store import NOT_NOW, AllowedSixid, Replayed, StoredRecord, Unread

log = Logger()

#: The PostgreSQL channel the ``sixid_records`` trigger notifies ("ID SEQ").
SIXID_CHANNEL = "sixid_changes"
#: Seconds between two looks at the SQLite data version while anyone follows changes.
POLL_INTERVAL = 0.02
#: How many changes the sweep keeps in the change log (the newest).
SIXID_CHANGES_KEPT = 100_000
#: The most changes one sweep prunes, and the most expired records it deletes (a large
#: backlog is worked off over several sweeps, none holding the write lock long).
SIXID_CHANGES_PRUNED_AT_ONCE = 100_000
SIXID_RECORDS_SWEPT_AT_ONCE = 10_000
#: The most changes read from the log at once (the rest at the next poll).
SIXID_CHANGES_READ_LIMIT = 10_000
#: The most IDs one query of :meth:`SixidTable.get_sixid_records` asks for.
BATCH_SIZE = 500
#: This process's own writes remembered until their change comes back (then not told).
OWN_WRITES_KEPT = 100_000
#: The longest allow-list page.
MAX_ALLOWED_PAGE = 10_000

#: A follower of other processes' registrations: (ID, its new sequence number).
ChangeCallback = Callable[[str, int], None]

_SELECT_RECORD = "SELECT seq, expires_at, owner, record FROM sixid_records WHERE sixid = ? AND expires_at > ?"
_SELECT_RECORD_BYTES = "SELECT record FROM sixid_records WHERE sixid = ? AND expires_at > ?"
_UPSERT_RECORD = (
    "INSERT INTO sixid_records (sixid, seq, signed_at, expires_at, keep_until, owner, record)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (sixid) DO UPDATE SET seq = excluded.seq, signed_at = excluded.signed_at,"
    " expires_at = excluded.expires_at, keep_until = excluded.keep_until, owner = excluded.owner,"
    " record = excluded.record"
    " WHERE sixid_records.seq < excluded.seq"
)
_CHANGES_PRUNED = "SELECT value FROM counters WHERE name = 'sixid_changes_pruned'"


class SixidListener(ChangeListener):
    """PostgreSQL: listens on :data:`SIXID_CHANNEL`, hands each change to ``deliver`` at
    once, and on a new connection catches up from the change log on what was written since
    the previous connection was made (the latest sequence number of each ID)."""

    what = "sixid changes"

    def __init__(self, url: str, reactor: Any, deliver: ChangeCallback) -> None:
        super().__init__(url, reactor, SIXID_CHANNEL)
        self.deliver = deliver
        #: The newest change logged when the last connection was made (None: none made).
        self.seen: int | None = None
        #: The latest sequence number notified per ID since then (not told again when
        #: catching up; forgotten beyond OWN_WRITES_KEPT IDs: then told again, harmlessly).
        self.notified_since: dict[str, int] = {}

    def notified(self, key: str, version: int | None) -> None:
        """Hand the change on."""
        if version is not None:
            if len(self.notified_since) >= OWN_WRITES_KEPT:
                self.notified_since.clear()
            self.notified_since[key] = max(version, self.notified_since.get(key, 0))
            self.deliver(key, version)

    def catch_up(self, connection: Any) -> tuple[int, list[tuple[str, int]], bool]:
        """(newest change id, changes since :attr:`seen`, whether some were missed)."""
        seen = self.seen
        newest = int(connection.execute("SELECT COALESCE(MAX(id), 0) FROM sixid_changes").fetchone()[0])
        if seen is None:
            return newest, [], False
        rows = connection.execute(
            "SELECT sixid, seq FROM sixid_changes WHERE id > %s ORDER BY id LIMIT %s", (seen, SIXID_CHANGES_READ_LIMIT)
        ).fetchall()
        pruned = int(connection.execute(_CHANGES_PRUNED).fetchone()[0])
        return newest, [(str(sixid), int(seq)) for sixid, seq in rows], pruned > seen or len(rows) >= SIXID_CHANGES_READ_LIMIT

    def caught_up(self, result: tuple[int, list[tuple[str, int]], bool]) -> None:
        """Tell what the lost connection missed: each ID once, at its latest change."""
        newest, rows, missed = result
        if missed:
            log.warn("Some sixid changes made while not listening are no longer logged; their watchers here are not told")
        latest = dict(rows)
        told, self.notified_since = self.notified_since, {}
        for sixid, seq in latest.items():
            if seq > told.get(sixid, 0):
                self.deliver(sixid, seq)
        self.seen = newest

    def lost(self) -> None:
        """Say so; the next connection catches up."""
        self.report_lost("watchers here are told of other processes' registrations once it is back")


class SixidTable(StoreEngine):
    """The ``sixid_records``, ``sixid_allowed`` and ``sixid_changes`` tables."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: PostgreSQL: the URL to listen on (set by open_store; None: changes not followed).
        self.listen_url: str | None = None
        self.sixid_listener: SixidListener | None = None
        self._sixid_followers: list[ChangeCallback] = []
        self._sixid_poll: LoopingCall | None = None
        #: SQLite: the data version at which the log was last read completely, and the last
        #: change read (None: not read yet).
        self._sixid_version: int | None = None
        self._sixid_seen: int | None = None
        #: (ID, seq) of this process's writes whose change has not come back yet.
        self._own_sixid_writes: dict[tuple[str, int], None] = {}

    # -- records ------------------------------------------------------------------------

    def sixid_record_now(self, sixid: str, now: int) -> bytes | Unread | None:
        """The signed record bytes of the ID's current record, or None, read on the direct
        reader at once; :data:`~sixid.server.store.NOT_NOW` without a direct reader or
        when it is busy (a checkpoint, a schema change: the pool's connection waits)."""
        reader = self.direct_reader
        if reader is None:
            return NOT_NOW
        try:
            row = reader.execute(_SELECT_RECORD_BYTES, (sixid, now)).fetchone()
        except self._reader_error:
            return NOT_NOW
        return None if row is None else row[0]  # type: ignore[no-any-return]

    def get_sixid_record(self, sixid: str, now: int) -> Deferred[StoredRecord | None]:
        """Fire with the ID's current record (``expires_at > now``), or None. SQLite: read
        on the direct reader, already fired."""
        reader = self.direct_reader
        if reader is not None:
            try:
                row = reader.execute(_SELECT_RECORD, (sixid, now)).fetchone()
            except self._reader_error:
                pass  # busy (a checkpoint, a schema change): the pool's connection waits instead
            except Exception:  # noqa: BLE001 - handed to the Deferred like the pool would
                return fail()
            else:
                return succeed(None if row is None else StoredRecord(sixid, row[0], row[1], row[2], row[3]))
        return self._pool_read(self._get_sixid_record, sixid, now)

    def _get_sixid_record(self, txn: Transaction, sixid: str, now: int) -> StoredRecord | None:
        row = self._fetchone(txn, _SELECT_RECORD, (sixid, now))
        return None if row is None else self._stored(sixid, row)

    def _stored(self, sixid: str, row: Sequence[Any]) -> StoredRecord:
        return StoredRecord(str(sixid), int(row[0]), int(row[1]), str(row[2]), self.dialect.blob(row[3]))

    def get_sixid_records(self, sixids: Sequence[str], now: int) -> Deferred[dict[str, StoredRecord]]:
        """Fire with the current records of those of ``sixids`` that have one, by ID (one
        query per :data:`BATCH_SIZE` IDs)."""
        wanted = list(dict.fromkeys(sixids))
        if not wanted:
            return succeed({})
        return self._read(self._get_sixid_records, wanted, now)

    def _get_sixid_records(self, txn: Transaction, sixids: list[str], now: int) -> dict[str, StoredRecord]:
        found: dict[str, StoredRecord] = {}
        for start in range(0, len(sixids), BATCH_SIZE):
            chunk = sixids[start : start + BATCH_SIZE]
            marks = ", ".join("?" * len(chunk))
            rows = self._fetchall(
                txn,
                "SELECT sixid, seq, expires_at, owner, record FROM sixid_records"
                f" WHERE sixid IN ({marks}) AND expires_at > ?",
                (*chunk, now),
            )
            for row in rows:
                found[str(row[0])] = self._stored(row[0], row[1:])
        return found

    def put_sixid_record(self, stored: StoredRecord, signed_at: int, keep_until: int) -> Deferred[None]:
        """Store ``stored`` as its ID's record (in the next group commit); fail with
        Replayed when the stored record's sequence number is not lower. Fires after the
        commit."""
        key = (stored.sixid, stored.seq)
        if self._sixid_followers:
            self._remember_own_write(key)
        written = self._grouped_write(self._put_sixid_record, stored, signed_at, keep_until)
        return written.addCallbacks(self._sixid_put, self._sixid_not_put, callbackArgs=(key,), errbackArgs=(key,))

    def _put_sixid_record(self, txn: Transaction, stored: StoredRecord, signed_at: int, keep_until: int) -> Replayed | None:
        # Replayed is returned, not raised: the group's other writes go on.
        self._execute(
            txn,
            _UPSERT_RECORD,
            (stored.sixid, stored.seq, signed_at, stored.expires_at, keep_until, stored.owner, stored.record),
        )
        if txn.rowcount == 1:
            return None
        row = self._fetchone(txn, "SELECT seq FROM sixid_records WHERE sixid = ?", (stored.sixid,))
        return Replayed(stored.sixid, stored.seq if row is None else int(row[0]))

    def _sixid_put(self, result: Replayed | None, key: tuple[str, int]) -> None:
        if isinstance(result, Replayed):
            self._own_sixid_writes.pop(key, None)
            raise result

    def _sixid_not_put(self, failure: Failure, key: tuple[str, int]) -> Failure:
        self._own_sixid_writes.pop(key, None)
        return failure

    def _remember_own_write(self, key: tuple[str, int]) -> None:
        own = self._own_sixid_writes
        own[key] = None
        if len(own) > OWN_WRITES_KEPT:
            del own[next(iter(own))]

    def count_sixids(self) -> Deferred[int]:
        """Fire with the number of IDs held (records kept, current or not)."""

        def count(txn: Transaction) -> int:
            return int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'sixid_records'")[0])

        return self._read(count)

    def sweep_sixids(self, now: int, keep_changes: int = SIXID_CHANGES_KEPT) -> Deferred[int]:
        """Delete the records kept until ``now`` or earlier (at most
        :data:`SIXID_RECORDS_SWEPT_AT_ONCE`), prune the change log to its newest
        ``keep_changes`` rows; fire with the number of records deleted."""

        def sweep(txn: Transaction) -> int:
            self._execute(
                txn,
                "DELETE FROM sixid_records WHERE sixid IN"
                " (SELECT sixid FROM sixid_records WHERE keep_until <= ? LIMIT ?)",
                (now, SIXID_RECORDS_SWEPT_AT_ONCE),
            )
            deleted = max(int(txn.rowcount), 0)
            newest = int(self._fetchone(txn, "SELECT COALESCE(MAX(id), 0) FROM sixid_changes")[0])
            pruned = int(self._fetchone(txn, _CHANGES_PRUNED)[0])
            bound = min(newest - keep_changes, pruned + SIXID_CHANGES_PRUNED_AT_ONCE)
            if bound > pruned:
                self._execute(txn, "DELETE FROM sixid_changes WHERE id <= ?", (bound,))
                self._execute(txn, "UPDATE counters SET value = ? WHERE name = 'sixid_changes_pruned'", (bound,))
            return deleted

        return self._write(sweep)

    # -- the allow list -----------------------------------------------------------------

    def sixid_allowed(self, sixid: str) -> Deferred[bool]:
        """Fire with whether the ID is on the allow list."""

        def allowed(txn: Transaction) -> bool:
            return self._fetchone(txn, "SELECT 1 FROM sixid_allowed WHERE sixid = ?", (sixid,)) is not None

        return self._read(allowed)

    def allow_sixid(self, sixid: str, note: str, by: str) -> Deferred[bool]:
        """Put the ID on the allow list; fire with False when it was there already (its
        note is then left as it was)."""

        def allow(txn: Transaction) -> bool:
            self._execute(
                txn,
                "INSERT INTO sixid_allowed (sixid, note, added_at, added_by) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sixid) DO NOTHING",
                (sixid, note, self._now(), by),
            )
            return bool(txn.rowcount == 1)

        return self._write(allow)

    def disallow_sixid(self, sixid: str) -> Deferred[bool]:
        """Take the ID off the allow list; fire with False when it was not on it."""

        def disallow(txn: Transaction) -> bool:
            self._execute(txn, "DELETE FROM sixid_allowed WHERE sixid = ?", (sixid,))
            return bool(txn.rowcount == 1)

        return self._write(disallow)

    def list_allowed_sixids(self, offset: int = 0, limit: int = MAX_ALLOWED_PAGE) -> Deferred[list[AllowedSixid]]:
        """Fire with the allow list (a page of it: at most ``limit`` entries from
        ``offset``), by ID."""

        def entries(txn: Transaction) -> list[AllowedSixid]:
            rows = self._fetchall(
                txn,
                "SELECT sixid, note, added_at, added_by FROM sixid_allowed ORDER BY sixid LIMIT ? OFFSET ?",
                (min(limit, MAX_ALLOWED_PAGE), offset),
            )
            return [AllowedSixid(str(sixid), str(note), int(added_at), str(by)) for sixid, note, added_at, by in rows]

        return self._pool_read(entries)

    # -- following other processes' registrations ---------------------------------------

    def follow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(sixid, seq)`` for each record other processes sharing the
        database write from now on (see the module's docstring). Without a direct reader
        (SQLite) or a listening URL (PostgreSQL) nothing can be followed: logged."""
        self._sixid_followers.append(callback)
        if self.direct_reader is not None:
            if self._sixid_poll is None:
                self._sixid_poll = LoopingCall(self._poll_sixid_changes)
                self._sixid_poll.clock = self.reactor
                self._sixid_poll.start(POLL_INTERVAL, now=True).addErrback(
                    lambda failure: log.failure("Following sixid changes failed", failure)
                )
        elif self.listen_url is not None:
            if self.sixid_listener is None:
                self.sixid_listener = SixidListener(self.listen_url, self.reactor, self._sixid_changed)
                self.sixid_listener.outage = self.outage
                self.sixid_listener.start()
        else:
            log.warn("This store cannot follow other processes' sixid changes (no direct reader, no listener)")

    def unfollow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        """Stop calling ``callback``; with no follower left, stop following."""
        if callback in self._sixid_followers:
            self._sixid_followers.remove(callback)
        if not self._sixid_followers:
            self._stop_following_sixid_changes()

    def _stop_following_sixid_changes(self) -> None:
        if self._sixid_poll is not None:
            if self._sixid_poll.running:
                self._sixid_poll.stop()
            self._sixid_poll = None
            self._sixid_version = self._sixid_seen = None
        if self.sixid_listener is not None:
            self.sixid_listener.stop()
            self.sixid_listener = None
        self._own_sixid_writes.clear()

    def _sixid_changed(self, sixid: str, seq: int) -> None:
        """A change came in: tell the followers, unless it is this process's own write."""
        own = self._own_sixid_writes
        if (sixid, seq) in own:
            del own[sixid, seq]
            return
        for callback in list(self._sixid_followers):
            try:
                callback(sixid, seq)
            except Exception:  # noqa: BLE001 - one follower's bug stops no other
                log.failure("A follower of sixid changes failed")

    def _poll_sixid_changes(self) -> None:
        """SQLite: read the change log when the data version moved."""
        reader = self.direct_reader
        if reader is None:
            return
        try:
            version = int(reader.execute("PRAGMA data_version").fetchone()[0])
            if version == self._sixid_version:
                return
            changes, complete = self._read_sixid_changes(reader)
        except self._reader_error:
            return  # busy: the next poll reads
        if complete:
            self._sixid_version = version
        for sixid, seq in changes:
            self._sixid_changed(sixid, seq)

    def _read_sixid_changes(self, reader: Any) -> tuple[list[tuple[str, int]], bool]:
        """The changes logged since the last read, and whether they are all there were.
        One read transaction: the prune counter matches the rows read."""
        reader.execute("BEGIN")
        try:
            pruned = int(reader.execute(_CHANGES_PRUNED).fetchone()[0])
            seen = self._sixid_seen
            if seen is None:
                newest = int(reader.execute("SELECT COALESCE(MAX(id), 0) FROM sixid_changes").fetchone()[0])
                self._sixid_seen = max(newest, pruned)
                return [], True
            rows = reader.execute(
                "SELECT id, sixid, seq FROM sixid_changes WHERE id > ? ORDER BY id LIMIT ?",
                (seen, SIXID_CHANGES_READ_LIMIT),
            ).fetchall()
        finally:
            # Never left open on a failure (an unreadable file): the reader would go on
            # reading this snapshot.
            reader.execute("COMMIT" if sys.exc_info()[0] is None else "ROLLBACK")
        if pruned > seen:
            log.warn(
                "This process read the sixid change log too late: {count} changes were pruned unread; their watchers here are not told",
                count=pruned - seen,
            )
        self._sixid_seen = max(int(rows[-1][0]) if rows else seen, pruned)
        return [(str(sixid), int(seq)) for _id, sixid, seq in rows], len(rows) < SIXID_CHANGES_READ_LIMIT

    def close(self) -> None:
        """Stop following changes; close the database connections."""
        self._sixid_followers.clear()
        self._stop_following_sixid_changes()
        super().close()
