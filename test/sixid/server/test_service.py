"""SixidServer over real TLS sockets on loopback, on the registry's real store (a SQLite
file), with real keys and certificates. The server's timers run on a fake clock set to the
real time (expiry without sleeping); the sockets and the store on the real reactor."""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from common.tls import client_options
from common.wire.framing import encode_frame
from irp.server.store import RegistryStore, open_store
from irp.wire.records import RecordSigner
from sixid import wire
from sixid.ids import SixId, SixIdAddress
from sixid.records import SignedRegistration, verify_record
from sixid.server.operations import SixidSettings
from sixid.server.service import SixidServer
from test import pki
from test.sixid.server.helpers import DOMAIN, Device, RawClient, certified_device, registry_keys


class ServiceTestCase(TestCase):
    """A SixidServer listening on 127.0.0.1 with TLS."""

    policy = "certified"

    async def setUp(self) -> None:  # type: ignore[override]
        self.keys = registry_keys()
        self.clock = Clock()
        self.now = int(time.time())
        self.clock.advance(self.now)
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(self.path)
        self.store = await self.open_store()
        self.settings = SixidSettings(policy=self.policy)
        self.server = self.start_server(self.store)

    async def open_store(self) -> RegistryStore:
        store = await open_store(
            os.path.join(self.path, "registry.sqlite3"),
            domain=DOMAIN,
            signer=RecordSigner(self.keys.signing_key, self.keys.signer_chain[0]),
            now=self.clock.seconds,
            reactor=reactor,
        )
        self.addCleanup(store.close)
        return store

    def start_server(self, store: RegistryStore) -> SixidServer:
        server = SixidServer(
            domain=DOMAIN,
            store=store,
            signing_key=self.keys.signing_key,
            signer_chain=self.keys.signer_chain,
            check_certificate=self.keys.check_certificate(),
            settings=self.settings,
            reactor=self.clock,
        )
        server.start()
        self.addCleanup(server.stop)
        port: IListeningPort = reactor.listenTCP(0, server.factory(self.keys.tls_context()), interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port  # type: ignore[attr-defined]

        async def close() -> None:
            await server.close_connections(grace=1.0)

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return server

    async def connect(self, *, certificate: Any = None) -> RawClient:
        extra: dict[str, Any] = {}
        if certificate is not None:
            extra = {"client_key": certificate.key, "client_certificate": certificate.certificate}
        options = client_options("localhost", [self.keys.ca.root_certificate], **extra)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port, options)
        client: RawClient = await connectProtocol(endpoint, RawClient())
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport.connected else None)  # type: ignore[union-attr]
        return client

    def verify(self, message: Any, device: Device) -> Any:
        self.assertIsInstance(message, wire.Response, getattr(message, "error", None))
        return verify_record(
            message.result.record,
            expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN),
            signer=self.keys.signing_key.public_key(),
            now=self.now,
        )


class CertifiedTests(ServiceTestCase):
    """The default policy over TLS."""

    async def test_register_then_look_up_elsewhere(self) -> None:
        device = certified_device(self.keys.ca, "erin")
        registrar = await self.connect()
        registered = self.verify(await registrar.ask(wire.Register(device.register(self.now))), device)
        self.assertEqual(str(registered.owner), "erin@example.org")
        reader = await self.connect()
        looked_up = self.verify(await reader.ask(wire.Lookup(SixId.parse(device.sixid))), device)
        self.assertEqual(looked_up.data, registered.data)
        signer = await reader.ask(wire.Signer())
        self.assertEqual(len(signer.result.certificates), 3)  # type: ignore[union-attr]

    async def test_uncertified_refused(self) -> None:
        client = await self.connect()
        answer = await client.ask(wire.Register(Device().register(self.now)))
        assert isinstance(answer, wire.ErrorAnswer)
        self.assertEqual((answer.id, answer.error.name), (1, "not-allowed"))
        self.assertIn("'certified'", answer.error.message)

    async def test_bad_registrations_answered_in_turn(self) -> None:
        device = certified_device(self.keys.ca, "frank")
        client = await self.connect()
        self.verify(await client.ask(wire.Register(device.register(self.now, seq=10))), device)
        signed = device.register(self.now, seq=11)
        cases = [
            (SignedRegistration(signed.registration_bytes, signed.spki, b"\x02" * 72, signed.certificates), "bad-signature"),
            (device.register(self.now, seq=10), "replayed"),
            (device.register(self.now, seq=12, signed_at=self.now - 3600), "stale"),
            (certified_device(pki.make_ca(DOMAIN, label="impostor")).register(self.now), "certificate-rejected"),
            (device.register(self.now, domain="example.com", seq=13), "invalid-argument"),
        ]
        for signed_registration, name in cases:
            answer = await client.ask(wire.Register(signed_registration))
            assert isinstance(answer, wire.ErrorAnswer), answer
            self.assertEqual(answer.error.name, name)
        unknown = await client.ask(wire.Lookup(SixId.parse(Device().sixid)))
        assert isinstance(unknown, wire.ErrorAnswer)
        self.assertEqual(unknown.error.name, "unknown-id")
        self.assertEqual(await self.store.count_sixids(), 1)

    async def test_no_client_certificate_asked_for(self) -> None:
        user = pki.issue_user(self.keys.ca, "gina")
        client = await self.connect(certificate=user)
        self.assertEqual(await client.ask(wire.Ping()), wire.Response(1, wire.Pong()))
        (protocol,) = self.server.connections.open
        self.assertIsNone(protocol.transport.getHandle().get_peer_certificate())  # type: ignore[union-attr]

    async def test_records_survive_a_restart(self) -> None:
        device = certified_device(self.keys.ca, "hugo")
        client = await self.connect()
        self.verify(await client.ask(wire.Register(device.register(self.now))), device)
        store = await self.open_store()
        self.start_server(store)
        other = await self.connect()
        self.verify(await other.ask(wire.Lookup(SixId.parse(device.sixid))), device)
        replayed = await other.ask(wire.Register(device.register(self.now, seq=1)))
        assert isinstance(replayed, wire.ErrorAnswer)
        self.assertEqual(replayed.error.name, "replayed")


