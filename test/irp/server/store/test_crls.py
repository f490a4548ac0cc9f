"""Tests for :mod:`irp.server.store.crls`: certificate revocation lists.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.trial import unittest

from test.irp.server.store.helpers import (
    START,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
)


class CRLTestsMixin(RegistryStoreTestsMixin):
    """Certificate revocation lists, on every engine."""

    async def test_crl_built_once_then_cached(self) -> None:
        """The first request builds CRL 1; later ones get it back until something changes."""
        store = await self.store()
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        first = await store.refresh_crl("issuing", build, 3600)
        self.assertEqual((first.issuer, first.crl_number, first.der, first.revocations), ("issuing", 1, b"crl 1", 0))
        self.assertEqual(calls, [(1, [])])
        self.assertEqual(await store.refresh_crl("issuing", build, 3600), first)
        self.assertEqual(await store.get_crl("issuing"), first)
        self.assertEqual(len(calls), 1)
        self.assertIsNone(await store.get_crl("root"))

    async def test_crl_rebuilt_after_revocation(self) -> None:
        """A revocation makes the next request build a CRL listing it, with a higher number."""
        store = await self.store()
        await store.create_user("alice")
        kept = await self.add_certificate(store, "alice")
        revoked = await self.add_certificate(store, "alice")
        external = await self.add_certificate(store, "alice", origin="external")
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        await store.refresh_crl("issuing", build, 3600)
        self.clock.advance(2)
        await store.revoke_certificate(revoked.serial_number, "superseded")
        second = await store.refresh_crl("issuing", build, 3600)
        self.assertEqual(second.crl_number, 2)
        self.assertEqual(calls[-1], (2, [(revoked.serial_number, START + 2, "superseded")]))
        listed = {serial for serial, _, _ in calls[-1][1]}
        self.assertNotIn(kept.serial_number, listed)
        self.assertNotIn(external.serial_number, listed)

    async def test_crl_rebuilt_near_next_update(self) -> None:
        """A CRL within refresh_before of its next update is replaced."""
        store = await self.store()
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls, lifetime=1000)
        await store.refresh_crl("root", build, 100)
        self.clock.advance(899)
        self.assertEqual((await store.refresh_crl("root", build, 100)).crl_number, 1)
        self.clock.advance(1)
        self.assertEqual((await store.refresh_crl("root", build, 100)).crl_number, 2)

    async def test_crl_numbers_increase_across_issuers(self) -> None:
        """CRL numbers never repeat, whichever issuer; the root CRL lists nothing."""
        store = await self.store()
        await store.create_user("alice")
        certificate = await self.add_certificate(store, "alice")
        await store.revoke_certificate(certificate.serial_number, "unspecified")
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        issuing = await store.refresh_crl("issuing", build, 3600)
        root = await store.refresh_crl("root", build, 3600)
        self.assertEqual((issuing.crl_number, root.crl_number), (1, 2))
        self.assertEqual(calls[1], (2, []))
        self.assertEqual(len(calls[0][1]), 1)

    async def test_failed_crl_build_changes_nothing(self) -> None:
        """A build that fails rolls the whole transaction back (no number is used up)."""
        store = await self.store()

        def broken(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            raise ValueError("the CA is unavailable")

        await self.assertFailsWith(ValueError, store.refresh_crl("issuing", broken, 3600))
        self.assertIsNone(await store.get_crl("issuing"))
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        stored = await store.refresh_crl("issuing", self.crl_builder(calls), 3600)
        self.assertEqual(stored.crl_number, 1)


class SQLiteCRLTests(CRLTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLCRLTests(CRLTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
