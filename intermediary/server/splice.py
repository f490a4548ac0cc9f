"""One relay circuit: a sans-I/O core (:class:`Circuit`, one transition table) and its thin
Twisted adapter (:class:`CircuitSplice`, with :class:`DialerProtocol` on the relay port).

A circuit is ``pending`` from the moment a dialer connects until the reserving user's agent
joins it on the relay's join port, then ``joined`` until either leg ends, a limit is reached
or the relay releases it; then ``closed`` for good. The core counts and caps the bytes and
says what to forward; the adapter moves the bytes, runs the timers and couples the two
TCP connections' flow control so that neither side can make the relay hold more than a
socket buffer or two of the other's bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from intermediary.circuit import circuit_label

if TYPE_CHECKING:
    from common.identity import Identity
    from intermediary.server.relay import Leg, RelayLimits

log = Logger()


class State(enum.Enum):
    """Where a circuit is."""

    PENDING = "pending"
    JOINED = "joined"
    CLOSED = "closed"


# What the core asks the adapter to do.
@dataclass(frozen=True)
class ToAgent:
    """Write ``data`` to the agent's leg."""

    data: bytes


@dataclass(frozen=True)
class ToDialer:
    """Write ``data`` to the dialer."""

    data: bytes


@dataclass(frozen=True)
class PauseDialer:
    """Stop reading the dialer: the pending buffer is full."""


@dataclass(frozen=True)
class ResumeDialer:
    """Read the dialer again: the agent joined."""


@dataclass(frozen=True)
class Closed:
    """The circuit ended: close both legs; ``reason`` is for the log."""

    reason: str


Action = ToAgent | ToDialer | PauseDialer | ResumeDialer | Closed


@dataclass
class Circuit:
    """The sans-I/O state of one circuit: feed it events, carry out the actions it returns.

    ``pending_buffer`` bounds what the dialer may send before the agent joins: the dialer
    is paused as soon as one more read (at most ``read_size`` bytes) could overflow it, so
    a dialer that sends more before the join just waits in the kernel's buffers; more than
    ``pending_buffer`` can only come from a transport that ignores the pause and ends the
    circuit. ``byte_cap`` bounds each direction of a joined circuit.
    """

    pending_buffer: int
    byte_cap: int
    read_size: int = 0
    state: State = State.PENDING
    #: bytes forwarded dialer -> agent and agent -> dialer
    up: int = 0
    down: int = 0
    reason: str | None = None
    _buffer: list[bytes] = field(default_factory=list)
    _buffered: int = 0

    def dialer_data(self, data: bytes) -> list[Action]:
        """The dialer sent ``data``."""
        return self._dispatch("dialer-data", data)

    def agent_data(self, data: bytes) -> list[Action]:
        """The agent sent ``data``."""
        return self._dispatch("agent-data", data)

    def join(self) -> list[Action]:
        """The agent's leg is here: forward the buffered bytes and resume the dialer."""
        return self._dispatch("join", b"")

    def end(self, reason: str) -> list[Action]:
        """End the circuit (a leg closed, a timer ran out, a release, a stop)."""
        return self._dispatch("end", reason)

    @property
    def buffered(self) -> int:
        """Bytes of the dialer held while pending."""
        return self._buffered

    def _dispatch(self, event: str, argument: Any) -> list[Action]:
        handler = _TABLE.get((self.state, event))
        if handler is None:
            if self.state is State.CLOSED:
                return []
            raise ValueError(f"circuit event {event!r} in state {self.state.value}")
        return handler(self, argument)

    # Handlers of the transition table.
    def _buffer_dialer(self, data: bytes) -> list[Action]:
        if self._buffered + len(data) > self.pending_buffer:
            return self._close(f"the dialer sent more than {self.pending_buffer} bytes before the agent joined")
        self._buffer.append(data)
        self._buffered += len(data)
        return [PauseDialer()] if self._buffered + self.read_size >= self.pending_buffer else []

    def _joined(self, _: bytes) -> list[Action]:
        self.state = State.JOINED
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        actions: list[Action] = []
        if data:
            actions.extend(self._forward_up(data))
        if self.state is State.JOINED:
            actions.append(ResumeDialer())
        return actions

    def _forward_up(self, data: bytes) -> list[Action]:
        if self.up + len(data) > self.byte_cap:
            return self._close(f"{self.byte_cap} bytes from the dialer reached")
        self.up += len(data)
        return [ToAgent(data)]

    def _forward_down(self, data: bytes) -> list[Action]:
        if self.down + len(data) > self.byte_cap:
            return self._close(f"{self.byte_cap} bytes from the agent reached")
        self.down += len(data)
        return [ToDialer(data)]

    def _close(self, reason: str) -> list[Action]:
        self.state = State.CLOSED
        self.reason = reason
        self._buffer.clear()
        self._buffered = 0
        return [Closed(reason)]


