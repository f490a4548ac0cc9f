"""The sixid adapter over fake transports: frames in, frames out; refusals, deadlines,
padding, pushes, connection counts."""

from __future__ import annotations

import base64
import random
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from common.wire.framing import encode_frame
from irp import errors as irp_errors
from sixid import wire
from sixid.ids import SixId
from sixid.server.operations import Operations, SixidSettings
from sixid.server.protocol import SixidFactory, SixidProtocol
from sixid.server.watches import WatchHub
from test.helpers import frames_of
from test.sixid.server.helpers import DOMAIN, Device, MemoryStore, registry_keys


class ProtocolTestCase(TestCase):
    """A SixidFactory on a MemoryStore and a fake clock at the real time."""

    def setUp(self) -> None:
        self.keys = registry_keys()
        self.clock = Clock()
        self.now = int(time.time())
        self.clock.advance(self.now)
        self.store = MemoryStore()
        self.settings = SixidSettings(policy="open")
        self.hub = WatchHub(self.store, self.clock)
        self.operations = Operations(
            domain=DOMAIN,
            store=self.store,
            signing_key=self.keys.signing_key,
            signer_chain=[c.public_bytes(serialization.Encoding.DER) for c in self.keys.signer_chain],
            check_certificate=self.keys.check_certificate(),
            settings=self.settings,
            hub=self.hub,
            clock=self.clock,
        )
        self.factory = SixidFactory(self.operations, self.clock, self.settings.limits)
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)  # type: ignore[arg-type]

    def connect(self, host: str = "192.0.2.1") -> tuple[SixidProtocol, StringTransport]:
        protocol: SixidProtocol = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))  # type: ignore[assignment]
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    def answers(self, transport: StringTransport) -> list[Any]:
        data = transport.value()
        transport.clear()
        return [wire.parse_answer(payload) for payload in frames_of(data)]

    def request(self, protocol: SixidProtocol, request_id: int, operation: Any) -> None:
        protocol.dataReceived(encode_frame(wire.encode_request(wire.Request(request_id, operation))))

    def refusals(self) -> list[str]:
        return [formatEvent(event) for event in self.logged if "refused" in formatEvent(event) or "Closing" in formatEvent(event)]


