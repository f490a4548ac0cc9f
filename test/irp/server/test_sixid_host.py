"""The registry hosting sixid (``twistd irp --sixid``): the certificate check it gives the
sixid server, and sixid served on its own port with the registry's TLS certificate,
asking no client certificate (real TLS on loopback, a real SQLite file, real keys)."""

from __future__ import annotations

import os
import socket
import struct
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from common.endpoint import Endpoint
from common.identity import Identity
from common.pki import errors as pki_errors
from common.tls import client_options
from irp.server.ca import generate_key
from irp.server.service import RegistryService, RegistrySettings
from irp.server.sixid_host import RegistryCertificateChecker
from sixid.ids import derive_id
from sixid.records import Registration, sign_registration
from sixid.server.service import SixidSettings
from sixid.wire import (
    Changed,
    ErrorAnswer,
    Lookup,
    Ping,
    Pong,
    RecordResult,
    Register,
    Request,
    Response,
    Signer,
    SignerChain,
    Watch,
    Watching,
    encode_request,
    parse_answer,
)
from test import pki
from test.helpers import RunningRegistry


@implementer(IHandshakeListener)
class FrameClient(Protocol):
    """Sends framed requests, collects framed answers; remembers what the TLS handshake
    showed of the server's certificate request."""

    def __init__(self) -> None:
        self.buffer = b""
        self.frames: list[bytes] = []
        self.waiting: list[tuple[int, Deferred[list[bytes]]]] = []
        self.handshake_done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.write(b"")  # start the handshake

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted's name
        if not self.handshake_done.called:
            self.handshake_done.callback(None)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.buffer += data
        while len(self.buffer) >= 4:
            (size,) = struct.unpack(">I", self.buffer[:4])
            if len(self.buffer) < 4 + size:
                break
            self.frames.append(self.buffer[4 : 4 + size])
            self.buffer = self.buffer[4 + size :]
        for count, waiting in list(self.waiting):
            if len(self.frames) >= count:
                self.waiting.remove((count, waiting))
                waiting.callback(self.frames[:count])

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 - Twisted's name
        for _count, waiting in self.waiting:
            waiting.errback(reason or Failure(ConnectionError("lost")))
        self.waiting.clear()

    def send(self, payload: bytes) -> None:
        self.transport.write(struct.pack(">I", len(payload)) + payload)

    def frames_until(self, count: int) -> Deferred[list[bytes]]:
        waiting: Deferred[list[bytes]] = Deferred()
        waiting.addTimeout(10, global_reactor)
        if len(self.frames) >= count:
            waiting.callback(self.frames[:count])
        else:
            self.waiting.append((count, waiting))
        return waiting

    def client_ca_names(self) -> list[Any]:
        """The CA names the server's certificate request listed (empty: none asked)."""
        return list(self.transport.getHandle().get_client_ca_list())


async def connect(testcase: TestCase, registry: RunningRegistry, port: int) -> FrameClient:
    """A TLS connection to ``port`` trusting the registry's root (closed at the test's end)."""
    client = FrameClient()
    endpoint = wrapClientTLS(client_options("localhost", [registry.root]), TCP4ClientEndpoint(global_reactor, "127.0.0.1", port))
    await endpoint.connect(Factory.forProtocol(lambda: client))
    testcase.addCleanup(lambda: client.transport.loseConnection())
    await client.handshake_done.addTimeout(10, global_reactor)
    return client


