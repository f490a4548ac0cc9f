"""Persistent storage of the registry: SQLite (default) or PostgreSQL, through adbapi."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from common.db.dialect import POSTGRESQL, SQLITE
from common.db.pools import direct_sqlite_reader, parse_database_url, postgresql_pool, sqlite_pool
from irp.server.store.listener import AddressListener
from irp.server.store.store import Account, RegistryStore, StoredCRL, serial_text
from irp.wire.records import CertificateInfo, Pkcs12Info, RecordSigner

#: How much of the SQLite file the direct reader maps into memory (``PRAGMA mmap_size``).
#: Point reads of a large table (a million sixid records is 600 MB) then read the
#: operating system's page cache in place instead of copying each page through a read()
#: into SQLite's small page cache: figure 13a went from about 0.44 to 0.51 of the echo
#: (docs/performance.rst, section "sixid"). The caveat: with a mapping, an I/O error on the
#: file (a failing disk, a file on a network file system that goes away, the file cut
#: short under the reader by something other than SQLite) is a SIGBUS that ends the
#: process instead of an SQLite error. The registry's database is a local file that only
#: SQLite writes (it never shrinks it: no auto_vacuum, no VACUUM while serving), so the
#: mapping is safe there; the pool's writers keep ordinary reads. The pages read count in
#: the process's resident size (as shared file pages of the page cache, up to the file's
#: size or this cap), not as memory of its own.
DIRECT_READER_MMAP_SIZE = 1 << 30

__all__ = [
    "DIRECT_READER_MMAP_SIZE",
    "Account",
    "CertificateInfo",
    "Pkcs12Info",
    "RegistryStore",
    "StoredCRL",
    "open_store",
    "serial_text",
]


def open_store(
    url: str,
    *,
    domain: str,
    signer: RecordSigner | None,
    now: Callable[[], float],
    reactor: Any,
    pool_size: int = 4,
) -> Deferred[RegistryStore]:
    """Open (creating or upgrading the schema) the store at ``url``; fire with it."""
    dialect, target = parse_database_url(url)
    if dialect is SQLITE:
        pool = sqlite_pool(target, reactor)
    else:
        pool = postgresql_pool(target, reactor, pool_size)
    store = RegistryStore(pool, dialect, domain, signer, now)
    pool.start()

    def ready(_version: int) -> RegistryStore:
        store.reactor = reactor
        if dialect is SQLITE and target != ":memory:":
            reader = direct_sqlite_reader(target)
            reader.execute(f"PRAGMA mmap_size = {DIRECT_READER_MMAP_SIZE}")
            store.direct_reader = reader
        elif dialect is POSTGRESQL:
            read_pool = postgresql_pool(target, reactor, pool_size, autocommit=True)
            read_pool.start()
            store.read_pool = read_pool
            store.address_listener = AddressListener(target, reactor)
            store.address_listener.outage = store.outage
            store.address_listener.start()
            store.listen_url = target
        return store

    result: Deferred[RegistryStore] = store.upgrade().addCallback(ready)

    def close_on_failure(failure: Any) -> Any:
        pool.close()
        return failure

    result.addErrback(close_on_failure)
    return result