class RequestTests(ProtocolTestCase):
    """Requests and answers."""

    def test_register_lookup_padded(self) -> None:
        protocol, transport = self.connect()
        device = Device()
        self.request(protocol, 1, wire.Register(device.register(self.now)))
        self.request(protocol, 2, wire.Lookup(SixId.parse(device.sixid)))
        registered, looked_up = frames_of(transport.value())
        self.assertEqual((len(registered) % 256, len(looked_up) % 256), (0, 0))
        first, second = self.answers(transport)
        self.assertEqual((first.id, second.id), (1, 2))
        self.assertEqual(first.result, second.result)
        self.assertIsInstance(second.result, wire.RecordResult)

    def test_unknown_id_logged_once(self) -> None:
        protocol, transport = self.connect()
        sixid = Device().sixid
        self.request(protocol, 3, wire.Lookup(SixId.parse(sixid)))
        (answer,) = self.answers(transport)
        self.assertEqual((answer.id, answer.error.name, answer.error.code), (3, "unknown-id", 404))
        (line,) = self.refusals()
        self.assertIn(f"lookup {sixid}", line)
        self.assertIn("192.0.2.1", line)
        self.assertFalse(transport.disconnecting)

    def test_refusal_logs_no_key_material(self) -> None:
        protocol, transport = self.connect()
        signed = Device().register(self.now)
        forged = type(signed)(signed.registration_bytes, signed.spki, b"\x01" * 64)
        self.request(protocol, 1, wire.Register(forged))
        (answer,) = self.answers(transport)
        self.assertEqual(answer.error.name, "bad-signature")
        (line,) = self.refusals()
        self.assertIn("register", line)
        for secret in (signed.spki, signed.registration_bytes, forged.signature):
            self.assertNotIn(base64.b64encode(secret).decode()[:40], line)
            self.assertNotIn(secret.hex()[:40], line)

    def test_signer_and_ping(self) -> None:
        protocol, transport = self.connect()
        self.request(protocol, 1, wire.Signer())
        self.request(protocol, 2, wire.Ping())
        signer, pong = self.answers(transport)
        self.assertEqual(len(signer.result.certificates), 3)
        self.assertEqual(pong, wire.Response(2, wire.Pong()))

    def test_unknown_operation_answered_connection_goes_on(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b'<request v="1" id="4"><fly/></request>'))
        self.request(protocol, 5, wire.Ping())
        error, pong = self.answers(transport)
        self.assertEqual((error.id, error.error.name), (4, "unexpected-message"))
        self.assertEqual(pong.id, 5)

    def test_database_unavailable(self) -> None:
        protocol, transport = self.connect()
        self.store.unavailable = irp_errors.Unavailable("the registry's database is unavailable; try again later")
        self.request(protocol, 1, wire.Lookup(SixId.parse(Device().sixid)))
        (answer,) = self.answers(transport)
        self.assertEqual((answer.error.name, answer.error.code), ("unavailable", 503))
        self.store.unavailable = RuntimeError("bug")
        self.request(protocol, 2, wire.Ping())
        self.request(protocol, 3, wire.Lookup(SixId.parse(Device().sixid)))
        pong, internal = self.answers(transport)
        self.assertEqual(internal.error.name, "internal-error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HostileInputTests(ProtocolTestCase):
    """Bad bytes end the connection with a clear error."""

    def assert_closed_with(self, transport: StringTransport, name: str) -> None:
        (answer,) = self.answers(transport)
        self.assertIsInstance(answer, wire.ErrorAnswer)
        self.assertEqual((answer.id, answer.error.name), (None, name))
        self.assertTrue(transport.disconnecting)

    def test_oversized_frame(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\x00\x80\x01")  # 32 KiB + 1
        self.assert_closed_with(transport, "too-large")

    def test_largest_frame_is_read(self) -> None:
        protocol, transport = self.connect()
        payload = b'<request v="1" id="1"><ping/></request>'
        protocol.dataReceived(encode_frame(payload + b" " * (32 * 1024 - len(payload))))
        self.assertEqual(self.answers(transport), [wire.Response(1, wire.Pong())])  # trailing white space is XML's

    def test_entity_expansion(self) -> None:
        protocol, transport = self.connect()
        bomb = b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><request v="1" id="1"><lookup sixid="&b;"/></request>'
        protocol.dataReceived(encode_frame(bomb))
        self.assert_closed_with(transport, "malformed-message")

    def test_external_entity(self) -> None:
        protocol, transport = self.connect()
        xxe = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><request v="1" id="1"><ping>&x;</ping></request>'
        protocol.dataReceived(encode_frame(xxe))
        self.assert_closed_with(transport, "malformed-message")

    def test_deep_nesting(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b'<request v="1" id="1">' + b"<a>" * 50 + b"</a>" * 50 + b"</request>"))
        (answer,) = self.answers(transport)
        self.assertEqual(answer.error.name, "malformed-message")
        self.assertTrue(transport.disconnecting)

    def test_not_xml(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b"\xff\xfe garbage"))
        self.assert_closed_with(transport, "malformed-message")

    def test_empty_frame(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\x00\x00\x00")
        self.assert_closed_with(transport, "malformed-message")

    def test_bad_sixid(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b'<request v="1" id="1"><lookup sixid="NOT-AN-ID"/></request>'))
        self.assert_closed_with(transport, "malformed-message")

    def test_duplicate_outstanding_request_id(self) -> None:
        self.store.get_sixid_record = lambda sixid, now: Deferred()  # type: ignore[method-assign]
        protocol, transport = self.connect()
        self.request(protocol, 1, wire.Lookup(SixId.parse(Device().sixid)))
        self.request(protocol, 1, wire.Lookup(SixId.parse(Device().sixid)))
        self.assert_closed_with(transport, "malformed-message")


