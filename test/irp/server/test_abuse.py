"""Abuse: slow and silent connections, connection floods, password guessing.

A real registry on loopback is attacked from some loopback addresses (127.0.0.3 to
127.0.0.5) while a well-behaved client on another (127.0.0.2) keeps working. The limits
are set low so that the attack is over quickly; every one of them is an option of
``twistd irp``. How much the attacks slow well-behaved clients is measured in
``bench/abuse.py``, not here.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.tls import client_options
from common.wire.framing import FrameDecoder
from irp import errors
from irp.server.admission import READABLE_REFUSALS
from irp.server.protocol import ConnectionLimits
from irp.wire.messages import parse_response
from test.helpers import RunningRegistry

GOOD = "127.0.0.2"


class Attacker(Protocol):
    """Sends ``first`` (maybe nothing), then stays silent; records what the server says."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if not self.lost.called:
            self.lost.callback(None)

    def error_name(self) -> str | None:
        """The wire name of the error the server sent before closing, if any."""
        frames = FrameDecoder(1 << 20).feed(self.received)
        for frame in frames:
            try:
                parse_response(frame)
            except errors.IRPError as error:
                return error.name
        return None


class AbuseTests(TestCase):
    async def registry(self, **limits: Any) -> RunningRegistry:
        settings = {"handshake_timeout": 1.0, "frame_timeout": 1.0, "idle_timeout": 5.0, "max_connections_per_address": 10}
        settings.update(limits)
        registry = RunningRegistry(self, limits=ConnectionLimits(**settings), listen_host="0.0.0.0")
        return await registry.start()

    async def attack(self, registry: RunningRegistry, source: str, count: int, first: bytes = b"", tls: bool = False) -> list[Attacker]:
        attackers = []
        for _ in range(count):
            attacker = Attacker(first)
            endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", registry.port, bindAddress=(source, 0))
            if tls:
                endpoint = wrapClientTLS(client_options("127.0.0.1", [registry.root]), endpoint)
            await endpoint.connect(Factory.forProtocol(lambda attacker=attacker: attacker))
            self.addCleanup(lambda attacker=attacker: attacker.transport.abortConnection() if attacker.transport and not attacker.lost.called else None)
            attackers.append(attacker)
        return attackers

    async def well_behaved(self, registry: RunningRegistry, lookups: int = 20) -> int:
        """A client on another address: every look-up must succeed."""
        await registry.create_user("bob")
        client = await registry.client("bob", bind_address=GOOD, host="127.0.0.1")
        done = 0
        for _ in range(lookups):
            record = await client.lookup("bob")
            self.assertEqual(str(record.identity), "bob@example.org")
            done += 1
        return done

    async def test_slowloris(self) -> None:
        """Silent TCP connections and TLS connections stuck in the middle of a frame are
        closed after their deadlines; meanwhile a well-behaved client is served."""
        registry = await self.registry()
        silent = await self.attack(registry, "127.0.0.3", 10)
        slow = await self.attack(registry, "127.0.0.4", 10, first=b"\x00\x00\x01", tls=True)
        self.assertEqual(await self.well_behaved(registry), 20)
        await gatherResults([attacker.lost for attacker in silent + slow])
        self.assertEqual({attacker.error_name() for attacker in slow}, {"timeout"})
        self.assertEqual(registry.service.factory.connections.count("127.0.0.3"), 0)  # type: ignore[union-attr]

    async def test_connection_flood_from_one_address(self) -> None:
        """Past the per-address limit, connections are refused at once with a readable
        error (TLS first, so the error can be read); others are not affected."""
        registry = await self.registry(max_connections_per_address=10, handshake_timeout=30.0)
        flood = await self.attack(registry, "127.0.0.3", 25, tls=True, first=b"")
        waiting: list[Deferred[Any]] = [attacker.lost for attacker in flood[10:]]
        await DeferredList(waiting)
        refused = [attacker for attacker in flood if attacker.lost.called]
        self.assertEqual(len(refused), 15)
        # The first refusals are readable (TLS, then the error); past those, a flood gets
        # its connections closed before TLS, so that it cannot buy a handshake each.
        names = [attacker.error_name() for attacker in refused]
        self.assertEqual(names.count("too-many-connections"), READABLE_REFUSALS)
        self.assertEqual(names.count(None), 15 - READABLE_REFUSALS)
        self.assertEqual(registry.service.factory.connections.count("127.0.0.3"), 10)  # type: ignore[union-attr]
        self.assertEqual(await self.well_behaved(registry), 20)

    async def test_password_guessing(self) -> None:
        """Guessing Alice's password locks the guesser (and password login for Alice) out
        after a few tries; Alice's certificate and other users keep working."""
        registry = await self.registry()
        alice = await registry.enrol("alice")
        guesser = await registry.client(bind_address="127.0.0.5", host="127.0.0.1")
        outcomes = []
        for attempt in range(12):
            try:
                await guesser.login("alice", f"wrong guess {attempt}")
            except errors.IRPError as error:
                outcomes.append(error.name)
        self.assertIn("rate-limited", outcomes)
        first_lock = outcomes.index("rate-limited")
        self.assertLessEqual(first_lock, 6)
        self.assertEqual(set(outcomes[first_lock:]), {"rate-limited"})
        # Even the right password is refused while locked: guessing cannot continue.
        with self.assertRaises(errors.RateLimited):
            await guesser.login("alice", alice.password)
        certified = await registry.client(user=alice, bind_address=GOOD, host="127.0.0.1")
        self.assertEqual((await certified.whoami()).method, "certificate")
        self.assertEqual(await self.well_behaved(registry, lookups=5), 5)