class SixidHostTests(TestCase):
    async def registry(self, **fields: Any) -> RunningRegistry:
        return await RunningRegistry(self, **fields).start()

    async def connect(self, registry: RunningRegistry, port: int) -> FrameClient:
        return await connect(self, registry, port)

    # -- the certificate check --------------------------------------------------------

    async def checker(self, registry: RunningRegistry) -> RegistryCertificateChecker:
        return RegistryCertificateChecker(registry.registry, registry.root, [registry.ca.issuing_certificate])

    async def test_issued_certificate_names_its_owner(self) -> None:
        registry = await self.registry()
        await registry.add_user("alice")
        alice = await registry.issue("alice")
        check = await self.checker(registry)
        identity = await check([alice.certificate, *alice.chain], global_reactor.seconds())
        self.assertEqual(identity, Identity("alice", "example.org"))
        # Without the issuing CA: the registry completes the chain itself.
        self.assertEqual(await check([alice.certificate], global_reactor.seconds()), Identity("alice", "example.org"))

    async def test_revoked_certificate_refused(self) -> None:
        registry = await self.registry()
        await registry.add_user("alice")
        alice = await registry.issue("alice")
        await registry.store.revoke_certificate(alice.serial, "key-compromise")
        check = await self.checker(registry)
        with self.assertRaises(pki_errors.CertificateRevoked):
            await check([alice.certificate], global_reactor.seconds())

    async def test_deleted_users_certificate_refused(self) -> None:
        registry = await self.registry()
        await registry.add_user("alice")
        alice = await registry.issue("alice")
        await registry.store.delete_user("alice")
        check = await self.checker(registry)
        with self.assertRaises(pki_errors.CertificateRevoked):
            await check([alice.certificate], global_reactor.seconds())

    async def test_expired_certificate_refused(self) -> None:
        registry = await self.registry()
        await registry.add_user("alice")
        alice = await registry.issue("alice")
        check = await self.checker(registry)
        later = alice.certificate.not_valid_after_utc + timedelta(days=1)
        with self.assertRaises(pki_errors.CertificateInvalid) as raised:
            await check([alice.certificate], later.timestamp())
        self.assertEqual(raised.exception.reason, "expired")

    async def test_other_ca_refused(self) -> None:
        """A certificate of another CA naming a user of this domain, or of a federated
        domain's CA, is not this registry's."""
        registry = await self.registry()
        await registry.add_user("alice")
        check = await self.checker(registry)
        for ca in (pki.make_ca("example.org"), pki.make_ca("example.net")):
            issued = pki.issue_user(ca, "alice")
            with self.assertRaises(pki_errors.CertificateInvalid) as raised:
                await check([issued.certificate, ca.issuing_certificate], global_reactor.seconds())
            self.assertEqual(raised.exception.reason, "unknown-issuer")

    async def test_certificate_not_recorded_refused(self) -> None:
        """Signed by this registry's CA but not in its records (a restored database, a
        stolen CA key): refused, as the certificate login refuses it."""
        registry = await self.registry()
        key = generate_key("p256")
        certificate = registry.ca.issue_user_certificate(Identity("ghost", "example.org"), key.public_key())
        check = await self.checker(registry)
        with self.assertRaises(pki_errors.CertificateInvalid) as raised:
            await check([certificate], global_reactor.seconds())
        self.assertEqual(raised.exception.reason, "unknown-issuer")

    async def test_empty_chain_refused(self) -> None:
        registry = await self.registry()
        check = await self.checker(registry)
        with self.assertRaises(pki_errors.CertificateInvalid):
            await check([], global_reactor.seconds())

    # -- serving ------------------------------------------------------------------------

    async def test_no_sixid_by_default(self) -> None:
        registry = await self.registry()
        assert registry.service is not None
        self.assertEqual((registry.service.sixid_ports, registry.service.sixid), ([], None))

    async def test_served_without_client_certificate_request(self) -> None:
        """sixid answers on its own port with the registry's server certificate and asks
        for no client certificate (the IRP port does)."""
        registry = await self.registry(sixid=SixidSettings(policy="open"))
        sixid = await self.connect(registry, registry.sixid_port)
        self.assertEqual(sixid.client_ca_names(), [])
        sixid.send(encode_request(Request(7, Ping())))
        [answer] = await sixid.frames_until(1)
        self.assertEqual(parse_answer(answer), Response(7, Pong()))
        irp = await self.connect(registry, registry.port)
        self.assertNotEqual(irp.client_ca_names(), [])

    async def test_certified_registration_end_to_end(self) -> None:
        """A device whose key the domain's CA certified registers (policy certified): the
        record names its owner, and a look-up answers it."""
        registry = await self.registry(sixid=SixidSettings())
        await registry.add_user("alice")
        alice = await registry.issue("alice")
        now = int(global_reactor.seconds())
        sixid = derive_id(alice.key.public_key())
        registration = Registration("example.org", sixid, 1, now, now + 600, (Endpoint("2001:db8::7", 4605),))
        signed = sign_registration(
            alice.key, registration, [alice.certificate.public_bytes(Encoding.DER), registry.ca.issuing_certificate.public_bytes(Encoding.DER)]
        )
        client = await self.connect(registry, registry.sixid_port)
        client.send(encode_request(Request(1, Register(signed))))
        [registered] = await client.frames_until(1)
        answer = parse_answer(registered)
        assert isinstance(answer, Response) and isinstance(answer.result, RecordResult), answer
        stored = await registry.store.get_sixid_record(str(sixid), now)
        assert stored is not None
        self.assertEqual((stored.owner, stored.seq, stored.record), ("alice@example.org", 1, answer.result.record))
        client.send(encode_request(Request(2, Lookup(sixid))))
        _first, looked_up = await client.frames_until(2)
        self.assertEqual(parse_answer(looked_up), Response(2, RecordResult(stored.record)))

    async def test_listed_policy_follows_the_allow_list(self) -> None:
        """Under the policy listed, an ID registers once an administrator allowed it over
        IRP, and no longer once disallowed."""
        registry = await self.registry(sixid=SixidSettings(policy="listed"))
        admin = await registry.admin()
        key = generate_key("ed25519")
        sixid = derive_id(key.public_key())
        client = await self.connect(registry, registry.sixid_port)
        now = int(global_reactor.seconds())

        async def register(request_id: int, seq: int) -> Any:
            registration = Registration("example.org", sixid, seq, now, now + 600, (Endpoint("192.0.2.7", 4605),))
            client.send(encode_request(Request(request_id, Register(sign_registration(key, registration)))))
            frames = await client.frames_until(request_id)
            return parse_answer(frames[-1])

        refused = await register(1, 1)
        assert isinstance(refused, ErrorAnswer), refused
        self.assertEqual((refused.id, refused.error.name), (1, "not-allowed"))
        self.assertTrue(await admin.sixid_allow(sixid.grouped(), "a test device"))
        accepted = await register(2, 2)
        assert isinstance(accepted, Response) and isinstance(accepted.result, RecordResult), accepted
        self.assertTrue(await admin.sixid_disallow(str(sixid)))
        refused = await register(3, 3)
        assert isinstance(refused, ErrorAnswer), refused
        self.assertEqual(refused.error.name, "not-allowed")

    async def test_renewed_certificates_reach_sixid(self) -> None:
        """After the daily renewal, new sixid connections get the new server certificate
        and <signer/> answers the new record-signing certificate."""
        registry = await self.registry(sixid=SixidSettings(policy="open"))
        service = registry.service
        assert service is not None and service.credentials is not None
        old = service.credentials
        await service.renew_credentials(renew_before=timedelta(days=398))
        new = service.credentials
        self.assertNotEqual(new.signing_certificate, old.signing_certificate)
        client = await self.connect(registry, registry.sixid_port)
        self.assertEqual(client.transport.getPeerCertificate().to_cryptography(), new.server_certificate)
        client.send(encode_request(Request(3, Signer())))
        [answer] = await client.frames_until(1)
        parsed = parse_answer(answer)
        assert isinstance(parsed, Response) and isinstance(parsed.result, SignerChain), parsed
        self.assertEqual(parsed.result.certificates[0], new.signing_certificate.public_bytes(Encoding.DER))


