"""The registry's caches (irp.server.caching): each one can be turned off, by
``twistd irp --no-cache NAME``, and the answers stay the same without it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python import usage
from twisted.trial import unittest

from common.caches import AnswerCache, RecentCache, VersionedCache
from common.identity import Identity
from common.wire.xmlcodec import make_element, serialize
from irp import errors
from irp.server.caching import CACHE_NAMES, NoAnswerCache, NoCache, RegistryCaches, parse_cache_names
from irp.server.registry import Registry, RegistryConfig
from irp.server.session import Session, SessionState
from irp.server.store import RegistryStore, open_store
from irp.tap import Options
from irp.wire.messages import build_request, parse_request
from irp.wire.records import AddressRecord, Endpoint
from test.helpers import DEFAULT_PASSWORD, RunningRegistry
from test.irp.server.helpers import make_registry
from test.irp.server.store.helpers import make_signer


class CachesTests(unittest.SynchronousTestCase):
    def test_build(self) -> None:
        """Each cache named is off (a NoCache that keeps nothing); the others are on."""
        caches = RegistryCaches.build()
        self.assertIsInstance(caches.answers, AnswerCache)
        self.assertIsInstance(caches.certificates, VersionedCache)
        self.assertIsInstance(caches.usernames, RecentCache)
        off = RegistryCaches.build({"answers", "usernames"})
        self.assertIsInstance(off.answers, NoAnswerCache)
        self.assertIsInstance(off.certificates, VersionedCache)
        self.assertIsInstance(off.usernames, NoCache)
        self.assertFalse(off.answers.put("bob", off.answers.reading("bob"), b"<addresses/>", 1))
        self.assertFalse(off.answers.replace("bob", 0, b"<addresses/>", 1))
        self.assertIsNone(off.answers.get("bob"))
        self.assertRaises(ValueError, RegistryCaches.build, {"everything"})

    def test_parse_names(self) -> None:
        self.assertEqual(parse_cache_names("answers"), {"answers"})
        self.assertEqual(parse_cache_names("answers,usernames"), {"answers", "usernames"})
        self.assertEqual(parse_cache_names("all"), set(CACHE_NAMES))
        for bad in ("", "cache", "all,answers"):
            self.assertRaises(ValueError, parse_cache_names, bad)

    def test_option(self) -> None:
        """``--no-cache`` is repeatable, reaches the registry's configuration, and refuses
        unknown names readably."""

        def config(*argv: str) -> RegistryConfig:
            options = Options()
            options.parseOptions(["--domain", "example.org", *argv])
            settings = options.settings()
            assert settings.config is not None
            return settings.config

        self.assertEqual(config().no_cache, frozenset())
        self.assertEqual(config("--no-cache", "answers", "--no-cache", "certificates").no_cache, {"answers", "certificates"})
        self.assertEqual(config("--no-cache", "all").no_cache, set(CACHE_NAMES))
        error = self.assertRaises(usage.UsageError, config, "--no-cache", "nonsense")
        self.assertIn("answers, certificates, usernames", str(error))
        self.assertIn("--no-cache", Options().__str__())


class SameAnswersTests(unittest.TestCase):
    """Without its caches a registry answers exactly as with them."""

    async def test_same_answers_without_caches(self) -> None:
        running = await RunningRegistry(self).start()
        await running.add_user("alice")
        await running.add_user("bob")
        await running.add_user("carol")
        carol = await running.issue("carol")
        registry = running.registry
        await (await running.client("bob")).register_addresses([])

        async def answers() -> list[Any]:
            session = Session(peer_host="192.0.2.1")
            await registry.auth.password_login(session, "alice", DEFAULT_PASSWORD)
            results: list[Any] = []
            for element in (
                make_element("lookup", {"user": "bob"}),
                make_element("lookup", {"user": "bob@example.org"}),
                make_element("lookup", {"user": "bob"}),
                make_element("get-user", {"user": "bob"}),
                make_element("lookup", {"user": "nobody"}),
            ):
                try:
                    answer = await registry.handle(session, parse_request(build_request(1, element)))
                except Exception as error:
                    results.append((type(error).__name__, str(error)))
                else:
                    results.append([item if isinstance(item, bytes) else serialize(item) for item in answer])
            for _ in range(2):
                certified = Session(peer_host="192.0.2.2")
                await registry.auth.authenticate_certificate(certified, carol.certificate)
                results.append((certified.state, str(certified.identity), certified.certificate_serial))
            return results

        cached = await answers()
        self.assertEqual(cached[-1][0], SessionState.CERTIFICATE)
        registry.caches = RegistryCaches.build(CACHE_NAMES)  # as --no-cache all builds it
        self.assertEqual(await answers(), cached)


if TYPE_CHECKING:
    _TestCaseBase = unittest.TestCase
else:
    _TestCaseBase = object


class AnswersFollowWritesMixin(_TestCaseBase):
    """Cached look-up answers stay while their user's address record does: this
    registry's own registrations replace them, other processes' writes (a second store on
    the same database) evict only the users they changed. Each engine supplies ``path``
    (a SQLite file or a PostgreSQL URL)."""

    path: str
    signer: Any

    async def open(self) -> RegistryStore:
        store = await open_store(
            self.path, domain="example.org", signer=self.signer, now=global_reactor.seconds, reactor=global_reactor
        )
        self.addCleanup(store.close)
        if store.address_listener is not None:
            await store.address_listener.ready
        return store

    async def registry(self, *off: str) -> Registry:
        registry = make_registry(Clock())
        registry.caches = RegistryCaches.build(off)
        registry.store = await self.open()
        for name in ("alice", "bob", "carol"):
            await registry.store.create_user(name)
        return registry

    def session(self, registry: Registry, username: str = "alice") -> Session:
        session = Session(peer_host="192.0.2.1", identity=Identity(username, registry.domain), state=SessionState.PASSWORD)
        session.generation = registry.sessions.generation
        return session

    async def lookup(self, registry: Registry, username: str) -> bytes:
        request = parse_request(build_request(1, make_element("lookup", {"user": username})))
        answer = await registry.handle(self.session(registry), request)
        assert isinstance(answer[0], bytes)
        return answer[0]

    async def register(self, registry: Registry, username: str, port: int) -> bytes:
        element = make_element("register-address", {"presence": "online"})
        element.append(make_element("endpoint", {"address": "2001:db8::5", "port": str(port)}))
        request = parse_request(build_request(2, element))
        answer = await registry.handle(self.session(registry, username), request)
        return serialize(answer[0])

    def count_reads(self, registry: Registry) -> list[str]:
        """The user names the store is asked to read from now on."""
        reads: list[str] = []
        read = registry.store.get_addresses

        def counted(username: str) -> Deferred[AddressRecord | None]:
            reads.append(username)
            return read(username)

        registry.store.get_addresses = counted  # type: ignore[method-assign]
        return reads

    async def test_own_registration_replaces_the_answer(self) -> None:
        """After a registration the look-up answer is the new one, served from the cache
        without a read (the old code retired every answer at each commit)."""
        registry = await self.registry()
        await self.lookup(registry, "bob")
        reads = self.count_reads(registry)
        registered = await self.register(registry, "bob", 4605)
        self.assertEqual(await self.lookup(registry, "bob"), registered)
        self.assertIn(b'port="4605"', registered)
        self.assertEqual(reads, [])
        stats = registry.caches.stats()["answers"]
        self.assertEqual((stats["hits"], stats["reads"], stats["replaced"]), (1, 1, 1))

    async def test_lookup_racing_a_registration_stores_nothing_stale(self) -> None:
        """A look-up that read the record before a registration committed answers what it
        read, but does not cache it: the next look-up answers the new record."""
        registry = await self.registry()
        read = registry.store.get_addresses
        old = await read("bob")  # what the racing look-up reads, before the registration
        answered: Deferred[AddressRecord | None] = Deferred()
        registry.store.get_addresses = lambda username: answered  # type: ignore[method-assign, assignment, return-value]
        racing = Deferred.fromCoroutine(self.lookup(registry, "bob"))
        registry.store.get_addresses = read  # type: ignore[method-assign]
        registered = await self.register(registry, "bob", 4606)
        answered.callback(old)
        stale = await racing
        self.assertNotIn(b"4606", stale)
        self.assertEqual(await self.lookup(registry, "bob"), registered)
        self.assertEqual(registry.caches.stats()["answers"]["refused"], 1)

    async def test_no_cache_answers_reads_every_time(self) -> None:
        """``--no-cache answers``: every look-up reads the store; registrations work."""
        registry = await self.registry("answers")
        reads = self.count_reads(registry)
        await self.lookup(registry, "bob")
        registered = await self.register(registry, "bob", 4608)
        self.assertEqual(await self.lookup(registry, "bob"), registered)
        self.assertEqual(reads, ["bob", "bob"])
        self.assertEqual(registry.caches.stats()["answers"], {"hits": 0, "misses": 0})


class SQLiteAnswersFollowWritesTests(AnswersFollowWritesMixin, unittest.TestCase):
    """On a real SQLite file: other processes' writes are read from the change log."""

    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "registry.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        self.signer = make_signer()

    async def test_other_process_write_evicts_only_that_user(self) -> None:
        """Another process's registration evicts that user's answer at the next look-up
        after its commit; the other users' answers stay cached."""
        registry = await self.registry()
        other = await self.open()
        for name in ("alice", "bob"):
            await self.lookup(registry, name)
        reads = self.count_reads(registry)
        record = await other.put_addresses("bob", "busy", (Endpoint("2001:db8::7", 4607),), 300)
        self.assertIn(b"4607", await self.lookup(registry, "bob"))
        await self.lookup(registry, "alice")
        self.assertEqual(reads, ["bob"])
        self.assertEqual(record.seq, 2)
        await other.delete_user("alice")
        await self.assertFailure(Deferred.fromCoroutine(self.lookup(registry, "alice")), errors.NotFound)

    async def test_pruned_change_log_drops_every_answer(self) -> None:
        """When the change log was pruned past what this registry had read, every cached
        answer goes (never a stale one)."""
        registry = await self.registry()
        other = await self.open()
        for name in ("alice", "bob"):
            await self.lookup(registry, name)
        await other.put_addresses("carol", "busy", (), 300)
        await other.expire_addresses(keep_changes=0)
        reads = self.count_reads(registry)
        await self.lookup(registry, "alice")
        await self.lookup(registry, "bob")
        self.assertEqual(reads, ["alice", "bob"])
        self.assertEqual(registry.caches.stats()["answers"]["cleared"], 2)  # at start, and now


class PostgreSQLAnswersFollowWritesTests(AnswersFollowWritesMixin, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py): other processes' writes arrive
    as notifications."""

    def setUp(self) -> None:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            self.path = PostgresServer.shared().create_database()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        self.signer = make_signer()

    async def test_other_process_write_evicts_only_that_user(self) -> None:
        """Another process's registration evicts that user's answer once its
        notification arrived; the other users' answers stay cached."""
        registry = await self.registry()
        other = await self.open()
        for name in ("alice", "bob"):
            await self.lookup(registry, name)
        reads = self.count_reads(registry)
        await other.put_addresses("bob", "busy", (Endpoint("2001:db8::7", 4607),), 300)
        for _ in range(2000):  # the notification travels from the server
            if b"4607" in await self.lookup(registry, "bob"):
                break
            await deferLater(global_reactor, 0.005, lambda: None)
        else:
            self.fail("the other process's registration was never seen")
        await self.lookup(registry, "alice")
        self.assertNotIn("alice", reads)
        self.assertEqual(reads[-1], "bob")
