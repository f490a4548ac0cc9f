"""Address records: each user's signed presence and endpoints, and their expiry."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from irp.errors import NotFound
from irp.server.store.engine import StoreEngine, Transaction
from irp.wire.records import AddressRecord, Endpoint

#: How many address changes the sweep keeps in the change log (the newest): a registry
#: process that has not read the log for longer than that many changes takes drops every
#: cached look-up answer instead (see :meth:`StoreEngine.follow_address_changes`).
ADDRESS_CHANGES_KEPT = 100_000
#: The most changes one sweep prunes (a mass import's log is pruned over several sweeps,
#: none holding the write lock long).
ADDRESS_CHANGES_PRUNED_AT_ONCE = 100_000


class AddressTable(StoreEngine):
    """The ``addresses`` table: one signed record per user."""

    def _write_addresses(
        self,
        txn: Transaction,
        username: str,
        presence: str,
        endpoints: tuple[Endpoint, ...],
        expires_at: int,
        seq: int,
        now: int,
        insert: bool = True,
    ) -> AddressRecord:
        record = self.record_signer().sign(
            AddressRecord(self._identity(username), presence, endpoints, expires_at, seq, now)
        )
        encoded = json.dumps([[endpoint.address, endpoint.port] for endpoint in endpoints])
        if insert:
            self._execute(
                txn,
                "INSERT INTO addresses (username, presence, endpoints, expires_at, seq, signed_at,"
                " signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (username, presence, encoded, expires_at, seq, now, record.signature),
            )
        else:
            self._execute(
                txn,
                "UPDATE addresses SET presence = ?, endpoints = ?, expires_at = ?, seq = ?,"
                " signed_at = ?, signature = ? WHERE username = ?",
                (presence, encoded, expires_at, seq, now, record.signature, username),
            )
        return record

    def _address_from_row(self, row: Sequence[Any]) -> AddressRecord:
        return AddressRecord(
            identity=self._identity(row[0]),
            presence=row[1],
            endpoints=tuple(Endpoint(address, int(port)) for address, port in json.loads(row[2])),
            expires_at=int(row[3]),
            seq=int(row[4]),
            signed_at=int(row[5]),
            signature=self.dialect.blob(row[6]),
        )

    _ADDRESS_SELECT = (
        "SELECT username, presence, endpoints, expires_at, seq, signed_at, signature"
        " FROM addresses WHERE username = ?"
    )

    def put_addresses(
        self, username: str, presence: str, endpoints: tuple[Endpoint, ...], ttl: int
    ) -> Deferred[AddressRecord]:
        """Replace the user's addresses and presence, valid for ``ttl`` seconds; sign them
        (committed with others arriving at the same time: see :meth:`_grouped_write`)."""
        return self._grouped_write(self._put_one_address, username, presence, endpoints, ttl).addBoth(
            self._address_put, username
        )

    def _address_put(self, result: Any, username: str) -> Any:
        seq = result.seq if isinstance(result, AddressRecord) else None
        return self._address_written(result, username, seq)

    def _put_one_address(
        self, txn: Transaction, username: str, presence: str, endpoints: tuple[Endpoint, ...], ttl: int
    ) -> AddressRecord:
        row = self._fetchone(txn, self._ADDRESS_SELECT + self.dialect.for_update, (username,))
        if row is None:
            raise NotFound(f"no user {username}@{self.domain}")
        now = self._now()
        return self._write_addresses(txn, username, presence, endpoints, now + ttl, int(row[4]) + 1, now, insert=False)

    def get_addresses(self, username: str) -> Deferred[AddressRecord | None]:
        """Fire with the user's signed address record, or None for an unknown user."""

        def get(txn: Transaction) -> AddressRecord | None:
            row = self._fetchone(txn, self._ADDRESS_SELECT, (username,))
            return None if row is None else self._address_from_row(row)

        return self._read(get)

    def expire_addresses(self, keep_changes: int = ADDRESS_CHANGES_KEPT) -> Deferred[int]:
        """Replace every expired record that still lists addresses with a signed offline one,
        and prune the address change log to its newest ``keep_changes`` rows.

        Fires with the number of records replaced.
        """

        def sweep(txn: Transaction) -> list[tuple[str, int]]:
            now = self._now()
            rows = self._fetchall(
                txn,
                "SELECT username, seq FROM addresses WHERE expires_at <= ?"
                " AND (endpoints <> '[]' OR presence <> 'offline')",
                (now,),
            )
            written = []
            for username, seq in rows:
                self._write_addresses(txn, username, "offline", (), now, int(seq) + 1, now, insert=False)
                written.append((username, int(seq) + 1))
            self._prune_address_changes(txn, keep_changes)
            return written

        def swept(written: list[tuple[str, int]]) -> int:
            for username, seq in written:
                self._address_written(None, username, seq)
            return len(written)

        return self._write(sweep).addCallback(swept)

    def _prune_address_changes(self, txn: Transaction, keep: int) -> None:
        """Delete all but the newest ``keep`` rows of the change log; record the highest id
        deleted, so that a process that had not read them drops its cached answers."""
        newest = int(self._fetchone(txn, "SELECT COALESCE(MAX(id), 0) FROM address_changes")[0])
        pruned = int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'address_changes_pruned'")[0])
        bound = min(newest - keep, pruned + ADDRESS_CHANGES_PRUNED_AT_ONCE)
        if bound > pruned:
            self._execute(txn, "DELETE FROM address_changes WHERE id <= ?", (bound,))
            self._execute(txn, "UPDATE counters SET value = ? WHERE name = 'address_changes_pruned'", (bound,))
