"""Tests for :mod:`irp.server.store.audit`: appending to the chained audit trail, signing
checkpoints, reading both; several stores on one database extending one chain.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import gatherResults
from twisted.trial import unittest

from irp.server.store import RegistryStore
from irp.server.store.audit import AuditFilter
from irp.wire.audit_chain import GENESIS, EntryDraft, checkpoint_message, extend, make_draft
from irp.wire.audit_verify import ChainVerifier
from test import pki
from test.irp.server.store.helpers import DOMAIN, START, PostgreSQLStore, RegistryStoreTestsMixin, SQLiteStore


def drafts(count: int, actor: str = "admin@example.org", event: str = "create-user", at: int = START * 1_000_000) -> list[EntryDraft]:
    return [make_draft(at + i, event, "ok", actor, f"user{i}@example.org", "2001:db8::1", {"n": i}) for i in range(count)]


class AuditTableTestsMixin(RegistryStoreTestsMixin):
    """The audit trail's tables, on every engine."""

    async def everything(self, store: RegistryStore) -> list:  # type: ignore[type-arg]
        return await store.list_audit_entries(AuditFilter(limit=1000))

    def sign(self, entry_id: int, chain_hash: bytes) -> tuple[bytes, bytes]:
        ca = pki.make_ca(DOMAIN)
        blob = self.signer.certificate.public_bytes(Encoding.DER) + ca.issuing_certificate.public_bytes(Encoding.DER)
        return self.signer.private_key.sign(checkpoint_message(DOMAIN, entry_id, chain_hash)), blob

    async def test_append_chains(self) -> None:
        """Batches are numbered on from the last entry and chained to it: the same
        entries as chaining them all at once."""
        store = await self.store()
        first = await store.append_audit_entries(drafts(3))
        second = await store.append_audit_entries(drafts(2, event="revoke"))
        self.assertEqual([entry.id for entry in first + second], [1, 2, 3, 4, 5])
        expected = extend(GENESIS, 1, drafts(3) + drafts(2, event="revoke"))
        self.assertEqual(await self.everything(store), expected)

    async def test_filters(self) -> None:
        """Event, actor, subject, time and after-id filters combine; the limit holds."""
        store = await self.store()
        await store.append_audit_entries(drafts(4) + drafts(3, actor="bob@example.org", event="revoke", at=START * 1_000_000 + 10))
        by = await store.list_audit_entries(AuditFilter(actor="bob@example.org"))
        self.assertEqual([entry.id for entry in by], [5, 6, 7])
        revoked = await store.list_audit_entries(AuditFilter(event="revoke", subject="user1@example.org"))
        self.assertEqual([entry.id for entry in revoked], [6])
        timed = await store.list_audit_entries(AuditFilter(since=START * 1_000_000 + 2, until=START * 1_000_000 + 11))
        self.assertEqual([entry.id for entry in timed], [3, 4, 5])
        paged = await store.list_audit_entries(AuditFilter(after_id=2, limit=2))
        self.assertEqual([entry.id for entry in paged], [3, 4])

    async def test_checkpoints(self) -> None:
        """A checkpoint signs the last entry's hash, once; none on an empty trail."""
        store = await self.store()
        self.assertIsNone(await store.add_audit_checkpoint(1, self.sign))
        # Now: the record-signing certificate must be valid at the time of the entry.
        entries = await store.append_audit_entries(drafts(3, at=int(time.time()) * 1_000_000))
        checkpoint = await store.add_audit_checkpoint(7, self.sign)
        assert checkpoint is not None
        self.assertEqual((checkpoint.entry_id, checkpoint.hash, checkpoint.at), (3, entries[-1].hash, 7))
        self.assertIsNone(await store.add_audit_checkpoint(8, self.sign))
        self.assertEqual(await store.list_audit_checkpoints(), [checkpoint])
        self.assertEqual(await store.list_audit_checkpoints(after_id=3), [])
        verifier = ChainVerifier(DOMAIN, [pki.make_ca(DOMAIN).root_certificate])
        verifier.checkpoints(await store.list_audit_checkpoints())
        verifier.entries(await self.everything(store))
        verdict = verifier.finish()
        self.assertTrue(verdict.intact, verdict.problem)
        self.assertEqual(verdict.last_checkpoint, (3, entries[-1].at))

    async def test_two_stores_one_chain(self) -> None:
        """Two stores (as two registry processes) on one database, appending at once,
        extend one chain without a gap or a fork."""
        one = await self.store()
        two = await self.make_store()
        appends = []
        for round_ in range(10):
            appends.append(one.append_audit_entries(drafts(5, actor="one@example.org", at=round_)))
            appends.append(two.append_audit_entries(drafts(5, actor="two@example.org", at=round_)))
        await gatherResults(appends)
        entries = await self.everything(one)
        self.assertEqual([entry.id for entry in entries], list(range(1, 101)))
        verifier = ChainVerifier(DOMAIN, [])
        verifier.entries(entries)
        self.assertTrue(verifier.finish().intact, verifier.problem)
        self.assertEqual({entry.actor for entry in entries}, {"one@example.org", "two@example.org"})


class SQLiteAuditTableTests(AuditTableTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLAuditTableTests(AuditTableTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
