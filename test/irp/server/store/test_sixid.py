"""sixid's tables on the registry store (schema version 6): records, replay refusal, the
allow list, the sweep, and following other processes' registrations.

Every engine runs the same behaviour tests (a real SQLite file; a real PostgreSQL server
when one can start); two stores opened on one database play two registry processes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from common.db.migrations import upgrade_schema
from common.db.pools import direct_sqlite_reader
from irp.server.store import RegistryStore, open_store
from irp.server.store import listener as listener_module
from irp.server.store import sixid as sixid_module
from irp.server.store.schema import LATEST_VERSION, MIGRATIONS
from sixid.server.store import NOT_NOW, AllowedSixid, Replayed, StoredRecord
from test.irp.server.store.helpers import DOMAIN, START, PostgreSQLStore, RegistryStoreTestsMixin, SQLiteStore


def sixid_text(name: str) -> str:
    """A canonical-looking ID (32 base32 characters) made from ``name``."""
    return base64.b32encode(hashlib.sha256(name.encode()).digest()[:20]).decode("ascii").lower()


ALICE = sixid_text("alice")
BOB = sixid_text("bob")


def stored(sixid: str, seq: int, expires_at: int = START + 3600, owner: str = "") -> StoredRecord:
    return StoredRecord(sixid, seq, expires_at, owner, f"signed record {sixid} {seq}".encode() + bytes(range(256)))


def logged(store: RegistryStore) -> Any:
    """Fire with the change log's rows (ID, seq), oldest first."""

    def read(txn: Any) -> list[tuple[str, int]]:
        return [(str(sixid), int(seq)) for sixid, seq in store._fetchall(txn, "SELECT sixid, seq FROM sixid_changes ORDER BY id")]

    return store.pool.runInteraction(read)


