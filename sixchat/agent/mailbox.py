"""The agent's mailbox: its connection to its own domain's intermediary.

While the agent runs it keeps one connection to ``intermediary@<its domain>`` (found through
the registry; reconnected with backoff, 1 s doubling to 60 s; the client library pings it
every 60 s and drops it when a request goes unanswered), and over it:

- keeps prekeys published: at least :data:`ONE_TIME_TARGET` one-time prekeys (refilled when
  fewer than :data:`REFILL_BELOW` are left) and one last-resort prekey, replaced every
  :data:`LAST_RESORT_ROTATION`. Secrets are stored (agent store, mode 0600) before their
  prekeys are published; a one-time secret is deleted once the message sealed to it is
  opened and stored.
- subscribes, and takes each delivery in order: opened with the prekey secret; the sender
  (whose signature the envelope carries, with their certificate chain) checked exactly as
  a direct peer is (their registry must hold that certificate for them now; chain, CRL,
  pins, blocked and the acceptance policy by :class:`PeerVerifier`); the sequence number
  checked (a replay is dropped); the message stored (``record_incoming``), and only then
  acknowledged (the intermediary deletes it). The receipt goes back directly if a session
  with the sender is open, else deposited at the sender's intermediary. A delivery that
  can never be opened or is refused is acknowledged (dropped) with a warning in the log;
  one that cannot be checked now (the sender's registry is unreachable) is not: the
  connection is closed and the message comes again, in order, on the next subscription.
- with ``relay`` on, reserves a relay port there and adds it to the addresses the agent
  registers; a dialer reaching it is accepted on a new connection as a responder session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.endpoint import Endpoint
from common.identity import Identity
from intermediary.circuit import circuit_label
from intermediary.errors import IntermediaryError
from irp.client import IRPError
from sixchat import errors
from sixchat.agent.deposit import NoIntermediary
from sixchat.agent.prekeystore import SecretRow
from sixchat.agent.store import RECEIPT_FROM
from sixchat.credentials import Role
from sixchat.peer.protocol import PeerConnection
from sixchat.sealed.envelope import Opened, open_sealed, peek
from sixchat.sealed.prekeys import LAST_RESORT, ONE_TIME, PrekeySecret, encode_prekey, make_prekey
from sixchat.sealed.sequence import Outcome, SequenceTracker
from sixchat.wire.application import ChatMessage, Receipt, parse_application

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()

ONE_TIME_TARGET = 20
REFILL_BELOW = 10
ONE_TIME_LIFETIME = 30 * 86400
LAST_RESORT_LIFETIME = 14 * 86400
LAST_RESORT_ROTATION = 7 * 86400
#: How often the prekeys are checked (and the server's count learnt again) while connected.
UPKEEP_INTERVAL = 3600.0
#: How far ahead of our clock a sealed message's ``sent`` may be before it is held back.
FUTURE_TOLERANCE = 300
BACKOFF_FIRST = 1.0
BACKOFF_LAST = 60.0


class _Transient(Exception):
    """A delivery cannot be checked now; it stays at the intermediary."""


class Mailbox:
    """The agent's own intermediary connection (see the module docs)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        #: The connection while it is up (deposits to our own domain use it too).
        self.client: Any = None
        #: What the user is told about it (``sixchat status``).
        self.state = "not started"
        #: The relay endpoint reserved for us, while reserved.
        self.relay: Endpoint | None = None
        self._running = False
        self._task: Deferred[None] | None = None
        self._sleeping: Deferred[None] | None = None
        self._server_one_time: int | None = None
        self._tail: Deferred[None] = succeed(None)
        self._renewal: Any = None
        self._ready_waiters: list[Deferred[None]] = []
        #: A delivery could not be checked now: reconnect (to get it again) after a
        #: growing delay rather than at once.
        self._held_back = False
        #: One prekey upkeep at a time (the hourly one and a refill may meet).
        self._upkeep_lock = DeferredLock()
        self._ready = False

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and keep connected until :meth:`stop`."""
        self._running = True
        self._task = Deferred.fromCoroutine(self._run())
        self._task.addErrback(_stopped)

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._running = False
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self.client is not None:
            await self.client.close()
        elif self._task is not None and not self._task.called:
            self._task.cancel()  # a connection attempt under way
        if self._task is not None:
            await self._task
        await self._tail

    def when_ready(self) -> Deferred[None]:
        """Fires once subscribed (and, with ``relay``, reserved and registered); at once
        if that is so now."""
        waiter: Deferred[None] = Deferred()
        if self._ready:
            waiter.callback(None)
        else:
            self._ready_waiters.append(waiter)
        return waiter

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        if ready:
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def describe(self) -> str:
        """The intermediary's part in this agent, for ``sixchat status``."""
        settings = self.agent.settings
        if not settings.intermediary:
            return "not used"
        if not settings.mailbox:
            return "used to send only (your messages are collected by your running agent)"
        return self.state

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("Intermediary: {state}", state=state)
        self.state = state

    async def _sleep(self, seconds: float) -> None:
        self._sleeping = deferLater(self.agent.clock, seconds, lambda: None)
        try:
            await self._sleeping
        except CancelledError:
            pass
        finally:
            self._sleeping = None

    async def _run(self) -> None:
        domain = self.agent.identity.domain
        delay = BACKOFF_FIRST
        while self._running:
            try:
                client = await self.agent.depositor.connect(domain)
            except NoIntermediary as error:
                if not self._running:
                    return
                self._set_state(f"not connected: {error.reason} (trying again, at least every {BACKOFF_LAST:g} s)")
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_LAST)
                continue
            if not self._running:
                await client.close()
                return
            if not self._held_back:
                delay = BACKOFF_FIRST
            self._held_back = False
            self.client = client
            try:
                await self._serve(client)
            except (IntermediaryError, errors.SixChatError, IRPError, OSError) as error:
                log.warn("The connection to {domain}'s intermediary failed: {why}", domain=domain, why=getattr(error, "message", None) or str(error))
            except Exception:  # noqa: BLE001 - logged; the loop reconnects
                log.failure("The connection to the intermediary failed")
            finally:
                self.client = None
                self._set_ready(False)
                self._server_one_time = None
                self._drop_relay()
                await client.close()
            if self._running:
                self._set_state(f"connection to {domain}'s intermediary lost (reconnecting)")
                await self._sleep(delay)
                if self._held_back:  # a message could not be checked: wait longer each time
                    delay = min(delay * 2, BACKOFF_LAST)

    async def _serve(self, client: Any) -> None:
        """Prekeys, subscription, relay; returns when the connection ends."""
        lost = client.when_lost()
        await self.upkeep(client, probe=True)
        superseded = f"another agent of {self.agent.identity} subscribed at {self.agent.identity.domain}'s intermediary: it gets your stored messages now"
        pending = await client.subscribe(lambda delivery: self._delivered(client, delivery), lambda: self._set_state(superseded))
        self._set_state(f"connected to {self.agent.identity.domain}'s intermediary ({pending} waiting)")
        if self.agent.settings.relay:
            await self._reserve(client)
        self._set_ready(True)
        # (The client pings every 60 s once subscribed; an unanswered request ends the
        # connection, and this loop reconnects.)
        upkeep = LoopingCall(self._guarded_upkeep, client)
        upkeep.clock = self.agent.clock
        upkeep.start(UPKEEP_INTERVAL, now=False)
        try:
            await lost
        finally:
            if upkeep.running:
                upkeep.stop()

    async def _guarded_upkeep(self, client: Any) -> None:
        try:
            await self.upkeep(client, probe=True)
        except (IntermediaryError, errors.SixChatError, OSError) as error:
            log.warn("Publishing prekeys failed: {why}", why=getattr(error, "message", None) or str(error))

    # -- prekeys ------------------------------------------------------------------------

    async def upkeep(self, client: Any, *, probe: bool = False) -> None:
        """Publish what keeps :data:`ONE_TIME_TARGET` one-time prekeys and a fresh
        last-resort one at the intermediary (``probe``: publish at least one, to learn how
        many it holds)."""
        await self._upkeep_lock.acquire()
        try:
            await self._upkeep(client, probe)
        finally:
            self._upkeep_lock.release()

    async def _upkeep(self, client: Any, probe: bool) -> None:
        store = self.agent.store
        assert store is not None
        now = int(self.agent.clock.seconds())
        await store.sealed.prune(now)
        last = await store.sealed.newest_last_resort()
        fresh: list[tuple[str, int]] = []
        if last is None or now - last.created >= LAST_RESORT_ROTATION:
            fresh.append((LAST_RESORT, LAST_RESORT_LIFETIME))
        known = self._server_one_time
        if known is None:
            known = await store.sealed.unused_one_time(now)
        if known < REFILL_BELOW or (probe and not fresh):
            count = max(ONE_TIME_TARGET - known, 1)
            fresh.extend((ONE_TIME, ONE_TIME_LIFETIME) for _ in range(count))
        if fresh:
            counted = await self._publish(client, fresh, now)
            if counted.one_time < ONE_TIME_TARGET:
                await self._publish(client, [(ONE_TIME, ONE_TIME_LIFETIME)] * (ONE_TIME_TARGET - counted.one_time), now)

    async def _publish(self, client: Any, kinds: list[tuple[str, int]], now: int) -> Any:
        store = self.agent.store
        assert store is not None
        made = [make_prekey(self.agent.credentials, kind=kind, now=now, lifetime=lifetime) for kind, lifetime in kinds[:100]]
        await store.sealed.add_secrets(
            [SecretRow(prekey.id, prekey.kind, secret.to_bytes(), prekey.created, prekey.expires, False) for prekey, secret in made]
        )
        counted = await client.publish_prekeys([encode_prekey(prekey) for prekey, _ in made])
        self._server_one_time = counted.one_time
        log.info("Published {count} prekeys; the intermediary holds {held} one-time prekeys", count=len(made), held=counted.one_time)
        return counted

    # -- deliveries ---------------------------------------------------------------------

    def _delivered(self, client: Any, delivery: Any) -> None:
        """A pushed delivery: handled after the ones before it."""

        def next_one(_: Any) -> Deferred[None]:
            return Deferred.fromCoroutine(self._take(client, delivery))

        self._tail = self._tail.addBoth(next_one)
        self._tail.addErrback(lambda failure: log.failure("Taking a delivery failed", failure))

    async def _take(self, client: Any, delivery: Any) -> None:
        if client is not self.client:
            return  # the connection ended: it comes again on the next subscription
        try:
            used_one_time = await self.receive(delivery.envelope, delivery.sender)
        except _Transient as error:
            log.warn("A message from {sender} cannot be checked now ({why}); it stays at the intermediary", sender=str(delivery.sender), why=str(error))
            self._held_back = True
            await client.close()
            return
        try:
            await client.ack(delivery.id)
        except (IntermediaryError, OSError) as error:
            # Stored here already: when it comes again, it is recognised and confirmed.
            log.info("Could not acknowledge a delivery ({why}); it will come again", why=getattr(error, "message", None) or str(error))
            return
        if used_one_time and self._server_one_time is not None:
            self._server_one_time -= 1
            if self._server_one_time < REFILL_BELOW:
                await self._guarded_upkeep(client)

    async def receive(self, envelope: bytes, depositor: Identity) -> bool:
        """Open, check and store one sealed message deposited by ``depositor``; returns
        whether a one-time prekey was used. Raises _Transient when it cannot be checked now
        (not to be acknowledged); anything refused is logged and dropped."""
        store = self.agent.store
        assert store is not None
        now = int(self.agent.clock.seconds())
        try:
            header = peek(envelope)
            row = await store.sealed.secret(header.prekey_id)
            if row is None:
                raise errors.SealedUnknownPrekey(f"it is sealed to prekey {header.prekey_id}, which we do not hold (used, expired or never ours)")
            opened = open_sealed(envelope, recipient=self.agent.identity, secret=PrekeySecret.from_bytes(row.secret), now=now)
            if opened.sender != depositor:
                raise errors.SealedBadSignature(f"it was deposited by {depositor} but signed by {opened.sender}")
        except errors.SealedExpired as error:
            if header.sent_at > now + FUTURE_TOLERANCE:
                # Sent "in the future": our clock may be behind; it may pass with time.
                raise _Transient(error.message) from None
            log.warn("Dropped a sealed message deposited by {sender}: {why}", sender=str(depositor), why=error.message)
            return False
        except errors.SixChatError as error:
            log.warn("Dropped a sealed message deposited by {sender}: {why}", sender=str(depositor), why=error.message)
            return False
        try:
            await self._check_sender(opened)
        except errors.PeerRejected as error:
            if error.reason == "untrusted-ca" and opened.sender.domain in self.agent.profile.trusted_roots():
                # A domain we trust whose revocation list cannot be had now: not refused.
                raise _Transient(error.message) from None
            log.warn("Refused sealed message {id} from {sender}: {why}", id=opened.message_id, sender=str(opened.sender), why=error.message)
            await store.sealed.used(opened.prekey_id)
            return opened.one_time
        except errors.SixChatError as error:
            log.warn("Refused sealed message {id} from {sender}: {why}", id=opened.message_id, sender=str(opened.sender), why=error.message)
            await store.sealed.used(opened.prekey_id)
            return opened.one_time
        except (IRPError, OSError) as error:
            raise _Transient(getattr(error, "message", None) or str(error)) from None
        await self._accept(opened)
        return opened.one_time

    async def _check_sender(self, opened: Opened) -> None:
        """The sender's certificate, exactly as for a peer that dials us."""
        assert self.agent.verifier is not None
        sender, chain = opened.sender, list(opened.chain)
        held = opened.sender_fingerprint in await self.agent.expected_fingerprints(sender)
        # The cached answer may predate a renewal: ask the registry again.
        if not held and opened.sender_fingerprint not in await self.agent.expected_fingerprints(sender, fresh=True):
            raise errors.IdentityMismatch(f"{sender} signed with a certificate their registry does not hold for them now")
        await self.agent.verifier.verify(sender, chain)

    async def _accept(self, opened: Opened) -> None:
        """Sequence check, then store a chat message (and confirm it) or apply a receipt;
        the message, the sequence state and the prekey's use are written together."""
        store = self.agent.store
        assert store is not None
        sender = opened.sender
        saved = await store.sealed.tracker_state(sender)
        tracker = SequenceTracker.from_bytes(saved.encode()) if saved is not None else SequenceTracker()
        verdict = tracker.accept(sender, opened.seq, opened.message_id)
        if not verdict.accepted:
            log.warn("Dropped sealed message {id} from {sender}: a replay (sequence number {seq})", id=opened.message_id, sender=str(sender), seq=opened.seq)
            await store.sealed.used(opened.prekey_id)
            return
        if verdict.outcome is Outcome.GAP:
            log.warn(
                "Sealed messages {first} to {last} from {sender} have not arrived (delayed, lost or withheld)",
                first=verdict.missing.start, last=verdict.missing.stop - 1, sender=str(sender),
            )
            missing = len(verdict.missing)
            self.agent.emit({
                "event": "missing", "from": str(sender), "count": missing,
                "text": f"{missing} earlier message{'s' if missing > 1 else ''} from {sender} sent through the"
                f" intermediary {'have' if missing > 1 else 'has'} not arrived (delayed, lost or withheld)",
            })
        state = tracker.to_bytes().decode()
        try:
            message, _ = parse_application(opened.payload)
        except errors.SixChatError as error:
            log.warn("Dropped sealed message {id} from {sender}: {why}", id=opened.message_id, sender=str(sender), why=error.message)
            await store.record_sealed(sender, state, opened.prekey_id, None)
            return
        if isinstance(message, ChatMessage) and message.id != opened.message_id:
            log.warn("Dropped sealed message {id} from {sender}: it holds message {other}", id=opened.message_id, sender=str(sender), other=message.id)
            await store.record_sealed(sender, state, opened.prekey_id, None)
            return
        if isinstance(message, ChatMessage):
            settings = self.agent.settings
            cap = (settings.unknown_peer_messages, settings.unknown_peer_bytes) if settings.policy == "anyone" else None
            sent = int(message.sent.timestamp())
            outcome = await store.record_sealed(sender, state, opened.prekey_id, (message.id, message.text, sent, cap))
            if outcome not in ("new", "duplicate"):
                log.warn("Refused sealed message {id} from {sender}: {why}", id=message.id, sender=str(sender), why=outcome)
                return
            if outcome == "new":
                self.agent.emit({"event": "message", "id": message.id, "from": str(sender), "text": message.text, "sent": sent, "via": "intermediary"})
            Deferred.fromCoroutine(self.agent.outbox.send_receipt(sender, message.id)).addErrback(
                lambda failure: log.failure("Sending a receipt failed", failure)
            )
            return
        await store.record_sealed(sender, state, opened.prekey_id, None)
        if isinstance(message, Receipt) and await store.set_state(message.id, "delivered", only_from=RECEIPT_FROM, peer=sender):
            self.agent.emit({"event": "receipt", "id": message.id, "to": str(sender), "via": "intermediary"})

    # -- relay --------------------------------------------------------------------------

    async def _reserve(self, client: Any) -> None:
        try:
            reservation = await client.reserve(self._circuit)
        except IntermediaryError as error:
            log.warn("No relay at the intermediary: {why}", why=error.message)
            return
        endpoint = Endpoint.parse(reservation.address, reservation.port)
        if endpoint != self.relay:
            self.relay = endpoint
            log.info("Relay reserved at {address} port {port}", address=endpoint.address, port=endpoint.port)
            await self.agent.relay_changed()
        delay = max(reservation.expires - self.agent.clock.seconds(), 60) / 2
        self._renewal = self.agent.clock.callLater(delay, lambda: Deferred.fromCoroutine(self._renew(client)))

    async def _renew(self, client: Any) -> None:
        self._renewal = None
        if client is self.client:
            await self._reserve(client)

    def _drop_relay(self) -> None:
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
        if self.relay is not None:
            self.relay = None
            Deferred.fromCoroutine(self.agent.relay_changed()).addErrback(lambda failure: log.failure("Re-registering failed", failure))

    def _circuit(self, circuit_id: str, source: str) -> None:
        Deferred.fromCoroutine(self._accept_circuit(circuit_id, source)).addErrback(
            lambda failure: _log_circuit_failure(failure, circuit_id)
        )

    async def _accept_circuit(self, circuit_id: str, source: str) -> None:
        """A dialer reached our relay port: join the circuit on the intermediary's join port
        (a plain TCP connection named by the circuit's secret id) and run a responder session
        over it (admitted like a direct connection from ``source``)."""
        host = source.rsplit(" ", 1)[0]
        refusal = self.agent.admission.admit(host)
        if refusal is not None:
            log.warn("Refused a relayed connection from {host}: {why}", host=host, why=refusal.message)
            return
        connection: PeerConnection | None = None
        try:
            client = self.client  # the connection that holds the reservation knows its join port
            if client is None:
                raise NoIntermediary("the connection that reserved the relay is gone")
            stream = await client.accept_circuit(circuit_id)
            self.agent.reload_credentials()
            connection = PeerConnection(self.agent, Role.RESPONDER, on_handshake_over=self.agent.admission.finished)
            stream.attach(connection)
        except BaseException:
            if connection is None:
                self.agent.admission.finished()
            raise


def _stopped(failure: Failure) -> None:
    if not failure.check(CancelledError):
        log.failure("The intermediary connection loop failed", failure)


def _log_circuit_failure(failure: Failure, circuit_id: str) -> None:
    # The id is the circuit's join secret: the log names it by its label, as the relay does.
    if failure.check(NoIntermediary, IntermediaryError):
        log.warn("Relay circuit {label} not accepted: {why}", label=circuit_label(circuit_id), why=str(failure.value))
    else:
        log.failure("Accepting relay circuit {label} failed", failure, label=circuit_label(circuit_id))


__all__ = ["ONE_TIME_TARGET", "REFILL_BELOW", "Mailbox"]
