"""The audit trail end to end: a real registry over real TLS records what is done through
it; administrators read it; rows altered, deleted or forged in the real SQLite file are
found by the verification (irp.client.audit.verify_audit_trail)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from irp.client import RegistryClient
from irp.client.audit import verify_audit_trail
from irp.wire.audit_chain import GENESIS, AuditEntry, extend
from irp.wire.audit_verify import Verdict
from test.helpers import DEFAULT_PASSWORD, RunningRegistry
from test.irp.server.helpers import DOMAIN, RegistryTestCase

#: Secrets handed to the registry: none may appear in the trail.
SECRETS = ("first-Secret-of-carol-1", "second-Secret-of-carol-2", "pkcs12-Passphrase-3", "wrong-Guess-4")


class TrailTestCase(RegistryTestCase):
    """A registry with some history, and ways to reach its database file."""

    async def history(self) -> RegistryClient:
        """Create carol (password), set her password, generate her a key, revoke it, fail
        a login of hers and let her try to read the trail; return the admin's client."""
        registry = await self.start()
        admin = await registry.admin()
        await admin.create_user("carol", password=SECRETS[0])
        # The answer came after the entry was committed: it is in the file already.
        self.assertEqual(self.last_event(), ("create-user", "carol@example.org"))
        await admin.set_password("carol", SECRETS[1])
        _pkcs12, certificate = await admin.generate_key(SECRETS[2], key_type="p256", label="laptop", user="carol")
        self.serial = certificate.serial
        await admin.revoke(certificate.serial, "key-compromise")
        await self.fails("login-failed", registry.client("carol", SECRETS[3]))
        carol = await registry.client("carol", SECRETS[1])
        await self.fails("forbidden", carol.audit_list())
        return admin

    @property
    def database(self) -> str:
        return os.path.join(self.registry.data_dir, "registry.sqlite3")

    def sql(self, statement: str, *params: Any) -> None:
        """Change the registry's database directly, as someone with access to the file."""
        connection = sqlite3.connect(self.database)
        try:
            connection.execute(statement, params)
            connection.commit()
        finally:
            connection.close()

    def last_event(self) -> tuple[str, str]:
        """The event and subject of the last entry in the database file, read directly."""
        connection = sqlite3.connect(self.database)
        try:
            event, subject = connection.execute("SELECT event, subject FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        finally:
            connection.close()
        return str(event), str(subject)

    async def checkpoint(self) -> None:
        service = self.registry.service
        assert service is not None
        await service.audit.idle()
        await service.audit.checkpoint()

    def verify(self, client: RegistryClient) -> Deferred[Verdict]:
        return Deferred.fromCoroutine(verify_audit_trail(client, DOMAIN, [self.registry.root]))


class RecordingTests(TrailTestCase):
    """What the trail records, read with audit-list."""

    async def test_actions_recorded(self) -> None:
        """Every action and refusal is an entry with who, what, about whom, from where
        and how it ended; no secret anywhere."""
        admin = await self.history()
        entries = await admin.audit_list(limit=1000)
        self.assertEqual([entry.id for entry in entries], list(range(1, len(entries) + 1)))
        summary = [(e.event, e.outcome, e.actor, e.subject) for e in entries]
        admin_id = "admin@example.org"
        carol = "carol@example.org"
        expected = [
            ("registry-start", "ok", "registry", ""),
            ("create-user", "ok", "registry", admin_id),
            ("login", "ok", admin_id, admin_id),
            ("create-user", "ok", admin_id, carol),
            ("set-password", "ok", admin_id, carol),
            ("generate-key", "ok", admin_id, carol),
            ("revoke", "ok", admin_id, carol),
            ("login", "login-failed", "", carol),
            ("login", "ok", carol, carol),
            ("audit-list", "forbidden", carol, ""),
        ]
        self.assertEqual(summary[: len(expected)], expected)
        by_event = {entry.event: entry for entry in entries}
        self.assertIn(f'"issued":"{self.serial:x}"', by_event["generate-key"].details)
        self.assertIn('"key-type":"p256"', by_event["generate-key"].details)
        self.assertIn('"reason":"key-compromise"', by_event["revoke"].details)
        self.assertTrue(all(entry.address == "127.0.0.1" for entry in entries[2:]))
        # The admin's own read is recorded, before the answer: the next read shows it.
        again = await admin.audit_list(event="audit-list", actor=admin_id)
        self.assertEqual([entry.outcome for entry in again], ["ok"])
        stored = ""
        for path in (self.database, self.database + "-wal"):
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    stored += handle.read().decode("latin-1")
        everything = repr(await admin.audit_list(limit=1000)) + stored
        for secret in (*SECRETS, DEFAULT_PASSWORD):
            self.assertNotIn(secret, everything)

    async def test_certificate_login_recorded(self) -> None:
        """A certificate login (no request) is an entry too."""
        await self.start()
        _user, client = await self.enrolled("dave")
        await client.whoami()
        admin = await self.registry.admin()
        logins = await admin.audit_list(event="login", subject="dave@example.org")
        self.assertEqual([(e.actor, e.outcome, e.details) for e in logins], [("dave@example.org", "ok", '{"method":"certificate"}')])

    async def test_filters_over_the_wire(self) -> None:
        """Filters and paging travel; a bad filter is refused."""
        admin = await self.history()
        carol = await admin.audit_list(subject="carol@example.org")
        self.assertTrue(carol and all(entry.subject == "carol@example.org" for entry in carol))
        page = await admin.audit_list(after_id=2, limit=3)
        self.assertEqual([entry.id for entry in page], [3, 4, 5])
        await self.fails("invalid-argument", admin.audit_list(limit=1001))
        await self.fails("invalid-argument", admin.audit_list(since=2_000_000_000, until=1_000_000_000))
        checkpoints = await admin.audit_checkpoints()
        self.assertEqual(checkpoints, [])


class VerificationTests(TrailTestCase):
    """verify_audit_trail against the real database, intact and tampered with."""

    async def test_intact_then_row_altered(self) -> None:
        """Intact with a signed checkpoint; one subject changed in SQLite: entry 3 named."""
        admin = await self.history()
        await self.checkpoint()
        verdict = await self.verify(admin)
        self.assertTrue(verdict.intact, verdict.problem)
        self.assertIsNotNone(verdict.last_checkpoint)
        self.sql("UPDATE audit_log SET subject = 'mallory@example.org' WHERE id = 3")
        verdict = await self.verify(admin)
        self.assertEqual(verdict.problem, "entry 3 was altered: its hash does not follow from entry 2")

    async def test_row_deleted(self) -> None:
        """A deleted row is named as missing."""
        admin = await self.history()
        self.sql("DELETE FROM audit_log WHERE id = 4")
        verdict = await self.verify(admin)
        self.assertEqual(verdict.problem, "entry 4 is missing")

    async def test_rewritten_with_hashes_caught_by_checkpoint(self) -> None:
        """Someone who rewrites an entry and recomputes every hash after it is caught by
        the signed checkpoint."""
        admin = await self.history()
        await self.checkpoint()
        entries: list[AuditEntry] = await admin.audit_list(limit=1000)
        drafts = [entry.draft for entry in entries]
        drafts[2] = replace(drafts[2], subject="mallory@example.org")
        for entry in extend(GENESIS, 1, drafts):
            self.sql("UPDATE audit_log SET subject = ?, hash = ? WHERE id = ?", entry.subject, entry.hash, entry.id)
        verdict = await self.verify(admin)
        self.assertIsNotNone(verdict.problem)
        self.assertRegex(verdict.problem or "", r"checkpoint at entry \d+ does not match")

    async def test_forged_checkpoint(self) -> None:
        """A checkpoint whose signature was replaced is found."""
        admin = await self.history()
        await self.checkpoint()
        [checkpoint] = await admin.audit_checkpoints()
        self.sql("UPDATE audit_checkpoints SET signature = ? WHERE entry_id = ?", bytes(64), checkpoint.entry_id)
        verdict = await self.verify(admin)
        self.assertEqual(verdict.problem, f"checkpoint at entry {checkpoint.entry_id} does not match: its signature is not valid")

    async def test_not_for_users(self) -> None:
        """A user who is not an administrator may read neither entries nor checkpoints."""
        await self.start()
        client = await self.user("erin")
        await self.fails("forbidden", client.audit_checkpoints())
        await self.fails("forbidden", client.audit_list())


class SharedTrailTests(TrailTestCase):
    """Two registry processes on one database (PostgreSQL, and one SQLite file) write one
    chain: actions through both, at once, verify intact with every entry in it."""

    async def pair(self, database: str | None) -> tuple[RunningRegistry, RunningRegistry]:
        data_dir = os.path.abspath(self.mktemp())
        first = await RunningRegistry(self, database=database, data_dir=data_dir).start()
        second = await RunningRegistry(self, database=database, data_dir=data_dir).start()
        self.registry = first
        return first, second

    async def exercise(self, first: RunningRegistry, second: RunningRegistry) -> None:
        one, two = await first.admin(), await second.admin()
        await gatherResults(
            [Deferred.fromCoroutine(self.create(client, f"{prefix}{n}")) for n in range(10) for client, prefix in ((one, "one"), (two, "two"))]
        )
        for running in (first, second):
            assert running.service is not None and running.service.audit is not None
            await running.service.audit.idle()
            await running.service.audit.checkpoint()
        verdict = await self.verify(one)
        self.assertTrue(verdict.intact, verdict.problem)
        subjects = {entry.subject for entry in await one.audit_list(event="create-user", limit=1000)}
        self.assertGreaterEqual(subjects, {f"{prefix}{n}@example.org" for n in range(10) for prefix in ("one", "two")})
        starts = await two.audit_list(event="registry-start")
        self.assertEqual(len(starts), 2)

    @staticmethod
    async def create(client: RegistryClient, name: str) -> None:
        await client.create_user(name, password=None)

    async def test_postgresql(self) -> None:
        """On PostgreSQL (the append locks audit_head FOR UPDATE)."""
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        await self.exercise(*await self.pair(server.create_database()))

    async def test_sqlite(self) -> None:
        """On one SQLite file."""
        await self.exercise(*await self.pair(None))
