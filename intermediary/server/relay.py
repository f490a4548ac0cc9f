"""The intermediary's relay: ports reserved for users who cannot accept connections, and
circuits that splice a dialer's TCP connection to the user's own ``<accept>`` connection.

Interface used by the service connection code (part B, ``intermediary.server.protocol``):

* ``Relay(reactor, interface=..., ports=range(46050, 46100), limits=RelayLimits(),
  address=None)``; ``address`` is the address given to users in :class:`Reservation`
  (default: ``interface``; pass the advertised address when ``interface`` is a wildcard
  such as ``::``).
* ``relay.reserve(user, notify) -> Deferred[Reservation]``; ``notify(circuit_id, "addr
  port")`` is called once per dialer that connects to the user's port. Fails with
  :class:`RelayUnavailable`. A second ``reserve`` from the same user (a new connection, or
  the same one renewing) keeps the port, renews the expiry and moves the notify target.
* ``relay.release(user, notify)``: the reserving connection was lost. Only releases if
  ``notify`` is still the user's current target (an older connection's loss does not end
  a reservation a newer connection took over). Closes the port and every circuit of the
  user.
* ``relay.join(user, circuit_id, leg) -> Splice``: called by the adapter of the
  connection that sent ``<accept circuit="ID"/>``, right AFTER it wrote ``<accepted/>``.
  Raises :class:`UnknownCircuit` (the id is unknown, not the user's, already joined, or
  timed out). From then on the adapter stops framing, passes every byte it reads
  (including the rest of the read that held the accept frame) to
  ``splice.data_received(data)``, and calls ``splice.leg_lost()`` when its connection is
  lost (both are safe to call after the circuit ended; they then do nothing). The adapter
  should cancel its own idle timeout: the relay times circuits itself.
* ``relay.stop() -> Deferred[None]``: closes every port and circuit.

``leg`` is the accept connection's transport: pass the TLS protocol's ``self.transport``
(``TLSMemoryBIOProtocol`` provides everything :class:`Leg` lists). The relay writes the
dialer's bytes to it, registers the dialer's TCP transport on it as a streaming producer
(so a slow agent pauses the dialer), pauses and resumes it (so a slow dialer pauses the
agent's connection), and closes it when the circuit ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer

from common.identity import Identity

#: notify(circuit_id, "address port"): a dialer connected to the user's relay port.
Notify = Callable[[str, str], None]


class Leg(TypingProtocol):
    """The agent's ``<accept>`` connection once it carries raw bytes (its transport)."""

    def write(self, data: bytes) -> None:
        """Send bytes to the agent."""

    def loseConnection(self) -> None:
        """Close the connection (after sending what is buffered)."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Pause ``producer`` while this connection's send buffer is full (streaming=True)."""

    def unregisterProducer(self) -> None:
        """Forget the registered producer."""

    def pauseProducing(self) -> None:
        """Stop reading from the agent (its bytes wait in the kernel)."""

    def resumeProducing(self) -> None:
        """Read from the agent again."""


class RelayError(Exception):
    """A relay request was refused; :attr:`message` says why, readably."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RelayUnavailable(RelayError):
    """No relay port is free (wire error ``unavailable``)."""


class UnknownCircuit(RelayError):
    """No pending circuit of this user has this id (wire error ``unknown-circuit``)."""


@dataclass(frozen=True)
class Reservation:
    """A user's relay port: ``address`` and ``port`` to advertise; ``expires`` (Unix
    seconds) is when it lapses unless renewed by another ``reserve``."""

    address: str
    port: int
    expires: int


@dataclass(frozen=True)
class RelayLimits:
    """The relay's limits (bytes, seconds, counts); the defaults are the spec's."""

    #: bytes of the dialer kept while waiting for the agent to join
    pending_buffer: int = 64 * 1024
    #: seconds a dialer waits for the agent's <accept>
    join_timeout: float = 10.0
    #: bytes per circuit in each direction
    circuit_bytes: int = 64 * 1024 * 1024
    #: seconds a circuit may live
    circuit_lifetime: float = 3600.0
    #: seconds a circuit may carry nothing either way
    circuit_idle: float = 600.0
    #: circuits (pending or joined) per user at once
    circuits_per_user: int = 8
    #: new circuits per dialer address (IPv4 address or IPv6 /64) per dialer_window seconds
    dialer_rate: int = 16
    dialer_window: float = 10.0
    #: seconds a reservation lives without a renewing reserve
    reservation_lifetime: float = 3600.0


class Splice(TypingProtocol):
    """What :meth:`Relay.join` returns: the adapter feeds it the agent's bytes."""

    def data_received(self, data: bytes) -> None:
        """Bytes the agent sent: forwarded to the dialer."""

    def leg_lost(self) -> None:
        """The agent's connection was lost: the circuit ends."""


class Relay:
    """The relay of one intermediary process (see the module docstring)."""

    def __init__(
        self,
        reactor: object,
        *,
        interface: str,
        ports: range,
        limits: RelayLimits | None = None,
        address: str | None = None,
    ) -> None:
        raise NotImplementedError("interface first; implementation follows on branch relay")

    def reserve(self, user: Identity, notify: Notify) -> Deferred[Reservation]:
        """Give ``user`` a relay port (or renew theirs); fails with RelayUnavailable."""
        raise NotImplementedError

    def release(self, user: Identity, notify: Notify) -> None:
        """The connection that reserved with ``notify`` was lost."""
        raise NotImplementedError

    def join(self, user: Identity, circuit_id: str, leg: Leg) -> Splice:
        """Splice ``leg`` to the dialer of pending circuit ``circuit_id``."""
        raise NotImplementedError

    def stop(self) -> Deferred[None]:
        """Close every port and circuit."""
        raise NotImplementedError
