"""What an agent does with the application messages its peers send."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from common.identity import Identity
from sixchat import errors
from sixchat.agent.store import RECEIPT_FROM
from sixchat.peer.protocol import PeerConnection
from sixchat.wire.application import ApplicationMessage, ChatMessage, Ping, Pong, Presence, Receipt

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()


async def handle_message(agent: Agent, connection: PeerConnection, peer: Identity, message: ApplicationMessage) -> None:
    """Store and acknowledge a chat message; apply a receipt or a presence; answer a ping."""
    assert agent.store is not None
    if isinstance(message, ChatMessage):
        contact = await agent.store.get_contact(peer)
        if contact is not None and contact.blocked:
            # Blocked while the session was open: never stored nor acknowledged.
            log.info("Dropped message {id} from {peer}: blocked", id=message.id, peer=str(peer))
            return
        settings = agent.settings
        cap = (settings.unknown_peer_messages, settings.unknown_peer_bytes) if settings.policy == "anyone" else None
        outcome = await agent.store.record_incoming(message.id, peer, message.text, int(message.sent.timestamp()), cap)
        if outcome == "over-quota":
            log.warn(
                "Refused message {id} from {peer}: a stranger may have at most {count} messages or {size} bytes stored",
                id=message.id, peer=str(peer), count=settings.unknown_peer_messages, size=settings.unknown_peer_bytes,
            )
            connection.abort(errors.RateLimited("you have stored as much as a stranger may; become a contact first"))
            return
        if outcome == "conflict":
            # Not a resend of ours to confirm: another message holds that id.
            log.warn("Refused message {id} from {peer}: that id belongs to another message", id=message.id, peer=str(peer))
            return
        if connection.is_established:
            connection.send(Receipt(message.id))
        if outcome == "new":
            agent.emit({"event": "message", "id": message.id, "from": str(peer), "text": message.text, "sent": int(message.sent.timestamp())})
    elif isinstance(message, Receipt):
        # Only the recipient of a message can confirm it.
        if await agent.store.set_state(message.id, "delivered", only_from=RECEIPT_FROM, peer=peer):
            agent.emit({"event": "receipt", "id": message.id, "to": str(peer)})
    elif isinstance(message, Presence):
        await agent.store.set_presence(peer, message.status)
        agent.emit({"event": "presence", "who": str(peer), "status": message.status})
    elif isinstance(message, Ping) and connection.is_established:
        connection.send(Pong())