class SixidStoreTestsMixin(RegistryStoreTestsMixin):
    """What every engine does."""

    async def put(self, store: RegistryStore, record: StoredRecord, signed_at: int = START, keep_until: int | None = None) -> None:
        await store.put_sixid_record(record, signed_at, record.expires_at if keep_until is None else keep_until)

    async def test_put_then_get(self) -> None:
        """A record stored is read back as stored; an unknown ID is None."""
        store = await self.store()
        record = stored(ALICE, 1, owner="alice@example.org")
        await self.put(store, record)
        self.assertEqual(await store.get_sixid_record(ALICE, START), record)
        self.assertIsNone(await store.get_sixid_record(BOB, START))

    async def test_only_current_records_are_read(self) -> None:
        """A record is read while ``expires_at > now``, then no longer (though kept)."""
        store = await self.store()
        await self.put(store, stored(ALICE, 1, expires_at=START + 60), keep_until=START + 300)
        self.assertIsNotNone(await store.get_sixid_record(ALICE, START + 59))
        self.assertIsNone(await store.get_sixid_record(ALICE, START + 60))
        self.assertEqual(await store.get_sixid_records([ALICE], START + 60), {})
        self.assertEqual(await store.count_sixids(), 1)

    async def test_replayed(self) -> None:
        """A sequence number not greater than the stored one is Replayed and changes
        nothing; a greater one replaces the record."""
        store = await self.store()
        await self.put(store, stored(ALICE, 5))
        for seq in (5, 4, 1):
            error = await self.assertFailsWith(Replayed, store.put_sixid_record(stored(ALICE, seq, owner="x"), START, START + 3600))
            assert isinstance(error, Replayed)
            self.assertEqual((error.sixid, error.stored_seq), (ALICE, 5))
        self.assertEqual(await store.get_sixid_record(ALICE, START), stored(ALICE, 5))
        await self.put(store, stored(ALICE, 6, expires_at=START + 10))
        self.assertEqual(await store.get_sixid_record(ALICE, START), stored(ALICE, 6, expires_at=START + 10))
        self.assertEqual(await logged(store), [(ALICE, 5), (ALICE, 6)])

    async def test_replay_refused_after_expiry_until_swept(self) -> None:
        """An expired record still refuses older sequence numbers until its keep-until
        time has passed and the sweep deleted it."""
        store = await self.store()
        await self.put(store, stored(ALICE, 7, expires_at=START + 60), keep_until=START + 300)
        await self.assertFailsWith(Replayed, store.put_sixid_record(stored(ALICE, 6), START, START + 3600))
        self.assertEqual(await store.sweep_sixids(START + 299), 0)
        await self.assertFailsWith(Replayed, store.put_sixid_record(stored(ALICE, 6), START, START + 3600))
        self.assertEqual(await store.sweep_sixids(START + 300), 1)
        await self.put(store, stored(ALICE, 6))
        self.assertEqual((await store.get_sixid_record(ALICE, START)), stored(ALICE, 6))

    async def test_group_commit_one_replayed_others_stored(self) -> None:
        """Registrations arriving together are committed together; one refused fails
        alone."""
        store = await self.store()
        await self.put(store, stored(ALICE, 3))
        names = [sixid_text(f"device {n}") for n in range(20)]
        outcomes = await gatherResults(
            [store.put_sixid_record(stored(name, 1), START, START + 3600).addErrback(lambda f: f.value) for name in names]
            + [store.put_sixid_record(stored(ALICE, 2), START, START + 3600).addErrback(lambda f: f.value)]
        )
        self.assertEqual(outcomes[:-1], [None] * 20)
        self.assertIsInstance(outcomes[-1], Replayed)
        found = await store.get_sixid_records(names, START)
        self.assertEqual(found, {name: stored(name, 1) for name in names})

    async def test_batch_read(self) -> None:
        """Many IDs in one call (more than one query's worth), repeated and unknown ones
        included: the current records, by ID."""
        store = await self.store()
        names = [sixid_text(f"id {n}") for n in range(sixid_module.BATCH_SIZE + 150)]
        await gatherResults([
            store.put_sixid_record(stored(name, 2, expires_at=START + (5 if n % 10 == 0 else 3600)), START, START + 3600)
            for n, name in enumerate(names)
        ])
        asked = [*names, sixid_text("nobody"), names[3]]
        found = await store.get_sixid_records(asked, START + 10)
        self.assertEqual(found, {name: stored(name, 2) for n, name in enumerate(names) if n % 10})
        self.assertEqual(await store.get_sixid_records([], START), {})

    async def test_count_and_sweep(self) -> None:
        """IDs held count each ID once (a new record for it adds none) until swept; the
        sweep deletes exactly the rows kept until then."""
        store = await self.store()
        self.assertEqual(await store.count_sixids(), 0)
        await self.put(store, stored(ALICE, 1), keep_until=START + 100)
        await self.put(store, stored(ALICE, 2), keep_until=START + 100)
        await self.put(store, stored(BOB, 1), keep_until=START + 200)
        self.assertEqual(await store.count_sixids(), 2)
        self.assertEqual(await store.sweep_sixids(START + 99), 0)
        self.assertEqual(await store.sweep_sixids(START + 150), 1)
        self.assertEqual(await store.count_sixids(), 1)
        self.assertIsNone(await store.get_sixid_record(ALICE, START))
        self.assertIsNotNone(await store.get_sixid_record(BOB, START))

    async def test_sweep_prunes_the_log(self) -> None:
        store = await self.store()
        for seq in (1, 2, 3):
            await self.put(store, stored(ALICE, seq))
        await store.sweep_sixids(START, keep_changes=1)
        self.assertEqual(await logged(store), [(ALICE, 3)])
        await store.sweep_sixids(START, keep_changes=5)
        self.assertEqual(await logged(store), [(ALICE, 3)])

    async def test_allow_list(self) -> None:
        """Allowing twice keeps the first entry (False the second time); disallowing an
        absent ID is False; the list is by ID, in pages."""
        store = await self.store()
        self.assertFalse(await store.sixid_allowed(ALICE))
        self.assertTrue(await store.allow_sixid(ALICE, "Alice's phone", "admin@example.org"))
        self.clock.advance(10)
        self.assertFalse(await store.allow_sixid(ALICE, "again", "root@example.org"))
        self.assertTrue(await store.allow_sixid(BOB, "", "admin@example.org"))
        self.assertTrue(await store.sixid_allowed(ALICE))
        entries = sorted(
            [AllowedSixid(ALICE, "Alice's phone", START, "admin@example.org"), AllowedSixid(BOB, "", START + 10, "admin@example.org")],
            key=lambda entry: entry.sixid,
        )
        self.assertEqual(await store.list_allowed_sixids(), entries)
        self.assertEqual(await store.list_allowed_sixids(offset=1, limit=5), entries[1:])
        self.assertEqual(await store.list_allowed_sixids(limit=1), entries[:1])
        self.assertTrue(await store.disallow_sixid(ALICE))
        self.assertFalse(await store.disallow_sixid(ALICE))
        self.assertFalse(await store.sixid_allowed(ALICE))
        self.assertEqual([entry.sixid for entry in await store.list_allowed_sixids()], [BOB])

    async def test_upgrade_from_version_5(self) -> None:
        """A database of schema 5 is upgraded; its address change log carries on."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:5])
        await store.create_user("alice")
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        self.assertGreaterEqual(LATEST_VERSION, 6)
        await self.put(store, stored(ALICE, 1))
        self.assertEqual(await store.count_sixids(), 1)


class SQLiteSixidStoreTests(SixidStoreTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file; two stores on one file play two processes."""

    async def following_store(self, reactor: Any) -> RegistryStore:
        """A store with a direct reader on the test's database, as open_store makes."""
        store = await self.store()
        reader = direct_sqlite_reader(self.path("registry"))
        self.addCleanup(reader.close)
        store.direct_reader = reader
        store.reactor = reactor
        self.addCleanup(store._stop_following_sixid_changes)
        return store

    async def test_look_up_on_the_reactor_thread(self) -> None:
        """With a direct reader, a look-up has its answer at once (no thread hop)."""
        store = await self.following_store(Clock())
        await self.put(store, stored(ALICE, 1))
        answer = store.get_sixid_record(ALICE, START)
        self.assertTrue(answer.called)
        self.assertEqual(self.successResultOf(answer), stored(ALICE, 1))
        many = store.get_sixid_records([ALICE, BOB], START)
        self.assertEqual(self.successResultOf(many), {ALICE: stored(ALICE, 1)})

    async def test_record_read_now(self) -> None:
        """With a direct reader the look-up's fast path reads the record's bytes at once
        (None for an unknown or expired ID); without one it says NOT_NOW."""
        plain = await self.store()
        self.assertIs(plain.sixid_record_now(ALICE, START), NOT_NOW)
        store = await self.following_store(Clock())
        record = stored(ALICE, 1, expires_at=START + 60)
        await self.put(store, record, keep_until=START + 300)
        self.assertEqual(store.sixid_record_now(ALICE, START + 59), record.record)
        self.assertIsNone(store.sixid_record_now(ALICE, START + 60))
        self.assertIsNone(store.sixid_record_now(BOB, START))

    async def test_other_process_registrations_are_followed(self) -> None:
        """Another store's registrations are told (ID, seq) once each, at the next poll
        (every 20 ms); this store's own are not; a replayed one logs nothing."""
        polls = Clock()
        this = await self.following_store(polls)
        other = await self.store()
        told: list[tuple[str, int]] = []
        await self.put(other, stored(ALICE, 1))  # before following: not told
        this.follow_sixid_changes(lambda sixid, seq: told.append((sixid, seq)))
        await self.put(other, stored(ALICE, 2))
        await self.put(other, stored(BOB, 1))
        await self.assertFailsWith(Replayed, other.put_sixid_record(stored(BOB, 1), START, START + 60))
        await self.put(this, stored(ALICE, 3))
        self.assertEqual(told, [])
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [(ALICE, 2), (BOB, 1)])
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [(ALICE, 2), (BOB, 1)])
        await self.put(other, stored(BOB, 2))
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told[2:], [(BOB, 2)])
        self.assertEqual(this._own_sixid_writes, {})

    async def test_polls_only_while_followed(self) -> None:
        polls = Clock()
        this = await self.following_store(polls)
        self.assertEqual(polls.getDelayedCalls(), [])

        def follower(sixid: str, seq: int) -> None:
            pass

        this.follow_sixid_changes(follower)
        self.assertEqual(len(polls.getDelayedCalls()), 1)
        this.unfollow_sixid_changes(follower)
        self.assertEqual(polls.getDelayedCalls(), [])

    async def test_a_failing_follower_stops_no_other(self) -> None:
        polls = Clock()
        this = await self.following_store(polls)
        other = await self.store()
        told: list[str] = []

        def broken(sixid: str, seq: int) -> None:
            raise RuntimeError("a bug")

        this.follow_sixid_changes(broken)
        this.follow_sixid_changes(lambda sixid, seq: told.append(sixid))
        polls.advance(0)
        await self.put(other, stored(ALICE, 1))
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [ALICE])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_pruned_past_what_was_read(self) -> None:
        """Changes pruned before they were read are lost (said in the log); following goes
        on with the next ones."""
        polls = Clock()
        this = await self.following_store(polls)
        other = await self.store()
        told: list[tuple[str, int]] = []
        this.follow_sixid_changes(lambda sixid, seq: told.append((sixid, seq)))
        await self.put(other, stored(ALICE, 1))
        await self.put(other, stored(ALICE, 2))
        await other.sweep_sixids(START, keep_changes=0)
        await self.put(other, stored(BOB, 1))
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [(BOB, 1)])

    async def test_long_backlog_read_over_several_polls(self) -> None:
        self.patch(sixid_module, "SIXID_CHANGES_READ_LIMIT", 2)
        polls = Clock()
        this = await self.following_store(polls)
        other = await self.store()
        told: list[int] = []
        this.follow_sixid_changes(lambda sixid, seq: told.append(seq))
        for seq in range(1, 6):
            await self.put(other, stored(ALICE, seq))
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [1, 2])
        polls.advance(sixid_module.POLL_INTERVAL)
        polls.advance(sixid_module.POLL_INTERVAL)
        self.assertEqual(told, [1, 2, 3, 4, 5])


