"""Sending through intermediaries: seal a message to the recipient's prekey and deposit it
at the intermediary of the recipient's domain.

Used when the recipient cannot be reached directly (the dial failed, or their registry
says they are offline), for scheduled messages (``deliver_at``: deposited at once and held
by the intermediary until then), and for receipts of sealed messages when no session with
their sender is open.

Each domain's intermediary is the registry account ``intermediary@<domain>``; its address
comes from a signed look-up at that domain's registry, and its TLS certificate must be one
that registry holds for that account (:func:`intermediary.client.connect_intermediary`
checks both). The recipient's prekey, which the intermediary serves, is accepted only if it
is signed by a certificate the recipient's own registry holds for them now (and pinned, if
the user pinned their certificates).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.logger import Logger

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from intermediary.errors import (
    Expired,
    IntermediaryError,
    InvalidArgument,
    QuotaExceeded,
    RateLimited,
    TooLarge,
    UnknownUser,
)
from irp.client import AddressRecord, IRPError, NotFound
from sixchat import errors
from sixchat.agent.store import StoredMessage
from sixchat.sealed.envelope import MAX_MESSAGE_LIFETIME, seal
from sixchat.sealed.prekeys import decode_prekey, verify_prekey
from sixchat.wire.application import ApplicationMessage, ChatMessage, Receipt, encode_application

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()

#: How long a deposited message may wait for its recipient (seconds; the intermediary
#: accepts at most 30 days).
DEPOSIT_LIFETIME = 14 * 86400
#: The latest expiry a deposit may have, from now: a sealed message lives at most 30 days,
#: less an hour for the intermediary's clock.
LATEST_EXPIRY = MAX_MESSAGE_LIFETIME - 3600
#: How far ahead a message can be scheduled.
MAX_SCHEDULE_AHEAD = LATEST_EXPIRY - 86400

Connect = Callable[..., Awaitable[Any]]


class NoIntermediary(Exception):
    """A domain has no intermediary we can use now; ``reason`` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stored_reason(peer: Identity) -> str:
    """The reason text of a message stored at ``peer``'s intermediary."""
    return f"stored at {peer.domain}'s intermediary, will be delivered when {peer} is online"


def scheduled_reason(peer: Identity, deliver_at: int) -> str:
    """The reason text of a message scheduled at ``peer``'s intermediary."""
    when = datetime.fromtimestamp(deliver_at, UTC).isoformat()
    return f"scheduled at {peer.domain}'s intermediary for {when}"


