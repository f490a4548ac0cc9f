"""The agent's sealed-message state, in the agent store's file (mode 0600).

- ``prekey_secrets``: the private halves of the prekeys the agent published at its
  intermediary (one-time and last-resort). A one-time secret is deleted as soon as a
  message sealed to it has been opened and stored (forward secrecy); a secret whose prekey
  expired is kept only while messages sealed to it may still be waiting at the
  intermediary (:data:`KEEP_AFTER_EXPIRY`), then deleted.
- ``sealed_outgoing``: the next sequence number of the sealed messages to each peer.
- ``sealed_incoming``: each sender's sequence tracker (``sixchat.sealed.sequence``), so
  that a replayed envelope is refused across restarts.

The migration that creates them is :data:`SEALED_MIGRATION`, the fourth of
:data:`sixchat.agent.store.MIGRATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from common.db.dialect import SQLITE
from common.identity import Identity

Transaction = Any

#: How long (seconds) a secret outlives its prekey: a message may wait at the intermediary
#: that long (its longest expiry) after being sealed to a prekey still valid then.
KEEP_AFTER_EXPIRY = 30 * 86400

#: 3 -> 4: outgoing states ``stored`` and ``scheduled`` (``deliver_at``), prekey secrets,
#: sealed sequence numbers both ways.
SEALED_MIGRATION: list[str] = [
    "ALTER TABLE messages ADD COLUMN deliver_at {BIGINT}",
    """CREATE TABLE prekey_secrets (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        secret {BLOB} NOT NULL,
        created {BIGINT} NOT NULL,
        expires {BIGINT} NOT NULL,
        used INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX prekey_secrets_by_kind ON prekey_secrets (kind, created)",
    "CREATE TABLE sealed_outgoing (peer TEXT PRIMARY KEY, next_seq {BIGINT} NOT NULL)",
    "CREATE TABLE sealed_incoming (sender TEXT PRIMARY KEY, state TEXT NOT NULL)",
]


@dataclass(frozen=True)
class SecretRow:
    """One stored prekey secret."""

    id: str
    kind: str  # "one-time" or "last-resort"
    secret: bytes
    created: int
    expires: int
    used: bool


_COLUMNS = "id, kind, secret, created, expires, used"


def _row(row: Sequence[Any]) -> SecretRow:
    return SecretRow(row[0], row[1], bytes(row[2]), int(row[3]), int(row[4]), bool(row[5]))


