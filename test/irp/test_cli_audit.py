"""``irp admin audit`` and ``irp admin audit verify`` run as commands (child processes)
against a real registry: the table, the filters, --json, the exit codes of an intact and
of an altered trail, and a user who is not an administrator."""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.trial import unittest

from irp.cli.audit import describe_entry
from irp.wire.audit_chain import AuditEntry
from test.irp.test_cli import CLITestCase


class AuditCommandTests(CLITestCase):
    """irp admin audit [verify]."""

    async def setUpTrail(self) -> tuple[str, ...]:
        """A registry with a little history; the admin's command prefix."""
        await self.start()
        await self.registry.create_user("zoe", "correct horse battery staple")
        client = await self.registry.admin()
        await client.sixid_allow("q3dv6zkam4tfjx2b7wqple5nyc4hur6g", "Zoë's phone")
        await client.close()
        admin = await self.init("admin", "admin")
        password = self.secret("admin-password", self.registry.admin_password)
        return ("--profile", admin, "admin", "--password-file", password)

    def alter(self, statement: str) -> None:
        connection = sqlite3.connect(os.path.join(self.registry.data_dir, "registry.sqlite3"))
        try:
            connection.execute(statement)
            connection.commit()
        finally:
            connection.close()

    async def test_list(self) -> None:
        """A table (Unicode intact) with a count; filters; --json parses."""
        base = await self.setUpTrail()
        result = await self.irp(*base, "audit")
        lines = result.out.splitlines()
        self.assertTrue(lines[0].split()[:4] == ["id", "time", "(UTC)", "event"], lines[0])
        self.assertTrue(any("create-user" in line and "zoe@example.org" in line for line in lines), result.out)
        self.assertTrue(any("sixid-allow" in line and '"note":"Zoë\'s phone"' in line for line in lines), result.out)
        self.assertRegex(lines[-1], r"^\(\d+ entries shown\)$")
        result = await self.irp(*base, "audit", "--event", "create-user", "--actor", "admin@example.org", "--json")
        [entry] = json.loads(result.out)
        self.assertEqual((entry["event"], entry["subject"], entry["outcome"]), ("create-user", "zoe@example.org", "ok"))
        self.assertEqual(len(entry["hash"]), 96)
        result = await self.irp(*base, "audit", "--since", "2999-01-01", "--json")
        self.assertEqual(json.loads(result.out), [])
        result = await self.irp(*base, "audit", "--since", "yesterday", expect=2)
        self.assertIn("is not a time", result.err)

    async def test_verify_then_altered(self) -> None:
        """Intact: exit 0 and the summary; a row changed in the database: exit 1 naming it."""
        base = await self.setUpTrail()
        service = self.registry.service
        assert service is not None
        await service.audit.idle()
        await service.audit.checkpoint()
        result = await self.irp(*base, "audit", "verify")
        self.assertRegex(result.out, r"^intact: \d+ entries, last signed checkpoint at entry \d+ \(\d{4}-\d\d-\d\d [0-9:.]+Z\)\n$")
        self.alter("UPDATE audit_log SET subject = 'mallory@example.org' WHERE id = 3")
        result = await self.irp(*base, "audit", "verify", expect=1)
        self.assertIn("the audit trail is NOT intact: entry 3 was altered: its hash does not follow from entry 2", result.err)
        self.assertEqual(result.out, "")

    async def test_verify_missing(self) -> None:
        """A deleted row: exit 1, named as missing."""
        base = await self.setUpTrail()
        self.alter("DELETE FROM audit_log WHERE id = 2")
        result = await self.irp(*base, "audit", "verify", expect=1)
        self.assertIn("entry 2 is missing", result.err)

    async def test_not_an_administrator(self) -> None:
        """A user's attempt is refused by the registry (exit 1, forbidden)."""
        await self.setUpTrail()
        await self.registry.create_user("bob", "correct horse battery staple")
        bob = await self.init("bob", "bob")
        password = self.secret("bob-password", "correct horse battery staple")
        result = await self.irp("--profile", bob, "admin", "--password-file", password, "audit", "verify", expect=1)
        self.assertIn("[forbidden]", result.err)


class TableTests(unittest.SynchronousTestCase):
    """How an entry is shown (no network)."""

    def test_hostile_text_is_neutralised(self) -> None:
        """Terminal escapes and bidirectional overrides a tampered database could hold are
        shown as U+FFFD; long cells are cut with an ellipsis; Unicode text stays."""
        entry = AuditEntry(7, 1_796_544_994_318_014, "login", "ok", "zoë@example.org", "a\x1b[2J\u202eb", "", "{}", bytes(48))
        line = describe_entry(entry)
        self.assertNotIn("\x1b", line)
        self.assertNotIn("\u202e", line)
        self.assertIn("a\ufffd[2J\ufffdb", line)
        self.assertIn("zoë@example.org", line)
        self.assertTrue(line.startswith("      7  2026-"), line)
        long = describe_entry(AuditEntry(1, 0, "x" * 40, "ok", "", "", "", "{}", bytes(48)))
        self.assertIn("x" * 19 + "\u2026", long)