_Handler = Callable[[Circuit, Any], list[Action]]

#: The transition table: (state, event) -> handler. Events in CLOSED are ignored; any
#: other pair not listed is a programming error.
_TABLE: dict[tuple[State, str], _Handler] = {
    (State.PENDING, "dialer-data"): Circuit._buffer_dialer,
    (State.PENDING, "join"): Circuit._joined,
    (State.PENDING, "end"): Circuit._close,
    (State.JOINED, "dialer-data"): Circuit._forward_up,
    (State.JOINED, "agent-data"): Circuit._forward_down,
    (State.JOINED, "end"): Circuit._close,
}


@implementer(IPushProducer)
class Valve:
    """The producer side of one leg: pauses its reading while any reason holds.

    Registered as the streaming producer of the OTHER leg's transport, which pauses it
    while its send buffer is full ("consumer"); the pending buffer pauses the dialer too
    ("pending"). ``stopProducing`` (the consumer went away) ends the circuit.
    """

    def __init__(self, transport: Any, on_stop: Callable[[], None]) -> None:
        self.transport = transport
        self.on_stop = on_stop
        self.reasons: set[str] = set()

    @property
    def paused(self) -> bool:
        """Whether this leg's reading is paused now."""
        return bool(self.reasons)

    def pause(self, reason: str) -> None:
        """Pause for ``reason`` (reading stops if it was running)."""
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        """Drop ``reason``; reading resumes when no reason is left."""
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause("consumer")

    def resumeProducing(self) -> None:
        self.resume("consumer")

    def stopProducing(self) -> None:
        self.on_stop()


