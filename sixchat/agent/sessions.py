"""Choosing among sessions: when both peers dial at once, both keep the same one."""

from __future__ import annotations

from sixchat.credentials import Role
from sixchat.peer.protocol import PeerConnection


def initiator_fingerprint(connection: PeerConnection) -> str:
    """The fingerprint of the certificate the dialler of ``connection`` presented."""
    if connection.role is Role.INITIATOR:
        # What we presented in that handshake, as the peer saw it (not a reloaded one).
        return connection.credentials.fingerprint
    assert connection.session is not None
    return connection.session.peer_fingerprint


def pick_session(first: PeerConnection, second: PeerConnection) -> tuple[PeerConnection, PeerConnection]:
    """(keep, drop): both peers keep the session dialled by the one with the larger
    fingerprint (the newer one when both were dialled by the same side)."""
    first_key = initiator_fingerprint(first)
    second_key = initiator_fingerprint(second)
    if first_key > second_key:
        return first, second
    return second, first
