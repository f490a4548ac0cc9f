"""The relay's join port: plain TCP connections on which agents take their circuits.

An agent told of a circuit (``<push><circuit id="SECRET" .../></push>`` on its TLS service
connection) opens a TCP connection to the relay's join port and sends exactly one frame
(:mod:`common.wire.framing`, at most :data:`~intermediary.wire.MAX_JOIN_FRAME` bytes)
holding ``<join circuit="SECRET"/>``. The answer is one frame, ``<joined/>``, after which
the connection carries raw bytes spliced to the dialer's; or one ``<error code name>``
frame and the connection closes (docs/relay.rst, "Joining").

:class:`JoinCore` is the sans-I/O state of one join connection (one transition table);
:class:`JoinProtocol` its thin Twisted adapter; :class:`JoinFactory` holds what join
connections share: the per-address count of connections not yet joined and the failed-join
limiter (the secret is 128 random bits and cannot be guessed, but failed joins are logged
and an address that keeps failing is locked out for a while).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from common.factory import QuietFactory
from common.limits import ConnectionCounter, FailureLimiter, LimitExceeded, address_key
from common.wire.framing import FrameDecoder, FrameError, encode_frame
from intermediary import errors
from intermediary.joinframes import MAX_JOIN_FRAME, encode_joined, parse_join
from intermediary.wire import encode_error

if TYPE_CHECKING:
    from intermediary.server.relay import Relay, RelayLimits, Splice

log = Logger()

#: The framed ``<joined/>`` answer.
JOINED_FRAME: Final = encode_frame(encode_joined())


class JoinState(Enum):
    """The life of a join connection."""

    WAITING = "waiting"  # reading the one join frame
    JOINING = "joining"  # the frame names a circuit: the relay is asked
    JOINED = "joined"  # raw bytes of a circuit
    CLOSED = "closed"  # refused, closing or lost


#: Every change of state: (state, event) -> next state.
TRANSITIONS: Final[dict[tuple[JoinState, str], JoinState]] = {
    (JoinState.WAITING, "frame"): JoinState.JOINING,
    (JoinState.WAITING, "refused"): JoinState.CLOSED,
    (JoinState.JOINING, "joined"): JoinState.JOINED,
    (JoinState.JOINING, "refused"): JoinState.CLOSED,
    **{(state, "lost"): JoinState.CLOSED for state in JoinState},
}


@dataclass(frozen=True)
class Join:
    """Ask the relay for circuit ``circuit_id``; report with joined() or refused()."""

    circuit_id: str = field(repr=False)


@dataclass(frozen=True)
class Send:
    """Write these framed bytes."""

    data: bytes


@dataclass(frozen=True)
class Forward:
    """Hand these raw bytes to the circuit."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Close:
    """Close once what was written is sent."""


@dataclass(frozen=True)
class LegLost:
    """The joined connection is gone: the circuit ends."""


JoinAction: TypeAlias = Join | Send | Forward | Close | LegLost


class JoinCore:
    """One join connection (sans-I/O): bytes and verdicts in, actions out."""

    def __init__(self, max_frame: int = MAX_JOIN_FRAME) -> None:
        self.state = JoinState.WAITING
        self.decoder = FrameDecoder(max_frame)
        self._rest = b""

    def _transition(self, event: str) -> None:
        following = TRANSITIONS.get((self.state, event))
        if following is None:
            raise RuntimeError(f"{event!r} is not allowed in state {self.state.value}")
        self.state = following

    def data_received(self, data: bytes) -> list[JoinAction]:
        """Bytes from the agent."""
        if self.state is JoinState.JOINED:
            return [Forward(data)]
        if self.state is not JoinState.WAITING:
            return []
        try:
            self.decoder.append(data)
            frame = self.decoder.next_frame()
        except FrameError as error:
            return self.refused(errors.MalformedMessage(f"a join frame must be one frame of at most {MAX_JOIN_FRAME} bytes: {error}"))
        if frame is None:
            return []
        try:
            circuit_id = parse_join(frame)
        except errors.MalformedMessage as error:
            return self.refused(error)
        self._transition("frame")
        # Bytes after the frame (the agent should wait for <joined/>) go to the circuit.
        self._rest = self.decoder.take_pending()
        return [Join(circuit_id)]

    def joined(self) -> list[JoinAction]:
        """The relay spliced the connection (and wrote ``<joined/>`` first)."""
        self._transition("joined")
        rest, self._rest = self._rest, b""
        return [Forward(rest)] if rest else []

    def refused(self, error: errors.IntermediaryError) -> list[JoinAction]:
        """Refuse the join with ``error`` and close."""
        if self.state is JoinState.CLOSED:
            return []
        self._transition("refused")
        self._rest = b""
        return [Send(encode_frame(encode_error(None, error))), Close()]

    def timed_out(self) -> list[JoinAction]:
        """The join frame did not arrive in time."""
        if self.state is not JoinState.WAITING:
            return []
        return self.refused(errors.Timeout("the join frame did not arrive in time"))

    def connection_lost(self) -> list[JoinAction]:
        """The connection is gone."""
        was = self.state
        self._transition("lost")
        return [LegLost()] if was is JoinState.JOINED else []


