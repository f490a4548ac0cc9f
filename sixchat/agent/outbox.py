"""The agent's outbox: queued messages, their delivery, retries and receipts' bookkeeping.

Messages are stored before they are sent; each is sent at most once per session, and stays
pending until the peer's receipt arrives (:meth:`Agent.message_received`), it is cancelled,
or it is given up (a final problem, or ``undelivered_after``).

When the peer cannot be reached directly (the dial fails, or their registry says they are
offline), pending messages are sealed and deposited at their domain's intermediary
(:mod:`sixchat.agent.deposit`) instead of being retried: they become ``stored`` and wait
there for the peer, until the peer's receipt (by either path) makes them delivered. A
scheduled message (``deliver_at``) is deposited at once. Without a usable intermediary the
old path stays: retries every ``retry_interval`` until ``undelivered_after``.

A message for a device (``ID@domain``) is looked up first: it is stored for the device's
certified owner (the conversation is with them), and the owner is reached at that device
from then on (:meth:`Dialer.route`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.identity import Identity
from intermediary.errors import IntermediaryError
from irp.client import IRPError
from sixchat import errors
from sixchat.agent.deposit import DEPOSIT_LIFETIME, MAX_SCHEDULE_AHEAD, NoIntermediary
from sixchat.agent.outcome import explain
from sixchat.agent.store import StoredMessage
from sixchat.peer.protocol import PeerConnection
from sixchat.recipients import Recipient
from sixchat.record import MAX_BODY
from sixchat.wire.application import MAX_TEXT_LENGTH, ChatMessage, Receipt, encode_application

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()


class Outbox:
    """Delivery of one agent's queued messages."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._flush_locks: dict[Identity, DeferredLock] = {}
        #: The ids sent on each connection (not sent again on it).
        self._in_flight: dict[PeerConnection, set[str]] = {}
        self._deliveries: set[Deferred[None]] = set()

    def start_delivery(self, peer: Identity) -> None:
        """Deliver to ``peer`` in the background (problems are recorded on the messages)."""
        delivery = Deferred.fromCoroutine(self.deliver(peer)).addErrback(self.log_delivery_problem, peer)
        self._deliveries.add(delivery)
        delivery.addBoth(lambda _: self._deliveries.discard(delivery))

    async def idle(self) -> None:
        """Wait until no background delivery is under way."""
        while self._deliveries:
            await gatherResults(list(self._deliveries), consumeErrors=True)

    def forget(self, connection: PeerConnection) -> None:
        """The connection ended: what it sent without a receipt may go on the next one."""
        self._in_flight.pop(connection, None)

    async def send_text(self, recipient: Recipient, text: str, deliver_at: int | None = None) -> StoredMessage:
        """Queue a message (stored first) and start delivering it (at ``deliver_at``, Unix
        seconds, if given: deposited at once at the peer's intermediary, which holds it
        until then). A device recipient is looked up first (see the module docs)."""
        assert self.agent.store is not None
        if isinstance(recipient, Identity):
            peer, device = recipient, None
        else:
            device = recipient
            record = await self.agent.sixid.find(device)
            assert record.owner is not None  # find() refuses a device without a certified owner
            peer = record.owner
        if peer == self.agent.identity:
            raise errors.SelfConnection("you cannot send messages to yourself")
        try:
            encoded = encode_application(ChatMessage(text=text))  # checks before storing
        except ValueError as error:
            raise errors.MalformedMessage(f"this text cannot be sent: {error}", fatal=False) from None
        if len(text) > MAX_TEXT_LENGTH or len(encoded) > MAX_BODY:
            raise errors.MessageTooLarge(
                f"a message is limited to {MAX_TEXT_LENGTH} characters and {MAX_BODY // 1024} KiB once encoded", fatal=False
            )
        if deliver_at is not None and deliver_at <= self.agent.clock.seconds():
            deliver_at = None
        if deliver_at is not None and deliver_at > self.agent.clock.seconds() + MAX_SCHEDULE_AHEAD:
            raise errors.MalformedMessage(f"a message can be scheduled at most {MAX_SCHEDULE_AHEAD // 86400} days ahead", fatal=False)
        self.agent.dialer.route(peer, device)
        message = await self.agent.store.queue_message(peer, text, deliver_at)
        self.agent.emit({"event": "queued", "id": message.id, "to": str(peer), "text": text})
        if deliver_at is not None:
            Deferred.fromCoroutine(self.schedule(message)).addErrback(lambda failure: log.failure("Scheduling failed", failure))
        else:
            self.start_delivery(peer)
        return message

    async def schedule(self, message: StoredMessage) -> None:
        """Deposit a scheduled message at once; if no intermediary takes it, it stays
        queued and this agent sends it itself once it is due."""
        assert self.agent.store is not None and message.deliver_at is not None
        try:
            await self.agent.depositor.deposit_message(message)
            return
        except (NoIntermediary, IntermediaryError, errors.SixChatError, IRPError, OSError) as error:
            why = _deposit_problem(error, message.peer)
        when = _datetime(message.deliver_at).isoformat()
        reason = f"not scheduled at {message.peer.domain}'s intermediary ({why}); your agent sends it at {when} if it runs then"
        log.info("Message {id} to {peer}: {why}", id=message.id, peer=str(message.peer), why=reason)
        await self.agent.store.set_state(message.id, "queued", only_from=("queued",), reason=reason)
        self.agent.emit({"event": "not-scheduled", "id": message.id, "to": str(message.peer), "text": message.body, "reason": reason})

    async def deposit_pending(self, peer: Identity, unreachable: errors.PeerUnreachable) -> bool:
        """``peer`` cannot be reached directly: deposit what is pending for them at their
        intermediary, in order. False if this agent uses no intermediaries; raises
        PeerUnreachable (saying why both paths failed) if the deposit fails."""
        assert self.agent.store is not None
        if not self.agent.settings.intermediary:
            return False
        for message in await self.agent.store.pending_for(peer):
            try:
                await self.agent.depositor.deposit_message(message)
            except (NoIntermediary, IntermediaryError, errors.SixChatError, IRPError) as error:
                why = _deposit_problem(error, peer)
                raise errors.PeerUnreachable(f"{unreachable.message.rstrip('.')}, and {why}") from None
        return True

    async def send_receipt(self, peer: Identity, message_id: str) -> None:
        """Confirm a sealed message: on the session with its sender if one is open, else
        deposited at the sender's intermediary."""
        session = self.agent.sessions.get(peer)
        if session is not None and session.is_established:
            try:
                session.send(Receipt(message_id))
                return
            except errors.SixChatError:
                pass
        try:
            await self.agent.depositor.deposit_receipt(peer, message_id)
        except (NoIntermediary, IntermediaryError, errors.SixChatError, IRPError) as error:
            log.warn("The receipt of message {id} could not be sent to {peer}: {why}", id=message_id, peer=str(peer), why=_deposit_problem(error, peer))

    def log_delivery_problem(self, failure: Failure, peer: Identity) -> None:
        """Errback of a delivery: log what is not a known problem, then record it."""
        if not failure.check(errors.SixChatError, IRPError, OSError):
            log.failure("Delivery to {peer} failed", failure, peer=str(peer))
        error = failure.value
        assert error is not None
        Deferred.fromCoroutine(self.delivery_problem(peer, error)).addErrback(
            lambda failure: log.failure("Recording a delivery problem failed", failure)
        )

    async def delivery_problem(self, peer: Identity, error: BaseException) -> None:
        """Tell the sender why messages to ``peer`` are not delivered: give them up if the
        problem is final, else note it on them (they stay queued for the next retry)."""
        assert self.agent.store is not None
        problem = explain(error, peer)
        if problem.our_certificate:
            log.warn("{peer} refused our certificate {fingerprint}: {why}", peer=str(peer), fingerprint=self.agent.credentials.fingerprint, why=problem.reason)
        if problem.final:
            for message in await self.agent.store.fail_pending(peer, problem.reason):
                log.info("Message {id} to {peer} is undelivered: {why}", id=message.id, peer=str(peer), why=problem.reason)
                self.agent.emit({"event": "undelivered", "id": message.id, "to": str(peer), "text": message.body, "reason": problem.reason})
            return
        log.info("Cannot reach {peer} now: {why}", peer=str(peer), why=problem.reason)
        retry = f"{problem.reason}; trying again every {self.agent.settings.retry_interval:g} s"
        for message in await self.agent.store.note_problem(peer, problem.reason):
            self.agent.emit({"event": "progress", "id": message.id, "to": str(peer), "text": retry, "reason": problem.reason})

    async def deliver(self, peer: Identity) -> None:
        """Reach ``peer`` and send what is pending for them; if they cannot be reached,
        deposit it at their intermediary instead."""
        try:
            connection = await self.agent.connect(peer)
        except errors.PeerUnreachable as error:
            if explain(error, peer).final or not await self.deposit_pending(peer, error):
                raise
            return
        await self.flush(peer, connection)

    async def flush(self, peer: Identity, connection: PeerConnection) -> None:
        """Send every pending message to ``peer`` not yet sent on ``connection`` (none if
        ``peer`` was addressed by a device and the session is with another)."""
        assert self.agent.store is not None
        if not self.agent.dialer.usable(peer, connection):
            return
        lock = self._flush_locks.setdefault(peer, DeferredLock())
        await lock.acquire()
        try:
            sent = self._in_flight.setdefault(connection, set())
            for message in await self.agent.store.pending_for(peer):
                if message.id in sent or not connection.is_established:
                    continue
                try:
                    connection.send(ChatMessage(text=message.body, id=message.id, sent=_datetime(message.sent_at)))
                except (errors.MessageTooLarge, errors.MalformedMessage) as error:
                    # It can never be sent: give it up rather than block the ones behind it.
                    log.warn("Message {id} to {peer} cannot be sent: {error}", id=message.id, peer=str(peer), error=str(error))
                    why = f"it cannot be sent: {error.message}"
                    if await self.agent.store.set_state(message.id, "undelivered", peer=peer, reason=why):
                        self.agent.emit({"event": "undelivered", "id": message.id, "to": str(peer), "text": message.body, "reason": why})
                    continue
                sent.add(message.id)
                self.agent.tally.sent += 1
                await self.agent.store.set_state(message.id, "sent", only_from=("queued",))
        finally:
            lock.release()

    async def retry_pending(self) -> None:
        """Try again every peer with pending messages (not already being dialled)."""
        assert self.agent.store is not None
        for peer in await self.agent.store.pending_peers():
            if peer in self.agent.dialer.dialling:
                continue
            self.start_delivery(peer)

    async def give_up_old(self) -> None:
        """Mark undelivered what has waited longer than ``undelivered_after``."""
        assert self.agent.store is not None
        cutoff = self.agent.clock.seconds() - self.agent.settings.undelivered_after
        for message in await self.agent.store.give_up_older_than(cutoff):
            why = f"not delivered within {self.agent.settings.undelivered_after:g} s" + (f" ({message.reason})" if message.reason else "")
            log.info("Message {id} to {peer} is undelivered: {why}", id=message.id, peer=str(message.peer), why=why)
            self.agent.emit({"event": "undelivered", "id": message.id, "to": str(message.peer), "text": message.body, "reason": why})
        why = f"not collected from the intermediary within {DEPOSIT_LIFETIME // 86400} days"
        for message in await self.agent.store.give_up_deposited(self.agent.clock.seconds() - DEPOSIT_LIFETIME, why):
            log.info("Message {id} to {peer} is undelivered: {why}", id=message.id, peer=str(message.peer), why=why)
            self.agent.emit({"event": "undelivered", "id": message.id, "to": str(message.peer), "text": message.body, "reason": why})

    async def cancel(self, message_id: str) -> StoredMessage | None:
        """Cancel a pending message (never sent again); None if none pending has that id."""
        assert self.agent.store is not None
        message = await self.agent.store.cancel(message_id)
        if message is not None:
            log.info("Message {id} to {peer} cancelled", id=message.id, peer=str(message.peer))
            self.agent.emit({"event": "cancelled", "id": message.id, "to": str(message.peer), "text": message.body})
        return message

    async def redeliver(self, peer: Identity) -> None:
        """After a session ends, move pending messages to the surviving session, if any."""
        current = self.agent.sessions.get(peer)
        if current is not None and current.is_established:
            await self.flush(peer, current)


def _deposit_problem(error: BaseException, peer: Identity) -> str:
    """Why a deposit for ``peer`` failed, in words."""
    if isinstance(error, NoIntermediary):
        return error.reason
    if isinstance(error, IntermediaryError):
        if error.name == "unknown-user":
            return f"{peer} has no mailbox at {peer.domain}'s intermediary (their agent never connected to it)"
        return f"{peer.domain}'s intermediary refused the deposit: {error.message}"
    message = getattr(error, "message", None) or str(error)
    return f"it could not be stored at {peer.domain}'s intermediary: {message}"


def _datetime(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
