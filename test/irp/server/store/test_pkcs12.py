"""Tests for :mod:`irp.server.store.pkcs12`: PKCS#12 files and their quotas.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from common.pki.keyfiles import fingerprint
from irp import errors
from test.irp.server.store.helpers import (
    START,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
)


class Pkcs12TestsMixin(RegistryStoreTestsMixin):
    """PKCS#12 files and their quotas, on every engine."""

    async def test_pkcs12(self) -> None:
        """Files are stored per user, listed newest first without data, read with data."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        first = await store.add_pkcs12("alice", "laptop", "generated", b"\x30first", 0x1F)
        self.clock.advance(1)
        second = await store.add_pkcs12("alice", "phone", "uploaded", b"\x30second!", None)
        await store.add_pkcs12("bob", "bob's", "uploaded", b"\x30b", None)
        self.assertEqual((first.username, first.label, first.origin, first.certificate_serial, first.size, first.created_at), ("alice", "laptop", "generated", "1f", 6, START))
        self.assertIsNone(first.data)
        listing = await store.list_pkcs12("alice")
        self.assertEqual([info.id for info in listing], [second.id, first.id])
        self.assertEqual([info.data for info in listing], [None, None])
        self.assertEqual([info.size for info in listing], [8, 6])
        fetched = await store.get_pkcs12(second.id)
        assert fetched is not None
        self.assertEqual((fetched.data, fetched.username, fetched.certificate_serial), (b"\x30second!", "alice", None))
        self.assertIsNone(await store.get_pkcs12(second.id + 1000))
        await self.assertFailsWith(errors.NotFound, store.add_pkcs12("nobody", "x", "uploaded", b"x", None))

    async def test_concurrent_pkcs12_quota(self) -> None:
        """Forty files added at once against a quota of 20: exactly 20 are stored, the
        rest refused with QuotaExceeded (the count and the write share a transaction)."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        await store.add_pkcs12("bob", "b", "uploaded", b"\x30b", None)  # another user's
        adds = [store.add_pkcs12("alice", f"f{n}", "uploaded", b"\x30" + bytes([n]), None, most=20) for n in range(40)]
        outcomes = await defer.DeferredList(adds, consumeErrors=True)
        refused = [result for ok, result in outcomes if not ok]
        self.assertEqual(len(refused), 20)
        for failure in refused:
            failure.trap(errors.QuotaExceeded)
            self.assertIn("already holds 20 PKCS#12 files", failure.value.message)
        self.assertEqual(len(await store.list_pkcs12("alice")), 20)
        await store.add_pkcs12("bob", "b2", "uploaded", b"\x30c", None, most=20)

    async def test_generated_key_quotas(self) -> None:
        """A generated key's certificate and PKCS#12 file are stored together or not at
        all: concurrent ones stop at the PKCS#12 quota with no certificate left over."""
        self.use_certificate_time()
        store = await self.store()
        await store.create_user("alice")
        certificates = [self.certificate() for _ in range(6)]
        adds = [
            store.add_generated_key(
                "alice", certificate, fingerprint(certificate), "key", b"\x30p12", most_certificates=10, most_pkcs12=3
            )
            for certificate in certificates
        ]
        outcomes = await defer.DeferredList(adds, consumeErrors=True)
        self.assertEqual(sum(1 for ok, _ in outcomes if ok), 3)
        self.assertEqual(len(await store.list_pkcs12("alice")), 3)
        self.assertEqual(len(await store.list_certificates("alice")), 3)
        for ok, result in outcomes:
            if not ok:
                result.trap(errors.QuotaExceeded)
        first = self.certificate()
        await self.assertFailsWith(
            errors.QuotaExceeded,
            store.add_generated_key("alice", first, fingerprint(first), "k", b"\x30", most_certificates=3, most_pkcs12=10),
        )
        self.assertEqual(len(await store.list_certificates("alice")), 3)


class SQLitePkcs12Tests(Pkcs12TestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLPkcs12Tests(Pkcs12TestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
