"""Tests for :mod:`irp.server.store.store` (the composed store: durability) and
:func:`irp.server.store.open_store`.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

import os
import stat

from twisted.internet import reactor as global_reactor
from twisted.trial import unittest

from irp.server.store import DIRECT_READER_MMAP_SIZE, open_store
from irp.wire.records import Endpoint
from test.irp.server.store.helpers import (
    DOMAIN,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
    check_integrity,
    revocation_generation,
)


class StoreTestsMixin(RegistryStoreTestsMixin):
    """The composed store: durability and open_store, on every engine."""

    async def test_everything_survives_reopening(self) -> None:
        """A second store on the same database sees all the data, and it is intact."""
        store = await self.store()
        await store.create_user("alice", display_name="Alice", attributes=(("k", "v"),), password_hash="h")
        await store.put_addresses("alice", "online", (Endpoint("2001:db8::5", 4605),), 300)
        certificate = await self.add_certificate(store, "alice")
        file = await store.add_pkcs12("alice", "laptop", "generated", b"\x30data", certificate.serial_number)
        await store.revoke_certificate(certificate.serial_number, "key-compromise")
        await store.refresh_crl("issuing", self.crl_builder([]), 60)
        reopened = await self.store()
        self.assertEqual(await reopened.get_account("alice"), await store.get_account("alice"))
        self.assertEqual(await reopened.get_addresses("alice"), await store.get_addresses("alice"))
        self.assertEqual(await reopened.get_certificate(certificate.serial_number), await store.get_certificate(certificate.serial_number))
        self.assertEqual(await reopened.get_pkcs12(file.id), await store.get_pkcs12(file.id))
        self.assertEqual(await reopened.get_crl("issuing"), await store.get_crl("issuing"))
        self.assertEqual(await revocation_generation(reopened), 1)
        record = await reopened.get_addresses("alice")
        assert record is not None
        self.verifier.verify(record)
        self.assertEqual(await check_integrity(reopened), "ok")


class SQLiteStoreTests(StoreTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""

    async def test_file_is_private(self) -> None:
        """The database file holds password hashes: mode 0600."""
        await self.store()
        mode = stat.S_IMODE(os.stat(self.path("registry")).st_mode)
        self.assertEqual(mode, 0o600)

    async def test_open_store(self) -> None:
        """open_store creates the file and the schema from a URL."""
        path = self.path("opened")
        store = await open_store(f"sqlite:///{path}", domain=DOMAIN, signer=self.signer, now=self.clock.seconds, reactor=global_reactor)
        self.addCleanup(store.close)
        await store.create_user("alice")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(await check_integrity(store), "ok")

    async def test_direct_reader_maps_the_file(self) -> None:
        """open_store's direct reader maps the database file (mmap_size) for its point
        reads."""
        path = self.path("opened")
        store = await open_store(f"sqlite:///{path}", domain=DOMAIN, signer=self.signer, now=self.clock.seconds, reactor=global_reactor)
        self.addCleanup(store.close)
        self.assertIsNotNone(store.direct_reader)
        (mapped,) = store.direct_reader.execute("PRAGMA mmap_size").fetchone()
        self.assertEqual(mapped, DIRECT_READER_MMAP_SIZE)


class PostgreSQLStoreTests(StoreTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