class DeadlineTests(ProtocolTestCase):
    """Slow and silent peers."""

    def test_slow_frame(self) -> None:
        protocol, transport = self.connect()
        frame = encode_frame(wire.encode_request(wire.Request(1, wire.Ping())))
        protocol.dataReceived(frame[:10])
        self.clock.advance(29)
        protocol.dataReceived(frame[10:12])  # a trickle does not extend the frame's time
        self.clock.advance(1)
        (answer,) = self.answers(transport)
        self.assertEqual((answer.error.name, answer.error.code), ("timeout", 408))
        self.assertTrue(transport.disconnecting)

    def test_idle(self) -> None:
        protocol, transport = self.connect()
        self.request(protocol, 1, wire.Ping())
        transport.clear()
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        (answer,) = self.answers(transport)
        self.assertEqual(answer.error.name, "timeout")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(30)  # the peer does not close: aborted
        self.assertTrue(transport.disconnected)

    def test_no_first_request(self) -> None:
        protocol, transport = self.connect()
        self.clock.advance(15)
        (answer,) = self.answers(transport)
        self.assertEqual(answer.error.name, "timeout")

    def test_watching_connection_must_ping(self) -> None:
        protocol, transport = self.connect()
        self.request(protocol, 1, wire.Watch(SixId.parse(Device().sixid)))
        self.answers(transport)
        for _ in range(3):
            self.clock.advance(170)
            self.request(protocol, 2, wire.Ping())
        self.assertFalse(transport.disconnecting)
        self.clock.advance(180)
        (_, answer) = self.answers(transport)[-2:]
        self.assertEqual(answer.error.name, "timeout")
        self.assertEqual(self.hub.watched_ids(), 1)  # still held until the transport goes
        protocol.connectionLost()
        self.assertEqual(self.hub.watched_ids(), 0)


class PushTests(ProtocolTestCase):
    """Pushes to watching connections."""

    def test_changed_and_gone_pushed_padded(self) -> None:
        watcher, watched = self.connect()
        other, _ = self.connect("192.0.2.2")
        device = Device()
        self.request(watcher, 1, wire.Watch(SixId.parse(device.sixid)))
        self.assertEqual(self.answers(watched), [wire.Response(1, wire.Watching(None))])
        self.request(other, 1, wire.Register(device.register(self.now, lifetime=60)))
        data = watched.value()
        (push,) = self.answers(watched)
        self.assertEqual(len(frames_of(data)[0]) % 256, 0)
        self.assertIsInstance(push, wire.Changed)
        self.clock.advance(60)
        (gone,) = self.answers(watched)
        self.assertEqual(gone, wire.Gone(SixId.parse(device.sixid)))

    def test_many_watchers_share_one_encoding(self) -> None:
        device = Device()
        connections = [self.connect(f"192.0.2.{n}") for n in range(10, 15)]
        for protocol, transport in connections:
            self.request(protocol, 1, wire.Watch(SixId.parse(device.sixid)))
            transport.clear()
        registrar, _ = self.connect("192.0.2.99")
        self.request(registrar, 1, wire.Register(device.register(self.now)))
        pushes = {transport.value() for _, transport in connections}
        self.assertEqual(len(pushes), 1)


class ConnectionCountTests(ProtocolTestCase):
    """Connections per address."""

    def test_too_many_connections(self) -> None:
        self.settings.limits.max_connections_per_address = 2
        self.factory = SixidFactory(self.operations, self.clock, self.settings.limits)
        first, _ = self.connect()
        self.connect()
        protocol, transport = self.connect()
        (answer,) = self.answers(transport)
        self.assertEqual((answer.error.name, answer.error.code), ("rate-limited", 429))
        (line,) = self.refusals()
        self.assertIn("Too many connections", line)
        self.assertTrue(transport.disconnecting)
        first.connectionLost()
        _, transport = self.connect()
        self.assertFalse(transport.disconnecting)


