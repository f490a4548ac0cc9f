"""Facts about the domain that every registry process must agree on (``registry_facts``).

``ca_root_fingerprint``: the SHA-256 fingerprint (64 lowercase hex digits) of the domain's
root CA, recorded by the first process that loads or creates a CA for the database; a
process with another CA, or none, then refuses to start rather than make a second CA.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from irp.server.store.engine import StoreEngine, Transaction

#: The fact naming the database's CA.
CA_ROOT_FINGERPRINT = "ca_root_fingerprint"


class FactsTable(StoreEngine):
    """The ``registry_facts`` table: named values written once."""

    def get_fact(self, name: str) -> Deferred[str | None]:
        """Fire with the value of the fact ``name``, or None if it was never recorded."""

        def get(txn: Transaction) -> str | None:
            row = self._fetchone(txn, "SELECT value FROM registry_facts WHERE name = ?", (name,))
            return None if row is None else str(row[0])

        return self._pool_read(get)

    def record_fact(self, name: str, value: str) -> Deferred[str]:
        """Record ``value`` for ``name`` unless a value is recorded already; fire with the
        value recorded (``value``, or the one another process recorded first)."""

        def record(txn: Transaction) -> str:
            self._execute(
                txn,
                "INSERT INTO registry_facts (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            return str(self._fetchone(txn, "SELECT value FROM registry_facts WHERE name = ?", (name,))[0])

        return self._write(record)
