"""Reads of the registry's store that only the tests need (kept out of the library)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from irp.server.store import RegistryStore, serial_text


def check_integrity(store: RegistryStore) -> Deferred[str]:
    """Run the engine's integrity check; fire with ``"ok"`` or the problems found."""

    def check(txn: Any) -> str:
        if store.dialect.name != "sqlite":
            txn.execute("SELECT 1")
            return "ok"
        txn.execute("PRAGMA integrity_check")
        return ", ".join(str(row[0]) for row in txn.fetchall())

    return store.pool.runInteraction(check)


def count_current_certificates(
    store: RegistryStore, username: str, now: float, excluding: int | None = None
) -> Deferred[int]:
    """How many certificates the user holds that are not revoked nor expired at ``now``
    (leaving out the serial ``excluding``): what the store's quota checks count."""
    return store._read(store._count_current_certificates, username, now, excluding)


def serial_in_use(store: RegistryStore, serial: int) -> Deferred[bool]:
    """Fire with whether a certificate this registry issued with this serial is recorded."""

    def check(txn: Any) -> bool:
        row = store._fetchone(
            txn, "SELECT 1 FROM certificates WHERE serial = ? AND origin = 'issued'", (serial_text(serial),)
        )
        return row is not None

    return store._read(check)


def revocation_generation(store: RegistryStore) -> Deferred[int]:
    """Fire with the counter that grows with every revocation."""

    def get(txn: Any) -> int:
        return int(store._fetchone(txn, "SELECT value FROM counters WHERE name = 'revocations'")[0])

    return store._read(get)
