"""The SixChat agent end to end: a real registry, agents on loopback (IPv4 and IPv6), real
SQLite files and real keys; fake clocks only where a timeout or a retry must pass."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs

from common.identity import Identity
from irp.wire.records import Endpoint
from sixchat import errors
from sixchat.agent.service import Agent
from test.helpers import (
    EventCollector,
    RunningRegistry,
    closed_port,
    fake_clock_now,
)
from test.sixchat.agent.helpers import ALICE, BOB, CAROL, AgentTestCase, HostileBytesTestCase, endpoint_of, log_text


async def failure_of(deferred: Deferred[Any]) -> BaseException:
    """Await ``deferred`` and return the exception it failed with (AssertionError if it
    succeeded)."""
    try:
        result = await deferred
    except Exception as error:  # noqa: BLE001 - the point is to return it
        return error
    raise AssertionError(f"expected a failure, got {result!r}")


class TourTests(AgentTestCase):
    """The tour of the issue: two users, two agents (IPv4 and IPv6), both directions."""

    async def test_messages_and_receipts_both_ways(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        self.assertEqual(endpoint_of(alice).family, "ipv4")
        self.assertEqual(endpoint_of(bob).family, "ipv6")

        first = await self.deliver(alice, alice_events, bob_events, BOB, "hello bob")
        reply = await self.deliver(bob, bob_events, alice_events, ALICE, "hi alice")

        self.assertEqual(await self.history(bob, ALICE), [("in", "hello bob", "received"), ("out", "hi alice", "delivered")])
        self.assertEqual(await self.history(alice, BOB), [("out", "hello bob", "delivered"), ("in", "hi alice", "received")])
        # One session, the same on both sides (same channel binding), carried both ways.
        self.assertEqual(list(alice.sessions), [BOB])
        self.assertEqual(list(bob.sessions), [ALICE])
        alice_session, bob_session = alice.sessions[BOB].session, bob.sessions[ALICE].session
        assert alice_session is not None and bob_session is not None
        self.assertEqual(alice_session.channel_binding, bob_session.channel_binding)
        # Alice dialled Bob over IPv6 and remembers where he answered.
        assert alice.store is not None
        contact = await alice.store.get_contact(BOB)
        assert contact is not None
        self.assertEqual(contact.last_endpoint, endpoint_of(bob))
        self.assertEqual([e["event"] for e in alice_events.matching(id=first)], ["queued", "receipt"])
        self.assertEqual(bob_events.matching(event="message", id=reply), [])

    async def test_history_survives_restart(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "before the restart")
        await self.deliver(bob, bob_events, alice_events, ALICE, "noted")
        assert bob.store is not None
        before = await bob.store.history(ALICE)
        await bob.stopService()

        bob, bob_events = await self.agent("bob", listen=("::1",))
        assert bob.store is not None
        self.assertEqual(await bob.store.history(ALICE), before)
        # The restarted agent listens on a new port; Alice's last address fails and the
        # registry gives the new one.
        await self.deliver(alice, alice_events, bob_events, BOB, "after the restart")
        self.assertEqual(
            await self.history(bob, ALICE),
            [("in", "before the restart", "received"), ("out", "noted", "delivered"), ("in", "after the restart", "received")],
        )

    async def test_queued_while_offline_delivered_when_peer_comes_up(self) -> None:
        clock = fake_clock_now()
        alice, alice_events = await self.agent("alice", contacts=("bob",), clock=clock)
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        await bob.stopService()

        with capturedLogs() as logs:
            message = await alice.send_text(BOB, "are you there?")
            # The first attempt finds Bob offline at his registry: the message stays queued.
            await alice_events.wait_for(event="queued", id=message.id)
            await self.settle(alice)
        self.assertTrue(any("offline" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await self.history(alice, BOB), [("out", "are you there?", "queued")])

        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        clock.advance(alice.settings.retry_interval)
        received = await bob_events.wait_for(event="message", id=message.id)
        self.assertEqual(received["text"], "are you there?")
        await alice_events.wait_for(event="receipt", id=message.id)
        self.assertEqual(await self.history(alice, BOB), [("out", "are you there?", "delivered")])

    async def test_queued_while_offline_reported_undelivered(self) -> None:
        clock = fake_clock_now()
        alice, alice_events = await self.agent("alice", contacts=("bob",), clock=clock, undelivered_after=60.0)
        await self.user("bob")
        message = await alice.send_text(BOB, "nobody home")
        await self.settle(alice)
        clock.advance(30)
        await self.settle(alice)
        # (The store runs one operation at a time: this read follows the housekeeping.)
        self.assertEqual(await self.history(alice, BOB), [("out", "nobody home", "queued")])
        self.assertEqual(alice_events.matching(event="undelivered"), [])
        clock.advance(31 + 15)
        undelivered = await alice_events.wait_for(event="undelivered", id=message.id)
        self.assertEqual((undelivered["to"], undelivered["text"]), ("bob@example.org", "nobody home"))
        self.assertEqual(await self.history(alice, BOB), [("out", "nobody home", "undelivered")])

        # Given up means given up: Bob coming online later does not get it.
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        clock.advance(alice.settings.retry_interval)
        await self.deliver(bob, bob_events, alice_events, ALICE, "I'm back")
        self.assertEqual(bob_events.matching(event="message", id=message.id), [])
        self.assertEqual(await self.history(alice, BOB), [("out", "nobody home", "undelivered"), ("in", "I'm back", "received")])

    async def test_outbox_survives_sender_restart(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        message = await alice.send_text(BOB, "written before a restart")
        await self.settle(alice)
        await alice.stopService()

        _bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        clock = fake_clock_now()
        alice, alice_events = await self.agent("alice", clock=clock)
        clock.advance(alice.settings.retry_interval)
        received = await bob_events.wait_for(event="message", id=message.id)
        self.assertEqual(received["text"], "written before a restart")
        await alice_events.wait_for(event="receipt", id=message.id)

    async def test_queued_messages_ride_the_peers_session(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        waiting = await alice.send_text(BOB, "queued for you")
        await self.settle(alice)
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        # Bob calls first: Alice's queued message leaves on Bob's session, no retry needed.
        await self.deliver(bob, bob_events, alice_events, ALICE, "hello, I'm online")
        received = await bob_events.wait_for(event="message", id=waiting.id)
        self.assertEqual(received["text"], "queued for you")
        await alice_events.wait_for(event="receipt", id=waiting.id)
        self.assertEqual(alice.sessions[BOB].role.name, "RESPONDER")


class DialerTests(AgentTestCase):
    """How an agent reaches a contact: the last address that worked, then the registry."""

    def count_lookups(self, agent: Agent) -> list[Identity]:
        """Record every registry lookup ``agent`` makes from now on."""
        assert agent.directory is not None
        lookups: list[Identity] = []
        original = agent.directory.lookup

        def spy(identity: Identity) -> Any:
            lookups.append(identity)
            return original(identity)

        agent.directory.lookup = spy  # type: ignore[method-assign]
        return lookups

    async def hang_up(self, agent: Agent, peer: Identity, peer_events: EventCollector) -> None:
        """Close ``agent``'s session with ``peer`` cleanly and wait until the peer saw it."""
        closed = peer_events.next(event="session", state="down")
        agent.sessions[peer].close("bye")
        await closed

    async def test_last_address_that_worked_first(self) -> None:
        alice, alice_events, _bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "first")
        await self.hang_up(alice, BOB, bob_events)
        lookups = self.count_lookups(alice)
        await self.deliver(alice, alice_events, bob_events, BOB, "second")
        self.assertEqual(lookups, [])
        self.assertEqual(alice.sessions[BOB].peer_host, "::1")

    async def test_registry_when_the_last_address_fails(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "first")
        old = endpoint_of(bob)
        await bob.stopService()
        bob, bob_events = await self.agent("bob", listen=("::1",))
        self.assertNotEqual(endpoint_of(bob), old)
        lookups = self.count_lookups(alice)
        await self.deliver(alice, alice_events, bob_events, BOB, "second")
        self.assertEqual(lookups, [BOB])
        assert alice.store is not None
        contact = await alice.store.get_contact(BOB)
        assert contact is not None
        self.assertEqual(contact.last_endpoint, endpoint_of(bob))

    async def test_last_address_now_someone_else(self) -> None:
        """The address that last worked for Bob is now Carol's agent (an address moved to
        another user): her agent refuses a call for Bob, and Alice asks the registry."""
        alice, alice_events, _bob, bob_events = await self.pair()
        carol, _carol_events = await self.agent("carol", contacts=("alice",))
        assert alice.store is not None and carol.store is not None
        await alice.store.remember_endpoint(BOB, endpoint_of(carol))
        lookups = self.count_lookups(alice)
        await self.deliver(alice, alice_events, bob_events, BOB, "for bob only")
        self.assertEqual(lookups, [BOB])
        self.assertEqual(await carol.store.history(), [])
        self.assertEqual(carol.sessions, {})

    async def test_ipv6_first(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        bob, bob_events = await self.agent("bob", listen=("127.0.0.1", "::1"), contacts=("alice",))
        self.assertEqual({endpoint.family for endpoint in bob.advertised}, {"ipv4", "ipv6"})
        await self.deliver(alice, alice_events, bob_events, BOB, "over IPv6 please")
        self.assertEqual(alice.sessions[BOB].peer_host, "::1")

    async def test_next_address_when_one_is_dead(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        bob, bob_events = await self.agent("bob", contacts=("alice",), advertise=[])
        dead = await self.dead_endpoint("::1")
        bob_client = await self.registry.client(user=self.users["bob"])
        await bob_client.register_addresses([dead, endpoint_of(bob)], "online", 300)
        await self.deliver(alice, alice_events, bob_events, BOB, "found you")
        self.assertEqual(alice.sessions[BOB].peer_host, "127.0.0.1")

    async def test_silent_listener_at_the_address(self) -> None:
        """Something accepts TCP at Bob's address but never answers: the handshake deadline
        ends the attempt, the message stays queued."""
        from twisted.internet.endpoints import serverFromString

        clock = fake_clock_now()
        alice, _alice_events = await self.agent("alice", contacts=("bob",), clock=clock)
        await self.user("bob")
        silent = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(silent.stopListening)
        client = await self.registry.client(user=self.users["bob"])
        await client.register_addresses([Endpoint.parse("127.0.0.1", silent.getHost().port)], "online", 300)
        started: Deferred[Any] = Deferred()
        original = alice.connection_started

        def spy(connection: Any) -> None:
            original(connection)
            started.callback(connection)

        alice.connection_started = spy  # type: ignore[method-assign]
        message = await alice.send_text(BOB, "hello?")
        connection = await started
        await deferLater(reactor, 0, lambda: None)  # let connectionMade finish (arms the deadline)
        clock.advance(alice.limits.handshake_timeout)
        await connection.when_lost()
        await self.settle(alice)
        self.assertEqual(await self.history(alice, BOB), [("out", "hello?", "queued")])
        self.assertEqual(alice.sessions, {})
        del message

    async def test_offline_peer(self) -> None:
        alice, _alice_events = await self.agent("alice", contacts=("bob",))
        bob, _ = await self.agent("bob", listen=("::1",))
        await bob.stopService()
        error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.PeerUnreachable)
        self.assertIn("offline", str(error))

    async def test_expired_registration_is_not_used(self) -> None:
        clock = fake_clock_now()
        alice, _alice_events = await self.agent("alice", contacts=("bob",), clock=clock)
        _bob, _ = await self.agent("bob", listen=("::1",), register_ttl=60)
        clock.advance(61)
        error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.PeerUnreachable)
        self.assertIn("offline", str(error))

    async def test_every_address_dead(self) -> None:
        alice, _ = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        dead = [await self.dead_endpoint("127.0.0.1"), await self.dead_endpoint("::1")]
        bob_client = await self.registry.client(user=self.users["bob"])
        await bob_client.register_addresses(dead, "online", 300)
        with capturedLogs() as logs:
            error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.PeerUnreachable)
        for endpoint in dead:
            self.assertIn(f"{endpoint.address} port {endpoint.port}", str(error))
        assert alice.store is not None
        contact = await alice.store.get_contact(BOB)
        assert contact is not None
        self.assertIsNone(contact.last_endpoint)
        del logs

    async def test_unknown_user(self) -> None:
        alice, _alice_events = await self.agent("alice")
        from irp import errors as irp_errors
        error = await failure_of(alice.connect(Identity.parse("nobody@example.org")))
        self.assertIsInstance(error, (irp_errors.IRPError, errors.SixChatError))
        with self.assertRaises(errors.SelfConnection):
            await alice.send_text(ALICE, "note to self")

    async def test_concurrent_sends_share_one_dial(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        first, second = await alice.send_text(BOB, "one"), await alice.send_text(BOB, "two")
        for message in (first, second):
            await bob_events.wait_for(event="message", id=message.id)
            await alice_events.wait_for(event="receipt", id=message.id)
        self.assertEqual(len(bob_events.matching(event="session", state="up")), 1)
        self.assertEqual([m.body for m in await bob.store.history(ALICE)], ["one", "two"])  # type: ignore[union-attr]

    async def dead_endpoint(self, host: str) -> Endpoint:
        """A loopback address and port where nothing listens (a port just closed)."""
        return Endpoint.parse(host, await closed_port(host))


def collecting(owners: list[Any], credentials: Any) -> Any:
    """An owner factory for :func:`listen_bare` that keeps every owner it makes."""
    from test.helpers import BareOwner

    def make() -> Any:
        owners.append(BareOwner(credentials))
        return owners[-1]

    return make


class IdentityAttackTests(AgentTestCase):
    """Misbinding, man in the middle with another valid certificate, reflection, self-dial."""

    async def point_registry_at(self, name: str, *endpoints: Endpoint) -> None:
        """Make ``name``'s registry record list ``endpoints`` (as if their agent had)."""
        client = await self.registry.client(user=await self.user(name))
        await client.register_addresses(list(endpoints), "online", 300)

    async def assert_refused_as_mismatch(self, alice: Agent, alice_events: EventCollector) -> None:
        """Alice's dial to Bob fails with IdentityMismatch and her message stays queued."""
        with capturedLogs() as logs:
            error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.IdentityMismatch)
        self.assertTrue(any("identity-mismatch" in line for line in log_text(logs)), log_text(logs))
        message = await alice.send_text(BOB, "secret for bob")
        await self.settle(alice)
        self.assertEqual(await self.history(alice, BOB), [("out", "secret for bob", "queued")])
        self.assertEqual(alice.sessions, {})
        self.assertEqual(alice_events.matching(event="session"), [])
        del message

    async def test_third_users_agent_at_bobs_address(self) -> None:
        """Carol's (honest) agent listens where Bob's registry record points: her agent
        refuses a call meant for Bob, Alice refuses anything but Bob."""
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        carol, carol_events = await self.agent("carol", contacts=("alice",), policy="anyone")
        await self.point_registry_at("bob", endpoint_of(carol))
        await self.assert_refused_as_mismatch(alice, alice_events)
        assert carol.store is not None
        self.assertEqual(await carol.store.history(), [])
        self.assertEqual(carol_events.matching(event="session"), [])

    async def test_third_user_answering_as_bob(self) -> None:
        """Mallory runs her own implementation that answers calls for Bob with her own
        valid certificate: Alice's handshake refuses it before sending anything."""
        from test.helpers import BareOwner, credentials_of, listen_bare
        from test.sixchat_certs import forged_credentials

        alice, alice_events = await self.agent("alice", contacts=("bob",))
        mallory = credentials_of(await self.user("mallory"), self.registry)
        as_bob = forged_credentials(identity=BOB, certificates=mallory, private_key=mallory.private_key)
        owners: list[BareOwner] = []
        port = await listen_bare(self, collecting(owners, as_bob))
        await self.point_registry_at("bob", Endpoint.parse("127.0.0.1", port.getHost().port))
        await self.assert_refused_as_mismatch(alice, alice_events)
        self.assertTrue(owners)
        for owner in owners:
            self.assertEqual((owner.established, owner.messages, owner.verified), ([], [], []))

    async def test_another_certificate_for_bob_that_his_registry_does_not_hold(self) -> None:
        """A certificate naming Bob, from Bob's CA, valid and not revoked, but not one the
        registry vouches for now: the dialer's expected-fingerprint binding refuses it."""
        from irp.server.ca import generate_key
        from sixchat.handshake import LocalCredentials
        from test.helpers import BareOwner, listen_bare

        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.user("bob")
        key = generate_key("p256")
        certificate = self.registry.ca.issue_user_certificate(BOB, key.public_key())
        other_bob = LocalCredentials(BOB, certificate, [self.registry.ca.issuing_certificate], key)
        owners: list[BareOwner] = []
        port = await listen_bare(self, collecting(owners, other_bob))
        await self.point_registry_at("bob", Endpoint.parse("127.0.0.1", port.getHost().port))
        await self.assert_refused_as_mismatch(alice, alice_events)
        (_, error), = [owner.ended[0] for owner in owners[:1]]
        # Mallory learns only that she was refused.
        self.assertIsInstance(error, errors.IdentityMismatch)
        self.assertEqual(owners[0].messages, [])

    async def test_reflection_to_own_listener(self) -> None:
        """Bob's record points back at Alice's own agent: her listener refuses a call for
        Bob, her dialer reports the mismatch, and no session with anyone results."""
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        await self.point_registry_at("bob", endpoint_of(alice))
        await self.assert_refused_as_mismatch(alice, alice_events)
        for connection in list(alice.connections):
            await connection.when_lost()
        self.assertEqual(alice.connections, set())

    async def test_dialling_oneself(self) -> None:
        alice, _alice_events = await self.agent("alice")
        with self.assertRaises(errors.SelfConnection):
            await alice.connect(ALICE)
        with self.assertRaises(errors.SelfConnection):
            await alice.send_text(ALICE, "hello me")
        assert alice.store is not None
        self.assertEqual(await alice.store.history(), [])

    async def test_own_certificate_presented_back(self) -> None:
        """A second holder of Alice's key and certificate calls Alice: self-connection."""
        from test.helpers import BareOwner, credentials_of, dial_bare

        alice, _alice_events = await self.agent("alice", policy="anyone")
        twin = BareOwner(credentials_of(self.users["alice"], self.registry))
        address = endpoint_of(alice)
        with capturedLogs() as logs:
            await dial_bare(twin, address.address, address.port, ALICE)
            _, error = await twin.first_end
            for connection in list(alice.connections):
                await connection.when_lost()
        self.assertIsInstance(error, errors.SelfConnection)
        self.assertEqual(alice.sessions, {})
        self.assertTrue(any("self-connection" in line for line in log_text(logs)), log_text(logs))


