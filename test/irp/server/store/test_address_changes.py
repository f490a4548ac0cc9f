"""The address change log (schema version 5) and how a store follows it.

Every write of an ``addresses`` row, by any process, is logged in the same transaction by a
trigger; a registry process reads the log to forget exactly the cached look-up answers that
changed (see :meth:`irp.server.store.RegistryStore.follow_address_changes`). Two stores
opened on one SQLite file play two registry processes sharing a database.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from common.db.migrations import upgrade_schema
from common.db.pools import direct_sqlite_reader
from irp.server.store import RegistryStore, open_store
from irp.server.store import listener as listener_module
from irp.server.store.schema import LATEST_VERSION, MIGRATIONS
from irp.wire.records import Endpoint
from test.irp.server.store.helpers import DOMAIN, PostgreSQLStore, RegistryStoreTestsMixin, SQLiteStore

HERE = (Endpoint("2001:db8::5", 4605),)


class Recorder:
    """Stands in for the answer cache: records what it is told."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def evict(self, key: str, version: int | None = None) -> None:
        self.events.append((key, version))

    def clear(self) -> None:
        self.events.append("clear")

    def take(self) -> list[Any]:
        events, self.events = self.events, []
        return events


def logged(store: RegistryStore) -> Any:
    """Fire with the change log's rows: (user name, sequence number), oldest first."""

    def read(txn: Any) -> list[tuple[str, int | None]]:
        rows = store._fetchall(txn, "SELECT username, seq FROM address_changes ORDER BY id")
        return [(name, None if seq is None else int(seq)) for name, seq in rows]

    return store.pool.runInteraction(read)


class AddressChangesTestsMixin(RegistryStoreTestsMixin):
    """The log, on every engine."""

    async def test_every_writer_is_logged(self) -> None:
        """Creating a user, registering, the expiry sweep and deleting the user each log
        the user's name (with the new record's sequence number; none for a delete)."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        await store.put_addresses("alice", "online", HERE, 60)
        self.clock.advance(61)
        self.assertEqual(await store.expire_addresses(), 1)
        await store.delete_user("alice")
        self.assertEqual(
            await logged(store), [("alice", 1), ("bob", 1), ("alice", 2), ("alice", 3), ("alice", None)]
        )

    async def test_sweep_prunes_the_log(self) -> None:
        """The sweep keeps the newest changes only, and records how far it pruned."""
        store = await self.store()
        for name in ("alice", "bob", "carol"):
            await store.create_user(name)
        await store.expire_addresses(keep_changes=1)
        self.assertEqual(await logged(store), [("carol", 1)])
        await store.expire_addresses(keep_changes=5)  # nothing more to prune
        self.assertEqual(await logged(store), [("carol", 1)])

    async def test_upgrade_from_version_4(self) -> None:
        """A database of schema 4 keeps its records; their later changes are logged."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:4])
        self.assertGreaterEqual(len(MIGRATIONS), 5)
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        await store.create_user("alice")
        await store.put_addresses("alice", "busy", HERE, 60)
        record = await store.get_addresses("alice")
        assert record is not None
        self.assertEqual((record.presence, record.seq), ("busy", 2))
        self.assertEqual(await logged(store), [("alice", 1), ("alice", 2)])

    async def test_not_followed_without_a_direct_reader(self) -> None:
        """Without a direct reader (PostgreSQL, or before open_store made one) changes
        cannot be followed on the reactor: answers must not be served from a cache."""
        store = await self.store()
        self.assertFalse(store.follow_address_changes(Recorder()))


