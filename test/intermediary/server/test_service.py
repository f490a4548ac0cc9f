"""The intermediary end to end: real registries of two domains, the real service on a
loopback TLS port with a SQLite file, and the client library with real certificates."""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.names import dns

from common.identity import Identity
from common.profile import Profile
from intermediary import errors
from intermediary.client import IntermediaryClient, connect_intermediary, intermediary_identity
from intermediary.server.operations import Limits
from intermediary.server.relay import Relay, RelayLimits
from intermediary.server.service import IntermediaryService, IntermediarySettings
from intermediary.server.store import Quotas
from intermediary.wire import Delivery
from irp.server.ca import generate_key
from test.helpers import EnrolledUser, make_profile
from test.intermediary.helpers import prekey_bytes
from test.irp.server.cross_domain import CrossDomainTestCase
from test.pki import issue_user, make_ca

HOME, OTHER = "example.org", "example.net"


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Inbox:
    """Collects pushed deliveries; :meth:`wait` fires once ``count`` have arrived."""

    def __init__(self) -> None:
        self.received: list[Delivery] = []
        self._waiting: list[tuple[int, Deferred[list[Delivery]]]] = []

    def __call__(self, delivery: Delivery) -> None:
        self.received.append(delivery)
        for entry in list(self._waiting):
            if len(self.received) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(self.received)

    def wait(self, count: int) -> Deferred[list[Delivery]]:
        waiting: Deferred[list[Delivery]] = Deferred()
        if len(self.received) >= count:
            waiting.callback(self.received)
        else:
            self._waiting.append((count, waiting))
        return waiting.addTimeout(10, reactor)


class Collector(Protocol):
    """Collects raw bytes; :meth:`wait` fires once ``expected`` has arrived."""

    def __init__(self) -> None:
        self.data = b""
        self._waiting: list[tuple[bytes, Deferred[bytes]]] = []
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        for entry in list(self._waiting):
            if entry[0] in self.data:
                self._waiting.remove(entry)
                entry[1].callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.lost.called:
            self.lost.callback(None)

    def wait(self, expected: bytes) -> Deferred[bytes]:
        waiting: Deferred[bytes] = Deferred()
        if expected in self.data:
            waiting.callback(self.data)
        else:
            self._waiting.append((expected, waiting))
        return waiting.addTimeout(10, reactor)