class DialerProtocol(Protocol):
    """The dialer's connection to a relay port; ``on_connect`` (the relay) decides whether
    it gets a circuit (it sets :attr:`splice`) or is refused (closed at once)."""

    splice: CircuitSplice | None = None

    def __init__(self, on_connect: Callable[[DialerProtocol], None]) -> None:
        self.on_connect = on_connect

    def connectionMade(self) -> None:
        self.on_connect(self)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.dialer_data(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.splice is not None:
            self.splice.end("the dialer closed")


class CircuitSplice:
    """The Twisted side of one circuit: what :meth:`Relay.join` returns.

    Owns the circuit's timers (join deadline, lifetime, idle), moves bytes between the
    dialer's transport and the agent's leg, and closes both when the core says so.
    ``on_closed(splice)`` tells the relay to forget it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        circuit_id: str,
        user: Identity,
        dialer: DialerProtocol,
        dialer_address: str,
        limits: RelayLimits,
        on_closed: Callable[[CircuitSplice], None],
    ) -> None:
        self.clock = clock
        self.circuit_id = circuit_id
        self.label = circuit_label(circuit_id)
        self.user = user
        self.dialer = dialer
        self._transport: Any = dialer.transport
        self.dialer_address = dialer_address
        self.limits = limits
        self.on_closed = on_closed
        self.core = Circuit(
            pending_buffer=limits.pending_buffer,
            byte_cap=limits.circuit_bytes,
            # A TCP transport reads at most its bufferSize (64 KiB) at a time.
            read_size=getattr(dialer.transport, "bufferSize", 65536),
        )
        self.leg: Leg | None = None
        self.opened = clock.seconds()
        self._last_activity = self.opened
        # A valve's stopProducing comes from the leg it is registered on: the other one.
        self.dialer_valve = Valve(self._transport, lambda: self.end("the agent closed"))
        self.leg_valve: Valve | None = None
        self._deadline: IDelayedCall | None = clock.callLater(
            limits.join_timeout, self.end, f"the agent did not join within {limits.join_timeout:g} s"
        )
        self._idle: IDelayedCall | None = None
        self._registered_on_leg = self._registered_on_dialer = False
        dialer.splice = self
        log.info(
            "Relay circuit {circuit} for {user} opened by {dialer}",
            circuit=self.label,
            user=str(user),
            dialer=dialer_address,
        )

    @property
    def state(self) -> State:
        """The circuit's state."""
        return self.core.state

    # The Splice interface (called by the join port's adapter).
    def data_received(self, data: bytes) -> None:
        """Bytes from the agent's leg."""
        if self.core.state is State.JOINED:
            self._last_activity = self.clock.seconds()
            self._apply(self.core.agent_data(data))

    def leg_lost(self) -> None:
        """The agent's leg was lost."""
        self.end("the agent closed")

    # Events from the relay and the dialer.
    def join(self, leg: Leg, greeting: bytes = b"") -> None:
        """Splice ``leg`` in (the relay checked the circuit is pending); ``greeting`` is
        written to it before the dialer's bytes."""
        self.leg = leg
        self.leg_valve = Valve(leg, lambda: self.end("the dialer closed"))
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        remaining = max(0.0, self.opened + self.limits.circuit_lifetime - self.clock.seconds())
        self._deadline = self.clock.callLater(
            remaining, self.end, f"the circuit lifetime of {self.limits.circuit_lifetime:g} s ran out"
        )
        self._last_activity = self.clock.seconds()
        self._idle = self.clock.callLater(self.limits.circuit_idle, self._check_idle)
        # Couple the flow control both ways before any byte moves.
        leg.registerProducer(self.dialer_valve, True)
        self._registered_on_leg = True
        self._transport.registerProducer(self.leg_valve, True)
        self._registered_on_dialer = True
        if greeting:
            leg.write(greeting)
        log.info("Relay circuit {circuit} for {user} joined", circuit=self.label, user=str(self.user))
        self._apply(self.core.join())

    def dialer_data(self, data: bytes) -> None:
        """Bytes from the dialer."""
        self._last_activity = self.clock.seconds()
        self._apply(self.core.dialer_data(data))

    def end(self, reason: str) -> None:
        """End the circuit (idempotent)."""
        self._apply(self.core.end(reason))

    def _check_idle(self) -> None:
        self._idle = None
        if self.core.state is State.CLOSED:
            return
        quiet = self.clock.seconds() - self._last_activity
        if quiet >= self.limits.circuit_idle:
            self.end(f"idle for {self.limits.circuit_idle:g} s")
        else:
            self._idle = self.clock.callLater(self.limits.circuit_idle - quiet, self._check_idle)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToAgent):
                assert self.leg is not None
                self.leg.write(action.data)
            elif isinstance(action, ToDialer):
                self._transport.write(action.data)
            elif isinstance(action, PauseDialer):
                self.dialer_valve.pause("pending")
            elif isinstance(action, ResumeDialer):
                self.dialer_valve.resume("pending")
            else:
                self._closed(action.reason)

    def _closed(self, reason: str) -> None:
        for timer in (self._deadline, self._idle):
            if timer is not None and timer.active():
                timer.cancel()
        self._deadline = self._idle = None
        transport = self._transport
        if self._registered_on_leg:
            assert self.leg is not None
            self.leg.unregisterProducer()
        if self._registered_on_dialer:
            transport.unregisterProducer()
        if self.leg is not None:
            self.leg.loseConnection()
        transport.loseConnection()
        log.info(
            "Relay circuit {circuit} for {user} from {dialer} closed after {seconds:.1f} s: {reason}; "
            "{up} bytes dialer->agent, {down} bytes agent->dialer",
            circuit=self.label,
            user=str(self.user),
            dialer=self.dialer_address,
            seconds=self.clock.seconds() - self.opened,
            reason=reason,
            up=self.core.up,
            down=self.core.down,
        )
        self.on_closed(self)
