"""Incoming connections of an agent: admitted within the handshake budgets
(:mod:`sixchat.peer.admission`), or answered with one clear alert."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from common.factory import QuietFactory
from common.wire.framing import encode_frame
from sixchat import errors
from sixchat.credentials import Role
from sixchat.peer.protocol import PeerConnection
from sixchat.wire.handshake import alert_for

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()


class Refused(Protocol):
    """Answers a connection with one clear alert and closes it; reads nothing."""

    def __init__(self, error: errors.SixChatError) -> None:
        self.error = error

    def connectionMade(self) -> None:
        """Send the alert, then close."""
        transport: Any = self.transport
        transport.write(encode_frame(alert_for(self.error)))
        transport.loseConnection()


class ResponderFactory(QuietFactory):
    """Accepts incoming connections within the handshake budgets (:mod:`sixchat.peer.admission`)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", "")
        admission = self.agent.admission
        refusal = admission.admit(host)
        if refusal is not None:
            log.warn("Refused a connection from {host}: {why}", host=host, why=refusal.message)
            return Refused(refusal)
        self.agent.reload_credentials()
        return PeerConnection(self.agent, Role.RESPONDER, on_handshake_over=admission.finished)