class IntermediaryServiceTests(CrossDomainTestCase):
    """Deposits, push delivery, acknowledgement, who may do what."""

    async def start(self, **options: Any) -> None:
        await self.start_domains()
        home = self.registries[HOME]
        self.users: dict[str, EnrolledUser] = {}
        for name in ("intermediary", "bob", "mallory"):
            await home.add_user(name)
            self.users[name] = await home.issue(name)
        await self.registries[OTHER].add_user("alice")
        self.users["alice"] = await self.registries[OTHER].issue("alice")
        profile = os.path.join(os.path.abspath(self.mktemp()), "intermediary")
        make_profile(home, self.users["intermediary"], profile)
        Profile(profile).trust_domain(OTHER, self.registries[OTHER].root)
        relay_port = free_port()
        settings = IntermediarySettings(
            profile_dir=profile,
            listen=["tcp:0:interface=127.0.0.1"],
            resolver=self.resolver,
            relay_factory=lambda reactor_, _settings: Relay(
                reactor_, interface="127.0.0.1", ports=range(relay_port, relay_port + 1), limits=RelayLimits()
            ),
            **options,
        )
        self.service = IntermediaryService(settings, reactor)
        self.service.startService()
        self.addCleanup(lambda: self.service.stopService() if self.service.running else None)
        await self.service.ready

    def domain_of(self, name: str) -> str:
        return OTHER if name == "alice" else HOME

    async def connect(
        self, name: str, *, fingerprints: set[str] | None = None, server: tuple[str, int] | None = None, resolver: Any = None
    ) -> IntermediaryClient:
        """``name``'s client of example.org's intermediary, found through example.org's registry."""
        user = self.users[name]
        registry = await self.registries[HOME].client(user=user)

        async def lookup(identity: Identity) -> tuple[Any, set[str]]:
            record = await registry.lookup(str(identity))
            held = {entry.fingerprint for entry in await registry.user_certificates(str(identity))}
            return record, held if fingerprints is None else fingerprints

        roots = {HOME: self.registries[HOME].root, OTHER: self.registries[OTHER].root}
        client = await connect_intermediary(
            reactor, HOME, directory_lookup=lookup, key=user.key, certificate=user.certificate, chain=user.chain, roots=roots,
            server=server, resolver=resolver or self.resolver,
        )
        self.addCleanup(client.close)
        return client

    async def bob_with_prekeys(self, count: int = 3) -> tuple[IntermediaryClient, list[bytes]]:
        bob = await self.connect("bob")
        published = [prekey_bytes(Identity("bob", HOME)) for _ in range(count)]
        counts = await bob.publish_prekeys(published)
        self.assertEqual((counts.one_time, counts.last_resort), (count, False))
        return bob, published

    def expires(self) -> int:
        return int(reactor.seconds()) + 3600

    async def test_found_by_dns_srv_when_not_registered(self) -> None:
        """An intermediary that does not register (``--no-register``, say behind a load
        balancer) is found by ``_sixchat-intermediary._tcp.<domain>``; its certificate is
        still checked against the registry's; with no SRV record the client says where it
        looked."""
        await self.start(register=False)
        with self.assertRaises(errors.Unavailable) as unavailable:
            await self.connect("bob")
        self.assertIn("_sixchat-intermediary._tcp.example.org names none", unavailable.exception.message)
        port = self.service.ports[0].getHost().port  # type: ignore[attr-defined]
        self.zones[HOME].records[b"_sixchat-intermediary._tcp.example.org"] = [dns.Record_SRV(0, 0, port, b"localhost", ttl=60)]
        bob = await self.connect("bob")
        await bob.ping()
        # The certificate check still holds: one the registry does not hold is refused.
        with self.assertRaises(errors.ServerVerificationFailed):
            await self.connect("bob", fingerprints={"0" * 64})

    async def test_registered_and_found(self) -> None:
        await self.start()
        admin = await self.registries[HOME].client(user=self.users["bob"])
        record = await admin.lookup(str(intermediary_identity(HOME)))
        port = self.service.ports[0].getHost().port  # type: ignore[attr-defined]
        self.assertEqual([(endpoint.address, endpoint.port) for endpoint in record.endpoints], [("127.0.0.1", port)])

    async def test_deposit_pushed_at_once_then_ack_deletes(self) -> None:
        await self.start()
        bob, published = await self.bob_with_prekeys()
        inbox = Inbox()
        self.assertEqual(await bob.subscribe(inbox), 0)
        alice = await self.connect("alice")
        self.assertEqual(await alice.fetch_prekey(Identity("bob", HOME)), published[0])
        message_id = await alice.deposit(Identity("bob", HOME), b"sealed for bob", self.expires())
        # Answered after the commit: another connection to the file sees the row already.
        with sqlite3.connect(self.service.settings.database_url) as other:
            stored = other.execute("SELECT recipient, sender, envelope FROM messages WHERE message_id = ?", (message_id,)).fetchall()
        self.assertEqual(stored, [("bob", "alice@example.net", b"sealed for bob")])
        (delivery,) = await inbox.wait(1)
        self.assertEqual((delivery.id, delivery.sender, delivery.envelope), (message_id, Identity("alice", OTHER), b"sealed for bob"))
        assert self.service.store is not None
        self.assertEqual(len(await self.service.store.due_messages("bob", now=int(reactor.seconds()), limit=10)), 1)
        await bob.ack(message_id)
        self.assertEqual(await self.service.store.due_messages("bob", now=int(reactor.seconds()), limit=10), [])
        with self.assertRaises(errors.UnknownMessage):
            await bob.ack(message_id)

    async def test_later_subscriber_gets_everything_in_order(self) -> None:
        await self.start()
        bob, _ = await self.bob_with_prekeys()
        await bob.close()
        alice = await self.connect("alice")
        mallory = await self.connect("mallory")
        sent = []
        for index in range(5):
            sender = alice if index % 2 else mallory
            sent.append(await sender.deposit(Identity("bob", HOME), f"message {index}".encode(), self.expires()))
        held = await alice.deposit(Identity("bob", HOME), b"tomorrow", self.expires(), deliver_at=int(reactor.seconds()) + 1800)
        bob = await self.connect("bob")
        inbox = Inbox()
        self.assertEqual(await bob.subscribe(inbox), 5)
        received = await inbox.wait(5)
        self.assertEqual([delivery.id for delivery in received], sent)
        self.assertNotIn(held, [delivery.id for delivery in received])  # held until its time
        # Unacknowledged: delivered again to the next subscription, which supersedes this one.
        second = Inbox()
        superseded: Deferred[None] = Deferred()
        bob.protocol.on_superseded = lambda: superseded.callback(None)
        bob2 = await self.connect("bob")
        self.assertEqual(await bob2.subscribe(second), 5)
        await superseded.addTimeout(10, reactor)
        again = await second.wait(5)
        self.assertEqual([delivery.id for delivery in again], sent)

    async def test_flooding_sender_refused_others_served(self) -> None:
        """A sender that floods is stopped by its own limits (deposits per hour, what it may
        store for one recipient, prekey fetches per hour) with a clear error, while another
        sender's deposits and fetches for the same recipient go on, and the recipient's
        mailbox holds only what the limits allowed."""
        await self.start(
            limits=Limits(deposits_per_hour=6, fetches_per_hour=3),
            quotas=Quotas(pair_messages=4, recipient_messages=20),
        )
        await self.bob_with_prekeys(10)
        mallory = await self.connect("mallory")
        alice = await self.connect("alice")
        bob = Identity("bob", HOME)
        stored = [await mallory.deposit(bob, f"flood {index}".encode(), self.expires()) for index in range(4)]
        with self.assertRaises(errors.QuotaExceeded) as pair:
            await mallory.deposit(bob, b"flood 4", self.expires())
        self.assertIn("for this recipient", pair.exception.message)
        refusals = []
        for index in range(5, 12):
            with self.assertRaises(errors.QuotaExceeded) as refused:
                await mallory.deposit(bob, f"flood {index}".encode(), self.expires())
            refusals.append(refused.exception.message)
        # Every attempt counts against the hour, refused ones too: the hourly limit ends it.
        self.assertIn("per hour", refusals[-1])
        for _ in range(3):
            await mallory.fetch_prekey(bob)
        with self.assertRaises(errors.RateLimited):
            await mallory.fetch_prekey(bob)
        # Alice is not held back by Mallory's flood.
        await alice.fetch_prekey(bob)
        kept = await alice.deposit(bob, b"hello bob", self.expires())
        assert self.service.store is not None
        due = await self.service.store.due_messages("bob", now=int(reactor.seconds()), limit=50)
        self.assertEqual([message.message_id for message in due], [*stored, kept])

    async def test_other_domain_may_deposit_and_fetch_not_subscribe_or_reserve(self) -> None:
        await self.start()
        await self.bob_with_prekeys(1)
        alice = await self.connect("alice")
        await alice.fetch_prekey(Identity("bob", HOME))
        await alice.deposit(Identity("bob", HOME), b"hello", self.expires())
        with self.assertRaises(errors.NotAllowed):
            await alice.subscribe(lambda delivery: None)
        with self.assertRaises(errors.NotAllowed):
            await alice.reserve(lambda circuit, source: None)
        with self.assertRaises(errors.NotAllowed):
            await alice.publish_prekeys([prekey_bytes(Identity("alice", OTHER))])
        with self.assertRaises(errors.UnknownUser):
            await alice.deposit(Identity("nobody", HOME), b"hello", self.expires())
        with self.assertRaises(errors.Expired):
            await alice.deposit(Identity("bob", HOME), b"hello", int(reactor.seconds()) - 1)

    async def test_own_user_reserves_a_relay_port(self) -> None:
        await self.start()
        bob = await self.connect("bob")
        reservation = await bob.reserve(lambda circuit, source: None)
        self.assertEqual(reservation.address, "127.0.0.1")
        relay: Any = self.service.relay
        self.assertEqual(reservation.join_port, relay.join_port)
        with self.assertRaises(errors.UnknownCircuit):
            await bob.accept_circuit("0" * 32)
        fresh = await self.connect("bob")
        with self.assertRaises(errors.ClientError):
            await fresh.accept_circuit("0" * 32)  # no reservation on that connection

    async def test_relay_circuit_end_to_end(self) -> None:
        await self.start()
        bob = await self.connect("bob")
        offered: Deferred[str] = Deferred()
        reservation = await bob.reserve(lambda circuit, source: None if offered.called else offered.callback(circuit))
        dialer = Collector()
        await connectProtocol(TCP4ClientEndpoint(reactor, reservation.address, reservation.port), dialer)
        assert dialer.transport is not None
        dialer.transport.write(b"hello from the dialer")
        circuit = await offered.addTimeout(10, reactor)
        stream = await bob.accept_circuit(circuit)
        with self.assertRaises(errors.UnknownCircuit):
            await bob.accept_circuit(circuit)  # single use
        agent = Collector()
        stream.attach(agent)
        await agent.wait(b"hello from the dialer")
        stream.transport.write(b"and back")
        await dialer.wait(b"and back")
        dialer.transport.write(b" again")
        await agent.wait(b"dialer again")
        dialer.transport.loseConnection()
        await agent.lost.addTimeout(10, reactor)  # ending one leg ends the other

    async def test_taken_join_port_fails_the_start(self) -> None:
        from twisted.internet.error import CannotListenError
        from twisted.internet.protocol import Factory

        await self.start_domains()
        home = self.registries[HOME]
        await home.add_user("intermediary")
        profile = os.path.join(os.path.abspath(self.mktemp()), "intermediary")
        make_profile(home, await home.issue("intermediary"), profile)
        busy = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(busy.stopListening)
        settings = IntermediarySettings(
            profile_dir=profile,
            listen=["tcp:0:interface=127.0.0.1"],
            resolver=self.resolver,
            relay_interface="127.0.0.1",
            relay_join_port=busy.getHost().port,
            register=False,
        )
        service = IntermediaryService(settings, reactor)
        service.startService()
        with self.assertRaises(CannotListenError):
            await service.ready
        self.assertFalse(os.path.exists(settings.database_url))  # bound before anything is created

    async def test_away_and_connections_closed_when_stopped(self) -> None:
        await self.start()
        client = await self.registries[HOME].client(user=self.users["bob"])
        bob = await self.connect("bob")
        await bob.subscribe(lambda delivery: None)
        await self.service.stopService()
        await bob.when_lost()  # connections are closed on stop
        record = await client.lookup(str(intermediary_identity(HOME)))
        self.assertEqual((record.presence, record.endpoints), ("away", ()))

    async def test_connections_per_address_capped(self) -> None:
        from intermediary.server.connection import ConnectionLimits

        await self.start(connection_limits=ConnectionLimits(max_connections_per_address=1))
        first = await self.connect("bob")
        second = await self.connect("mallory")
        with self.assertRaises(errors.RateLimited):
            await second.ping()
        await first.ping()

    async def test_given_server_skips_the_address_not_the_certificate_check(self) -> None:
        await self.start()
        port = self.service.ports[0].getHost().port  # type: ignore[attr-defined]
        client = await self.connect("bob", server=("127.0.0.1", port))
        await client.ping()
        with self.assertRaises(errors.ServerVerificationFailed):
            await self.connect("bob", server=("127.0.0.1", port), fingerprints=set())

    async def test_prekeys_only_own(self) -> None:
        await self.start()
        bob = await self.connect("bob")
        with self.assertRaises(errors.NotAllowed):
            await bob.publish_prekeys([prekey_bytes(Identity("mallory", HOME))])

    async def test_untrusted_certificate_refused(self) -> None:
        await self.start()
        stranger_ca = make_ca("example.org", label="impostor")
        stranger = issue_user(stranger_ca, "bob")
        self.users["stranger"] = EnrolledUser("bob", "", stranger.key, stranger.certificate, 1, tuple(stranger.intermediates))
        await self.refused("stranger", lookup_as="bob")

    async def test_certificate_not_held_by_the_registry_refused(self) -> None:
        await self.start()
        home = self.registries[HOME]
        key = generate_key("p256")
        certificate = home.ca.issue_user_certificate(Identity("bob", HOME), key.public_key())  # never stored
        self.users["unlisted"] = EnrolledUser("bob", "", key, certificate, certificate.serial_number, (home.ca.issuing_certificate,))
        await self.refused("unlisted", lookup_as="bob")

    async def refused(self, name: str, *, lookup_as: str) -> None:
        user = self.users[name]
        registry = await self.registries[HOME].client(user=self.users[lookup_as])

        async def lookup(identity: Identity) -> tuple[Any, set[str]]:
            record = await registry.lookup(str(identity))
            return record, {entry.fingerprint for entry in await registry.user_certificates(str(identity))}

        client = await connect_intermediary(
            reactor, HOME, directory_lookup=lookup, key=user.key, certificate=user.certificate, chain=user.chain,
            roots={HOME: self.registries[HOME].root},
        )
        self.addCleanup(client.close)
        with self.assertRaises(errors.CertificateRejected):
            await client.ping()

    async def test_client_refuses_a_server_the_registry_does_not_hold(self) -> None:
        await self.start()
        with self.assertRaises(errors.ServerVerificationFailed):
            await self.connect("bob", fingerprints={"00" * 32})