class ServerTests(TestCase):
    """SixidServer's housekeeping on a fake clock."""

    def test_sweeps_every_minute_and_follows_changes(self) -> None:
        from sixid.server.service import SixidServer

        keys = registry_keys()
        clock = Clock()
        now = int(time.time())
        clock.advance(now)
        store = MemoryStore()
        server = SixidServer(
            domain=DOMAIN,
            store=store,
            signing_key=keys.signing_key,
            signer_chain=keys.signer_chain,
            check_certificate=keys.check_certificate(),
            settings=SixidSettings(policy="open"),
            reactor=clock,
        )
        server.start()
        device = Device()
        self.successResultOf(server.operations.run(_Quiet(), wire.Register(device.register(now, lifetime=30))))
        clock.advance(240)
        self.assertIn(device.sixid, store.rows)
        clock.advance(60)
        self.assertEqual(store.rows, {})
        self.assertEqual(len(store.followers), 1)
        server.stop()
        self.assertEqual((store.followers, clock.getDelayedCalls()), ([], []))

    def test_renewed_signer(self) -> None:
        from sixid.server.service import SixidServer

        keys = registry_keys()
        server = SixidServer(
            domain=DOMAIN,
            store=MemoryStore(),
            signing_key=keys.signing_key,
            signer_chain=keys.signer_chain,
            check_certificate=keys.check_certificate(),
            settings=SixidSettings(),
            reactor=Clock(),
        )
        renewed = keys.ca.issue_signing_certificate(keys.signing_key.public_key())
        server.set_signer(keys.signing_key, [renewed, *keys.signer_chain[1:]])
        chain = server.operations.run(_Quiet(), wire.Signer())
        self.assertEqual(chain.certificates[0], renewed.public_bytes(serialization.Encoding.DER))
        with self.assertRaises(ValueError):
            server.set_signer(keys.signing_key, keys.signer_chain[:2])

    def test_signer_chain_must_match_the_key(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from sixid.server.service import SixidServer

        keys = registry_keys()
        with self.assertRaises(ValueError):
            SixidServer(
                domain=DOMAIN,
                store=MemoryStore(),
                signing_key=ed25519.Ed25519PrivateKey.generate(),
                signer_chain=keys.signer_chain,
                check_certificate=keys.check_certificate(),
                settings=SixidSettings(),
                reactor=Clock(),
            )


class _Quiet:
    """A client that is told nothing."""

    peer_host = "192.0.2.60"

    def set_watching(self, watching: bool) -> None:
        pass

    def changed(self, stored: object) -> None:
        pass

    def gone(self, sixid: str) -> None:
        pass


class LogTests(ProtocolTestCase):
    """One log line per refusal, with its reason."""

    def test_fatal_refusal_one_line(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b"<request"))
        (line,) = self.refusals()
        self.assertIn("192.0.2.1", line)
        self.assertIn("malformed-message", line)

    def test_answered_refusal_one_line(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_frame(b'<request v="1" id="4"><fly/></request>'))
        lines = [formatEvent(event) for event in self.logged if "unexpected-message" in formatEvent(event)]
        self.assertEqual(len(lines), 1)


class ParserPathTests(ProtocolTestCase):
    """A look-up read by the XML parser (not written as the codec writes it) answers as the
    fast path does."""

    def test_same_answer(self) -> None:
        protocol, transport = self.connect()
        device = Device()
        self.request(protocol, 1, wire.Register(device.register(self.now)))
        self.request(protocol, 2, wire.Lookup(SixId.parse(device.sixid)))
        protocol.dataReceived(encode_frame(b'<request id="3" v="1"><lookup sixid="%s" /></request>' % device.sixid.encode()))
        _, fast, parsed = self.answers(transport)
        self.assertEqual((fast.id, parsed.id), (2, 3))
        self.assertEqual(fast.result, parsed.result)


class MangledInputTests(ProtocolTestCase):
    """Mangled requests (deterministic pseudo-random edits of valid ones) are answered with
    a sixid error or closed, never an internal error, and the answers always parse."""

    def test_mangled_requests(self) -> None:
        rng = random.Random(13)
        device = Device()
        valid = [
            wire.encode_request(wire.Request(1, operation))
            for operation in (
                wire.Register(device.register(self.now)),
                wire.Lookup(SixId.parse(device.sixid)),
                wire.Watch(SixId.parse(device.sixid)),
                wire.Unwatch(SixId.parse(device.sixid)),
                wire.Signer(),
                wire.Ping(),
            )
        ]
        for _ in range(400):
            payload = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(payload))
                edit = rng.randrange(3)
                if edit == 0:
                    payload[position] = rng.randrange(256)
                elif edit == 1:
                    del payload[position]
                else:
                    payload.insert(position, rng.choice(b'<>/="&x ;!?\x00\xff'))
            protocol, transport = self.connect(f"192.0.2.{rng.randrange(1, 250)}")
            protocol.dataReceived(encode_frame(bytes(payload)) if payload else b"\x00\x00\x00\x00")
            for answer in self.answers(transport):
                if isinstance(answer, wire.ErrorAnswer):
                    self.assertNotEqual(answer.error.name, "internal-error", bytes(payload))
            protocol.connectionLost()
        self.assertEqual(self.flushLoggedErrors(), [])
