"""The agent's view of other users: the roots it trusts and its contacts' presence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.logger import Logger

from common.identity import Identity
from common.pki.trust import TrustStore, check_anchor
from irp.client import IRPError
from sixchat import errors

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()


def trust_store(roots: dict[str, x509.Certificate]) -> TrustStore:
    """A trust store where each trusted root certifies only its own domain."""
    trust = TrustStore()  # each root certifies only its own domain
    for domain, root in roots.items():  # our own domain's root first
        try:
            check_anchor(root, domain)
        except ValueError as problem:
            # Stored before roots were checked: it certifies only the domain it was
            # trusted for, whatever it says; the user should still hear of it.
            log.warn("The root trusted for {domain} looks wrong ({why}); it certifies only {domain}", domain=domain, why=str(problem))
        try:
            trust.add_root(root, domain)
        except ValueError as problem:
            # The same root stored for a second domain: it keeps its first one.
            log.warn("The root trusted for {domain} is not used: {why}", domain=domain, why=str(problem))
    return trust


async def refresh_presence(agent: Agent) -> None:
    """Ask the registry for the presence of every contact (not blocked), a few at a
    time; a contact whose registry cannot be asked keeps what is known."""
    assert agent.store is not None and agent.directory is not None
    limit = DeferredSemaphore(8)

    async def one(peer: Identity) -> None:
        assert agent.directory is not None and agent.store is not None
        try:
            record = await agent.directory.lookup(peer)
        except (IRPError, errors.SixChatError, OSError) as error:
            log.debug("No presence for {peer}: {error}", peer=str(peer), error=str(error))
            return
        current = record.is_current(agent.clock.seconds()) and record.endpoints
        await agent.store.set_presence(peer, record.presence if current else "offline")

    contacts = [contact.identity for contact in await agent.store.contacts() if not contact.blocked]
    await gatherResults([limit.run(one, peer) for peer in contacts])