class WatchOverTLSTests(ServiceTestCase):
    """Watches over TLS: pushes on change, expiry and from another process."""

    policy = "open"

    async def test_changed_then_gone(self) -> None:
        device = Device()
        watcher = await self.connect()
        self.assertEqual(await watcher.ask(wire.Watch(SixId.parse(device.sixid))), wire.Response(1, wire.Watching(None)))
        registrar = await self.connect()
        self.verify(await registrar.ask(wire.Register(device.register(self.now, lifetime=120))), device)
        changed = await watcher.next()
        assert isinstance(changed, wire.Changed)
        self.assertEqual(verify_record(changed.record, expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN), signer=self.keys.signing_key.public_key(), now=self.now).seq, 1)
        self.clock.advance(120)
        self.assertEqual(await watcher.next(), wire.Gone(SixId.parse(device.sixid)))
        self.assertEqual(self.server.connection_count(), 2)

    async def test_other_process_commit(self) -> None:
        device = Device()
        watcher = await self.connect()
        await watcher.ask(wire.Watch(SixId.parse(device.sixid)))
        # Another worker on the same database file commits; the store's change feed tells
        # this one, whose watcher is pushed the record.
        other_store = await self.open_store()
        other = self.start_server(other_store)
        registrar = await self.connect()  # to the other worker (the last one started)
        self.verify(await registrar.ask(wire.Register(device.register(self.now))), device)
        self.assertEqual(other.connection_count(), 1)
        changed = await watcher.next()
        assert isinstance(changed, wire.Changed)
        self.assertEqual(verify_record(changed.record, expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN), signer=self.keys.signing_key.public_key(), now=self.now).seq, 1)

    async def test_too_many_watches(self) -> None:
        self.settings.max_watches = 2
        client = await self.connect()
        for _ in range(2):
            self.assertIsInstance(await client.ask(wire.Watch(SixId.parse(Device().sixid))), wire.Response)
        answer = await client.ask(wire.Watch(SixId.parse(Device().sixid)))
        assert isinstance(answer, wire.ErrorAnswer)
        self.assertEqual((answer.error.name, answer.error.code), ("too-many-watches", 430))
        self.assertIsInstance(await client.ask(wire.Ping()), wire.Response)  # the connection goes on

    async def test_rate_limited(self) -> None:
        self.settings.new_ids_per_address_per_hour = 2
        self.server.operations.new_ids.limit = 2
        client = await self.connect()
        for _ in range(2):
            self.assertIsInstance(await client.ask(wire.Register(Device().register(self.now))), wire.Response)
        answer = await client.ask(wire.Register(Device().register(self.now)))
        assert isinstance(answer, wire.ErrorAnswer)
        self.assertEqual((answer.error.name, answer.error.code), ("rate-limited", 429))

    async def test_sweeper(self) -> None:
        device = Device()
        client = await self.connect()
        await client.ask(wire.Register(device.register(self.now, lifetime=30)))
        self.assertEqual(await self.store.count_sixids(), 1)
        self.clock.advance(299)  # expired, kept for the replay window
        await self.server.sweep()
        self.assertEqual(await self.store.count_sixids(), 1)
        self.clock.advance(1)  # keep_until = signed_at + 300 (the minute's sweep starts too)
        await self.server.sweep()
        self.assertEqual(await self.store.count_sixids(), 0)


class HostilePeerTests(ServiceTestCase):
    """Bad peers over TLS: the connection ends with a clear error."""

    async def closed_with(self, client: RawClient) -> wire.ErrorAnswer:
        answer = await client.next()
        assert isinstance(answer, wire.ErrorAnswer), answer
        self.assertIsNone(answer.id)
        await client.lost
        return answer

    async def test_oversized_frame(self) -> None:
        client = await self.connect()
        client.transport.write(b"\x00\x10\x00\x00" + b"x" * 1000)  # type: ignore[union-attr]
        self.assertEqual((await self.closed_with(client)).error.name, "too-large")

    async def test_hostile_xml(self) -> None:
        client = await self.connect()
        client.transport.write(encode_frame(b'<!DOCTYPE r [<!ENTITY a "b">]><request v="1" id="1"><ping/></request>'))  # type: ignore[union-attr]
        self.assertEqual((await self.closed_with(client)).error.name, "malformed-message")

    async def test_slow_peer(self) -> None:
        client = await self.connect()
        ping = encode_frame(wire.encode_request(wire.Request(1, wire.Ping())))
        partial = encode_frame(wire.encode_request(wire.Request(2, wire.Ping())))[:6]
        # One write: once the first ping is answered, the server holds the partial frame.
        client.transport.write(ping + partial)  # type: ignore[union-attr]
        self.assertEqual(await client.next(), wire.Response(1, wire.Pong()))
        self.clock.advance(30)
        answer = await self.closed_with(client)
        self.assertEqual((answer.error.name, answer.error.code), ("timeout", 408))

    async def test_silent_peer(self) -> None:
        client = await self.connect()
        await client.ask(wire.Ping())
        self.clock.advance(300)
        self.assertEqual((await self.closed_with(client)).error.name, "timeout")

