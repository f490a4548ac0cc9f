"""The audit trail's recorder (irp.server.audit.recorder) on a real SQLite store, its
timers on a fake clock: batching, checkpoints by count and by time, a database that
refuses entries for a while, the stop."""

from __future__ import annotations

import os
import sqlite3
import time

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from common.identity import Identity
from common.wire.xmlcodec import make_element
from irp.server.audit.recorder import AuditRecorder
from irp.server.events import RequestDone
from irp.server.session import Session
from irp.server.store import RegistryStore, open_store
from irp.server.store.audit import AuditFilter
from irp.wire.audit_chain import make_draft
from irp.wire.audit_verify import ChainVerifier
from test import pki
from test.irp.server.store.helpers import DOMAIN, make_signer


class RecorderTests(unittest.TestCase):
    """AuditRecorder with a real SQLite file."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.path = os.path.join(os.path.abspath(self.mktemp()), "registry.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        self.signer = make_signer()
        self.ca = pki.make_ca(DOMAIN)
        self.store: RegistryStore = await open_store(
            self.path, domain=DOMAIN, signer=self.signer, now=time.time, reactor=global_reactor
        )
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.recorder = AuditRecorder(self.store, DOMAIN, self.clock, lambda: (self.signer, self.ca.issuing_certificate))
        self.appends: list[int] = []
        append = self.store.append_audit_entries

        def counted(drafts: list) -> object:  # type: ignore[type-arg]
            self.appends.append(len(drafts))
            return append(drafts)

        self.store.append_audit_entries = counted  # type: ignore[method-assign, assignment]

    def draft(self, number: int) -> object:
        return make_draft(int(self.clock.seconds() * 1_000_000), "create-user", "ok", "admin@example.org", f"u{number}@example.org")

    async def verdict(self) -> object:
        verifier = ChainVerifier(DOMAIN, [self.ca.root_certificate])
        verifier.checkpoints(await self.store.list_audit_checkpoints())
        verifier.entries(await self.store.list_audit_entries(AuditFilter()))
        return verifier.finish()

    async def test_batches(self) -> None:
        """Entries arriving while a batch is written wait for the next: 300 entries take
        three transactions, in order; each waiter fires once its entry is in."""
        waiters = [self.recorder.record(self.draft(n)) for n in range(300)]  # type: ignore[arg-type]
        await waiters[-1]
        self.assertEqual(self.appends, [1, 256, 43])
        self.assertTrue(all(waiter.called for waiter in waiters))
        entries = await self.store.list_audit_entries(AuditFilter(limit=1000))
        self.assertEqual([entry.subject for entry in entries], [f"u{n}@example.org" for n in range(300)])

    async def test_logins_coalesced(self) -> None:
        """Logins (nothing waits for them) are appended together after the coalescing
        delay, in one transaction; an entry someone waits for takes them along at once."""
        from irp.server.events import LoginDone

        for n in range(5):
            self.recorder.login_done(LoginDone("certificate", f"u{n}@example.org", "ok", "192.0.2.1"))
        self.assertEqual(self.appends, [])
        self.clock.advance(self.recorder.coalesce_delay)
        await self.recorder.flushed()
        self.assertEqual(self.appends, [5])
        self.recorder.login_done(LoginDone("certificate", "u5@example.org", "ok", "192.0.2.1"))
        await self.recorder.record(self.draft(6))  # type: ignore[arg-type]
        self.assertEqual(self.appends, [5, 2])
        entries = await self.store.list_audit_entries(AuditFilter())
        self.assertEqual([entry.subject for entry in entries], [f"u{n}@example.org" for n in range(7)])

    async def test_checkpoint_every_hundred(self) -> None:
        """A checkpoint is signed once 100 entries were appended, at the last of them."""
        for n in range(99):
            self.recorder.record(self.draft(n))  # type: ignore[arg-type]
        await self.recorder.idle()
        self.assertEqual(await self.store.list_audit_checkpoints(), [])
        await self.recorder.record(self.draft(99))  # type: ignore[arg-type]
        await self.recorder.idle()
        [checkpoint] = await self.store.list_audit_checkpoints()
        self.assertEqual(checkpoint.entry_id, 100)
        verdict = await self.verdict()
        self.assertEqual(verdict.last_checkpoint[0], 100)  # type: ignore[attr-defined]

    async def test_checkpoint_after_a_minute(self) -> None:
        """One entry, no other: signed 60 s later, not before."""
        await self.recorder.record(self.draft(1))  # type: ignore[arg-type]
        self.clock.advance(59)
        await self.recorder.idle()
        self.assertEqual(await self.store.list_audit_checkpoints(), [])
        self.clock.advance(1)
        await self.recorder.idle()
        [checkpoint] = await self.store.list_audit_checkpoints()
        self.assertEqual(checkpoint.entry_id, 1)
        self.assertTrue((await self.verdict()).intact)  # type: ignore[attr-defined]

    async def test_database_refuses_then_recovers(self) -> None:
        """While the table cannot be written the entries wait in order (one log line),
        the waiting request is let go after the attempt, and the retry writes them."""
        logged: list[str] = []

        def observe(event: dict) -> None:  # type: ignore[type-arg]
            if event.get("log_namespace", "").startswith("irp.server.audit"):
                logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        outside = sqlite3.connect(self.path)
        outside.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        outside.commit()
        first = self.recorder.record(self.draft(1))  # type: ignore[arg-type]
        second = self.recorder.record(self.draft(2))  # type: ignore[arg-type]
        await first
        await second
        [line] = logged
        self.assertIn("The audit trail could not be written (2 entries wait", line)
        outside.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        outside.commit()
        outside.close()
        self.assertEqual(await self.store.list_audit_entries(AuditFilter()), [])
        self.clock.advance(self.recorder.retry_delay)
        await self.recorder.idle()
        entries = await self.store.list_audit_entries(AuditFilter())
        self.assertEqual([entry.subject for entry in entries], ["u1@example.org", "u2@example.org"])
        self.assertEqual(logged[1:], ["The audit trail is being written again"])

    def test_answer_not_held_forever(self) -> None:
        """A database that never answers holds an administrator's answer for 30 s at most
        (logged); the entry is written when it answers."""
        stuck: Deferred[list[object]] = Deferred()
        self.store.append_audit_entries = lambda drafts: stuck  # type: ignore[method-assign, assignment, return-value]
        session = Session(peer_host="192.0.2.1", identity=Identity("admin", DOMAIN))
        event = RequestDone("create-user", session, make_element("create-user", {"user": "zoe"}), "ok", 0.01, ())
        held = self.recorder.request_done(event)
        assert held is not None
        self.clock.advance(29)
        self.assertNoResult(held)
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(held))
        stuck.callback([object()])  # the database answers at last: nothing breaks
        self.assertTrue(self.recorder.flushed().called)

    async def test_stop(self) -> None:
        """The stop is recorded and signed."""
        await self.recorder.start("9.9.9")
        await self.recorder.stop()
        entries = await self.store.list_audit_entries(AuditFilter())
        self.assertEqual([(entry.event, entry.actor) for entry in entries], [("registry-start", "registry"), ("registry-stop", "registry")])
        self.assertEqual(entries[0].details, '{"version":"9.9.9"}')
        [checkpoint] = await self.store.list_audit_checkpoints()
        self.assertEqual(checkpoint.entry_id, 2)
