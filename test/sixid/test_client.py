"""The sixid client library.

Over real TLS on loopback against the real server hosted by a real registry, and against
a small server made with the core codec (:mod:`test.sixid.fake_server`, which can be told
to misbehave): connecting (SRV, the server's certificate),
register, lookup and its cache, watch with pushes, verification failures. On a fake
transport with a fake clock: pipelining and its cap, timeouts, the keep-alive.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.framing import encode_frame
from sixid import errors
from sixid.client import (
    MAX_HELD_PUSHES,
    MAX_OUTSTANDING,
    PING_INTERVAL,
    RecordCache,
    SixidClient,
    SixidClientProtocol,
    connect_sixid,
    describe_tls_failure,
    fetch_root,
    find_servers,
)
from sixid.ids import SixIdAddress, derive_id
from sixid.records import Registration, SignedRecord, VerifiedRecord, sign_record, sign_registration
from sixid.server.service import SixidSettings
from sixid.wire import (
    Changed,
    Gone,
    Ping,
    Pong,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    Watching,
    encode_error,
    encode_push,
    encode_response,
    parse_request,
)
from test.helpers import RunningRegistry, closed_port, frames_of
from test.irp.client.helpers import ZoneAuthority, srv
from test.sixid.fake_server import DOMAIN, ENDPOINTS, FakeRegistry, device, registry_pki, serve, signed_registration


class ConnectedTests(TestCase):
    """The client against the fake server, over TLS on loopback."""

    async def connect(self, root: x509.Certificate | None = None, **options: Any) -> SixidClient:
        client = await connect_sixid(reactor, DOMAIN, trust=root or registry_pki().root, server=("127.0.0.1", self.port), **options)
        self.addCleanup(client.close)
        return client

    async def setUp(self) -> None:  # type: ignore[override]
        self.registry, self.port = await serve(self)

    async def test_register_then_lookup(self) -> None:
        key = device()
        client = await self.connect()
        registered = await client.register(signed_registration(key))
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        self.assertEqual(registered.address, address)
        self.assertEqual(registered.endpoints, ENDPOINTS)
        self.assertIsNone(registered.owner)
        other = await self.connect()
        found = await other.lookup(address)
        self.assertEqual(found.data, registered.data)
        self.assertEqual(self.registry.seen.count("signer"), 2)  # once per connection

    async def test_lookup_is_cached_for_the_record_lifetime(self) -> None:
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        client = await self.connect()
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        first = await client.lookup(address)
        second = await client.lookup(address)
        self.assertIs(first, second)
        self.assertEqual(self.registry.seen.count("lookup"), 1)
        self.assertEqual(client.cache.stats()["hits"], 1)
        await client.lookup(address, cached=False)
        self.assertEqual(self.registry.seen.count("lookup"), 2)

    async def test_unknown_id(self) -> None:
        client = await self.connect()
        with self.assertRaises(errors.UnknownId):
            await client.lookup(SixIdAddress(derive_id(device().public_key()), DOMAIN))

    async def test_another_domain_is_refused_locally(self) -> None:
        client = await self.connect()
        with self.assertRaises(errors.ClientError):
            await client.lookup(SixIdAddress(derive_id(device().public_key()), "example.net"))
        self.assertEqual(self.registry.seen, [])

    async def test_tampered_record_fails_verification(self) -> None:
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        self.registry.tamper = lambda data: data[:-1] + bytes([data[-1] ^ 1])
        client = await self.connect()
        with self.assertRaises(errors.VerificationFailed) as caught:
            await client.lookup(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        self.assertIn("registry's signature", caught.exception.message)
        self.assertEqual(len(client.cache), 0)

    async def test_record_of_another_id_fails_verification(self) -> None:
        key, other = device(), device()
        record = self.registry.record_for(signed_registration(other))
        self.registry.records[str(derive_id(key.public_key()))] = record
        client = await self.connect()
        with self.assertRaises(errors.VerificationFailed):
            await client.lookup(SixIdAddress(derive_id(key.public_key()), DOMAIN))

    async def test_register_answered_with_another_registration(self) -> None:
        key = device()
        older = self.registry.record_for(signed_registration(key, seq=1))
        self.registry.tamper = lambda _data: older
        client = await self.connect()
        with self.assertRaises(errors.VerificationFailed) as caught:
            await client.register(signed_registration(key, seq=2))
        self.assertIn("another registration", caught.exception.message)

    async def test_signer_of_another_ca_is_refused(self) -> None:
        self.registry.signer_chain = registry_pki("impostor").signer_chain
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        client = await self.connect()
        with self.assertRaises(errors.ServerVerificationFailed) as caught:
            await client.lookup(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        self.assertIn("root CA is not the one you trust", caught.exception.message)

    async def test_signer_certificate_not_for_records_is_refused(self) -> None:
        pki = registry_pki()
        # The issuing CA's own certificate in the record-signing place: no record-signing EKU.
        self.registry.signer_chain = (pki.ca.issuing_certificate.public_bytes(Encoding.DER), *pki.signer_chain[1:])
        client = await self.connect()
        with self.assertRaises(errors.ServerVerificationFailed):
            await client.signer()

    async def test_server_of_another_ca_is_refused(self) -> None:
        with self.assertRaises(errors.ServerVerificationFailed) as caught:
            await self.connect(root=registry_pki("impostor").root)
        self.assertIn("does not chain to the root CA trusted", caught.exception.message)
        self.assertIn(f"at 127.0.0.1 port {self.port}", caught.exception.message)

    def test_certificate_for_another_host(self) -> None:
        reason = Failure(VerificationError(errors=[]))
        self.assertEqual(describe_tls_failure(reason), "the sixid server's certificate does not name the host dialled")

    async def test_watch_sees_changes_and_expiry(self) -> None:
        key = device()
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        watcher = await self.connect()
        seen: list[VerifiedRecord | None] = []
        changed: Deferred[None] = Deferred()

        def told(told_address: SixIdAddress, record: VerifiedRecord | None) -> None:
            self.assertEqual(told_address, address)
            seen.append(record)
            if not changed.called:
                changed.callback(None)

        self.assertIsNone(await watcher.watch(address, told))
        self.assertEqual(watcher.watching, [address])
        registrar = await self.connect()
        registered = await registrar.register(signed_registration(key, endpoints=ENDPOINTS[:1]))
        await changed
        assert seen[0] is not None
        self.assertEqual(seen[0].data, registered.data)
        self.assertEqual(seen[0].endpoints, ENDPOINTS[:1])
        # An expiry, then the watch ends: no later push is told.
        connection = self.registry.connections[0]
        connection.send(encode_push(Gone(address.sixid)))
        await watcher.ping()
        self.assertEqual(seen[1:], [None])
        await watcher.unwatch(address)
        await registrar.register(signed_registration(key, seq=3))
        await watcher.ping()
        self.assertEqual(len(seen), 2)
        self.assertEqual(watcher.watching, [])

    async def test_watch_answer_carries_the_current_record(self) -> None:
        key = device()
        data = self.registry.record_for(signed_registration(key))
        self.registry.store(data)
        client = await self.connect()
        current = await client.watch(SixIdAddress(derive_id(key.public_key()), DOMAIN), lambda _a, _r: None)
        assert current is not None
        self.assertEqual(current.data, data)

    async def test_push_before_the_watch_answer_is_told_after_it(self) -> None:
        key = device()
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        old = self.registry.record_for(signed_registration(key, seq=1))
        self.registry.store(old)
        newer = self.registry.record_for(signed_registration(key, seq=2))
        stale = self.registry.record_for(signed_registration(key, seq=1))
        self.registry.push_before_watch = newer
        client = await self.connect()
        seen: list[VerifiedRecord | None] = []
        current = await client.watch(address, lambda _address, record: seen.append(record))
        assert current is not None
        self.assertEqual(current.seq, 1)
        self.assertEqual([record.seq for record in seen if record is not None], [2])
        # A push older than what was told is not told.
        self.registry.connections[0].send(encode_push(Changed(stale)))
        await client.ping()
        self.assertEqual(len(seen), 1)

    async def test_pushed_record_that_fails_verification_is_not_told(self) -> None:
        key = device()
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        client = await self.connect()
        seen: list[VerifiedRecord | None] = []
        await client.watch(address, lambda _address, record: seen.append(record))
        forged = sign_record(
            ed25519.Ed25519PrivateKey.generate(),
            SignedRecord.from_bytes(self.registry.record_for(signed_registration(key))).record,
        ).to_bytes()
        self.registry.connections[0].send(encode_push(Changed(forged)))
        await client.ping()
        self.assertEqual(seen, [])
        self.flushLoggedErrors()

    async def test_server_error_without_id_ends_the_connection(self) -> None:
        self.registry.hold.add("ping")
        client = await self.connect()
        pinging = Deferred.fromCoroutine(client.ping())
        await client.signer()
        self.registry.connections[0].send(encode_error(None, errors.Unavailable("going down")))
        with self.assertRaises(errors.Unavailable):
            await pinging
        await client.when_lost()
        self.assertIsInstance(client.failure, errors.Unavailable)

    async def test_srv_names_the_server(self) -> None:
        zone = ZoneAuthority(DOMAIN, {b"_sixid._tcp.example.org": [srv(0, 0, self.port, "localhost")]})
        client = await connect_sixid(reactor, DOMAIN, trust=registry_pki().root, resolver=zone)
        self.addCleanup(client.close)
        self.assertEqual((client.host, client.port), ("localhost", self.port))
        await client.ping()

    async def test_fetch_root_by_fingerprint(self) -> None:
        root = registry_pki().root
        fetched = await fetch_root(reactor, DOMAIN, fingerprint(root), server=("127.0.0.1", self.port))
        self.assertEqual(fetched, root)
        with self.assertRaises(errors.ServerVerificationFailed) as caught:
            await fetch_root(reactor, DOMAIN, "0" * 64, server=("127.0.0.1", self.port))
        self.assertIn("refusing to trust it", caught.exception.message)

    async def test_unreachable_server(self) -> None:
        port = await closed_port()
        with self.assertRaises(errors.ConnectionLost):
            await connect_sixid(reactor, DOMAIN, trust=registry_pki().root, server=("127.0.0.1", port), timeout=5)


class NoSuchName:
    """A resolver answering NXDOMAIN."""

    def lookupService(self, name: str) -> Deferred[Any]:
        return fail(DNSNameError(name))


class Failing:
    """A resolver that gets no answer."""

    def lookupService(self, name: str) -> Deferred[Any]:
        return fail(DNSQueryTimeoutError(name))


class DiscoveryTests(TestCase):
    async def test_without_srv_the_domain_on_4606(self) -> None:
        self.assertEqual(await find_servers(DOMAIN, NoSuchName()), [(DOMAIN, 4606)])

    async def test_dns_failure(self) -> None:
        with self.assertRaises(errors.ConnectionLost) as caught:
            await find_servers(DOMAIN, Failing())
        self.assertIn("in the DNS", caught.exception.message)

    async def test_srv_saying_none(self) -> None:
        zone = ZoneAuthority(DOMAIN, {b"_sixid._tcp.example.org": [dns.Record_SRV(0, 0, 0, b".", ttl=60)]})
        with self.assertRaises(errors.Unavailable):
            await find_servers(DOMAIN, zone)


class ProtocolTests(TestCase):
    """The connection on a fake transport and clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())  # the certificates are valid now
        self.protocol = SixidClientProtocol(self.clock, 15.0)
        self.protocol.ready.addErrback(lambda _failure: None)  # no TLS here
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = SixidClient(self.protocol, DOMAIN, registry_pki().root, host="127.0.0.1", port=4606)

    def sent(self) -> list[Any]:
        requests = [parse_request(frame) for frame in frames_of(self.transport.value())]
        self.transport.clear()
        return requests

    def answer(self, request_id: int, result: Any) -> None:
        self.protocol.dataReceived(encode_frame(encode_response(request_id, result)))

    def test_pipelined_up_to_the_cap(self) -> None:
        pings = [Deferred.fromCoroutine(self.client.ping()) for _ in range(MAX_OUTSTANDING + 3)]
        sent = self.sent()
        self.assertEqual([request.id for request in sent], list(range(1, MAX_OUTSTANDING + 1)))
        self.answer(5, Pong())
        self.assertIsNone(self.successResultOf(pings[4]))
        self.assertEqual([request.id for request in self.sent()], [MAX_OUTSTANDING + 1])
        self.assertNoResult(pings[0])

    def test_answers_in_any_order(self) -> None:
        first = Deferred.fromCoroutine(self.client.ping())
        second = Deferred.fromCoroutine(self.client.unwatch(SixIdAddress(derive_id(device().public_key()), DOMAIN)))
        self.assertEqual([type(request.operation) for request in self.sent()], [Ping, Unwatch])
        self.answer(2, Unwatched())
        self.successResultOf(second)
        self.assertNoResult(first)
        self.answer(1, Pong())
        self.successResultOf(first)

    def test_wrong_result_ends_the_connection(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.answer(1, Unwatched())
        self.failureResultOf(pinging, errors.MalformedMessage)
        self.assertTrue(self.transport.disconnecting)

    def test_answer_to_no_request_ends_the_connection(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.answer(7, Pong())
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(pinging, errors.MalformedMessage)

    def test_malformed_frame_ends_the_connection(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.protocol.dataReceived(encode_frame(b'<response id="1"><what/></response>'))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(pinging, errors.MalformedMessage)

    def test_timeout(self) -> None:
        pinging = Deferred.fromCoroutine(self.client.ping())
        self.clock.advance(14.9)
        self.assertNoResult(pinging)
        self.clock.advance(0.2)
        self.failureResultOf(pinging, errors.Timeout)
        self.assertTrue(self.transport.disconnecting)  # aborted: a late answer could not be matched

    def test_lost_connection_fails_everything(self) -> None:
        pings = [Deferred.fromCoroutine(self.client.ping()) for _ in range(MAX_OUTSTANDING + 1)]
        lost = self.client.when_lost()
        self.protocol.connectionLost(Failure(ConnectionError("reset")))
        for pinging in pings:
            self.failureResultOf(pinging, errors.ConnectionLost)
        self.successResultOf(lost)
        with self.assertRaises(errors.ConnectionLost):
            self.protocol.request(Ping())

    def test_pings_every_minute_while_watching(self) -> None:
        address = SixIdAddress(derive_id(device().public_key()), DOMAIN)
        watching = Deferred.fromCoroutine(self.client.watch(address, lambda _a, _r: None))
        requests = self.sent()
        self.assertEqual([type(request.operation) for request in requests], [Signer, Watch])
        self.answer(requests[0].id, SignerChain(registry_pki().signer_chain))
        self.answer(requests[1].id, Watching(None))
        self.assertIsNone(self.successResultOf(watching))
        self.clock.advance(PING_INTERVAL - 1)
        self.assertEqual(self.sent(), [])
        self.clock.advance(1)
        (ping,) = self.sent()
        self.assertIsInstance(ping.operation, Ping)
        self.answer(ping.id, Pong())
        unwatching = Deferred.fromCoroutine(self.client.unwatch(address))
        (unwatch,) = self.sent()
        self.answer(unwatch.id, Unwatched())
        self.successResultOf(unwatching)
        self.clock.advance(PING_INTERVAL * 3)
        self.assertEqual(self.sent(), [])  # nothing watched: no keep-alive

    def test_pushes_held_before_a_watch_answer_are_bounded(self) -> None:
        key = device()
        address = SixIdAddress(derive_id(key.public_key()), DOMAIN)
        watching = Deferred.fromCoroutine(self.client.watch(address, lambda _a, _r: None))
        record = FakeRegistry(registry_pki()).record_for(signed_registration(key))
        for _ in range(MAX_HELD_PUSHES):
            self.protocol.dataReceived(encode_frame(encode_push(Changed(record))))
        self.assertFalse(self.transport.disconnecting)
        self.protocol.dataReceived(encode_frame(encode_push(Changed(record))))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(watching, errors.MalformedMessage)

    def test_signer_fetched_once_for_concurrent_requests(self) -> None:
        first = self.client.signer()
        second = self.client.signer()
        (request,) = self.sent()
        self.answer(request.id, SignerChain(registry_pki().signer_chain))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.successResultOf(self.client.signer())
        self.assertEqual(self.sent(), [])


class RecordCacheTests(TestCase):
    def record(self, seq: int, expires: int) -> VerifiedRecord:
        key = device()
        return VerifiedRecord(SixIdAddress(derive_id(key.public_key()), DOMAIN), None, seq, 0, expires, 0, (), b"", b"")

    def test_kept_until_it_expires(self) -> None:
        cache = RecordCache()
        record = self.record(1, 100)
        cache.put(record)
        self.assertIs(cache.get(record.address.sixid, 99.9), record)
        self.assertIsNone(cache.get(record.address.sixid, 100))
        self.assertEqual(len(cache), 0)
        self.assertEqual(cache.stats()["label"], "sixid records")

    def test_an_older_record_does_not_replace_a_newer(self) -> None:
        cache = RecordCache()
        newer = self.record(5, 100)
        older = VerifiedRecord(newer.address, None, 4, 0, 100, 0, (), b"", b"")
        cache.put(newer)
        cache.put(older)
        self.assertIs(cache.get(newer.address.sixid, 0), newer)

    def test_bounded(self) -> None:
        cache = RecordCache(size=2)
        records = [self.record(1, 100) for _ in range(3)]
        for record in records:
            cache.put(record)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get(records[0].address.sixid, 0))


class RegistryTests(TestCase):
    """The client against the real server, hosted by a real registry (``twistd irp
    --sixid``: real TLS on loopback, a real SQLite file, a real CA and enrolled user)."""

    async def start(self, policy: str) -> RunningRegistry:
        self.registry = await RunningRegistry(self, sixid=SixidSettings(policy=policy)).start()
        return self.registry

    async def connect(self) -> SixidClient:
        client = await connect_sixid(reactor, DOMAIN, trust=self.registry.root, server=("127.0.0.1", self.registry.sixid_port))
        self.addCleanup(client.close)
        return client

    async def test_certified_registration_watched_and_looked_up(self) -> None:
        await self.start("certified")
        await self.registry.add_user("alice")
        alice = await self.registry.issue("alice")
        address = SixIdAddress(derive_id(alice.key.public_key()), DOMAIN)
        watcher = await self.connect()
        told: Deferred[VerifiedRecord | None] = Deferred()
        self.assertIsNone(await watcher.watch(address, lambda _address, record: told.callback(record)))
        now = int(reactor.seconds())
        chain = [certificate.public_bytes(Encoding.DER) for certificate in (alice.certificate, *alice.chain)]
        signed = sign_registration(alice.key, Registration(DOMAIN, address.sixid, 1, now, now + 600, ENDPOINTS), chain)
        registrar = await self.connect()
        registered = await registrar.register(signed)
        self.assertEqual(registered.owner, Identity("alice", DOMAIN))
        pushed = await told.addTimeout(30, reactor)
        assert pushed is not None
        self.assertEqual(pushed.data, registered.data)
        found = await (await self.connect()).lookup(address)
        self.assertEqual((found.owner, found.endpoints, found.seq), (Identity("alice", DOMAIN), ENDPOINTS, 1))

    async def test_refusals_come_back_as_their_errors(self) -> None:
        await self.start("certified")
        client = await self.connect()
        key = device()
        with self.assertRaises(errors.NotAllowed):
            await client.register(signed_registration(key))  # no certificate: the policy wants one
        with self.assertRaises(errors.UnknownId):
            await client.lookup(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        await client.ping()  # the connection outlives refusals

    async def test_open_policy_replay_and_withdrawal(self) -> None:
        await self.start("open")
        client = await self.connect()
        key = device()
        first = await client.register(signed_registration(key, seq=5))
        self.assertIsNone(first.owner)
        with self.assertRaises(errors.Replayed):
            await client.register(signed_registration(key, seq=5))
        withdrawn = await client.register(signed_registration(key, seq=6, endpoints=()))
        self.assertEqual(withdrawn.endpoints, ())
        other = await self.connect()
        self.assertEqual((await other.lookup(withdrawn.address)).seq, 6)