class CrossProcessWatchTests(TestCase):
    """Two registry processes on one database (as --workers runs them): a registration
    accepted by one is pushed to a watcher connected to the other (the store's change
    feed), on SQLite (the change log, polled) and on PostgreSQL (LISTEN)."""

    async def pair(self, database: str | None = None) -> tuple[RunningRegistry, RunningRegistry]:
        settings = SixidSettings(policy="open")
        first = await RunningRegistry(self, sixid=settings, database=database).start()
        second = await RunningRegistry(self, sixid=settings, database=database, data_dir=first.data_dir).start()
        return first, second

    async def check_pushed_across(self, first: RunningRegistry, second: RunningRegistry) -> None:
        key = generate_key("ed25519")
        sixid = derive_id(key.public_key())
        watcher = await connect(self, second, second.sixid_port)
        watcher.send(encode_request(Request(1, Watch(sixid))))
        [watching] = await watcher.frames_until(1)
        self.assertEqual(parse_answer(watching), Response(1, Watching(None)))
        now = int(global_reactor.seconds())
        registration = Registration("example.org", sixid, 1, now, now + 600, (Endpoint("192.0.2.7", 4605),))
        registrant = await connect(self, first, first.sixid_port)
        registrant.send(encode_request(Request(1, Register(sign_registration(key, registration)))))
        [registered] = await registrant.frames_until(1)
        answer = parse_answer(registered)
        assert isinstance(answer, Response) and isinstance(answer.result, RecordResult), answer
        _watching, pushed = await watcher.frames_until(2)
        self.assertEqual(parse_answer(pushed), Changed(answer.result.record))

    async def test_sqlite(self) -> None:
        await self.check_pushed_across(*await self.pair())

    async def test_postgresql(self) -> None:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise SkipTest(f"no PostgreSQL server: {error}") from None
        first, second = await self.pair(server.create_database())
        assert second.service is not None and second.service.store is not None
        listener = second.service.store.sixid_listener
        assert listener is not None
        await listener.ready
        await self.check_pushed_across(first, second)


class AdoptedSocketsTests(TestCase):
    """A worker process adopts the main process's listening sockets: IRP's first, then
    sixid's (irp.server.workers hands them over in that order)."""

    async def test_adopted_sockets_split_between_irp_and_sixid(self) -> None:
        sockets = []
        for _ in range(3):
            listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            sockets.append(listening)
            self.addCleanup(listening.close)
        settings = RegistrySettings(
            domain="example.org",
            data_dir=os.path.abspath(self.mktemp()),
            listen=["tcp:0:interface=127.0.0.1"],
            sixid=SixidSettings(),
            sixid_listen=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
            adopted=[(os.dup(listening.fileno()), socket.AF_INET) for listening in sockets],
        )
        service = RegistryService(settings, global_reactor)
        irp, sixid = service._bind(), service._bind_sixid()
        assert sixid is not None
        irp_ports, sixid_ports = await irp.ports(), await sixid.ports()
        self.addCleanup(lambda: [port.stopListening() for port in [*irp_ports, *sixid_ports]])
        ports = [listening.getsockname()[1] for listening in sockets]
        self.assertEqual([port.getHost().port for port in irp_ports], ports[:1])  # type: ignore[attr-defined]
        self.assertEqual([port.getHost().port for port in sixid_ports], ports[1:])  # type: ignore[attr-defined]