class SealedStore:
    """Prekey secrets and sequence numbers (shares the agent store's connection pool)."""

    def __init__(self, pool: adbapi.ConnectionPool, now: Callable[[], float]) -> None:
        self.pool = pool
        self.now = now

    def _run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def interaction(txn: Transaction) -> Any:
            txn.execute(SQLITE.begin_write)
            return function(txn, *args)

        return self.pool.runInteraction(interaction)

    # -- prekey secrets ---------------------------------------------------------------

    def add_secrets(self, rows: Sequence[SecretRow]) -> Deferred[None]:
        """Store new secrets (before their prekeys are published)."""

        def add(txn: Transaction) -> None:
            for row in rows:
                txn.execute(
                    f"INSERT INTO prekey_secrets ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (row.id, row.kind, row.secret, row.created, row.expires, int(row.used)),
                )

        return self._run(add)

    def secret(self, prekey_id: str) -> Deferred[SecretRow | None]:
        """The secret of prekey ``prekey_id``, or None (never ours, or deleted)."""

        def get(txn: Transaction) -> SecretRow | None:
            txn.execute(f"SELECT {_COLUMNS} FROM prekey_secrets WHERE id = ?", (prekey_id,))
            found = txn.fetchone()
            return None if found is None else _row(found)

        return self.pool.runInteraction(get)

    def used(self, prekey_id: str) -> Deferred[None]:
        """A message sealed to ``prekey_id`` was opened and stored: a one-time secret is
        deleted (nothing can open that message again), a last-resort one is marked."""

        return self._run(self.use_txn, prekey_id)

    def use_txn(self, txn: Transaction, prekey_id: str) -> None:
        """:meth:`used` inside the caller's transaction."""
        txn.execute("DELETE FROM prekey_secrets WHERE id = ? AND kind = 'one-time'", (prekey_id,))
        txn.execute("UPDATE prekey_secrets SET used = 1 WHERE id = ?", (prekey_id,))

    def unused_one_time(self, now: int) -> Deferred[int]:
        """How many one-time secrets are neither used nor expired."""

        def count(txn: Transaction) -> int:
            txn.execute("SELECT COUNT(*) FROM prekey_secrets WHERE kind = 'one-time' AND used = 0 AND expires > ?", (now,))
            return int(txn.fetchone()[0])

        return self.pool.runInteraction(count)

    def newest_last_resort(self) -> Deferred[SecretRow | None]:
        """The last-resort secret made last, or None."""

        def get(txn: Transaction) -> SecretRow | None:
            txn.execute(f"SELECT {_COLUMNS} FROM prekey_secrets WHERE kind = 'last-resort' ORDER BY created DESC, rowid DESC LIMIT 1")
            found = txn.fetchone()
            return None if found is None else _row(found)

        return self.pool.runInteraction(get)

    def prune(self, now: int, keep_after_expiry: int = KEEP_AFTER_EXPIRY) -> Deferred[int]:
        """Delete secrets whose prekey expired more than ``keep_after_expiry`` ago; fire with
        how many went."""

        def prune(txn: Transaction) -> int:
            txn.execute("DELETE FROM prekey_secrets WHERE expires < ?", (now - keep_after_expiry,))
            return int(txn.rowcount)

        return self._run(prune)

    # -- sequence numbers -------------------------------------------------------------

    def next_sequence(self, peer: Identity) -> Deferred[int]:
        """Take the next sequence number for a sealed message to ``peer`` (1, 2, ...); it is
        committed before the message is sealed, so no two envelopes share one."""

        def take(txn: Transaction) -> int:
            txn.execute("SELECT next_seq FROM sealed_outgoing WHERE peer = ?", (str(peer),))
            found = txn.fetchone()
            seq = 1 if found is None else int(found[0])
            if found is None:
                txn.execute("INSERT INTO sealed_outgoing (peer, next_seq) VALUES (?, ?)", (str(peer), seq + 1))
            else:
                txn.execute("UPDATE sealed_outgoing SET next_seq = ? WHERE peer = ?", (seq + 1, str(peer)))
            return seq

        return self._run(take)

    def give_back_sequence(self, peer: Identity, seq: int) -> Deferred[None]:
        """Sequence number ``seq`` (the last one taken for ``peer``) was never used: the
        next sealed message takes it again."""

        def give_back(txn: Transaction) -> None:
            txn.execute("UPDATE sealed_outgoing SET next_seq = ? WHERE peer = ? AND next_seq = ?", (seq, str(peer), seq + 1))

        return self._run(give_back)

    def tracker_state(self, sender: Identity) -> Deferred[str | None]:
        """The serialised sequence tracker of ``sender``, or None (nothing received yet)."""

        def get(txn: Transaction) -> str | None:
            txn.execute("SELECT state FROM sealed_incoming WHERE sender = ?", (str(sender),))
            found = txn.fetchone()
            return None if found is None else str(found[0])

        return self.pool.runInteraction(get)

    def save_tracker_state(self, sender: Identity, state: str) -> Deferred[None]:
        """Replace the serialised sequence tracker of ``sender``."""

        return self._run(self.save_tracker_txn, sender, state)

    def save_tracker_txn(self, txn: Transaction, sender: Identity, state: str) -> None:
        """:meth:`save_tracker_state` inside the caller's transaction."""
        txn.execute("DELETE FROM sealed_incoming WHERE sender = ?", (str(sender),))
        txn.execute("INSERT INTO sealed_incoming (sender, state) VALUES (?, ?)", (str(sender), state))
