"""The agent's sealed-message path without sockets: Alice's Depositor seals to Bob's
published prekey and deposits at a fake intermediary (a dict); Bob's Mailbox opens, checks,
sequence-checks and stores what it delivers, with real keys, real sealed envelopes (part A)
and real SQLite stores. The sockets, the registry and the real intermediary are in
test_intermediary.py."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from common.identity import Identity
from intermediary.wire import PrekeyCount
from sixchat import errors
from sixchat.agent.deposit import Depositor, stored_reason
from sixchat.agent.mailbox import ONE_TIME_TARGET, REFILL_BELOW, Mailbox
from sixchat.agent.service import AgentSettings
from sixchat.agent.store import AgentStore
from sixchat.handshake import LocalCredentials
from sixchat.sealed.envelope import peek
from sixchat.sealed.prekeys import decode_prekey
from test.sixchat.agent.helpers import log_text
from test.sixchat_certs import user

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")
CAROL = Identity.parse("carol@example.org")


class FakeIntermediary:
    """What the intermediary does, in memory: prekeys per user, deposits per recipient."""

    def __init__(self) -> None:
        self.prekeys: dict[Identity, list[bytes]] = {}
        self.last_resort: dict[Identity, bytes] = {}
        self.deposits: list[tuple[Identity, Identity, bytes, int, int | None]] = []
        self.owner: Identity | None = None
        #: Refuse the next deposit with this error.
        self.refuse: Exception | None = None

    def as_user(self, identity: Identity) -> FakeClient:
        return FakeClient(self, identity)


@dataclass
class FakeClient:
    server: FakeIntermediary
    identity: Identity

    async def publish_prekeys(self, prekeys: list[bytes]) -> PrekeyCount:
        for data in prekeys:
            prekey = decode_prekey(data)
            assert prekey.owner == self.identity
            if prekey.one_time:
                self.server.prekeys.setdefault(self.identity, []).append(data)
            else:
                self.server.last_resort[self.identity] = data
        return PrekeyCount(len(self.server.prekeys.get(self.identity, [])), self.identity in self.server.last_resort)

    async def fetch_prekey(self, who: Identity) -> bytes:
        waiting = self.server.prekeys.get(who, [])
        if waiting:
            return waiting.pop(0)
        return self.server.last_resort[who]

    async def deposit(self, to: Identity, envelope: bytes, expires: int, deliver_at: int | None) -> str:
        if self.server.refuse is not None:
            refusal, self.server.refuse = self.server.refuse, None
            raise refusal
        self.server.deposits.append((self.identity, to, envelope, expires, deliver_at))
        return uuid.uuid4().hex


class FakeVerifier:
    """Refuses blocked senders (the real PeerVerifier runs in the integration tests)."""

    def __init__(self) -> None:
        self.refused: set[Identity] = set()
        self.no_crl = False

    async def verify(self, identity: Identity, chain: list[Any]) -> None:
        if self.no_crl:
            raise errors.PeerRejected("the revocation status is unknown", reason="untrusted-ca")
        if identity in self.refused:
            raise errors.PeerRejected(f"{identity} is blocked", reason="denied")


class FakeAgent:
    """The parts of an Agent the mailbox and the depositor use."""

    def __init__(self, credentials: LocalCredentials, store: AgentStore, clock: Clock, client: FakeClient, registry: dict[Identity, LocalCredentials]) -> None:
        self.identity = credentials.identity
        self.credentials = credentials
        self.store = store
        self.clock = clock
        self.settings = AgentSettings(profile_dir="unused")
        self.events: list[dict[str, Any]] = []
        self.verifier = FakeVerifier()
        self.receipts: list[tuple[Identity, str]] = []
        self.registry = registry
        self.mailbox = SimpleNamespace(client=client)
        self.outbox = SimpleNamespace(send_receipt=self._send_receipt)
        self.directory = SimpleNamespace(client=self._registry_client)
        self.profile = SimpleNamespace(trusted_roots=lambda: {"example.org": None})

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def expected_fingerprints(self, peer: Identity, *, fresh: bool = False) -> set[str]:
        return {self.registry[peer].fingerprint}

    async def _send_receipt(self, peer: Identity, message_id: str) -> None:
        self.receipts.append((peer, message_id))

    async def _registry_client(self, domain: str) -> Any:
        async def user_certificates(name: str) -> list[Any]:
            return [SimpleNamespace(certificate=self.registry[Identity.parse(name)].certificate)]

        return SimpleNamespace(user_certificates=user_certificates)


class SealedPathTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(int(time.time()))
        self.server = FakeIntermediary()
        registry = {ALICE: user("alice"), BOB: user("bob"), CAROL: user("carol")}
        self.agents: dict[Identity, FakeAgent] = {}
        folder = os.path.abspath(self.mktemp())
        for who in (ALICE, BOB, CAROL):
            store = await AgentStore.open(os.path.join(folder, who.username, "sixchat.sqlite3"), reactor, now=self.clock.seconds)
            self.addCleanup(store.close)
            self.agents[who] = FakeAgent(registry[who], store, self.clock, self.server.as_user(who), registry)
        self.alice, self.bob = self.agents[ALICE], self.agents[BOB]
        self.mailbox = Mailbox(self.bob)  # type: ignore[arg-type]
        await self.mailbox.upkeep(self.bob.mailbox.client, probe=True)

    def depositor(self, agent: FakeAgent) -> Depositor:
        return Depositor(agent)  # type: ignore[arg-type]

    async def send(self, text: str, sender: FakeAgent | None = None) -> str:
        """Queue ``text`` to Bob and deposit it; returns its id."""
        sender = sender or self.alice
        message = await sender.store.queue_message(BOB, text)
        self.assertEqual(await self.depositor(sender).deposit_message(message), "stored")
        return message.id

    async def bob_history(self) -> list[tuple[str, str]]:
        return [(str(m.peer), m.body) for m in await self.bob.store.history(None)]

    async def test_prekeys_published_and_secrets_kept(self) -> None:
        self.assertEqual(len(self.server.prekeys[BOB]), ONE_TIME_TARGET)
        self.assertIn(BOB, self.server.last_resort)
        self.assertEqual(await self.bob.store.sealed.unused_one_time(int(self.clock.seconds())), ONE_TIME_TARGET)
        for data in self.server.prekeys[BOB]:
            self.assertIsNotNone(await self.bob.store.sealed.secret(decode_prekey(data).id))

    async def test_stored_then_received_in_order_and_confirmed(self) -> None:
        ids = [await self.send(f"message {n}") for n in range(3)]
        for message_id in ids:
            stored = await self.alice.store.get_message(message_id)
            assert stored is not None
            self.assertEqual((stored.state, stored.reason), ("stored", stored_reason(BOB)))
        self.assertEqual([event["event"] for event in self.alice.events], ["stored"] * 3)
        self.assertEqual([peek(envelope).seq for _, _, envelope, _, _ in self.server.deposits], [1, 2, 3])
        for sender, to, envelope, _, deliver_at in self.server.deposits:
            self.assertEqual((sender, to, deliver_at), (ALICE, BOB, None))
            self.assertNotIn(b"message", envelope)  # sealed: the text is not readable there
            self.assertTrue(await self.mailbox.receive(envelope, sender))
        self.assertEqual(await self.bob_history(), [(str(ALICE), f"message {n}") for n in range(3)])
        self.assertEqual([event["id"] for event in self.bob.events if event["event"] == "message"], ids)
        self.assertEqual(self.bob.receipts, [(ALICE, message_id) for message_id in ids])
        # Forward secrecy: the three one-time secrets are gone.
        self.assertEqual(await self.bob.store.sealed.unused_one_time(int(self.clock.seconds())), ONE_TIME_TARGET - 3)
        prekey_ids = [peek(envelope).prekey_id for _, _, envelope, _, _ in self.server.deposits]
        for prekey_id in prekey_ids:
            self.assertIsNone(await self.bob.store.sealed.secret(prekey_id))
        # Delivered again (the intermediary replays it): cannot even be opened now.
        with capturedLogs() as logs:
            self.assertFalse(await self.mailbox.receive(self.server.deposits[0][2], ALICE))
        self.assertTrue(any("which we do not hold" in line for line in log_text(logs)))
        self.assertEqual(len(await self.bob_history()), 3)

    async def test_replay_on_the_last_resort_prekey_is_refused(self) -> None:
        self.server.prekeys[BOB].clear()  # drained: senders get the last-resort prekey
        await self.send("once")
        envelope = self.server.deposits[0][2]
        self.assertFalse(await self.mailbox.receive(envelope, ALICE))
        with capturedLogs() as logs:
            await self.mailbox.receive(envelope, ALICE)
        self.assertTrue(any("a replay" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await self.bob_history(), [(str(ALICE), "once")])
        self.assertEqual(len(self.bob.receipts), 1)

    async def test_reordered_old_message_is_refused_after_a_newer_one(self) -> None:
        self.server.prekeys[BOB].clear()
        await self.send("first")
        await self.send("second")
        first, second = (deposit[2] for deposit in self.server.deposits)
        with capturedLogs() as logs:
            await self.mailbox.receive(second, ALICE)
        self.assertTrue(any("1 to 1 from alice@example.org have not arrived" in line for line in log_text(logs)), log_text(logs))
        # The user is told, not only the log: the chat shows it.
        (missing,) = [event for event in self.bob.events if event["event"] == "missing"]
        self.assertEqual((missing["from"], missing["count"]), (str(ALICE), 1))
        self.assertIn("1 earlier message from alice@example.org", str(missing["text"]))
        # The missing one arriving late is still accepted once (delayed, not replayed).
        await self.mailbox.receive(first, ALICE)
        await self.mailbox.receive(first, ALICE)
        self.assertEqual(sorted(body for _, body in await self.bob_history()), ["first", "second"])

    async def test_refused_deposit_leaves_no_gap(self) -> None:
        from intermediary.errors import QuotaExceeded

        self.server.refuse = QuotaExceeded("bob's mailbox is full")
        message = await self.alice.store.queue_message(BOB, "refused once")
        with self.assertRaises(QuotaExceeded):
            await self.depositor(self.alice).deposit_message(message)
        stored = await self.alice.store.get_message(message.id)
        assert stored is not None
        self.assertEqual(stored.state, "queued")
        await self.depositor(self.alice).deposit_message(message)
        self.assertEqual([peek(deposit[2]).seq for deposit in self.server.deposits], [1])

    async def test_tampered_envelope_is_dropped(self) -> None:
        await self.send("secret text")
        envelope = bytearray(self.server.deposits[0][2])
        body = envelope.index(b"<body>") + 10
        envelope[body] = ord("A") if envelope[body] != ord("A") else ord("B")
        with capturedLogs() as logs:
            await self.mailbox.receive(bytes(envelope), ALICE)
        self.assertTrue(any("Dropped a sealed message" in line for line in log_text(logs)))
        self.assertEqual(await self.bob_history(), [])

    async def test_sender_swapped_by_the_intermediary_is_dropped(self) -> None:
        await self.send("from alice")
        with capturedLogs() as logs:
            await self.mailbox.receive(self.server.deposits[0][2], CAROL)
        self.assertTrue(any("deposited by carol@example.org but signed by alice@example.org" in line for line in log_text(logs)))
        self.assertEqual(await self.bob_history(), [])

    async def test_envelope_for_someone_else_is_dropped(self) -> None:
        """An intermediary redirecting Carol's mail to Bob gains nothing: Bob cannot open
        it, and says why."""
        carol_client = self.server.as_user(CAROL)
        await Mailbox(self.agents[CAROL]).upkeep(carol_client, probe=True)  # type: ignore[arg-type]
        message = await self.alice.store.queue_message(CAROL, "for carol")
        await self.depositor(self.alice).deposit_message(message)
        with capturedLogs() as logs:
            self.assertFalse(await self.mailbox.receive(self.server.deposits[0][2], ALICE))
        self.assertTrue(any("Dropped a sealed message" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await self.bob_history(), [])

    async def test_blocked_sender_is_refused(self) -> None:
        await self.send("hello")
        self.bob.verifier.refused.add(ALICE)
        with capturedLogs() as logs:
            await self.mailbox.receive(self.server.deposits[0][2], ALICE)
        self.assertTrue(any("alice@example.org is blocked" in line for line in log_text(logs)))
        self.assertEqual(await self.bob_history(), [])
        self.assertEqual(self.bob.receipts, [])

    async def test_sender_that_cannot_be_checked_now_stays_at_the_intermediary(self) -> None:
        """No CRL from a trusted domain's registry now: the message is neither stored nor
        dropped (not acknowledged: it comes again), and its secret is kept."""
        from sixchat.agent.mailbox import _Transient

        await self.send("check me later")
        envelope = self.server.deposits[0][2]
        self.bob.verifier.no_crl = True
        with self.assertRaises(_Transient):
            await self.mailbox.receive(envelope, ALICE)
        self.assertEqual(await self.bob_history(), [])
        self.assertIsNotNone(await self.bob.store.sealed.secret(peek(envelope).prekey_id))
        self.bob.verifier.no_crl = False
        self.assertTrue(await self.mailbox.receive(envelope, ALICE))
        self.assertEqual(await self.bob_history(), [(str(ALICE), "check me later")])

    def seal_by_hand(self, payload: bytes, message_id: str, sent_at: int) -> bytes:
        from sixchat.sealed.envelope import seal

        prekey = decode_prekey(self.server.prekeys[BOB].pop(0))
        return seal(self.alice.credentials, recipient=BOB, prekey=prekey, payload=payload, message_id=message_id, seq=1, sent_at=sent_at, expires_at=sent_at + 3600)

    async def test_sent_in_the_future_may_pass_with_time(self) -> None:
        from sixchat.agent.mailbox import _Transient
        from sixchat.wire.application import ChatMessage, encode_application

        message_id = str(uuid.uuid4())
        now = int(self.clock.seconds())
        envelope = self.seal_by_hand(encode_application(ChatMessage(text="from the future", id=message_id)), message_id, now + 1000)
        with self.assertRaises(_Transient):
            await self.mailbox.receive(envelope, ALICE)
        self.clock.advance(1000)
        await self.mailbox.receive(envelope, ALICE)
        self.assertEqual(await self.bob_history(), [(str(ALICE), "from the future")])

    async def test_message_id_must_match_the_envelope(self) -> None:
        from sixchat.wire.application import ChatMessage, encode_application

        envelope = self.seal_by_hand(encode_application(ChatMessage(text="mismatch")), str(uuid.uuid4()), int(self.clock.seconds()))
        with capturedLogs() as logs:
            await self.mailbox.receive(envelope, ALICE)
        self.assertTrue(any("it holds message" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(await self.bob_history(), [])

    async def test_receipt_back_through_the_intermediary_delivers(self) -> None:
        await Mailbox(self.alice).upkeep(self.alice.mailbox.client, probe=True)  # type: ignore[arg-type]
        message_id = await self.send("hi")
        await self.mailbox.receive(self.server.deposits[0][2], ALICE)
        await self.depositor(self.bob).deposit_receipt(ALICE, message_id)
        alice_mailbox = Mailbox(self.alice)  # type: ignore[arg-type]
        sender, to, envelope, _, _ = self.server.deposits[1]
        self.assertEqual((sender, to), (BOB, ALICE))
        await alice_mailbox.receive(envelope, BOB)
        stored = await self.alice.store.get_message(message_id)
        assert stored is not None
        self.assertEqual(stored.state, "delivered")
        self.assertEqual(self.alice.events[-1], {"event": "receipt", "id": message_id, "to": str(BOB), "via": "intermediary"})

    async def test_scheduled_message_is_deposited_with_deliver_at(self) -> None:
        deliver_at = int(self.clock.seconds()) + 3600
        message = await self.alice.store.queue_message(BOB, "later", deliver_at)
        self.assertEqual(await self.depositor(self.alice).deposit_message(message), "scheduled")
        self.assertEqual(self.server.deposits[0][4], deliver_at)
        self.assertGreater(self.server.deposits[0][3], deliver_at)
        stored = await self.alice.store.get_message(message.id)
        assert stored is not None
        self.assertEqual(stored.state, "scheduled")
        self.assertEqual(self.alice.events[-1]["deliver_at"], deliver_at)

    async def test_forged_prekey_is_refused(self) -> None:
        """An intermediary serving its own prekey for Bob (to read his mail) is caught: it
        is not signed by a certificate Bob's registry holds."""
        self.server.prekeys[BOB].clear()
        carol_client = self.server.as_user(CAROL)
        await Mailbox(self.agents[CAROL]).upkeep(carol_client, probe=True)  # type: ignore[arg-type]
        self.server.last_resort[BOB] = self.server.last_resort[CAROL]
        message = await self.alice.store.queue_message(BOB, "for bob only")
        with self.assertRaises(errors.SixChatError):
            await self.depositor(self.alice).deposit_message(message)
        self.assertEqual(self.server.deposits, [])
        stored = await self.alice.store.get_message(message.id)
        assert stored is not None
        self.assertEqual(stored.state, "queued")

    async def test_refill_below_the_threshold(self) -> None:
        client = self.bob.mailbox.client
        del self.server.prekeys[BOB][: ONE_TIME_TARGET - REFILL_BELOW + 1]
        self.mailbox._server_one_time = REFILL_BELOW - 1
        await self.mailbox.upkeep(client)
        self.assertEqual(len(self.server.prekeys[BOB]), ONE_TIME_TARGET)
        # At or above the threshold nothing is published.
        before = list(self.server.prekeys[BOB])
        await self.mailbox.upkeep(client)
        self.assertEqual(self.server.prekeys[BOB], before)

    async def test_last_resort_rotated_after_a_week(self) -> None:
        client = self.bob.mailbox.client
        first = self.server.last_resort[BOB]
        self.clock.advance(6 * 86400)
        await self.mailbox.upkeep(client)
        self.assertEqual(self.server.last_resort[BOB], first)
        self.clock.advance(86400)
        await self.mailbox.upkeep(client)
        self.assertNotEqual(self.server.last_resort[BOB], first)


