"""The audit trail's tables: ``audit_log`` (the hash-chained entries), ``audit_checkpoints``
(signatures over the chain) and the counter ``audit_head`` (the last entry's number).

Every append is one write transaction that locks ``audit_head`` (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), reads the hash of the
entry it names, numbers and chains the new entries after it (:mod:`irp.wire.audit_chain`),
inserts them and moves the counter: processes sharing the database extend one chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from irp.server.store.engine import StoreEngine, Transaction
from irp.wire.audit_chain import GENESIS, AuditCheckpoint, AuditEntry, EntryDraft, extend

#: The most entries or checkpoints one read answers.
AUDIT_PAGE_MAX = 1000

#: Signs the chain's hash at an entry: (entry id, hash) -> (signature, certificates).
CheckpointSigner = Callable[[int, bytes], tuple[bytes, bytes]]

_ENTRY_COLUMNS = "id, at, event, outcome, actor, subject, address, details, hash"


@dataclass(frozen=True)
class AuditFilter:
    """Which entries a listing wants (every given condition must hold)."""

    event: str | None = None
    actor: str | None = None
    subject: str | None = None
    #: Microseconds since the epoch: entries at or after, before.
    since: int | None = None
    until: int | None = None
    #: Only entries numbered above this.
    after_id: int = 0
    limit: int = AUDIT_PAGE_MAX


class AuditTable(StoreEngine):
    """Appending to the audit trail, signing checkpoints and reading both."""

    def append_audit_entries(self, drafts: Sequence[EntryDraft]) -> Deferred[list[AuditEntry]]:
        """Number, chain and insert ``drafts`` (in order) after the trail's last entry, in
        one transaction; fire with the entries as stored."""
        return self._write(self._append_audit, list(drafts))

    def _append_audit(self, txn: Transaction, drafts: list[EntryDraft]) -> list[AuditEntry]:
        head = self._audit_head(txn, lock=True)
        previous = self._audit_hash(txn, head)
        entries = extend(previous, head + 1, drafts)
        for entry in entries:
            self._execute(
                txn,
                f"INSERT INTO audit_log ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.id, entry.at, entry.event, entry.outcome, entry.actor, entry.subject, entry.address, entry.details, entry.hash),
            )
        if entries:
            self._execute(txn, "UPDATE counters SET value = ? WHERE name = 'audit_head'", (entries[-1].id,))
        return entries

    def _audit_head(self, txn: Transaction, *, lock: bool = False) -> int:
        suffix = self.dialect.for_update if lock else ""
        return int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'audit_head'" + suffix)[0])

    def _audit_hash(self, txn: Transaction, entry_id: int) -> bytes:
        if entry_id == 0:
            return GENESIS
        row = self._fetchone(txn, "SELECT hash FROM audit_log WHERE id = ?", (entry_id,))
        if row is None:
            # The head's entry was deleted: chain on from nothing rather than stop
            # recording; verification names the missing entry.
            return GENESIS
        return self.dialect.blob(row[0])

    def add_audit_checkpoint(self, at: int, sign: CheckpointSigner) -> Deferred[AuditCheckpoint | None]:
        """Sign the chain at its last entry (``sign`` gets the entry's number and hash) and
        store the checkpoint, made at ``at`` (microseconds); fire with it, or None when
        the trail is empty or its last entry has a checkpoint already."""
        return self._write(self._add_checkpoint, at, sign)

    def _add_checkpoint(self, txn: Transaction, at: int, sign: CheckpointSigner) -> AuditCheckpoint | None:
        head = self._audit_head(txn, lock=True)
        if head == 0:
            return None
        if self._fetchone(txn, "SELECT entry_id FROM audit_checkpoints WHERE entry_id = ?", (head,)) is not None:
            return None
        row = self._fetchone(txn, "SELECT hash FROM audit_log WHERE id = ?", (head,))
        if row is None:
            return None
        chain_hash = self.dialect.blob(row[0])
        signature, certificates = sign(head, chain_hash)
        self._execute(
            txn,
            "INSERT INTO audit_checkpoints (entry_id, at, hash, signature, certificate) VALUES (?, ?, ?, ?, ?)",
            (head, at, chain_hash, signature, certificates),
        )
        return AuditCheckpoint(head, at, chain_hash, signature, certificates)

    def list_audit_entries(self, wanted: AuditFilter) -> Deferred[list[AuditEntry]]:
        """Fire with the entries ``wanted`` names, by number (at most
        :data:`AUDIT_PAGE_MAX`)."""

        def read(txn: Transaction) -> list[AuditEntry]:
            conditions = ["id > ?"]
            params: list[Any] = [wanted.after_id]
            for column, value in (("event", wanted.event), ("actor", wanted.actor), ("subject", wanted.subject)):
                if value is not None:
                    conditions.append(f"{column} = ?")
                    params.append(value)
            if wanted.since is not None:
                conditions.append("at >= ?")
                params.append(wanted.since)
            if wanted.until is not None:
                conditions.append("at < ?")
                params.append(wanted.until)
            params.append(max(1, min(wanted.limit, AUDIT_PAGE_MAX)))
            rows = self._fetchall(
                txn, f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?", params
            )
            return [self._audit_entry(row) for row in rows]

        return self._pool_read(read)

    def _audit_entry(self, row: Sequence[Any]) -> AuditEntry:
        entry_id, at, event, outcome, actor, subject, address, details, chain_hash = row
        return AuditEntry(
            int(entry_id), int(at), str(event), str(outcome), str(actor), str(subject), str(address), str(details), self.dialect.blob(chain_hash)
        )

    def list_audit_checkpoints(self, after_id: int = 0, limit: int = AUDIT_PAGE_MAX) -> Deferred[list[AuditCheckpoint]]:
        """Fire with the checkpoints at entries numbered above ``after_id``, by entry (at
        most :data:`AUDIT_PAGE_MAX`)."""

        def read(txn: Transaction) -> list[AuditCheckpoint]:
            rows = self._fetchall(
                txn,
                "SELECT entry_id, at, hash, signature, certificate FROM audit_checkpoints WHERE entry_id > ?"
                " ORDER BY entry_id LIMIT ?",
                (after_id, max(1, min(limit, AUDIT_PAGE_MAX))),
            )
            blob = self.dialect.blob
            return [AuditCheckpoint(int(e), int(at), blob(h), blob(s), blob(c)) for e, at, h, s, c in rows]

        return self._pool_read(read)