class PostgreSQLSixidStoreTests(SixidStoreTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py); two stores opened on one
    database play two processes, each listening on ``sixid_changes``."""

    async def open(self) -> RegistryStore:
        """A store as open_store makes it, on the test's database."""
        if "registry" not in self._databases:
            self._databases["registry"] = self.server.create_database()
        store = await open_store(
            self._databases["registry"], domain=DOMAIN, signer=self.signer, now=self.clock.seconds, reactor=global_reactor
        )
        self.addCleanup(store.close)
        return store

    async def wait_for(self, condition: Any, what: str) -> None:
        """Wait until ``condition()`` (a notification travels from the server), up to 10 s."""
        for _ in range(2000):
            if condition():
                return
            await deferLater(global_reactor, 0.005, lambda: None)
        self.fail(f"never: {what}")

    async def listening(self, told: list[tuple[str, int]]) -> RegistryStore:
        store = await self.open()
        store.follow_sixid_changes(lambda sixid, seq: told.append((sixid, seq)))
        assert store.sixid_listener is not None
        await store.sixid_listener.ready
        return store

    async def test_other_process_registrations_are_notified(self) -> None:
        told: list[tuple[str, int]] = []
        this = await self.listening(told)
        other = await self.open()
        await self.put(this, stored(BOB, 1))  # own: not told
        await self.put(other, stored(ALICE, 1))
        await self.put(other, stored(ALICE, 2))
        await self.wait_for(lambda: (ALICE, 2) in told, "ALICE 2 told")
        self.assertEqual(told, [(ALICE, 1), (ALICE, 2)])
        self.assertEqual(this._own_sixid_writes, {})

    async def test_lost_listener_catches_up_from_the_log(self) -> None:
        """What other processes registered while the listening connection was down is
        told once it is back (each ID at its latest change)."""
        self.patch(listener_module, "RECONNECT_DELAY", 0.05)
        told: list[tuple[str, int]] = []
        this = await self.listening(told)
        other = await self.open()
        await self.put(other, stored(ALICE, 1))
        await self.wait_for(lambda: told == [(ALICE, 1)], "ALICE 1 told")
        listener = this.sixid_listener
        assert listener is not None
        self.patch(listener_module, "RECONNECT_DELAY", 0.5)
        await other.pool.runOperation("SELECT pg_terminate_backend(%s)", (listener.connection.info.backend_pid,))
        await self.wait_for(lambda: listener.connection is None, "the listener lost")
        await self.put(other, stored(BOB, 1))
        await self.put(other, stored(BOB, 2))
        self.assertIsNone(listener.connection)  # written while not listening
        await self.wait_for(lambda: (BOB, 2) in told, "BOB 2 told after reconnecting")
        self.assertEqual(told, [(ALICE, 1), (BOB, 2)])
