"""One request/response connection as a state machine (sans-I/O: no reactor, no transport).

:class:`Connection` takes what happens to a connection as method calls (bytes received,
TLS up, the peer checked, a request answered or failed, an event to push, a deadline
expired, the write buffer full or drained, the connection lost) and returns what to do as
a list of actions: bytes to send, requests to run, reading to pause or resume, deadlines
to arm or cancel, the connection to close or abort. The adapter
(:class:`common.rpc.protocol.RpcProtocol`) only performs them.

It is generic over the protocol it speaks: a :class:`Codec` (parsing requests, encoding
answers, errors and pushes; the intermediary's and sixid's ``wire`` modules are ones) and
an :class:`ErrorClasses` (the protocol's error classes for a frame over the cap, a broken
message, a timeout and an internal failure; their ``errors`` modules are ones).

Requests are pipelined: up to ``max_outstanding`` run at once and each is answered when
it completes (ids match). Every change of :class:`State` is in :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final, Protocol, TypeAlias

from twisted.logger import Logger

from common.wire.framing import HEADER, HEADER_SIZE, FrameDecoder, FrameError, FrameTooLarge

log = Logger()


class WireError(Protocol):
    """What the core needs of a protocol's error: whether it ends the connection."""

    fatal: bool


class Codec(Protocol):
    """A protocol's message codec (unframed documents)."""

    @property
    def Refused(self) -> type[Exception]:  # noqa: N802
        """Raised by :meth:`parse_request`, with ``request_id`` (0: unreadable, the
        connection ends) and ``error`` (the protocol error answering it)."""

    def parse_request(self, payload: bytes, /) -> Any:
        """One request (with an ``id``) from one frame's payload."""

    def encode_response(self, request_id: int, result: Any, /) -> bytes:
        """The answer to request ``request_id``."""

    def encode_error(self, request_id: int | None, error: Any, /) -> bytes:
        """A refusal of request ``request_id`` (None: of the connection)."""

    def encode_push(self, event: Any, /) -> bytes:
        """An event pushed to the client."""


class ErrorClasses(Protocol):
    """A protocol's error classes the core raises (each built from a message alone)."""

    @property
    def TooLargeFrame(self) -> type[Exception]:  # noqa: N802
        """A frame over the cap (fatal)."""

    @property
    def MalformedMessage(self) -> type[Exception]:  # noqa: N802
        """A frame or document that breaks the rules (fatal)."""

    @property
    def Timeout(self) -> type[Exception]:  # noqa: N802
        """A silent or slow peer (fatal)."""

    @property
    def InternalError(self) -> type[Exception]:  # noqa: N802
        """An unexpected failure."""


@dataclass
class ConnectionLimits:
    """Per-connection limits (seconds and counts); each protocol sets its own defaults."""

    max_frame: int = 32 * 1024
    #: TLS handshake, any peer check and the first request.
    handshake_timeout: float = 15.0
    #: Idle connection that holds nothing (no subscription, no watch).
    idle_timeout: float = 300.0
    #: A connection that holds something (a subscription, a watch) silent this long is
    #: dropped (its clients ping more often).
    kept_timeout: float = 180.0
    #: A frame started must be complete within this.
    frame_timeout: float = 30.0
    max_outstanding: int = 32
    max_connections_per_address: int = 32


class Deadline(StrEnum):
    """The connection's deadlines (a str enum: hashed at C speed on the hot path)."""

    IDLE = "idle"
    FRAME = "frame"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class Send:
    """Write these framed bytes."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run ``request``; report with request_answered / request_failed."""

    request: Any


@dataclass(frozen=True)
class PauseReading:
    """Stop reading from the peer."""


@dataclass(frozen=True)
class ResumeReading:
    """Read from the peer again."""


@dataclass(frozen=True)
class ArmDeadline:
    """Let ``deadline`` expire in ``seconds`` (replacing an earlier arming)."""

    deadline: Deadline
    seconds: float


@dataclass(frozen=True)
class CancelDeadline:
    """``deadline`` is no longer wanted."""

    deadline: Deadline


@dataclass(frozen=True)
class Close:
    """Close cleanly once what was sent is written."""


@dataclass(frozen=True)
class Abort:
    """Drop the connection at once."""


Action: TypeAlias = Send | Dispatch | PauseReading | ResumeReading | ArmDeadline | CancelDeadline | Close | Abort


class State(Enum):
    """The life of a connection."""

    HANDSHAKING = "handshaking"  # TLS not up: bytes are kept, nothing is run
    AUTHENTICATING = "authenticating"  # the peer is being checked (a protocol without a check passes at once)
    OPEN = "open"  # requests are read and run
    CLOSED = "closed"  # closing or lost


#: Every change of state: (state, event) -> next state.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.HANDSHAKING, "handshake completed"): State.AUTHENTICATING,
    (State.AUTHENTICATING, "authenticated"): State.OPEN,
    **{(state, "ending error"): State.CLOSED for state in State if state is not State.CLOSED},
    **{(state, "transport gone"): State.CLOSED for state in State},
}