class SQLiteAddressChangesTests(AddressChangesTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file; two stores on one file play two processes."""

    async def following_store(self, reactor: Any = global_reactor) -> RegistryStore:
        """A store with a direct reader on the test's database, as open_store makes."""
        store = await self.store()
        reader = direct_sqlite_reader(self.path("registry"))
        self.addCleanup(reader.close)
        store.direct_reader = reader
        store.reactor = reactor
        return store

    async def test_other_process_writes_are_followed(self) -> None:
        """Another store's writes reach this store's watcher once each, by name and
        sequence number; nothing new, nothing told."""
        this = await self.following_store()
        other = await self.store()
        watcher = Recorder()
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), ["clear"])  # the first time: nothing is known
        await other.create_user("alice")
        await other.create_user("bob")
        await other.put_addresses("bob", "online", HERE, 60)
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), [("alice", 1), ("bob", 1), ("bob", 2)])
        self.assertTrue(this.follow_address_changes(watcher))
        await other.delete_user("alice")
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), [("alice", None)])

    async def test_own_writes_followed_at_once(self) -> None:
        """This store's own write is followed as soon as it has committed, within the
        reactor turn (a look-up right after the answer sees it); another process's at the
        next turn."""
        turns = Clock()  # a reactor whose turns pass only when the test says
        this = await self.following_store(turns)
        other = await self.store()
        watcher = Recorder()
        this.follow_address_changes(watcher)
        await this.create_user("alice")
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), ["clear", ("alice", 1)])
        await this.put_addresses("alice", "away", HERE, 60)
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), [("alice", 2)])
        await other.put_addresses("alice", "busy", HERE, 60)
        this.follow_address_changes(watcher)
        self.assertEqual(watcher.take(), [])  # the data version of this turn
        turns.advance(0)
        this.follow_address_changes(watcher)
        self.assertEqual(watcher.take(), [("alice", 3)])

    async def test_pruned_past_what_was_read_drops_everything(self) -> None:
        """When the log was pruned past what this store had read, it cannot tell what
        changed: everything is forgotten, and following goes on from there."""
        this = await self.following_store()
        other = await self.store()
        watcher = Recorder()
        this.follow_address_changes(watcher)
        watcher.take()
        await other.create_user("alice")
        await other.create_user("bob")
        await other.expire_addresses(keep_changes=0)
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertEqual(watcher.take(), ["clear"])
        await other.create_user("carol")
        this.follow_address_changes(watcher)
        self.assertEqual(watcher.take(), [("carol", 1)])


class PostgreSQLAddressChangesTests(AddressChangesTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py); two stores opened on one
    database play two processes, each listening for the trigger's notifications."""

    async def open(self) -> RegistryStore:
        """A store as open_store makes it (listening), on the test's database."""
        if "registry" not in self._databases:
            self._databases["registry"] = self.server.create_database()
        store = await open_store(
            self._databases["registry"], domain=DOMAIN, signer=self.signer, now=self.clock.seconds, reactor=global_reactor
        )
        self.addCleanup(store.close)
        return store

    async def listening(self) -> tuple[RegistryStore, Recorder]:
        store = await self.open()
        watcher = Recorder()
        self.assertFalse(store.follow_address_changes(watcher))  # not listening yet
        assert store.address_listener is not None
        await store.address_listener.ready
        self.assertTrue(store.follow_address_changes(watcher))
        self.assertEqual(watcher.take()[-1:], ["clear"])
        return store, watcher

    async def follow_until(self, store: RegistryStore, watcher: Recorder, event: Any) -> None:
        """Follow until ``event`` was told (a notification travels from the server: wait
        for it, up to 10 s)."""
        for _ in range(2000):
            if store.follow_address_changes(watcher) and event in watcher.events:
                return
            await deferLater(global_reactor, 0.005, lambda: None)
        self.fail(f"{event!r} never told: {watcher.events!r}")

    async def test_other_process_writes_are_notified(self) -> None:
        this, watcher = await self.listening()
        other = await self.open()
        await other.create_user("alice")
        await other.put_addresses("alice", "online", HERE, 60)
        await self.follow_until(this, watcher, ("alice", 2))
        self.assertEqual(watcher.take(), [("alice", 1), ("alice", 2)])
        await other.delete_user("alice")
        await self.follow_until(this, watcher, ("alice", None))

    async def test_own_writes_told_at_once(self) -> None:
        """This process's own writes are told at the first follow after they committed,
        before their notifications come back (then told again: harmless)."""
        this, watcher = await self.listening()
        # Notifications are not read from here on: what is told comes from the store.
        global_reactor.removeReader(this.address_listener)  # type: ignore[arg-type]
        await this.create_user("alice")
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertIn(("alice", 1), watcher.take())
        await this.put_addresses("alice", "online", HERE, 60)
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertIn(("alice", 2), watcher.take())
        await this.delete_user("alice")
        self.assertTrue(this.follow_address_changes(watcher))
        self.assertIn(("alice", None), watcher.take())

    async def test_lost_listener_drops_everything_until_back(self) -> None:
        """When the listening connection is lost nothing is served and every answer is
        forgotten; once it is back, following goes on (after forgetting again)."""
        self.patch(listener_module, "RECONNECT_DELAY", 0.05)
        this, watcher = await self.listening()
        other = await self.open()
        await other.pool.runOperation(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN irp_addresses'"
            " AND pid <> pg_backend_pid()"
        )
        for _ in range(2000):
            if not this.follow_address_changes(watcher):
                break
            await deferLater(global_reactor, 0.005, lambda: None)
        self.assertFalse(this.follow_address_changes(watcher))
        self.assertIn("clear", watcher.take())
        for _ in range(2000):
            if this.follow_address_changes(watcher):
                break
            await deferLater(global_reactor, 0.005, lambda: None)
        self.assertIn("clear", watcher.take())
        await other.create_user("bob")
        await self.follow_until(this, watcher, ("bob", 1))
