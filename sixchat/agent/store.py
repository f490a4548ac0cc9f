"""The agent's own store: contacts, message history and the outbox (SQLite via adbapi).

Outgoing messages are written here (state ``queued``) before the user is told they are
accepted, and stay until the peer's receipt marks them ``delivered`` or the delivery
timeout marks them ``undelivered``; so a message survives an agent restart. Incoming
messages are stored before their receipt is sent, and their ids make redelivery harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from common.db.dialect import SQLITE
from common.db.migrations import upgrade_schema
from common.db.pools import sqlite_pool
from common.endpoint import Endpoint
from common.identity import Identity
from sixchat.agent.prekeystore import SEALED_MIGRATION, SealedStore

Transaction = Any

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE contacts (
            identity TEXT PRIMARY KEY,
            display_name TEXT NOT NULL,
            fingerprints TEXT NOT NULL,
            blocked INTEGER NOT NULL,
            last_address TEXT,
            last_port INTEGER,
            last_seen {BIGINT},
            presence TEXT NOT NULL,
            added_at {BIGINT} NOT NULL
        )""",
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            peer TEXT NOT NULL,
            direction TEXT NOT NULL,
            body TEXT NOT NULL,
            sent_at {BIGINT} NOT NULL,
            created_at {BIGINT} NOT NULL,
            state TEXT NOT NULL,
            updated_at {BIGINT} NOT NULL
        )""",
        "CREATE INDEX messages_by_peer ON messages (peer, created_at)",
        "CREATE INDEX messages_by_state ON messages (state, created_at)",
    ],
    # 1 -> 2: whether a contact was added by the user (1) or recorded only to block (0).
    ["ALTER TABLE contacts ADD COLUMN listed INTEGER NOT NULL DEFAULT 1"],
    # 2 -> 3: why an outgoing message is not delivered (yet), in words for the user.
    ["ALTER TABLE messages ADD COLUMN reason TEXT"],
    SEALED_MIGRATION,
]

#: Message states: outgoing ones move queued -> sent -> delivered, or to undelivered
#: (the agent gave up, ``reason`` says why) or cancelled (by the user); a message the
#: peer could not take directly is ``stored`` at their intermediary (or ``scheduled``
#: there, until its ``deliver_at``) until its receipt makes it delivered.
OUTGOING_PENDING = ("queued", "sent")
#: Every state from which a receipt makes a message delivered.
RECEIPT_FROM = ("queued", "sent", "stored", "scheduled", "undelivered")
#: Pending outgoing messages due now (not scheduled for later).
_DUE = "(deliver_at IS NULL OR deliver_at <= ?)"


@dataclass(frozen=True)
class Contact:
    """Someone the user knows, with what was learnt about reaching them."""

    identity: Identity
    display_name: str
    #: Pinned certificate fingerprints; empty means "whatever the registry vouches for".
    fingerprints: tuple[str, ...]
    blocked: bool
    last_endpoint: Endpoint | None
    last_seen: int | None
    presence: str
    added_at: int


@dataclass(frozen=True)
class StoredMessage:
    """One message in the history."""

    id: str
    peer: Identity
    direction: str  # "out" or "in"
    body: str
    sent_at: int
    created_at: int
    state: str  # out: queued, sent, stored, scheduled, delivered, undelivered, cancelled; in: received
    updated_at: int
    #: Why an outgoing message is not delivered (yet): the last problem met while it is
    #: pending, the final one once undelivered; None otherwise.
    reason: str | None = None
    #: When a scheduled message is to be delivered (Unix seconds), else None.
    deliver_at: int | None = None


_CONTACT_COLUMNS = "identity, display_name, fingerprints, blocked, last_address, last_port, last_seen, presence, added_at"
_MESSAGE_COLUMNS = "id, peer, direction, body, sent_at, created_at, state, updated_at"
_READ_COLUMNS = f"{_MESSAGE_COLUMNS}, reason, deliver_at"


def _contact(row: Sequence[Any]) -> Contact:
    endpoint = None if row[4] is None else Endpoint(row[4], int(row[5]))
    fingerprints = tuple(part for part in row[2].split(",") if part)
    return Contact(Identity.parse(row[0]), row[1], fingerprints, bool(row[3]), endpoint, row[6], row[7], int(row[8]))


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(row[0], Identity.parse(row[1]), row[2], row[3], int(row[4]), int(row[5]), row[6], int(row[7]), row[8], row[9])


class AgentStore:
    """Contacts, history and outbox of one user's agent."""

    def __init__(self, pool: adbapi.ConnectionPool, now: Callable[[], float]) -> None:
        self.pool = pool
        self.now = now
        #: Prekey secrets and sealed sequence numbers (same file).
        self.sealed = SealedStore(pool, now)

    @classmethod
    def open(cls, path: str, reactor: Any, now: Callable[[], float] | None = None) -> Deferred[AgentStore]:
        """Open (creating or upgrading) the store file at ``path``; time stamps come from
        ``now`` (default: the reactor's clock)."""
        pool = sqlite_pool(path, reactor)
        pool.start()
        store = cls(pool, now or reactor.seconds)

        def upgrade(txn: Transaction) -> int:
            return upgrade_schema(txn, SQLITE, MIGRATIONS)

        result: Deferred[AgentStore] = pool.runInteraction(upgrade).addCallback(lambda _: store)
        return result

    def close(self) -> None:
        """Close the database."""
        self.pool.close()

    def _run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def interaction(txn: Transaction) -> Any:
            txn.execute(SQLITE.begin_write)
            return function(txn, *args)

        return self.pool.runInteraction(interaction)

    def _stamp(self) -> int:
        return int(self.now())

    # -- contacts ---------------------------------------------------------------------

    def add_contact(self, identity: Identity, display_name: str = "", fingerprints: Sequence[str] = ()) -> Deferred[Contact]:
        """Add a contact, or update its name and pinned fingerprints; unblocks it."""

        def add(txn: Transaction) -> Contact:
            joined = ",".join(fingerprints)
            txn.execute("SELECT 1 FROM contacts WHERE identity = ?", (str(identity),))
            if txn.fetchone() is None:
                txn.execute(
                    f"INSERT INTO contacts ({_CONTACT_COLUMNS}) VALUES (?, ?, ?, 0, NULL, NULL, NULL, 'offline', ?)",
                    (str(identity), display_name, joined, self._stamp()),
                )
            else:
                txn.execute(
                    "UPDATE contacts SET display_name = ?, fingerprints = ?, blocked = 0, listed = 1 WHERE identity = ?",
                    (display_name, joined, str(identity)),
                )
            return self._get_contact(txn, identity)  # type: ignore[return-value]

        return self._run(add)

    def _get_contact(self, txn: Transaction, identity: Identity) -> Contact | None:
        txn.execute(f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE identity = ?", (str(identity),))
        row = txn.fetchone()
        return None if row is None else _contact(row)

    def get_contact(self, identity: Identity) -> Deferred[Contact | None]:
        """Fire with the contact, or None."""
        return self.pool.runInteraction(self._get_contact, identity)

    def contacts(self) -> Deferred[list[Contact]]:
        """Fire with every contact, by identity."""

        def get(txn: Transaction) -> list[Contact]:
            txn.execute(f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY identity")
            return [_contact(row) for row in txn.fetchall()]

        return self.pool.runInteraction(get)

    def remove_contact(self, identity: Identity) -> Deferred[bool]:
        """Forget a contact (history stays); fire with whether it existed."""

        def remove(txn: Transaction) -> bool:
            txn.execute("DELETE FROM contacts WHERE identity = ?", (str(identity),))
            return bool(txn.rowcount)

        return self._run(remove)

    def set_blocked(self, identity: Identity, blocked: bool) -> Deferred[None]:
        """Block (deny) or unblock someone. Blocking a stranger records them (blocked, but
        not as a contact); unblocking such a record forgets it, so that unblocking never
        makes anyone a contact."""

        def block(txn: Transaction) -> None:
            txn.execute("SELECT 1 FROM contacts WHERE identity = ?", (str(identity),))
            if txn.fetchone() is None:
                if blocked:
                    txn.execute(
                        f"INSERT INTO contacts ({_CONTACT_COLUMNS}, listed) VALUES (?, '', '', 1, NULL, NULL, NULL, 'offline', ?, 0)",
                        (str(identity), self._stamp()),
                    )
            elif blocked:
                txn.execute("UPDATE contacts SET blocked = 1 WHERE identity = ?", (str(identity),))
            else:
                txn.execute("DELETE FROM contacts WHERE identity = ? AND listed = 0", (str(identity),))
                txn.execute("UPDATE contacts SET blocked = 0 WHERE identity = ?", (str(identity),))

        return self._run(block)

    def remember_endpoint(self, identity: Identity, endpoint: Endpoint) -> Deferred[None]:
        """Record the address that last worked for a contact (if they are one)."""

        def remember(txn: Transaction) -> None:
            txn.execute(
                "UPDATE contacts SET last_address = ?, last_port = ?, last_seen = ? WHERE identity = ?",
                (endpoint.address, endpoint.port, self._stamp(), str(identity)),
            )

        return self._run(remember)

    def set_presence(self, identity: Identity, presence: str) -> Deferred[None]:
        """Record a contact's last known presence."""

        def update(txn: Transaction) -> None:
            txn.execute("UPDATE contacts SET presence = ? WHERE identity = ?", (presence, str(identity)))

        return self._run(update)

    # -- messages ---------------------------------------------------------------------

    def queue_message(self, peer: Identity, body: str, deliver_at: int | None = None) -> Deferred[StoredMessage]:
        """Store a new outgoing message (state ``queued``; to be delivered at ``deliver_at``
        if given) and fire with it."""

        def queue(txn: Transaction) -> StoredMessage:
            now = self._stamp()
            message = StoredMessage(str(uuid.uuid4()), peer, "out", body, now, now, "queued", now, None, deliver_at)
            txn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}, deliver_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message.id, str(peer), "out", body, now, now, "queued", now, deliver_at),
            )
            return message

        return self._run(queue)

    def set_state(
        self,
        message_id: str,
        state: str,
        *,
        only_from: Sequence[str] = OUTGOING_PENDING,
        peer: Identity | None = None,
        reason: str | None = None,
    ) -> Deferred[bool]:
        """Move an outgoing message (to ``peer``, if given) to ``state`` if it is in one of
        ``only_from``, recording ``reason`` (cleared when None); fire with whether it moved
        (so a second receipt changes nothing)."""

        def update(txn: Transaction) -> bool:
            marks = ", ".join("?" for _ in only_from)
            to_peer = "" if peer is None else " AND peer = ?"
            txn.execute(
                "UPDATE messages SET state = ?, updated_at = ?, reason = ? WHERE id = ? AND direction = 'out'"
                f"{to_peer} AND state IN ({marks})",
                (state, self._stamp(), reason, message_id, *([] if peer is None else [str(peer)]), *only_from),
            )
            return bool(txn.rowcount)

        return self._run(update)

    def pending_for(self, peer: Identity) -> Deferred[list[StoredMessage]]:
        """Outgoing messages to ``peer`` not yet delivered nor given up nor stored, and due
        (not scheduled for later), oldest first."""

        def get(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE peer = ? AND direction = 'out'"
                f" AND state IN ('queued', 'sent') AND {_DUE} ORDER BY created_at, rowid",
                (str(peer), self._stamp()),
            )
            return [_message(row) for row in txn.fetchall()]

        return self.pool.runInteraction(get)

    def pending_peers(self) -> Deferred[list[Identity]]:
        """Peers with messages waiting to be delivered."""

        def get(txn: Transaction) -> list[Identity]:
            txn.execute(
                f"SELECT DISTINCT peer FROM messages WHERE direction = 'out' AND state IN ('queued', 'sent') AND {_DUE}",
                (self._stamp(),),
            )
            return [Identity.parse(row[0]) for row in txn.fetchall()]

        return self.pool.runInteraction(get)

    def pending(self) -> Deferred[list[StoredMessage]]:
        """Every outgoing message not yet delivered nor given up, oldest first (with those
        stored or scheduled at an intermediary)."""

        def get(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE direction = 'out'"
                " AND state IN ('queued', 'sent', 'stored', 'scheduled') ORDER BY created_at, rowid"
            )
            return [_message(row) for row in txn.fetchall()]

        return self.pool.runInteraction(get)

    def note_problem(self, peer: Identity, reason: str) -> Deferred[list[StoredMessage]]:
        """Record ``reason`` on every pending message to ``peer`` (they stay pending); fire
        with the messages whose reason changed."""

        def note(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE peer = ? AND direction = 'out'"
                " AND state IN ('queued', 'sent') AND (reason IS NULL OR reason <> ?) ORDER BY created_at, rowid",
                (str(peer), reason),
            )
            changed = [_message(row) for row in txn.fetchall()]
            for message in changed:
                txn.execute("UPDATE messages SET reason = ? WHERE id = ?", (reason, message.id))
            return changed

        return self._run(note)

    def fail_pending(self, peer: Identity, reason: str) -> Deferred[list[StoredMessage]]:
        """Give up every pending message to ``peer`` (``undelivered``, with ``reason``);
        fire with them."""

        def fail(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE peer = ? AND direction = 'out'"
                " AND state IN ('queued', 'sent') ORDER BY created_at, rowid",
                (str(peer),),
            )
            failed = [_message(row) for row in txn.fetchall()]
            for message in failed:
                txn.execute(
                    "UPDATE messages SET state = 'undelivered', reason = ?, updated_at = ? WHERE id = ?",
                    (reason, self._stamp(), message.id),
                )
            return failed

        return self._run(fail)

    def cancel(self, message_id: str) -> Deferred[StoredMessage | None]:
        """Cancel a pending outgoing message (state ``cancelled``: never sent again); fire
        with it as it was before, or None if no pending message has that id."""

        def cancel(txn: Transaction) -> StoredMessage | None:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE id = ? AND direction = 'out' AND state IN ('queued', 'sent')",
                (message_id,),
            )
            row = txn.fetchone()
            if row is None:
                return None
            txn.execute(
                "UPDATE messages SET state = 'cancelled', reason = 'cancelled by you', updated_at = ? WHERE id = ?",
                (self._stamp(), message_id),
            )
            return _message(row)

        return self._run(cancel)

    def give_up_older_than(self, cutoff: float, reason: str | None = None) -> Deferred[list[StoredMessage]]:
        """Mark undelivered every pending message created before ``cutoff`` (with
        ``reason``, or keeping the last problem noted when None); fire with them."""

        def give_up(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE direction = 'out' AND state IN ('queued', 'sent')"
                " AND COALESCE(deliver_at, created_at) < ?",
                (int(cutoff),),
            )
            expired = [_message(row) for row in txn.fetchall()]
            for message in expired:
                txn.execute(
                    "UPDATE messages SET state = 'undelivered', reason = COALESCE(?, reason), updated_at = ? WHERE id = ?",
                    (reason, self._stamp(), message.id),
                )
            return [replace(message, state="undelivered", reason=reason or message.reason) for message in expired]

        return self._run(give_up)

    def give_up_deposited(self, cutoff: float, reason: str) -> Deferred[list[StoredMessage]]:
        """Mark undelivered (with ``reason``) every message stored at an intermediary before
        ``cutoff`` (or scheduled for before it) without a receipt since: its deposit has
        expired."""

        def give_up(txn: Transaction) -> list[StoredMessage]:
            txn.execute(
                f"SELECT {_READ_COLUMNS} FROM messages WHERE direction = 'out' AND state IN ('stored', 'scheduled')"
                " AND COALESCE(deliver_at, updated_at) < ?",
                (int(cutoff),),
            )
            expired = [_message(row) for row in txn.fetchall()]
            for message in expired:
                txn.execute("UPDATE messages SET state = 'undelivered', reason = ?, updated_at = ? WHERE id = ?", (reason, self._stamp(), message.id))
            return [replace(message, state="undelivered", reason=reason) for message in expired]

        return self._run(give_up)

    def record_incoming(
        self, message_id: str, peer: Identity, body: str, sent_at: int, stranger_cap: tuple[int, int] | None = None
    ) -> Deferred[str]:
        """Store a received message; fire with ``"new"``, ``"duplicate"`` if ``peer`` sent
        it before (a resend), or ``"conflict"`` if another message (outgoing, or from
        someone else) has that id, in which case nothing is stored. With ``stranger_cap``
        ``(messages, bytes)``, a peer that is not a contact may have at most that many
        messages and UTF-8 bytes of text stored: beyond it, nothing is stored and the
        answer is ``"over-quota"`` (checked and written in one transaction)."""
        return self._run(self._record_incoming, message_id, peer, body, sent_at, stranger_cap)

    def record_sealed(
        self, sender: Identity, tracker: str, prekey_id: str, incoming: tuple[str, str, int, tuple[int, int] | None] | None
    ) -> Deferred[str | None]:
        """In one transaction: store a message opened from a sealed envelope (``incoming``:
        id, text, sent time, stranger cap, as :meth:`record_incoming`; None for a receipt),
        the sender's new sequence state, and the prekey secret's use (a one-time secret is
        deleted). A crash can then neither lose the message nor accept it twice. Fires with
        :meth:`record_incoming`'s answer (None without ``incoming``)."""

        def record(txn: Transaction) -> str | None:
            outcome = None if incoming is None else self._record_incoming(txn, incoming[0], sender, *incoming[1:])
            self.sealed.save_tracker_txn(txn, sender, tracker)
            self.sealed.use_txn(txn, prekey_id)
            return outcome

        return self._run(record)

    def _record_incoming(
        self, txn: Transaction, message_id: str, peer: Identity, body: str, sent_at: int, stranger_cap: tuple[int, int] | None
    ) -> str:
        txn.execute("SELECT peer, direction FROM messages WHERE id = ?", (message_id,))
        row = txn.fetchone()
        if row is not None:
            return "duplicate" if (row[0], row[1]) == (str(peer), "in") else "conflict"
        if stranger_cap is not None:
            txn.execute("SELECT 1 FROM contacts WHERE identity = ? AND listed = 1", (str(peer),))
            if txn.fetchone() is None:
                txn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(body AS BLOB))), 0) FROM messages"
                    " WHERE peer = ? AND direction = 'in'",
                    (str(peer),),
                )
                count, size = txn.fetchone()
                if count + 1 > stranger_cap[0] or size + len(body.encode("utf-8")) > stranger_cap[1]:
                    return "over-quota"
        now = self._stamp()
        txn.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, 'in', ?, ?, ?, 'received', ?)",
            (message_id, str(peer), body, sent_at, now, now),
        )
        return "new"

    def history(self, peer: Identity | None = None, limit: int = 50) -> Deferred[list[StoredMessage]]:
        """The last ``limit`` messages (with one peer, or all), oldest first."""

        def get(txn: Transaction) -> list[StoredMessage]:
            if peer is None:
                txn.execute(f"SELECT {_READ_COLUMNS} FROM messages ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
            else:
                txn.execute(
                    f"SELECT {_READ_COLUMNS} FROM messages WHERE peer = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                    (str(peer), limit),
                )
            return [_message(row) for row in reversed(txn.fetchall())]

        return self.pool.runInteraction(get)

    def get_message(self, message_id: str) -> Deferred[StoredMessage | None]:
        """One message by id."""

        def get(txn: Transaction) -> StoredMessage | None:
            txn.execute(f"SELECT {_READ_COLUMNS} FROM messages WHERE id = ?", (message_id,))
            row = txn.fetchone()
            return None if row is None else _message(row)

        return self.pool.runInteraction(get)