class JoinProtocol(Protocol, TimeoutMixin):
    """One join connection (the thin adapter of :class:`JoinCore`)."""

    factory: JoinFactory

    def __init__(self) -> None:
        self.core = JoinCore()
        self.splice: Splice | None = None
        self.host = "unknown"
        self.counted = False

    def callLater(self, period: float, func: Any) -> IDelayedCall:  # noqa: N802 - TimeoutMixin's hook
        """Timeouts run on the factory's clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:  # noqa: N802
        """Count the connection per address; start the frame deadline."""
        self.host = str(getattr(self.transport.getPeer(), "host", "unknown"))  # type: ignore[union-attr]
        self.factory.open.add(self)
        if not self.factory.connections.acquire(self.host):
            log.warn("Relay join port refused a connection from {address}: too many at once", address=address_key(self.host))
            self.do(self.core.refused(errors.RateLimited("too many join connections from your address at once")))
            return
        self.counted = True
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        self.setTimeout(self.factory.limits.join_read_timeout)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """The join frame, then the circuit's bytes."""
        if self.splice is not None:
            self.splice.data_received(data)
        else:
            self.do(self.core.data_received(data))

    def timeoutConnection(self) -> None:  # noqa: N802
        """The frame is late."""
        log.info("Relay join connection from {address} sent no join in time", address=address_key(self.host))
        self.do(self.core.timed_out())

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        """Release the count; end the circuit if joined."""
        self.setTimeout(None)
        self.factory.open.discard(self)
        self._uncount()
        self.do(self.core.connection_lost())
        self.splice = None

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.factory.connections.release(self.host)

    def do(self, actions: list[JoinAction]) -> None:
        """Perform the core's actions."""
        transport: Any = self.transport
        for action in actions:
            if isinstance(action, Join):
                self._join(action.circuit_id)
            elif isinstance(action, Forward):
                if self.splice is not None:
                    self.splice.data_received(action.data)
            elif isinstance(action, Send):
                transport.write(action.data)
            elif isinstance(action, Close):
                self.setTimeout(None)
                transport.loseConnection()
            elif self.splice is not None:  # LegLost
                self.splice.leg_lost()

    def _join(self, circuit_id: str) -> None:
        from intermediary.server.relay import UnknownCircuit

        factory = self.factory
        key = address_key(self.host)
        try:
            factory.failures.check(key)
        except LimitExceeded as error:
            self.do(self.core.refused(errors.RateLimited(f"too many failed joins from your address; {error.message}")))
            return
        factory.failures.begin(key)
        try:
            splice = factory.relay.join(circuit_id, self.transport, JOINED_FRAME)  # type: ignore[arg-type]
        except UnknownCircuit as error:
            factory.failures.record_failure(key)
            log.warn("Relay refused a join from {host}: no such circuit is waiting", host=self.host)
            try:
                factory.failures.check(key)
            except LimitExceeded as locked:
                log.warn("Relay join port locks out {address}: {why}", address=key, why=locked.message)
            self.do(self.core.refused(errors.UnknownCircuit(error.message)))
            return
        except BaseException:
            factory.failures.end(key)
            raise
        factory.failures.end(key)  # a success forgives no failure
        self.splice = splice
        self.setTimeout(None)  # the relay times circuits
        self._uncount()  # from now on the per-user circuit limits hold
        self.do(self.core.joined())


class JoinFactory(QuietFactory):
    """The join port's factory (see the module docs); built by :meth:`Relay.start`."""

    protocol = JoinProtocol  # type: ignore[assignment]

    def __init__(self, relay: Relay, clock: IReactorTime, limits: RelayLimits) -> None:
        self.relay = relay
        self.clock = clock
        self.limits = limits
        self.connections = ConnectionCounter(limits.join_connections_per_address)
        self.failures = FailureLimiter(
            clock,
            max_failures=limits.join_failures,
            window=limits.join_failure_window,
            lockout=limits.join_lockout,
            max_lockout=limits.join_max_lockout,
        )
        #: Join connections open now (joined ones are closed by their circuits).
        self.open: set[JoinProtocol] = set()

    def close_all(self) -> None:
        """Close every join connection (the relay stops)."""
        for protocol in list(self.open):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