class Depositor:
    """The agent's connections to intermediaries (any domain) and its deposits."""

    def __init__(self, agent: Agent, connect: Connect | None = None) -> None:
        self.agent = agent
        self._connect_function = connect
        self._clients: dict[str, Any] = {}
        self._connect_locks: dict[str, DeferredLock] = {}
        #: Deposits to one peer go one at a time, in order.
        self._peer_locks: dict[Identity, DeferredLock] = {}

    # -- connections ------------------------------------------------------------------

    async def directory_lookup(self, identity: Identity) -> tuple[AddressRecord, set[str]]:
        """The signed address record of ``identity`` and the fingerprints of the
        certificates its registry holds for it (what ``connect_intermediary`` checks)."""
        directory = self.agent.directory
        assert directory is not None
        record = await directory.lookup(identity)
        return record, await directory.certificate_fingerprints(identity)

    async def connect(self, domain: str, server: tuple[str, int] | None = None) -> Any:
        """A new connection to ``domain``'s intermediary, presenting the user's
        certificate; NoIntermediary if the domain has none or it cannot be reached."""
        credentials = self.agent.credentials
        directory = self.agent.directory
        assert directory is not None
        connect = self._connect_function
        if connect is None:
            from intermediary.client import connect_intermediary

            connect = self._connect_function = connect_intermediary
        try:
            return await connect(
                self.agent.reactor,
                domain,
                directory_lookup=lambda identity: Deferred.fromCoroutine(self.directory_lookup(identity)),
                key=credentials.private_key,
                certificate=credentials.certificate,
                chain=credentials.chain,
                roots=directory.roots,
                timeout=self.agent.settings.connect_timeout * 3,
                server=server,
                resolver=self.agent.settings.resolver,
            )
        except CancelledError:
            raise
        except NotFound:
            raise NoIntermediary(f"{domain} has no intermediary") from None
        except IntermediaryError as error:
            raise NoIntermediary(f"cannot use {domain}'s intermediary: {error.message.rstrip('.')}") from None
        except IRPError as error:
            raise NoIntermediary(f"cannot find {domain}'s intermediary: {error.message}") from None
        except errors.SixChatError as error:
            raise NoIntermediary(f"cannot reach {domain}'s intermediary: {error.message}") from None
        except Exception as error:  # noqa: BLE001 - any transport failure: unreachable now
            text = str(error) or error.__class__.__name__
            raise NoIntermediary(f"cannot reach {domain}'s intermediary: {text}") from None

    async def client(self, domain: str) -> Any:
        """A connection to ``domain``'s intermediary: our own mailbox's when it is up, else
        one kept per domain until it drops."""
        if domain == self.agent.identity.domain:
            own = self.agent.mailbox.client
            if own is not None:
                return own
        lock = self._connect_locks.setdefault(domain, DeferredLock())
        await lock.acquire()
        try:
            existing = self._clients.get(domain)
            if existing is not None:
                return existing
            client = await self.connect(domain)
            self._clients[domain] = client
            client.when_lost().addBoth(lambda _: self._clients.pop(domain, None) if self._clients.get(domain) is client else None)
            return client
        finally:
            lock.release()

    async def close(self) -> None:
        """Close every connection this made."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    # -- sealing and depositing -------------------------------------------------------

    async def _recipient_certificates(self, peer: Identity) -> list[x509.Certificate]:
        """The certificates ``peer``'s registry holds for them now (only pinned ones, if
        the user pinned any)."""
        assert self.agent.directory is not None and self.agent.store is not None
        registry = await self.agent.directory.client(peer.domain)
        certificates = [entry.certificate for entry in await registry.user_certificates(str(peer)) if entry.certificate is not None]
        contact = await self.agent.store.get_contact(peer)
        if contact is not None and contact.fingerprints:
            certificates = [certificate for certificate in certificates if fingerprint(certificate) in contact.fingerprints]
        if not certificates:
            raise errors.PeerUnreachable(f"{peer} has no valid certificate at their registry")
        return certificates

    async def seal_and_deposit(self, peer: Identity, payload: ApplicationMessage, message_id: str, deliver_at: int | None = None) -> None:
        """Fetch a prekey of ``peer`` from their intermediary, check it against their
        registry's certificates, seal ``payload`` to it and deposit it (answered once the
        intermediary has committed it)."""
        assert self.agent.store is not None
        lock = self._peer_locks.setdefault(peer, DeferredLock())
        await lock.acquire()
        try:
            client = await self.client(peer.domain)
            prekey = decode_prekey(await client.fetch_prekey(peer))
            now = int(self.agent.clock.seconds())
            problem: Exception | None = None
            for certificate in await self._recipient_certificates(peer):
                try:
                    verify_prekey(prekey, certificate, owner=peer, now=now)
                except errors.SixChatError as error:
                    problem = error
                    continue
                break
            else:
                log.warn("{domain}'s intermediary served a prekey for {peer} that does not check: {why}", domain=peer.domain, peer=str(peer), why=str(problem))
                raise errors.PeerRejected(f"the prekey of {peer} at their intermediary is not signed by their certificate", reason="policy")
            expires = min(max(now, deliver_at or 0) + DEPOSIT_LIFETIME, now + LATEST_EXPIRY, prekey.expires)
            if deliver_at is not None and deliver_at >= expires:
                raise errors.PeerUnreachable(f"the prekey {peer.domain}'s intermediary gave for {peer} expires before the scheduled time")
            seq = await self.agent.store.sealed.next_sequence(peer)
            envelope = seal(
                self.agent.credentials,
                recipient=peer,
                prekey=prekey,
                payload=encode_application(payload),
                message_id=message_id,
                seq=seq,
                sent_at=now,
                expires_at=expires,
            )
            try:
                await client.deposit(peer, envelope, expires, deliver_at)
            except (QuotaExceeded, UnknownUser, Expired, TooLarge, InvalidArgument, RateLimited):
                # Refused, so surely not stored: the number goes to the next envelope (no
                # gap at the recipient). After a lost answer it stays used.
                await self.agent.store.sealed.give_back_sequence(peer, seq)
                raise
        finally:
            lock.release()

    async def deposit_message(self, message: StoredMessage) -> str:
        """Deposit an outgoing chat message; mark it ``stored`` (or ``scheduled`` when its
        ``deliver_at`` is ahead) and tell the listeners; return the new state."""
        assert self.agent.store is not None
        peer = message.peer
        chat = ChatMessage(text=message.body, id=message.id, sent=datetime.fromtimestamp(message.sent_at, UTC))
        now = int(self.agent.clock.seconds())
        deliver_at = message.deliver_at if message.deliver_at is not None and message.deliver_at > now else None
        await self.seal_and_deposit(peer, chat, message.id, deliver_at)
        if deliver_at is not None:
            state, reason = "scheduled", scheduled_reason(peer, deliver_at)
        else:
            state, reason = "stored", stored_reason(peer)
        if await self.agent.store.set_state(message.id, state, only_from=("queued", "sent"), peer=peer, reason=reason):
            log.info("Message {id} to {peer} is {state} at {domain}'s intermediary", id=message.id, peer=str(peer), state=state, domain=peer.domain)
            event: dict[str, Any] = {"event": state, "id": message.id, "to": str(peer), "text": message.body, "domain": peer.domain, "reason": reason}
            if deliver_at is not None:
                event["deliver_at"] = deliver_at
            self.agent.emit(event)
        return state

    async def deposit_receipt(self, peer: Identity, message_id: str) -> None:
        """Deposit the receipt of ``message_id`` for its sender ``peer``."""
        await self.seal_and_deposit(peer, Receipt(message_id), str(uuid.uuid4()))

    def available(self) -> bool:
        """Whether this agent uses intermediaries at all."""
        return self.agent.settings.intermediary


__all__ = ["DEPOSIT_LIFETIME", "MAX_SCHEDULE_AHEAD", "Depositor", "NoIntermediary", "scheduled_reason", "stored_reason"]