class SimultaneousOpenTests(AgentTestCase):
    async def test_both_dial_at_once(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        # Each learns where the other is and which certificates to expect; then hang up.
        await self.deliver(alice, alice_events, bob_events, BOB, "warm-up")
        await self.quiet(alice, bob)
        await self.deliver(bob, bob_events, alice_events, ALICE, "warm-up reply")
        await self.quiet(alice, bob)

        crossings = 0
        for round_ in range(3):
            with capturedLogs() as logs:
                # Both dial at once (sending starts a dial; the messages are queued on both
                # sides meanwhile); the checks of peers wait until both dials are under
                # way, so they cross.
                release = self.hold_verification_until_crossed(alice, bob)
                sent = [await alice.send_text(BOB, f"round {round_}: from alice {i}") for i in range(3)]
                sent += [await bob.send_text(ALICE, f"round {round_}: from bob {i}") for i in range(3)]
                alice.connect(BOB).addErrback(lambda _: None)
                bob.connect(ALICE).addErrback(lambda _: None)
                await release
                for message in sent:
                    sender_events = alice_events if message.peer == BOB else bob_events
                    await sender_events.wait_for(event="receipt", id=message.id)
                await self.settle_connections(alice, bob)
            round_crossings = sum("Two sessions with" in line for line in log_text(logs))
            self.assertGreater(round_crossings, 0, f"the dials of round {round_} did not cross")
            crossings += round_crossings
            # Exactly one session survives, the same one on both sides.
            self.assertEqual(len(alice.connections), 1)
            self.assertEqual(len(bob.connections), 1)
            alice_session, bob_session = alice.sessions[BOB].session, bob.sessions[ALICE].session
            assert alice_session is not None and bob_session is not None
            self.assertEqual(alice_session.channel_binding, bob_session.channel_binding)
            self.assertNotEqual(alice.sessions[BOB].role, bob.sessions[ALICE].role)
            await self.quiet(alice, bob)
        self.assertGreater(crossings, 0, "the dials never crossed")

        # Nothing lost, nothing twice.
        for agent, peer in ((alice, BOB), (bob, ALICE)):
            history = await self.history(agent, peer)
            self.assertEqual(len(history), len(set(history)))
            self.assertEqual(len(history), 2 + 3 * 6)
            self.assertEqual({state for _, _, state in history}, {"delivered", "received"})

    def hold_verification_until_crossed(self, alice: Agent, bob: Agent) -> Deferred[None]:
        """Make both agents' peer checks wait until each agent holds two connections (its
        own dial and the other's); fires when they are let go."""
        gate: Deferred[None] = Deferred()
        agents = (alice, bob)
        verify = {agent: agent.verify_peer for agent in agents}
        started = {agent: agent.connection_started for agent in agents}

        def check() -> None:
            if not gate.called and all(len(agent.connections) >= 2 for agent in agents):
                for agent in agents:
                    agent.verify_peer = verify[agent]  # type: ignore[method-assign]
                    agent.connection_started = started[agent]  # type: ignore[method-assign]
                gate.callback(None)

        def held(agent: Agent) -> tuple[Any, Any]:
            def verify_peer(connection: Any, identity: Any, chain: Any) -> Deferred[None]:
                async def wait_then_check() -> None:
                    await gate
                    await verify[agent](connection, identity, chain)

                waiting = Deferred.fromCoroutine(wait_then_check())
                check()
                return waiting

            def connection_started(connection: Any) -> None:
                started[agent](connection)
                check()

            return verify_peer, connection_started

        for agent in agents:
            agent.verify_peer, agent.connection_started = held(agent)  # type: ignore[method-assign]
        released: Deferred[None] = Deferred()
        gate.addCallback(lambda _: released.callback(None))
        return released

    async def settle_connections(self, *agents: Agent) -> None:
        """Wait until each agent has no connection but its sessions."""
        for agent in agents:
            while len(agent.connections) > len(agent.sessions):
                spare = [c for c in agent.connections if c not in agent.sessions.values()]
                for connection in spare:
                    await connection.when_lost()
                if any(c in agent.connections for c in spare):  # pragma: no cover - defensive
                    await self.settle(agent)

    async def quiet(self, alice: Agent, bob: Agent) -> None:
        """Close every session and wait until both agents have no connection."""
        for agent in (alice, bob):
            for connection in list(agent.connections):
                connection.close("bye")
        for agent in (alice, bob):
            for connection in list(agent.connections):
                await connection.when_lost()
        self.assertEqual((alice.sessions, bob.sessions), ({}, {}))


class CertificateAndPolicyTests(AgentTestCase):
    """Peers whose certificates or identities the agent must refuse, and who refuses whom."""

    async def call(self, credentials: Any, agent: Agent, peer: Identity = ALICE) -> tuple[Any, list[str]]:
        """Call ``agent`` as ``credentials``' holder; returns (the caller's error, the
        agent's log lines), once the connection is over on both sides."""
        from test.helpers import BareOwner, dial_bare

        caller = BareOwner(credentials)
        address = endpoint_of(agent)
        before = set(agent.connections)
        sessions = dict(agent.sessions)
        with capturedLogs() as logs:
            connection = await dial_bare(caller, address.address, address.port, peer)
            _, error = await caller.first_end
            await connection.when_lost()
            for other in set(agent.connections) - before:
                await other.when_lost()
        self.assertEqual(agent.sessions, sessions)
        self.assertEqual(caller.messages, [])
        return error, log_text(logs)

    async def test_revoked_certificate(self) -> None:
        from test.helpers import credentials_of

        alice, alice_events = await self.agent("alice", policy="anyone")
        bob = await self.user("bob")
        client = await self.registry.client(user=bob)
        await client.revoke(bob.serial, "key-compromise")
        error, lines = await self.call(credentials_of(bob, self.registry), alice)
        self.assertIsInstance(error, errors.PeerRejected)
        self.assertEqual(error.reason, "revoked")
        self.assertTrue(any("revoked" in line and "bob@example.org" in line for line in lines), lines)
        self.assertEqual(alice_events.events, [])

    async def test_revoked_after_the_crl_was_cached(self) -> None:
        """Alice checked Bob (and so holds the CRL) before Bob's certificate is revoked:
        the revocation applies to the next connection once the CRL is older than
        ``crl_max_age``, not only when it expires."""
        from test.helpers import credentials_of

        clock = fake_clock_now()
        alice, alice_events, bob, bob_events = await self.pair(clock=clock)
        await self.deliver(bob, bob_events, alice_events, ALICE, "checked once")
        client = await self.registry.client(user=self.users["bob"])
        await client.revoke(self.users["bob"].serial, "key-compromise")
        clock.advance(alice.settings.crl_max_age + 1)
        error, _lines = await self.call(credentials_of(self.users["bob"], self.registry), alice)
        self.assertIsInstance(error, errors.PeerRejected)
        self.assertEqual(error.reason, "revoked")

    async def test_dialling_a_peer_whose_certificate_was_revoked(self) -> None:
        alice, _alice_events, _bob, _bob_events = await self.pair()
        client = await self.registry.client(user=self.users["bob"])
        await client.revoke(self.users["bob"].serial, "key-compromise")
        error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.PeerUnreachable)
        self.assertIn("no valid certificate", str(error))

    async def test_bad_certificates(self) -> None:
        """Certificates from another CA, expired, not yet valid, for the wrong usage, with a
        forged CA signature: each refused with its own reason, nothing established."""
        from sixchat.handshake import LocalCredentials
        from test import pki
        alice, alice_events = await self.agent("alice", policy="anyone")
        expected = {
            "other-ca": (errors.PeerRejected, "untrusted-ca"),
            "expired": (errors.PeerRejected, "expired"),
            "not-yet-valid": (errors.CertificateInvalid, None),
            "no-client-auth": (errors.CertificateInvalid, None),
            "forged-signature": (errors.CertificateInvalid, None),
        }
        for defect, (error_class, reason) in expected.items():
            bad = pki.bad_user(self.registry.ca, defect, username="mallory")
            credentials = LocalCredentials(bad.identity, bad.certificate, list(bad.intermediates), bad.key)
            error, lines = await self.call(credentials, alice)
            self.assertIsInstance(error, error_class, defect)
            if reason is not None:
                self.assertEqual(error.reason, reason, defect)
            self.assertTrue(any("mallory@example.org" in line and error.name in line for line in lines), (defect, lines))
        self.assertEqual(alice_events.events, [])

    async def test_not_a_contact(self) -> None:
        alice, alice_events, _bob, _bob_events = await self.pair()
        carol, carol_events = await self.agent("carol", contacts=("alice",))
        assert alice.store is not None
        await alice.store.remove_contact(CAROL)
        with capturedLogs() as logs:
            message = await carol.send_text(ALICE, "let me in")
            down = await carol_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "peer-rejected")
        self.assertTrue(any("carol@example.org is not a contact" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await alice.store.history(), [])
        self.assertEqual(alice_events.events, [])
        # Carol is told why, at once (issue 9, item 13).
        failed = await carol_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("not their contact", failed["reason"])
        self.assertEqual(await self.state_of(carol, message.id), "undelivered")

    async def test_blocked_contact(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        assert alice.store is not None
        await alice.store.set_blocked(BOB, True)
        with capturedLogs() as logs:
            message = await bob.send_text(ALICE, "still friends?")
            down = await bob_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "peer-rejected")
        # Bob cannot tell being blocked from being unknown.
        self.assertNotIn("block", down["error"])
        self.assertTrue(any("bob@example.org is blocked" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await self.history(alice, BOB), [])
        failed = await bob_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("not their contact, or they blocked you", failed["reason"])
        self.assertEqual(await self.state_of(bob, message.id), "undelivered")
        # Unblocking lets him in again.
        await alice.store.set_blocked(BOB, False)
        await self.deliver(bob, bob_events, alice_events, ALICE, "hello again")

    async def test_unblocking_a_stranger_lets_nobody_in(self) -> None:
        alice, _alice_events = await self.agent("alice")
        carol, carol_events = await self.agent("carol", contacts=("alice",))
        assert alice.store is not None
        await alice.store.set_blocked(CAROL, True)
        await alice.store.set_blocked(CAROL, False)
        with capturedLogs() as logs:
            await carol.send_text(ALICE, "am I a contact now?")
            down = await carol_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "peer-rejected")
        self.assertTrue(any("carol@example.org is not a contact" in line for line in log_text(logs)), log_text(logs))

    async def test_pinned_fingerprint(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        assert alice.store is not None
        await alice.store.add_contact(BOB, "Bob", ["00" * 32])
        with capturedLogs() as logs:
            await bob.send_text(ALICE, "new phone")
            down = await bob_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "peer-rejected")
        self.assertTrue(any("not one you pinned" in line for line in log_text(logs)), log_text(logs))
        error = await failure_of(alice.connect(BOB))
        self.assertIsInstance(error, errors.PeerRejected)
        # Pinning the right one works.
        await alice.store.add_contact(BOB, "Bob", [bob.credentials.fingerprint])
        await self.deliver(alice, alice_events, bob_events, BOB, "pinned")

    async def test_domain_policy(self) -> None:
        _alice, alice_events = await self.agent("alice", policy="domain")
        carol, carol_events = await self.agent("carol", contacts=("alice",))
        await self.deliver(carol, carol_events, alice_events, ALICE, "same domain, not a contact")

    async def test_policies_and_other_domains(self) -> None:
        """Dave of another domain that Alice trusts: refused under ``domain``, accepted
        under ``anyone`` (Alice checks his certificate against his registry's CRL); refused
        by Carol, who does not trust his domain at all."""
        from common.profile import Profile
        from sixchat.wire.application import ChatMessage
        from test.helpers import BareOwner, credentials_of, dial_bare, make_profile

        other = await RunningRegistry(self, domain="other.example").start()
        dave = credentials_of(await other.enrol("dave"), other)
        make_profile(self.registry, await self.user("alice"), self.paths["alice"])
        profile = Profile(self.paths["alice"])
        profile.trust_domain("other.example", other.root)
        config = profile.load_config()
        config.registries["other.example"] = f"127.0.0.1:{other.port}"
        profile.save_config(config)

        alice, alice_events = await self.agent("alice", policy="domain")
        error, lines = await self.call(dave, alice)
        self.assertIsInstance(error, errors.PeerRejected)
        self.assertTrue(any("dave@other.example is not a contact" in line for line in lines), lines)
        await alice.stopService()

        alice, alice_events = await self.agent("alice", policy="anyone")
        caller = BareOwner(dave)
        address = endpoint_of(alice)
        connection = await dial_bare(caller, address.address, address.port, ALICE)
        await connection.when_established()
        message = ChatMessage("hello from elsewhere")
        connection.send(message)
        received = await alice_events.wait_for(event="message", id=message.id)
        self.assertEqual(received["from"], "dave@other.example")
        connection.close()

        carol, _carol_events = await self.agent("carol", policy="anyone")
        error, lines = await self.call(dave, carol, CAROL)
        self.assertIsInstance(error, errors.PeerRejected)
        self.assertEqual(error.reason, "untrusted-ca")

    async def state_of(self, agent: Agent, message_id: str) -> str:
        assert agent.store is not None
        message = await agent.store.get_message(message_id)
        assert message is not None
        return message.state


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10) for n in range(1, 10))
    + b']><hello to="&lol9;"/>'
)
EXTERNAL_ENTITY = b'<?xml version="1.0"?><!DOCTYPE hello [<!ENTITY x SYSTEM "file:///etc/passwd">]><hello to="&x;"/>'


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class HostileBytesTests(HostileBytesTestCase):
    """Raw TCP clients sending what no SixChat agent would: the agent answers with an
    alert, closes, logs it, and keeps serving everyone else."""

    async def assert_still_serving(self, alice: Agent, alice_events: EventCollector, bob: Agent, bob_events: EventCollector) -> None:
        self.assertEqual(alice.connections, set())
        await self.deliver(bob, bob_events, alice_events, ALICE, "are you still there?")

    async def test_malformed_first_frames(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        cases = {
            "oversized length": ((1 << 31).to_bytes(4, "big"), errors.MessageTooLarge),
            "one byte over the cap": ((32 * 1024 + 1).to_bytes(4, "big") + b"<", errors.MessageTooLarge),
            "billion laughs": (frame(BILLION_LAUGHS), errors.MalformedMessage),
            "external entity": (frame(EXTERNAL_ENTITY), errors.MalformedMessage),
            "not XML": (frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), errors.MalformedMessage),
            "empty frame": (frame(b""), errors.MalformedMessage),
            "wrong message": (frame(b"<pong/>"), errors.MalformedMessage),
        }
        for name, (data, error_class) in cases.items():
            alert, lines = await self.attack(alice, data)
            self.assertIsInstance(alert, error_class, name)
            assert alert is not None
            self.assertTrue(any("an unknown peer at 127.0.0.1 failed" in line and alert.name in line for line in lines), (name, lines))
            self.assertEqual(alice_events.events, [], name)
        await self.assert_still_serving(alice, alice_events, bob, bob_events)

    async def test_http_request_is_refused(self) -> None:
        """Something speaking another protocol (here HTTP) reads as an absurd length."""
        alice, alice_events, bob, bob_events = await self.pair()
        alert, _ = await self.attack(alice, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
        self.assertIsInstance(alert, errors.MessageTooLarge)
        await self.assert_still_serving(alice, alice_events, bob, bob_events)

    async def test_silent_and_endless(self) -> None:
        clock = fake_clock_now()
        alice, _alice_events = await self.agent("alice", contacts=("bob",), clock=clock)
        timeout = alice.limits.handshake_timeout
        for name, data in (("silent", b""), ("endless frame", (32 * 1024).to_bytes(4, "big") + b"<hello" + b" " * 1000), ("half a hello", b"\x00\x00")):
            alert, lines = await self.attack(alice, data, clock=clock, wait=timeout)
            self.assertIsInstance(alert, errors.Timeout, name)
            self.assertTrue(any("took too long" in line for line in lines), (name, lines))

    async def test_truncation_is_reported(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        with capturedLogs() as logs:
            bob.sessions[ALICE].transport.abortConnection()  # type: ignore[union-attr]
            down = await alice_events.wait_for(event="session", state="down")
        self.assertEqual(down["name"], "truncated")
        self.assertTrue(any("bob@example.org" in line and "truncated" in line for line in log_text(logs)), log_text(logs))
        # A clean close is not truncation.
        await self.deliver(alice, alice_events, bob_events, BOB, "again")
        closed = bob_events.next(event="session", state="down")
        alice.sessions[BOB].close("bye")
        self.assertNotIn("error", await closed)

    async def test_handshake_rate_limit_per_address(self) -> None:
        from test.helpers import RawPeer

        clock = fake_clock_now()
        alice, alice_events = await self.agent("alice", listen=("127.0.0.1", "::1"), contacts=("bob",), clock=clock, handshakes_per_address=3, handshake_window=10.0)
        bob, bob_events = await self.agent("bob", contacts=("alice",))
        address = endpoint_of(alice)
        admitted = [await RawPeer().connect(address.address, address.port) for _ in range(3)]
        with capturedLogs() as logs:
            alert, _ = await self.attack(alice, b"")
        self.assertIsInstance(alert, errors.RateLimited)
        self.assertTrue(any("too many handshakes" in line and "127.0.0.1" in line for line in log_text(logs)), log_text(logs))
        # Other addresses are not affected (Bob reaches Alice over IPv6).
        await self.deliver(bob, bob_events, alice_events, ALICE, "over ::1")
        self.assertEqual(alice.sessions[BOB].peer_host, "::1")
        # The window slides: once it passed, the address may try again.
        for peer in admitted:
            peer.transport.loseConnection()
            await peer.closed
        clock.advance(10.0)
        alert, _ = await self.attack(alice, frame(b"<pong/>"))
        self.assertIsInstance(alert, errors.MalformedMessage)


class LifecycleTests(AgentTestCase):
    async def test_stop_closes_sessions_cleanly(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        connections = list(bob.connections)
        await bob.stopService()
        self.assertTrue(all(connection.disconnected for connection in connections))
        down = await alice_events.wait_for(event="session", state="down")
        self.assertNotIn("error", down)
        # Bob is away at the registry, with no address.
        assert alice.directory is not None
        record = await alice.directory.lookup(BOB)
        self.assertEqual((record.presence, record.endpoints), ("away", ()))

    async def test_stop_waits_for_connections_to_close(self) -> None:
        """Without a registry to tell, stopping still closes every session before it is
        done (a closed agent leaves no socket behind)."""
        alice, alice_events = await self.agent("alice", contacts=("bob",))
        bob, bob_events = await self.agent("bob", contacts=("alice",), register=False)
        client = await self.registry.client(user=self.users["bob"])
        await client.register_addresses([endpoint_of(bob)], "online", 300)
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        connections = list(bob.connections)
        self.assertEqual(len(connections), 1)
        await bob.stopService()
        self.assertTrue(all(connection.disconnected for connection in connections))

    async def test_ping_and_idle(self) -> None:
        from sixchat.wire.application import Ping, Pong

        clock = fake_clock_now()
        alice, alice_events, bob, bob_events = await self.pair(clock=clock)
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        pongs: list[Any] = []
        original = bob.message_received

        def spy(connection: Any, message: Any) -> None:
            if isinstance(message, Pong):
                pongs.append(message)
            original(connection, message)

        bob.message_received = spy  # type: ignore[method-assign]
        bob.sessions[ALICE].send(Ping())
        await self.deliver(alice, alice_events, bob_events, BOB, "after the ping")
        self.assertEqual(pongs, [Pong()])
        # A session nobody uses is closed cleanly at the idle limit.
        closed = bob_events.next(event="session", state="down")
        clock.advance(alice.limits.idle_timeout)
        self.assertNotIn("error", await closed)
        self.assertEqual((alice.sessions, bob.sessions), ({}, {}))

    async def test_status(self) -> None:
        alice, alice_events, _bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        status = alice.status()
        self.assertEqual(status["identity"], "alice@example.org")
        self.assertEqual(status["sessions"], ["bob@example.org"])
        self.assertEqual(status["policy"], "contacts")
        self.assertEqual(status["fingerprint"], alice.credentials.fingerprint)
        address = endpoint_of(alice)
        self.assertEqual(status["listening"], [f"127.0.0.1 port {address.port}"])
        self.assertEqual(status["advertised"], [f"127.0.0.1 port {address.port}"])

    async def test_presence_is_registered_and_shared(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        assert alice.directory is not None
        record = await alice.directory.lookup(BOB)
        self.assertEqual((record.presence, record.endpoints), ("online", (endpoint_of(bob),)))
        await self.deliver(alice, alice_events, bob_events, BOB, "hello")
        presence = await alice_events.wait_for(event="presence", who="bob@example.org")
        self.assertEqual(presence["status"], "online")
        assert alice.store is not None
        contact = await alice.store.get_contact(BOB)
        assert contact is not None
        self.assertEqual(contact.presence, "online")

    async def test_registration_refreshed(self) -> None:
        clock = fake_clock_now()
        alice, _alice_events = await self.agent("alice", clock=clock, register_ttl=60)
        bob, _bob_events = await self.agent("bob", listen=("::1",))
        assert alice.directory is not None and bob.directory is not None
        first = await bob.directory.lookup(ALICE)
        registrations: list[Deferred[Any]] = []
        original = alice.directory.register

        def spy(*args: Any) -> Any:
            registrations.append(Deferred.fromCoroutine(original(*args)))
            return registrations[-1]

        alice.directory.register = spy  # type: ignore[method-assign, assignment]
        clock.advance(29)
        self.assertEqual(registrations, [])
        clock.advance(1)
        self.assertEqual(len(registrations), 1)
        await registrations[0]
        second = await bob.directory.lookup(ALICE)
        self.assertGreater(second.seq, first.seq)
        self.assertEqual((second.presence, second.endpoints), ("online", (endpoint_of(alice),)))

    async def test_start_fails_readably_without_credentials(self) -> None:
        from sixchat.agent.service import AgentSettings

        agent = Agent(AgentSettings(profile_dir=self.mktemp(), listen=[], register=False, control=False), reactor)
        with capturedLogs() as logs:
            agent.startService()
            error = await failure_of(agent.ready)
        # The fix is given as sixchat's own command, in full.
        self.assertIn("create it with 'sixchat --profile ", str(error))
        self.assertTrue(any("could not start" in line and "sixchat --profile" in line for line in log_text(logs)), log_text(logs))
        # A readable line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(), [])


class ReceiptAndRenewalTests(AgentTestCase):
    async def test_receipt_only_counts_from_the_recipient(self) -> None:
        """Bob cannot mark Alice's message to Carol as delivered by sending its id."""
        from sixchat.wire.application import Receipt

        alice, alice_events, bob, bob_events = await self.pair()
        await self.user("carol")
        to_carol = await alice.send_text(CAROL, "for carol's eyes")
        await self.settle(alice)
        await self.deliver(alice, alice_events, bob_events, BOB, "hello bob")
        bob.sessions[ALICE].send(Receipt(to_carol.id))
        await self.deliver(bob, bob_events, alice_events, ALICE, "after the fake receipt")
        self.assertEqual(await self.state_of(alice, to_carol.id), "queued")
        self.assertEqual(alice_events.matching(event="receipt", id=to_carol.id), [])

    async def test_message_id_of_another_conversation(self) -> None:
        """A message reusing the id of a message Alice already holds (from someone else) is
        not taken as a resend of it: it is refused, and no receipt confirms it."""
        from sixchat.wire.application import ChatMessage, Receipt

        alice, alice_events, bob, bob_events = await self.pair()
        carol, carol_events = await self.agent("carol", contacts=("alice",))
        assert alice.store is not None
        await alice.store.add_contact(CAROL)
        first = await self.deliver(carol, carol_events, alice_events, ALICE, "from carol")
        await self.deliver(alice, alice_events, bob_events, BOB, "hello bob")
        receipts: list[str] = []
        original = bob.message_received

        def spy(connection: Any, message: Any) -> None:
            if isinstance(message, Receipt):
                receipts.append(message.id)
            original(connection, message)

        bob.message_received = spy  # type: ignore[method-assign]
        with capturedLogs() as logs:
            bob.sessions[ALICE].send(ChatMessage("not from carol", id=first))
            after = await self.deliver(bob, bob_events, alice_events, ALICE, "after the copy")
        self.assertEqual(receipts, [after])
        self.assertEqual(await self.history(alice, BOB), [("out", "hello bob", "delivered"), ("in", "after the copy", "received")])
        self.assertEqual(alice_events.matching(event="message", text="not from carol"), [])
        self.assertTrue(any(first in line and "bob@example.org" in line for line in log_text(logs)), log_text(logs))

    async def test_longest_messages(self) -> None:
        """16384 characters are accepted only if the encoded message fits in one record:
        a text that cannot be sent is refused before it is stored, never queued forever in
        front of the others."""
        alice, alice_events, _bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "é" * 16384)
        for text in ("<" * 16384, "\U0001f600" * 16384, "x" * 16385):
            with self.assertRaises(errors.MessageTooLarge):
                await alice.send_text(BOB, text)
        self.assertEqual(len(await self.history(alice, BOB)), 1)

    async def test_an_unsendable_stored_message_does_not_block_the_queue(self) -> None:
        alice, alice_events, _bob, bob_events = await self.pair()
        assert alice.store is not None
        stuck = await alice.store.queue_message(BOB, "<" * 16384)
        with capturedLogs() as logs:
            after = await self.deliver(alice, alice_events, bob_events, BOB, "behind it")
            given_up = await alice_events.wait_for(event="undelivered", id=stuck.id)
        self.assertEqual(given_up["to"], "bob@example.org")
        self.assertEqual(await self.state_of(alice, stuck.id), "undelivered")
        self.assertEqual(await self.state_of(alice, after), "delivered")
        self.assertTrue(any(stuck.id in line for line in log_text(logs)), log_text(logs))

    async def test_renewed_certificate_is_accepted_at_once(self) -> None:
        """Bob renews his certificate and restarts: Alice, who cached the fingerprints his
        registry gave her, checks again instead of refusing him for minutes."""
        from common.profile import Profile

        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "before")
        await bob.stopService()
        client = await self.registry.client(user=self.users["bob"])
        renewed = await client.renew(self.users["bob"].serial)
        assert renewed.certificate is not None
        Profile(self.paths["bob"]).save_credentials(None, [renewed.certificate, self.registry.ca.issuing_certificate])
        bob, bob_events = await self.agent("bob", listen=("::1",))
        await self.deliver(alice, alice_events, bob_events, BOB, "after")

    async def state_of(self, agent: Agent, message_id: str) -> str:
        assert agent.store is not None
        message = await agent.store.get_message(message_id)
        assert message is not None
        return message.state
