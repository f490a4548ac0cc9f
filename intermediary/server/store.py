"""The intermediary's durable store: prekeys and sealed messages (SQLite or PostgreSQL).

Nothing about a message's content is kept beyond the opaque envelope: its recipient (a user
of this domain), its sender (the TLS identity that deposited it), times and size, which the
quotas and the delivery order need. Every deposit runs in one transaction (quota counts,
the recipient's prekeys, the insert) and its Deferred fires only after the commit (SQLite in
WAL mode with ``synchronous=FULL``; a PostgreSQL commit); deposits arriving together share
one commit (group commit), each under its own savepoint. A one-time prekey is deleted in the
transaction that hands it out, so it is handed out once even to concurrent fetches.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.db.dialect import Dialect
from common.db.migrations import upgrade_schema
from common.db.pools import parse_database_url, postgresql_pool, sqlite_pool
from common.identity import Identity
from intermediary import errors
from intermediary.wire import PrekeyInfo

log = Logger()

Transaction = Any

#: The migrations of the intermediary's schema (see :mod:`common.db.migrations`).
MIGRATIONS: Final[list[list[str]]] = [
    [
        "CREATE TABLE prekeys (seq {ID_PK}, owner TEXT NOT NULL, prekey_id TEXT NOT NULL,"
        " kind TEXT NOT NULL, created_at {BIGINT} NOT NULL, expires_at {BIGINT} NOT NULL,"
        " data {BLOB} NOT NULL, UNIQUE (owner, prekey_id))",
        "CREATE INDEX prekeys_by_owner ON prekeys (owner, kind, seq)",
        "CREATE INDEX prekeys_by_expiry ON prekeys (expires_at)",
        "CREATE TABLE messages (seq {ID_PK}, message_id TEXT NOT NULL UNIQUE, recipient TEXT NOT NULL,"
        " sender TEXT NOT NULL, deposited_at {BIGINT} NOT NULL, deliver_at {BIGINT} NOT NULL,"
        " expires_at {BIGINT} NOT NULL, size {BIGINT} NOT NULL, envelope {BLOB} NOT NULL)",
        "CREATE INDEX messages_by_recipient ON messages (recipient, seq)",
        "CREATE INDEX messages_by_pair ON messages (recipient, sender)",
        "CREATE INDEX messages_by_expiry ON messages (expires_at)",
        "CREATE INDEX messages_by_schedule ON messages (deliver_at)",
        "CREATE TABLE mailboxes (owner TEXT PRIMARY KEY, created_at {BIGINT} NOT NULL)",
    ],
]

#: Deposits committed together at most.
GROUP_COMMIT_LIMIT: Final = 256
#: The PostgreSQL advisory lock key of schema upgrades.
LOCK_KEY: Final = 4605


@dataclass(frozen=True)
class Quotas:
    """What a mailbox and a sender may hold (bytes are envelope bytes)."""

    recipient_messages: int = 1000
    recipient_bytes: int = 50 * 1024 * 1024
    pair_messages: int = 200
    pair_bytes: int = 10 * 1024 * 1024
    one_time_prekeys: int = 200


@dataclass(frozen=True)
class StoredMessage:
    """A message as delivered: server id, sender, deposit time and envelope."""

    seq: int
    message_id: str
    sender: Identity
    deposited_at: int
    deliver_at: int
    envelope: bytes


@dataclass(frozen=True)
class DepositReceipt:
    """A committed deposit."""

    seq: int
    message_id: str
    queued: int


class IntermediaryStore:
    """The tables of one intermediary (every method returns a Deferred)."""

    def __init__(self, pool: adbapi.ConnectionPool, dialect: Dialect, quotas: Quotas | None = None) -> None:
        self.pool = pool
        self.dialect = dialect
        self.quotas = quotas or Quotas()
        self._operational: type[Exception] = pool.dbapi.OperationalError
        #: Concurrent fetches on PostgreSQL each take another one-time prekey (SQLite has one
        #: writer at a time).
        self._skip_locked = f"{dialect.for_update} SKIP LOCKED" if dialect.for_update else ""
        self._queue: list[tuple[tuple[Any, ...], Deferred[DepositReceipt]]] = []
        self._group_running = False

    @classmethod
    async def open(cls, url: str, reactor: Any, *, quotas: Quotas | None = None, pool_size: int = 4) -> IntermediaryStore:
        """Open (creating or upgrading) the database named by ``url`` (a SQLite path or
        ``postgresql://...``)."""
        dialect, target = parse_database_url(url)
        if dialect.name == "sqlite":
            pool = sqlite_pool(target, reactor)
        else:
            pool = postgresql_pool(target, reactor, pool_size)
        store = cls(pool, dialect, quotas)
        try:
            await pool.runInteraction(lambda txn: upgrade_schema(txn, dialect, MIGRATIONS, lock_key=LOCK_KEY))
        except Exception:
            pool.close()
            raise
        return store

    def close(self) -> None:
        """Close the database connections (once)."""
        if self.pool.running:
            self.pool.close()

    # -- plumbing ---------------------------------------------------------------------

    def _execute(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> None:
        txn.execute(self.dialect.sql(statement), tuple(params))

    def _one(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> Any:
        self._execute(txn, statement, params)
        return txn.fetchone()

    def _write(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``interaction`` in a write transaction (taking the write lock at once)."""

        def transaction(txn: Transaction) -> Any:
            if self.dialect.begin_write:
                txn.execute(self.dialect.begin_write)
            return interaction(txn, *args)

        return self.pool.runInteraction(transaction).addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(self._operational):
            log.error("The database is unavailable: {error}", error=str(failure.value))
            raise errors.Unavailable("the intermediary's database is unavailable; try again later")
        return failure

    # -- prekeys ------------------------------------------------------------------------

    def publish_prekeys(self, owner: str, prekeys: Sequence[tuple[PrekeyInfo, bytes]], now: int) -> Deferred[tuple[int, bool]]:
        """Store ``owner``'s prekeys (a new last-resort one replaces the old; a one-time
        one already stored is kept as it is); fire with (one-time count, has last-resort).
        Raises QuotaExceeded past the one-time cap (nothing is stored then)."""
        return self._write(self._publish, owner, list(prekeys), now)

    def _publish(self, txn: Transaction, owner: str, prekeys: list[tuple[PrekeyInfo, bytes]], now: int) -> tuple[int, bool]:
        if self._one(txn, "SELECT 1 FROM mailboxes WHERE owner = ?", (owner,)) is None:
            self._execute(txn, "INSERT INTO mailboxes (owner, created_at) VALUES (?, ?)", (owner, now))
        for info, data in prekeys:
            if info.kind == "last-resort":
                self._execute(txn, "DELETE FROM prekeys WHERE owner = ? AND kind = 'last-resort'", (owner,))
            elif self._one(txn, "SELECT 1 FROM prekeys WHERE owner = ? AND prekey_id = ?", (owner, info.id)) is not None:
                continue
            self._execute(
                txn,
                "INSERT INTO prekeys (owner, prekey_id, kind, created_at, expires_at, data) VALUES (?, ?, ?, ?, ?, ?)",
                (owner, info.id, info.kind, info.created, info.expires, data),
            )
        one_time, last_resort = self._prekey_counts(txn, owner, now)
        if one_time > self.quotas.one_time_prekeys:
            raise errors.QuotaExceeded(f"at most {self.quotas.one_time_prekeys} one-time prekeys may be stored")
        return one_time, last_resort

    def _prekey_counts(self, txn: Transaction, owner: str, now: int) -> tuple[int, bool]:
        row = self._one(
            txn,
            "SELECT COALESCE(SUM(CASE WHEN kind = 'one-time' THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'last-resort' THEN 1 ELSE 0 END), 0)"
            " FROM prekeys WHERE owner = ? AND expires_at > ?",
            (owner, now),
        )
        return int(row[0]), int(row[1]) > 0

    def fetch_prekey(self, owner: str, now: int) -> Deferred[bytes]:
        """Take one current prekey of ``owner``: the oldest one-time one (deleted in the same
        transaction), else the last-resort one. UnknownUser when there is none."""
        return self._write(self._fetch, owner, now)

    def _fetch(self, txn: Transaction, owner: str, now: int) -> bytes:
        for _attempt in range(8):
            row = self._one(
                txn,
                "SELECT seq, data FROM prekeys WHERE owner = ? AND kind = 'one-time' AND expires_at > ?"
                " ORDER BY seq LIMIT 1" + self._skip_locked,
                (owner, now),
            )
            if row is None:
                break
            self._execute(txn, "DELETE FROM prekeys WHERE seq = ?", (row[0],))
            if txn.rowcount == 1:  # PostgreSQL: another fetch may have taken it first
                return self.dialect.blob(row[1])
        row = self._one(
            txn, "SELECT data FROM prekeys WHERE owner = ? AND kind = 'last-resort' AND expires_at > ?", (owner, now)
        )
        if row is None:
            if self._one(txn, "SELECT 1 FROM mailboxes WHERE owner = ?", (owner,)) is None:
                raise errors.UnknownUser("that user never published prekeys here")
            raise errors.UnknownUser("that user has no current prekey here (all expired or used)")
        return self.dialect.blob(row[0])

    def prekey_counts(self, owner: str, now: int) -> Deferred[tuple[int, bool]]:
        """(current one-time prekeys, has a current last-resort one) of ``owner``."""
        return self.pool.runInteraction(self._prekey_counts, owner, now).addErrback(self._unavailable)

    # -- messages -----------------------------------------------------------------------

    def deposit(self, recipient: str, sender: Identity, envelope: bytes, *, now: int, expires: int, deliver_at: int) -> Deferred[DepositReceipt]:
        """Store an envelope for ``recipient`` (a user name of this domain who published
        prekeys); fire after the commit. Raises UnknownUser or QuotaExceeded."""
        waiting: Deferred[DepositReceipt] = Deferred()
        self._queue.append(((recipient, str(sender), envelope, now, expires, deliver_at), waiting))
        if not self._group_running:
            self._commit_group()
        return waiting

    def _commit_group(self) -> None:
        group = self._queue[:GROUP_COMMIT_LIMIT]
        del self._queue[:GROUP_COMMIT_LIMIT]
        self._group_running = True

        def commit_all(txn: Transaction) -> list[DepositReceipt | errors.IntermediaryError]:
            results: list[DepositReceipt | errors.IntermediaryError] = []
            for args, _waiting in group:
                txn.execute("SAVEPOINT deposit")
                try:
                    results.append(self._deposit_one(txn, *args))
                except errors.IntermediaryError as error:
                    txn.execute("ROLLBACK TO SAVEPOINT deposit")
                    results.append(error)
                txn.execute("RELEASE SAVEPOINT deposit")
            return results

        def committed(results: list[DepositReceipt | errors.IntermediaryError]) -> None:
            for (_args, waiting), result in zip(group, results, strict=True):
                if isinstance(result, errors.IntermediaryError):
                    waiting.errback(result)
                else:
                    waiting.callback(result)

        def failed(failure: Failure) -> None:
            for _args, waiting in group:
                waiting.errback(failure)

        def next_group(_: object) -> None:
            self._group_running = False
            if self._queue:
                self._commit_group()

        self._write(commit_all).addCallbacks(committed, failed).addBoth(next_group)

    def _deposit_one(self, txn: Transaction, recipient: str, sender: str, envelope: bytes, now: int, expires: int, deliver_at: int) -> DepositReceipt:
        if self._one(txn, "SELECT 1 FROM mailboxes WHERE owner = ?", (recipient,)) is None:
            raise errors.UnknownUser("this intermediary keeps no mailbox for that user")
        quotas = self.quotas
        size = len(envelope)
        count, total = self._one(
            txn, "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE recipient = ? AND expires_at > ?", (recipient, now)
        )
        if count + 1 > quotas.recipient_messages or total + size > quotas.recipient_bytes:
            raise errors.QuotaExceeded("the recipient's mailbox is full")
        pair_count, pair_total = self._one(
            txn,
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE recipient = ? AND sender = ? AND expires_at > ?",
            (recipient, sender, now),
        )
        if pair_count + 1 > quotas.pair_messages or pair_total + size > quotas.pair_bytes:
            raise errors.QuotaExceeded("you have stored as many messages for this recipient as allowed")
        message_id = secrets.token_hex(16)
        self._execute(
            txn,
            "INSERT INTO messages (message_id, recipient, sender, deposited_at, deliver_at, expires_at, size, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, recipient, sender, now, deliver_at, expires, size, envelope),
        )
        seq = int(self._one(txn, "SELECT seq FROM messages WHERE message_id = ?", (message_id,))[0])
        return DepositReceipt(seq, message_id, int(count) + 1)

    def due_messages(self, recipient: str, *, now: int, limit: int, exclude: Sequence[int] = ()) -> Deferred[list[StoredMessage]]:
        """Up to ``limit`` messages of ``recipient`` due at ``now`` and not expired, in
        deposit order (server sequence), leaving out the sequences in ``exclude`` (those
        pushed and not yet acknowledged: at most a window's worth)."""
        skip = sorted(set(exclude))
        not_in = f" AND seq NOT IN ({', '.join('?' * len(skip))})" if skip else ""

        def read(txn: Transaction) -> list[StoredMessage]:
            self._execute(
                txn,
                "SELECT seq, message_id, sender, deposited_at, deliver_at, envelope FROM messages"
                f" WHERE recipient = ? AND deliver_at <= ? AND expires_at > ?{not_in} ORDER BY seq LIMIT ?",
                (recipient, now, now, *skip, limit),
            )
            return [
                StoredMessage(int(seq), message_id, Identity.parse(sender), int(deposited), int(deliver), self.dialect.blob(data))
                for seq, message_id, sender, deposited, deliver, data in txn.fetchall()
            ]

        return self.pool.runInteraction(read).addErrback(self._unavailable)

    def pending(self, recipient: str, now: int) -> Deferred[tuple[int, int | None]]:
        """(messages due now, the earliest later delivery time or None) of ``recipient``."""

        def read(txn: Transaction) -> tuple[int, int | None]:
            due = self._one(
                txn, "SELECT COUNT(*) FROM messages WHERE recipient = ? AND deliver_at <= ? AND expires_at > ?", (recipient, now, now)
            )
            later = self._one(
                txn, "SELECT MIN(deliver_at) FROM messages WHERE recipient = ? AND deliver_at > ? AND expires_at > ?", (recipient, now, now)
            )
            return int(due[0]), None if later[0] is None else int(later[0])

        return self.pool.runInteraction(read).addErrback(self._unavailable)

    def ack(self, recipient: str, message_id: str) -> Deferred[None]:
        """Delete ``recipient``'s message ``message_id`` (durably); UnknownMessage if none."""

        def delete(txn: Transaction) -> None:
            self._execute(txn, "DELETE FROM messages WHERE recipient = ? AND message_id = ?", (recipient, message_id))
            if txn.rowcount != 1:
                raise errors.UnknownMessage("you have no stored message with that id")

        return self._write(delete)

    def expire(self, now: int) -> Deferred[tuple[int, int]]:
        """Delete expired messages and prekeys; fire with how many of each."""

        def delete(txn: Transaction) -> tuple[int, int]:
            self._execute(txn, "DELETE FROM messages WHERE expires_at <= ?", (now,))
            messages = max(txn.rowcount, 0)
            self._execute(txn, "DELETE FROM prekeys WHERE expires_at <= ?", (now,))
            return messages, max(txn.rowcount, 0)

        return self._write(delete)
