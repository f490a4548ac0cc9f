"""What the handshake state machine (:class:`sixchat.handshake.Handshake`) returns: events
are data, which the adapter (:mod:`sixchat.peer.protocol`) acts on in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from cryptography import x509

from common.identity import Identity
from sixchat import errors
from sixchat.record import Session


@dataclass(frozen=True)
class SendData:
    """Framed bytes to write to the transport."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class PeerNeedsVerification:
    """The peer proved it holds its leaf key; the adapter must now check the chain to the
    CA, revocation and its contact policy, then call accept_peer() or reject_peer()."""

    identity: Identity
    chain: list[x509.Certificate] = field(repr=False)
    fingerprint: str

    @property
    def certificate(self) -> x509.Certificate:
        """The peer's leaf certificate."""
        return self.chain[0]


@dataclass(frozen=True)
class HandshakeComplete:
    """Both sides are authenticated: use ``session``, and feed it ``leftover`` first."""

    session: Session
    peer: Identity
    peer_certificate: x509.Certificate = field(repr=False)
    leftover: bytes = field(repr=False)


@dataclass(frozen=True)
class HandshakeAborted:
    """The handshake failed; any alert was emitted as SendData just before."""

    error: errors.SixChatError


HandshakeEvent: TypeAlias = SendData | PeerNeedsVerification | HandshakeComplete | HandshakeAborted
