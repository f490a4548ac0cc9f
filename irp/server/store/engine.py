"""The store's engine: transactions, point reads, group commit, the data version and the
address change log.

:class:`StoreEngine` runs every interaction with the database: reads on a direct SQLite
reader or a pool, writes in a transaction (integrity errors become Conflict, operational
ones Unavailable), small writes in group commits. The tables' operations are built on it
(see :mod:`irp.server.store.store`). Every method returns a Deferred; the SQL runs in
adbapi's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.db.dialect import Dialect
from common.db.migrations import describe_upgrade, upgrade_schema_from
from common.db.outage import OutageLog, is_outage
from common.identity import Identity
from irp.errors import Conflict, IRPError, Unavailable
from irp.server.store.listener import AddressListener, AddressWatcher
from irp.server.store.schema import MIGRATIONS
from irp.wire.records import RecordSigner

T = TypeVar("T")

log = Logger()

Transaction = Any  # adbapi.Transaction: a DB-API cursor-like object

#: The most small writes committed together.
GROUP_COMMIT_LIMIT = 256
#: The most address changes read at once: a process further behind drops every cached
#: answer instead (reading more would hold the reactor).
CHANGES_READ_LIMIT = 10_000


class StoreEngine:
    """The database plumbing of :class:`~irp.server.store.store.RegistryStore`: one domain's
    pool, dialect, record signer and clock."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: Dialect,
        domain: str,
        signer: RecordSigner | None,
        now: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.dialect = dialect
        self.domain = domain
        #: Signs directory entries and address records as they are written; None until the
        #: registry has loaded its CA (it opens the store first: the database names its CA).
        self.signer = signer
        self.now = now
        self._integrity_error: type[Exception] = pool.dbapi.IntegrityError
        #: What the direct reader may raise when it cannot read now (busy, or the file
        #: cannot be read): the read is then tried on the pool, which reports outages.
        self._reader_error: type[Exception] = pool.dbapi.DatabaseError
        #: One log line per outage of the database (see :mod:`common.db.outage`).
        self.outage = OutageLog()
        #: A read-only SQLite connection used on the calling (reactor) thread for point
        #: reads: a look-up then costs one in-process query (about 10 us) instead of a
        #: hop to adbapi's thread (about 50 us). WAL lets it read while the writer writes,
        #: and it sees every commit at once. None for PostgreSQL.
        self.direct_reader: Any = None
        #: PostgreSQL: a pool of autocommit connections for reads (one round trip each).
        self.read_pool: Any = None
        #: The reactor (for once-per-turn work), set by open_store.
        self.reactor: Any = None
        #: PostgreSQL: the connection listening for address changes, set by open_store.
        self.address_listener: AddressListener | None = None
        self._version: int | None = None
        self._forget_scheduled = False
        #: The data version at which the address change log was last read, and the last
        #: change read (None: not read yet).
        self._changes_version: int | None = None
        self._changes_seen: int | None = None
        #: Writes completed through this store: they change data_version() at once, even
        #: within the reactor turn that memoised SQLite's own counter.
        self._local_writes = 0
        #: Small writes waiting for the next group commit (see _grouped_write).
        self._group_queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._group_running = False
        #: Told the seconds of every committed write transaction (a group commit is one),
        #: from its submission to its commit (the metrics endpoint; None: nobody asks).
        self.commit_observer: Callable[[float], None] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def record_signer(self) -> RecordSigner:
        """The record signer (a store opened without one signs nothing)."""
        if self.signer is None:
            raise RuntimeError("the store has no record signer yet: the registry's CA is not loaded")
        return self.signer

    def _execute(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> None:
        txn.execute(self.dialect.sql(statement), tuple(params))

    def _fetchone(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> Any:
        self._execute(txn, statement, params)
        return txn.fetchone()

    def _fetchall(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        self._execute(txn, statement, params)
        return list(txn.fetchall())

    def _unavailable(self, failure: Failure) -> Failure:
        """Turn the failures that mean the database cannot be used now (locked,
        unreachable, stopped, a lost connection, an unreadable file, out of space...) into
        Unavailable (503, try again later), logged once per outage without a traceback;
        pass other failures on."""
        error = failure.value
        if error is not None and is_outage(error, self.pool.dbapi):
            self.outage.failed(error)
            raise Unavailable("the registry's database is unavailable; try again later")
        return failure

    def _answered(self, result: T) -> T:
        """Callback of every pool interaction: the database answers (ends an outage)."""
        if self.outage.reason is not None:
            self.outage.answered()
        return result

    def _read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a point read: on the direct reader when there is one, else in the pool.
        Operational errors become Unavailable."""
        reader = self.direct_reader
        if reader is None:
            return self._pool_read(interaction, *args)
        cursor = reader.cursor()
        try:
            return succeed(interaction(cursor, *args))
        except self._reader_error:
            # Busy (a checkpoint, a schema change): the pool's connection waits instead;
            # an unreadable file fails there too, reported as an outage.
            return self._pool_read(interaction, *args)
        except Exception:  # noqa: BLE001 - handed to the Deferred like the pool would
            return fail()
        finally:
            cursor.close()

    def data_version(self) -> int | None:
        """A number that changes whenever another connection commits (SQLite's
        ``PRAGMA data_version`` on the direct reader) and with this store's own writes, for
        caches of values read from the database; None when there is no direct reader
        (values are then not cached)."""
        version = self._sqlite_data_version()
        return None if version is None else version * 1_000_000_007 + self._local_writes

    def _sqlite_data_version(self) -> int | None:
        """``PRAGMA data_version`` of the direct reader, asked again at most once per
        reactor turn (many look-ups share one query) and after each write of this store;
        None without a direct reader or when it is busy."""
        reader = self.direct_reader
        if reader is None:
            return None
        if self._version is None:
            try:
                self._version = int(reader.execute("PRAGMA data_version").fetchone()[0])
            except self._reader_error:
                return None
            if not self._forget_scheduled:
                self._forget_scheduled = True
                self.reactor.callLater(0, self._forget_version)
        return self._version

    def _forget_version(self) -> None:
        self._forget_scheduled = False
        self._version = None

    def follow_address_changes(self, watcher: AddressWatcher) -> bool:
        """Tell ``watcher`` of every address record written since the last call, by any
        process sharing the database (see the ``address_changes`` log in
        :mod:`~irp.server.store.schema`); return whether answers it keeps may be served
        now (False: this store cannot follow changes now, or at all).

        SQLite: cheap when nothing was committed: the log is read only when the database's
        data version moved (asked once per reactor turn, and again after each write of this
        store, so that this process's own writes are followed at once). When the log was
        pruned past what was read, or is too far ahead, everything is forgotten.
        PostgreSQL: the notifications the listening connection took in (see
        :mod:`~irp.server.store.listener`); nothing is served while it is down.

        What was told is not told again: one watcher follows a store (a cache switched in
        later starts empty, and is told what changes from then on).
        """
        if self.direct_reader is None:
            listener = self.address_listener
            return False if listener is None else listener.follow(watcher)
        version = self._sqlite_data_version()
        if version is None:
            return False
        if version == self._changes_version:
            return True
        try:
            self._read_address_changes(self.direct_reader, watcher)
        except self._reader_error:
            return False
        self._changes_version = version
        return True

    def _read_address_changes(self, reader: Any, watcher: AddressWatcher) -> None:
        seen = self._changes_seen
        if seen is None:
            self._changes_seen = self._last_address_change(reader, self._address_changes_pruned(reader))
            watcher.clear()
            return
        rows = reader.execute(
            "SELECT id, username, seq FROM address_changes WHERE id > ? ORDER BY id LIMIT ?",
            (seen, CHANGES_READ_LIMIT),
        ).fetchall()
        # Read after the rows: a prune committed before them shows here.
        pruned = self._address_changes_pruned(reader)
        if pruned > seen or len(rows) >= CHANGES_READ_LIMIT:
            self._changes_seen = self._last_address_change(reader, pruned)
            watcher.clear()
            return
        for _id, username, seq in rows:
            watcher.evict(username, None if seq is None else int(seq))
        if rows:
            self._changes_seen = int(rows[-1][0])

    @staticmethod
    def _address_changes_pruned(reader: Any) -> int:
        return int(reader.execute("SELECT value FROM counters WHERE name = 'address_changes_pruned'").fetchone()[0])

    @staticmethod
    def _last_address_change(reader: Any, pruned: int) -> int:
        """The id of the latest change logged (ids are never reused, and the log may have
        been pruned empty: then the highest id pruned)."""
        newest = int(reader.execute("SELECT COALESCE(MAX(id), 0) FROM address_changes").fetchone()[0])
        return max(newest, pruned)

    def close(self) -> None:
        """Close the database connections."""
        if self.direct_reader is not None:
            self.direct_reader.close()
            self.direct_reader = None
        if self.address_listener is not None:
            self.address_listener.stop()
            self.address_listener = None
        if self.read_pool is not None:
            self.read_pool.close()
            self.read_pool = None
        self.pool.close()

    def _pool_read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a read in a thread pool: the read pool's autocommit connections when there
        is one (PostgreSQL), else the store's pool (reads that may be long, on SQLite)."""
        pool = self.read_pool or self.pool
        return pool.runInteraction(interaction, *args).addCallbacks(self._answered, self._unavailable)

    def _write(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``interaction`` in a write transaction; integrity errors become Conflict,
        operational errors Unavailable."""

        def transaction(txn: Transaction, *inner: Any) -> T:
            if self.dialect.begin_write:
                txn.execute(self.dialect.begin_write)
            try:
                result = interaction(txn, *inner)
            except self._integrity_error as error:
                raise Conflict(f"the change conflicts with stored data ({error.__class__.__name__})") from None
            return result

        observer, started = self.commit_observer, perf_counter()
        result = self.pool.runInteraction(transaction, *args)
        if observer is not None:
            result.addCallback(self._committed, observer, started)
        result.addBoth(self._count_write)
        return result.addCallbacks(self._answered, self._unavailable)

    @staticmethod
    def _committed(result: T, observer: Callable[[float], None], started: float) -> T:
        observer(perf_counter() - started)
        return result

    def _address_written(self, result: T, username: str, seq: int | None) -> T:
        """Callback of a write of the user's address record (at ``seq``; None: deleted, or
        not known): on PostgreSQL, where this process's own writes come back as
        notifications only a moment later, the next :meth:`follow_address_changes` tells
        of it first. (On SQLite the change log, read at once, tells.) Also after a failed
        write: forgetting an answer is always safe."""
        if self.address_listener is not None:
            self.address_listener.own_change(username, seq)
        return result

    def _count_write(self, result: T) -> T:
        self._local_writes += 1
        self._version = None  # the next follow_address_changes reads what it wrote
        return result

    def _grouped_write(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a small write in the next group commit.

        Writes that arrive while a group's transaction runs wait for the next group, so one
        commit (one fsync) serves many. Each runs under its own savepoint: one that fails
        (not found, a conflict) is rolled back alone and fails alone. Each Deferred fires
        only after the commit that holds its write.
        """
        waiting: Deferred[T] = Deferred()
        self._group_queue.append((interaction, args, waiting))
        if not self._group_running:
            self._commit_group()
        return waiting

    def _commit_group(self) -> None:
        group = self._group_queue[:GROUP_COMMIT_LIMIT]
        del self._group_queue[:GROUP_COMMIT_LIMIT]
        self._group_running = True

        def commit_all(txn: Transaction) -> list[Any]:
            results: list[Any] = []
            for interaction, args, _waiting in group:
                txn.execute("SAVEPOINT grouped_write")
                try:
                    results.append(interaction(txn, *args))
                except self._integrity_error as error:
                    txn.execute("ROLLBACK TO SAVEPOINT grouped_write")
                    results.append(Conflict(f"the change conflicts with stored data ({error.__class__.__name__})"))
                except IRPError as error:
                    txn.execute("ROLLBACK TO SAVEPOINT grouped_write")
                    results.append(error)
                txn.execute("RELEASE SAVEPOINT grouped_write")
            return results

        def committed(results: list[Any]) -> None:
            for (_interaction, _args, waiting), result in zip(group, results, strict=True):
                if isinstance(result, IRPError):
                    waiting.errback(result)
                else:
                    waiting.callback(result)

        def failed(failure: Failure) -> None:
            for _interaction, _args, waiting in group:
                waiting.errback(failure)

        def next_group(_: object) -> None:
            self._group_running = False
            if self._group_queue:
                self._commit_group()

        self._write(commit_all).addCallbacks(committed, failed).addBoth(next_group)

    def _security_event(self, txn: Transaction) -> int:
        """Count a change that may end sessions (see :meth:`security_generation`); return
        the counter's new value."""
        self._execute(txn, "UPDATE counters SET value = value + 1 WHERE name = 'security_events'")
        return self._security_events(txn)

    def _security_events(self, txn: Transaction) -> int:
        return int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'security_events'")[0])

    def security_generation(self) -> Deferred[int]:
        """Fire with a counter that grows with every change that may end sessions:
        revocations, new passwords, password-login and administrator changes, deleted
        users. Registry processes sharing the database watch it."""

        return self._read(self._security_events)

    def _now(self) -> int:
        return int(self.now())

    def _identity(self, username: str) -> Identity:
        return Identity(username, self.domain)

    # -- schema -----------------------------------------------------------------------

    def upgrade(self) -> Deferred[int]:
        """Create or upgrade the schema (logging what was done); fire with the version now
        in use."""

        def upgraded(versions: tuple[int, int]) -> int:
            line = describe_upgrade(*versions)
            if line is not None:
                log.info("{upgraded}", upgraded=line)
            return versions[1]

        return self.pool.runInteraction(self._upgrade).addCallback(upgraded)

    def _upgrade(self, txn: Transaction) -> tuple[int, int]:
        return upgrade_schema_from(txn, self.dialect, MIGRATIONS)
