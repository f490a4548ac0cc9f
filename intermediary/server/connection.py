"""One intermediary connection as a state machine: the generic core
:class:`common.rpc.connection.Connection` speaking the intermediary's messages
(:mod:`intermediary.wire`) and errors (:mod:`intermediary.errors`), with the
intermediary's limits.

Requests are pipelined: up to ``max_outstanding`` run at once and each is answered when it
completes (ids match). A service connection carries frames only: relay circuits are joined
on the relay's own join port (:mod:`intermediary.server.join`).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.rpc import connection as rpc
from common.rpc.connection import (
    TRANSITIONS,
    Abort,
    Action,
    ArmDeadline,
    CancelDeadline,
    Close,
    Deadline,
    Dispatch,
    PauseReading,
    ResumeReading,
    Send,
    State,
)
from intermediary import errors, wire

__all__ = [
    "TRANSITIONS",
    "Abort",
    "Action",
    "ArmDeadline",
    "CancelDeadline",
    "Close",
    "Connection",
    "ConnectionLimits",
    "Deadline",
    "Dispatch",
    "PauseReading",
    "ResumeReading",
    "Send",
    "State",
]


@dataclass
class ConnectionLimits(rpc.ConnectionLimits):
    """Per-connection limits (seconds and counts)."""

    max_frame: int = wire.MAX_FRAME
    #: TLS handshake, certificate check and first request.
    handshake_timeout: float = 15.0
    #: Idle connection without a subscription or reservation.
    idle_timeout: float = 600.0
    #: A subscriber or reserver silent this long is dropped (clients ping every 60 s).
    kept_timeout: float = 180.0
    #: A frame started must be complete within this.
    frame_timeout: float = 30.0
    max_outstanding: int = 32
    max_connections_per_address: int = 32


class Connection(rpc.Connection):
    """The connection core speaking the intermediary's messages. ``peer_host`` names the
    client in logs."""

    def __init__(self, limits: rpc.ConnectionLimits, peer_host: str) -> None:
        super().__init__(limits, peer_host, wire, errors)
