"""Certificate revocation lists: the last one of each issuer, rebuilt when stale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred

from irp.server.store.engine import StoreEngine, Transaction


@dataclass(frozen=True)
class StoredCRL:
    """A CRL as stored, with the revocation generation it reflects."""

    issuer: str
    crl_number: int
    revocations: int
    next_update: int
    der: bytes


class CRLTable(StoreEngine):
    """The ``crls`` table and the CRL number counter."""

    def get_crl(self, issuer: str) -> Deferred[StoredCRL | None]:
        """Fire with the last CRL stored for ``issuer`` (``"issuing"`` or ``"root"``)."""

        def get(txn: Transaction) -> StoredCRL | None:
            row = self._fetchone(
                txn,
                "SELECT issuer, crl_number, revocations, next_update, der FROM crls WHERE issuer = ?",
                (issuer,),
            )
            if row is None:
                return None
            return StoredCRL(row[0], int(row[1]), int(row[2]), int(row[3]), self.dialect.blob(row[4]))

        return self._read(get)

    def refresh_crl(
        self,
        issuer: str,
        build: Callable[[int, list[tuple[int, int, str | None]]], tuple[bytes, int]],
        refresh_before: int,
    ) -> Deferred[StoredCRL]:
        """Return the current CRL for ``issuer``, building and storing a new one if needed.

        A new CRL is built when revocations happened since the stored one, or when it is
        within ``refresh_before`` seconds of its next update. ``build(crl_number, entries)``
        gets the next CRL number and ``(serial, revoked_at, reason)`` entries (empty for the
        root) and returns ``(der, next_update)``. The counter row is locked, so servers
        sharing one database agree on one CRL sequence.
        """

        def refresh(txn: Transaction) -> StoredCRL:
            counter = self._fetchone(
                txn,
                "SELECT value FROM counters WHERE name = 'crl_number'" + self.dialect.for_update,
            )
            generation = int(
                self._fetchone(txn, "SELECT value FROM counters WHERE name = 'revocations'")[0]
            )
            row = self._fetchone(
                txn,
                "SELECT issuer, crl_number, revocations, next_update, der FROM crls WHERE issuer = ?",
                (issuer,),
            )
            now = self._now()
            if row is not None:
                stored = StoredCRL(row[0], int(row[1]), int(row[2]), int(row[3]), self.dialect.blob(row[4]))
                fresh = stored.next_update - refresh_before > now
                if fresh and (issuer == "root" or stored.revocations == generation):
                    return stored
            number = int(counter[0]) + 1
            self._execute(txn, "UPDATE counters SET value = ? WHERE name = 'crl_number'", (number,))
            entries: list[tuple[int, int, str | None]] = []
            if issuer != "root":
                rows = self._fetchall(
                    txn,
                    "SELECT serial, revoked_at, revocation_reason FROM certificates"
                    " WHERE revoked_at IS NOT NULL AND origin = 'issued' ORDER BY revoked_at, serial",
                )
                entries = [(int(serial, 16), int(at), reason) for serial, at, reason in rows]
            der, next_update = build(number, entries)
            self._execute(txn, "DELETE FROM crls WHERE issuer = ?", (issuer,))
            self._execute(
                txn,
                "INSERT INTO crls (issuer, crl_number, revocations, next_update, der) VALUES (?, ?, ?, ?, ?)",
                (issuer, number, generation, next_update, der),
            )
            return StoredCRL(issuer, number, generation, next_update, der)

        return self._write(refresh)