#: Idle armings by timeout, shared by every connection (actions are frozen): a request
#: re-arms the idle deadline without building an action, and a connection holds none.
_IDLE_ARMINGS: dict[float, ArmDeadline] = {}


def _new_idle_arming(seconds: float) -> ArmDeadline:
    arming = ArmDeadline(Deadline.IDLE, seconds)
    if len(_IDLE_ARMINGS) < 64:
        _IDLE_ARMINGS[seconds] = arming
    return arming


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix (payloads here are never empty)."""
    return HEADER.pack(len(payload)) + payload


class Connection:
    """The connection core (see the module docs). ``peer_host`` names the client in logs."""

    def __init__(self, limits: ConnectionLimits, peer_host: str, codec: Codec, errors: ErrorClasses) -> None:
        self.limits = limits
        self.peer_host = peer_host
        self.codec = codec
        self.errors = errors
        self.state = State.HANDSHAKING
        self.decoder = FrameDecoder(limits.max_frame)
        #: Ids of the requests running.
        self.outstanding: set[int] = set()
        #: Whether the connection holds something (a subscription, a watch): kept open then.
        self.kept = False
        self.writes_paused = False
        self.reading_paused = False
        self._armed: set[Deadline] = set()

    # -- helpers ------------------------------------------------------------------------

    def _transition(self, event: str) -> None:
        following = TRANSITIONS.get((self.state, event))
        if following is None:
            raise RuntimeError(f"{event!r} is not allowed in state {self.state.value}")
        self.state = following

    def _arm(self, deadline: Deadline, seconds: float) -> Action:
        self._armed.add(deadline)
        return ArmDeadline(deadline, seconds)

    def _cancel(self, *deadlines: Deadline) -> list[Action]:
        found = [deadline for deadline in deadlines if deadline in self._armed]
        self._armed.difference_update(found)
        return [CancelDeadline(deadline) for deadline in found]

    def _idle(self) -> Action:
        self._armed.add(Deadline.IDLE)
        seconds = self.limits.kept_timeout if self.kept else self.limits.idle_timeout
        arming = _IDLE_ARMINGS.get(seconds)
        return arming if arming is not None else _new_idle_arming(seconds)

    @property
    def closing(self) -> bool:
        """Closed or closing."""
        return self.state is State.CLOSED

    # -- events -------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Accepted: TLS, the peer check and the first request have ``handshake_timeout``
        seconds."""
        return [self._arm(Deadline.IDLE, self.limits.handshake_timeout)]

    def refuse(self, error: Exception) -> list[Action]:
        """Refuse the whole connection (an error without id) and close it."""
        return self._fail(error)

    def handshake_completed(self) -> list[Action]:
        """TLS is up: the caller checks the peer next (or reports it authenticated)."""
        if self.state is State.CLOSED:
            return []
        self._transition("handshake completed")
        return []

    def authenticated(self, error: Exception | None) -> list[Action]:
        """The peer check is over: ``error`` refuses the connection, else the requests
        received meanwhile run."""
        if self.state is not State.AUTHENTICATING:
            return []
        if error is not None:
            return self._fail(error)
        self._transition("authenticated")
        return self._after_answer() if self.reading_paused else self._read(b"")

    def data_received(self, data: bytes) -> list[Action]:
        """Bytes from the peer."""
        if self.state is State.OPEN:
            if len(data) > HEADER_SIZE and not self.reading_paused and not self.decoder.in_frame:
                # The usual case, read without the decoder: the data is exactly one frame.
                (length,) = HEADER.unpack_from(data)
                if 0 < length == len(data) - HEADER_SIZE and length <= self.decoder.max_frame:
                    actions = self._request(data[HEADER_SIZE:])
                    if self.state is State.CLOSED:
                        return actions
                    actions.append(self._idle())
                    if Deadline.FRAME in self._armed:
                        actions += self._cancel(Deadline.FRAME)
                    return actions
            return self._read(data)
        if self.state is State.CLOSED:
            return []  # closed: nothing more is read
        # Kept until requests may run; past one frame's worth, reading pauses until then.
        try:
            self.decoder.append(data)
        except FrameError:
            pass
        if self.decoder.pending > self.limits.max_frame and not self.reading_paused:
            self.reading_paused = True
            return [PauseReading()]
        return []

    def _read(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        decoder = self.decoder
        try:
            decoder.append(data)
        except FrameError:
            pass
        got_frame = False
        while self.state is State.OPEN and not self.reading_paused:
            try:
                payload = decoder.next_frame()
            except FrameTooLarge as error:
                return actions + self._fail(self.errors.TooLargeFrame(f"frames may be at most {error.cap} bytes"))
            except FrameError as error:
                return actions + self._fail(self.errors.MalformedMessage(str(error)))
            if payload is None:
                break
            got_frame = True
            actions += self._request(payload)
        if self.state is State.CLOSED:
            return actions
        if got_frame or data:
            actions.append(self._idle())
        if self.state is State.OPEN and decoder.in_frame:
            if got_frame or Deadline.FRAME not in self._armed:
                actions.append(self._arm(Deadline.FRAME, self.limits.frame_timeout))
        elif Deadline.FRAME in self._armed:
            actions += self._cancel(Deadline.FRAME)
        return actions

    def _request(self, payload: bytes) -> list[Action]:
        try:
            request = self.codec.parse_request(payload)
        except self.codec.Refused as refused:
            request_id: int = refused.request_id  # type: ignore[attr-defined]
            error = refused.error  # type: ignore[attr-defined]
            if error.fatal or request_id == 0 or request_id in self.outstanding:
                return self._fail(error)  # logged there: one line per refusal
            log.warn("Bad request from {host}: {error}", host=self.peer_host, error=str(error))
            return [Send(frame(self.codec.encode_error(request_id, error)))]
        request_id = request.id
        outstanding = self.outstanding
        if request_id in outstanding:
            return self._fail(self.errors.MalformedMessage(f"request id {request_id} is already outstanding"))
        outstanding.add(request_id)
        if len(outstanding) >= self.limits.max_outstanding and not self.reading_paused:
            self.reading_paused = True
            return [Dispatch(request), PauseReading()]
        return [Dispatch(request)]

    def request_answered(self, request: Any, result: Any) -> list[Action]:
        """``request`` succeeded with ``result``."""
        request_id = request.id
        if request_id not in self.outstanding or self.state is State.CLOSED:
            return []
        self.outstanding.discard(request_id)
        payload = self.codec.encode_response(request_id, result)
        send = Send(HEADER.pack(len(payload)) + payload)
        if self.reading_paused or self.decoder.pending:
            return [send, *self._after_answer()]
        return [send]

    def request_failed(self, request: Any, error: Any) -> list[Action]:
        """``request`` failed with ``error`` (the protocol's InternalError for anything
        unexpected)."""
        if request.id not in self.outstanding or self.closing:
            return []
        self.outstanding.discard(request.id)
        if error.fatal:
            return self._fail(error, request.id)
        actions: list[Action] = [Send(frame(self.codec.encode_error(request.id, error)))]
        return actions + self._after_answer()

    def _after_answer(self) -> list[Action]:
        actions: list[Action] = []
        if self.reading_paused and not self.writes_paused and len(self.outstanding) < self.limits.max_outstanding:
            self.reading_paused = False
            actions.append(ResumeReading())
            actions += self._read(b"")  # frames already received
        elif self.state is State.OPEN and not self.reading_paused and self.decoder.pending:
            actions += self._read(b"")
        return actions

    def set_kept(self, kept: bool) -> list[Action]:
        """The connection now holds (or no longer holds) something kept open."""
        self.kept = kept
        return [self._idle()] if self.state is State.OPEN else []

    def push(self, event: Any) -> list[Action]:
        """Send an event (nothing once closed)."""
        if self.state is not State.OPEN:
            return []
        return [Send(frame(self.codec.encode_push(event)))]

    def deadline_expired(self, deadline: Deadline) -> list[Action]:
        """``deadline`` expired."""
        if deadline not in self._armed:
            return []
        self._armed.discard(deadline)
        if deadline is Deadline.CLOSE or self.state is State.CLOSED:
            return [Abort()]
        if deadline is Deadline.FRAME:
            return self._fail(self.errors.Timeout("the request arrived too slowly"))
        if self.state is State.HANDSHAKING:
            self._transition("ending error")
            return [*self._cancel(Deadline.FRAME), Abort()]
        if self.state is State.AUTHENTICATING:
            return self._fail(self.errors.Timeout("the certificate check took too long"))
        if self.outstanding:
            return [self._idle()]  # requests still running: not idle
        return self._fail(self.errors.Timeout("the connection was silent too long"))

    def pause_writing(self) -> list[Action]:
        """The peer does not read: stop reading requests until it does."""
        self.writes_paused = True
        if self.reading_paused:
            return []
        self.reading_paused = True
        return [PauseReading()]

    def resume_writing(self) -> list[Action]:
        """The peer reads again."""
        self.writes_paused = False
        return self._after_answer()

    def internal_failure(self) -> list[Action]:
        """Something failed unexpectedly (logged by the caller)."""
        return self._fail(self.errors.InternalError())

    def connection_lost(self) -> list[Action]:
        """The connection is gone."""
        self._transition("transport gone")
        self.outstanding.clear()
        return self._cancel(*Deadline)

    def _fail(self, error: Any, request_id: int | None = None) -> list[Action]:
        """Send ``error`` (with ``request_id`` when it answers one) and close."""
        if self.closing:
            return []
        log.warn("Closing connection from {host}: {error}", host=self.peer_host, error=str(error))
        # Before TLS is up, the TLS layer holds what is sent.
        send: list[Action] = [Send(frame(self.codec.encode_error(request_id, error)))]
        self._transition("ending error")
        return [*send, *self._cancel(Deadline.IDLE, Deadline.FRAME), Close(), self._arm(Deadline.CLOSE, self.limits.frame_timeout)]