class RelayReservationTests(TestCase):
    """The relay reservation is renewed before it lapses and withdrawn with the connection."""

    def test_renewed_at_half_its_life_and_dropped_with_the_connection(self) -> None:
        from common.endpoint import Endpoint
        from intermediary.wire import Reserved

        clock = Clock()
        clock.advance(1_800_000_000)
        changes: list[Endpoint | None] = []
        reservations: list[float] = []

        async def relay_changed() -> None:
            changes.append(mailbox.relay)

        agent = SimpleNamespace(clock=clock, relay_changed=relay_changed)
        mailbox = Mailbox(agent)  # type: ignore[arg-type]

        class Client:
            async def reserve(self, on_circuit: Any) -> Reserved:
                reservations.append(clock.seconds())
                return Reserved("2001:db8::5", 46051, int(clock.seconds()) + 600, 46049)

        client = Client()
        mailbox.client = client
        Deferred.fromCoroutine(mailbox._reserve(client))
        self.assertEqual(changes, [Endpoint("2001:db8::5", 46051)])
        clock.advance(299)
        self.assertEqual(len(reservations), 1)
        clock.advance(1)
        self.assertEqual(reservations, [1_800_000_000, 1_800_000_300])
        self.assertEqual(len(changes), 1)  # the same port: nothing to register again
        mailbox.client = None
        mailbox._drop_relay()
        self.assertEqual(changes[-1], None)
        clock.advance(600)
        self.assertEqual(len(reservations), 2)  # no renewal once dropped
