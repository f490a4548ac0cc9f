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
  connection that sent ``<accept circuit="ID"/>``, before it answers. Raises
  :class:`UnknownCircuit` (the id is unknown, not the user's, already joined, or timed
  out): answer ``unknown-circuit``. Otherwise answer ``<accepted/>``; the relay writes
  the dialer's buffered bytes to ``leg`` during ``join``, so the leg must hold writes
  made before ``<accepted/>`` is on the wire and send them right after it. From then on
  the adapter stops framing, passes every byte it reads (including the rest of the read
  that held the accept frame) to ``splice.data_received(data)``, and calls
  ``splice.leg_lost()`` when its connection is lost (both are safe to call after the
  circuit ended; they then do nothing). The adapter should cancel its own timeouts and
  must give up its own producer on the transport before the relay registers one (see
  :class:`Leg`): the relay times and flow-controls circuits itself.
* ``relay.stop() -> Deferred[None]``: closes every port and circuit.

``leg`` is the accept connection seen as a byte stream (:class:`Leg`): the TLS protocol's
``self.transport`` (``TLSMemoryBIOProtocol`` provides everything :class:`Leg` lists), or
an adapter delegating to it. The relay writes the dialer's bytes to it, registers a
streaming producer on it during ``join`` (pausing the dialer while the leg's send buffer
is full), pauses and resumes its reading (while the dialer's send buffer is full), and
closes it when the circuit ends.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer
from twisted.logger import Logger

from common.factory import QuietFactory
from common.identity import Identity
from common.limits import SlidingWindow, address_key
from intermediary.server.splice import CircuitSplice, DialerProtocol, State

log = Logger()

#: notify(circuit_id, "address port"): a dialer connected to the user's relay port.
Notify = Callable[[str, str], None]


class Leg(TypingProtocol):
    """The agent's ``<accept>`` connection once it carries raw bytes (its transport)."""

    def write(self, data: bytes) -> None:
        """Send bytes to the agent."""

    def loseConnection(self) -> None:
        """Close the connection (after sending what is buffered)."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Pause ``producer`` while this connection's send buffer is full (streaming=True):
        ``transport.registerProducer``. Called once, during :meth:`Relay.join`; an adapter
        that registered a producer of its own must unregister it first (a transport
        holds one producer)."""

    def unregisterProducer(self) -> None:
        """Forget the registered producer (``transport.unregisterProducer``), when the
        circuit ends."""

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


@dataclass
class _Held:
    """A user's reservation: the listening port and the circuits it brought."""

    user: Identity
    notify: Notify
    number: int
    port: IListeningPort
    expires: int
    expiry: IDelayedCall
    circuits: dict[str, CircuitSplice] = field(default_factory=dict)


class Relay:
    """The relay of one intermediary process (see the module docstring).

    Ports come from ``ports`` on ``interface``, handed out round robin (a port just
    released is the last to be reused, so that stale address records rarely reach
    another user; the SixChat handshake would notice anyway). A port another program
    holds is skipped.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        interface: str,
        ports: range,
        limits: RelayLimits | None = None,
        address: str | None = None,
    ) -> None:
        if len(ports) == 0:
            raise ValueError("the relay needs at least one port")
        self.reactor = reactor
        self.interface = interface
        self.ports = ports
        self.limits = limits if limits is not None else RelayLimits()
        self.address = address if address is not None else interface
        self._held: dict[Identity, _Held] = {}
        self._numbers: set[int] = set()
        self._cursor = 0
        self._pending: dict[str, CircuitSplice] = {}
        self._dialers = SlidingWindow(reactor, limit=self.limits.dialer_rate, window=self.limits.dialer_window)
        self._stopped = False

    # Reservations.
    def reserve(self, user: Identity, notify: Notify) -> Deferred[Reservation]:
        """Give ``user`` a relay port, or renew theirs (same port; ``notify`` becomes the
        target of new circuits). The Deferred fails with :class:`RelayUnavailable` when
        no port is free (it never raises)."""
        now = self.reactor.seconds()
        expires = int(now + self.limits.reservation_lifetime)
        held = self._held.get(user)
        if held is not None:
            held.notify = notify
            held.expires = expires
            held.expiry.reset(self.limits.reservation_lifetime)
            log.info("Relay reservation of {user} renewed (port {port})", user=str(user), port=held.number)
            return succeed(Reservation(self.address, held.number, expires))
        if self._stopped:
            return fail(RelayUnavailable("the relay is stopping"))
        listened = self._listen(user)
        if listened is None:
            log.warn("No relay port free for {user}", user=str(user))
            return fail(RelayUnavailable("no relay port is free; try again later"))
        number, port = listened
        expiry = self.reactor.callLater(self.limits.reservation_lifetime, self._expire, user)
        self._held[user] = _Held(user, notify, number, port, expires, expiry)
        log.info("Relay port {port} reserved for {user}", port=number, user=str(user))
        return succeed(Reservation(self.address, number, expires))

    def _listen(self, user: Identity) -> tuple[int, IListeningPort] | None:
        count = len(self.ports)
        for step in range(count):
            index = (self._cursor + step) % count
            number = self.ports[index]
            if number in self._numbers:
                continue
            factory = QuietFactory.forProtocol(lambda: DialerProtocol(functools.partial(self._dialed, user)))
            try:
                port = self.reactor.listenTCP(number, factory, interface=self.interface)
            except CannotListenError as error:
                log.info("Relay port {port} is in use elsewhere, skipped: {error}", port=number, error=str(error))
                continue
            self._cursor = (index + 1) % count
            self._numbers.add(number)
            return number, port
        return None

    def release(self, user: Identity, notify: Notify) -> None:
        """The connection that reserved with ``notify`` was lost: close the user's port and
        circuits, unless a newer ``reserve`` moved the reservation to another target."""
        held = self._held.get(user)
        if held is not None and held.notify == notify:
            self._drop(held, "the reservation was released")

    def _expire(self, user: Identity) -> None:
        held = self._held.get(user)
        if held is not None:
            self._drop(held, "the reservation expired")

    def _drop(self, held: _Held, reason: str) -> Deferred[Any]:
        del self._held[held.user]
        if held.expiry.active():
            held.expiry.cancel()
        for splice in list(held.circuits.values()):
            splice.end(reason)
        log.info("Relay port {port} of {user} closed: {reason}", port=held.number, user=str(held.user), reason=reason)
        stopped: Deferred[Any] = maybeDeferred(held.port.stopListening)
        stopped.addBoth(lambda _: self._numbers.discard(held.number))
        return stopped

    # Circuits.
    def _dialed(self, user: Identity, dialer: DialerProtocol) -> None:
        transport: Any = dialer.transport
        peer = transport.getPeer()
        host = str(getattr(peer, "host", peer))
        where = f"{host} {getattr(peer, 'port', 0)}"
        held = self._held.get(user)
        refusal = None
        if held is None:
            refusal = "the reservation has ended"
        else:
            count = self._dialers.record(address_key(host))
            if count > self.limits.dialer_rate:
                if count == self.limits.dialer_rate + 1:
                    log.info(
                        "Relay refuses dialers from {address}: more than {limit} circuits in {window:g} s",
                        address=address_key(host),
                        limit=self.limits.dialer_rate,
                        window=self.limits.dialer_window,
                    )
                refusal = "rate"
            elif len(held.circuits) >= self.limits.circuits_per_user:
                log.info(
                    "Relay refuses a dialer from {dialer} to {user}: {limit} circuits already open",
                    dialer=where,
                    user=str(user),
                    limit=self.limits.circuits_per_user,
                )
                refusal = "user"
        if refusal is not None or held is None:
            transport.abortConnection()
            return
        circuit_id = secrets.token_hex(16)
        splice = CircuitSplice(
            self.reactor,
            circuit_id=circuit_id,
            user=user,
            dialer=dialer,
            dialer_address=where,
            limits=self.limits,
            on_closed=functools.partial(self._circuit_closed, held),
        )
        held.circuits[circuit_id] = splice
        self._pending[circuit_id] = splice
        try:
            held.notify(circuit_id, where)
        except Exception:  # noqa: BLE001 - part B's callback failed: logged, circuit ended
            log.failure("Relay could not tell {user} of circuit {circuit}", user=str(user), circuit=circuit_id)
            splice.end("the agent could not be told")

    def _circuit_closed(self, held: _Held, splice: CircuitSplice) -> None:
        held.circuits.pop(splice.circuit_id, None)
        self._pending.pop(splice.circuit_id, None)

    def join(self, user: Identity, circuit_id: str, leg: Leg) -> Splice:
        """Splice ``leg`` (the transport of the connection that just got ``<accepted/>``)
        to the dialer of pending circuit ``circuit_id`` of ``user``; raises
        :class:`UnknownCircuit` if there is no such pending circuit."""
        splice = self._pending.get(circuit_id)
        if splice is None or splice.user != user or splice.state is not State.PENDING:
            raise UnknownCircuit(f"no circuit {circuit_id} is waiting for {user}")
        del self._pending[circuit_id]
        try:
            splice.join(leg)
        except BaseException:
            splice.end("the agent's connection could not be joined")
            raise
        return splice

    def circuits(self, user: Identity) -> list[CircuitSplice]:
        """The user's open circuits (pending or joined)."""
        held = self._held.get(user)
        return [] if held is None else list(held.circuits.values())

    def stop(self) -> Deferred[None]:
        """Close every port and circuit; fires when every port stopped listening."""
        self._stopped = True
        stopping = [self._drop(held, "the relay stopped") for held in list(self._held.values())]
        done: Deferred[Any] = DeferredList(stopping, consumeErrors=True)
        return done.addCallback(lambda _: None)
