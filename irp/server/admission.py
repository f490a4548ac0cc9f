"""Which new registry connections get TLS at all (sans-I/O, time from an injected clock).

Within its per-address connection limit (:class:`common.limits.ConnectionCounter`) a
connection is always admitted. Past it, the first :data:`READABLE_REFUSALS` refusals in
:data:`REFUSAL_WINDOW` seconds still go through TLS, so that the client can read
``too-many-connections``; the rest are closed at once, unread (a flood must not buy a TLS
handshake each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from common.limits import ConnectionCounter, SlidingWindow, address_key

if TYPE_CHECKING:
    from irp.server.protocol import RegistryServerFactory

log = Logger()

#: Over-limit connections an address gets a readable refusal for, per REFUSAL_WINDOW.
READABLE_REFUSALS = 10
REFUSAL_WINDOW = 10.0


class ConnectionAdmission:
    """The per-address connection counts and the window of readable refusals."""

    def __init__(self, clock: IReactorTime, max_connections_per_address: int) -> None:
        #: Open connections per address unit (acquired and released by the protocol).
        self.connections = ConnectionCounter(max_connections_per_address)
        #: Recent refusals of over-limit connections, per address unit.
        self.refusals = SlidingWindow(clock, limit=READABLE_REFUSALS, window=REFUSAL_WINDOW)
        #: Totals for the metrics: connections open now, accepted, refused over the limit
        #: (answered ``too-many-connections``), and dropped before TLS.
        self.open = 0
        self.accepted = 0
        self.refused = 0
        self.dropped = 0

    def acquire(self, host: str) -> bool:
        """Count a new connection from ``host``; False when over its address's limit."""
        if not self.connections.acquire(host):
            self.refused += 1
            return False
        self.open += 1
        self.accepted += 1
        return True

    def release(self, host: str) -> None:
        """A connection counted by :meth:`acquire` closed."""
        self.connections.release(host)
        self.open -= 1

    def admit(self, host: str) -> bool:
        """Whether to start TLS for a new connection from ``host`` (see the module)."""
        if self.connections.count(host) < self.connections.limit:
            return True
        recent = self.refusals.record(address_key(host))
        if recent <= READABLE_REFUSALS:
            return True
        if recent == READABLE_REFUSALS + 1:
            log.warn("Dropping connections from {host} before TLS: over its limit", host=host)
        self.dropped += 1
        return False


class AdmittingTLSFactory(TLSMemoryBIOFactory):
    """TLS for the registry's connections, but none for connections it will refuse anyway
    (see :meth:`RegistryServerFactory.admit`)."""

    wrappedFactory: RegistryServerFactory

    def buildProtocol(self, addr: Any) -> Any:
        """Build the TLS protocol, or None (the connection is closed at once)."""
        if not self.wrappedFactory.admit(getattr(addr, "host", "")):
            return None
        return super().buildProtocol(addr)
