"""One intermediary connection as a state machine (sans-I/O: no reactor, no transport).

:class:`Connection` takes what happens to a connection as method calls (bytes received,
TLS up, the client certificate checked, a request answered or failed, an event to push, a
deadline expired, the write buffer full or drained, the connection lost) and returns what
to do as a list of actions: bytes to send, requests to run, reading to pause or resume,
deadlines to arm or cancel, raw bytes to hand to a relay circuit, the connection to close
or abort. :class:`intermediary.server.protocol.IntermediaryProtocol` only performs them.

Requests are pipelined: up to ``max_outstanding`` run at once and each is answered when it
completes (ids match). ``<accept>`` must be the only request outstanding; while it runs
nothing more is read, and once it succeeds the connection carries raw bytes
(:class:`Spliced`): the bytes after the accept frame, and every byte after them, go to the
circuit. Every change of :class:`State` is in :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeAlias

from twisted.logger import Logger

from common.wire.framing import FrameDecoder, FrameError, FrameTooLarge, encode_frame
from intermediary import errors
from intermediary.wire import (
    MAX_FRAME,
    Accept,
    Accepted,
    Event,
    Refused,
    Request,
    Result,
    encode_error,
    encode_push,
    encode_response,
    parse_request,
)

log = Logger()


@dataclass
class ConnectionLimits:
    """Per-connection limits (seconds and counts)."""

    max_frame: int = MAX_FRAME
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


class Deadline(Enum):
    """The connection's deadlines."""

    IDLE = "idle"
    FRAME = "frame"
    CLOSE = "close"


@dataclass(frozen=True)
class Send:
    """Write these framed bytes."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Dispatch:
    """Run ``request``; report with request_answered / request_failed."""

    request: Request


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
class Splice:
    """From now on the connection carries raw bytes: hand ``data`` (what followed the
    accept frame) and every later byte to the circuit."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Close:
    """Close cleanly once what was sent is written."""


@dataclass(frozen=True)
class Abort:
    """Drop the connection at once."""


Action: TypeAlias = Send | Dispatch | PauseReading | ResumeReading | ArmDeadline | CancelDeadline | Splice | Close | Abort


class State(Enum):
    """The life of a connection."""

    HANDSHAKING = "handshaking"  # TLS not up: bytes are kept, nothing is run
    AUTHENTICATING = "authenticating"  # the client certificate is being checked
    OPEN = "open"  # requests are read and run
    ACCEPTING = "accepting"  # an <accept> runs: nothing more is read
    SPLICED = "spliced"  # raw bytes to and from a circuit
    CLOSED = "closed"  # closing or lost


#: Every change of state: (state, event) -> next state.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.HANDSHAKING, "handshake completed"): State.AUTHENTICATING,
    (State.AUTHENTICATING, "authenticated"): State.OPEN,
    (State.OPEN, "accept dispatched"): State.ACCEPTING,
    (State.ACCEPTING, "accept refused"): State.OPEN,
    (State.ACCEPTING, "accepted"): State.SPLICED,
    **{(state, "ending error"): State.CLOSED for state in State if state is not State.CLOSED},
    **{(state, "transport gone"): State.CLOSED for state in State},
}


class Connection:
    """The connection core (see the module docs). ``peer_host`` names the client in logs."""

    def __init__(self, limits: ConnectionLimits, peer_host: str) -> None:
        self.limits = limits
        self.peer_host = peer_host
        self.state = State.HANDSHAKING
        self.decoder = FrameDecoder(limits.max_frame)
        #: Ids of the requests running.
        self.outstanding: set[int] = set()
        #: Whether the connection holds a subscription or reservation (kept open then).
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
        return self._arm(Deadline.IDLE, self.limits.kept_timeout if self.kept else self.limits.idle_timeout)

    @property
    def closing(self) -> bool:
        """Closed or closing."""
        return self.state is State.CLOSED

    # -- events -------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Accepted: TLS, the certificate check and the first request have
        ``handshake_timeout`` seconds."""
        return [self._arm(Deadline.IDLE, self.limits.handshake_timeout)]

    def refuse(self, error: errors.IntermediaryError) -> list[Action]:
        """Refuse the whole connection (an error without id) and close it."""
        return self._fail(error)

    def handshake_completed(self) -> list[Action]:
        """TLS is up: the caller checks the client certificate next."""
        if self.state is State.CLOSED:
            return []
        self._transition("handshake completed")
        return []

    def authenticated(self, error: errors.IntermediaryError | None) -> list[Action]:
        """The certificate check is over: ``error`` refuses the connection, else the
        requests received meanwhile run."""
        if self.state is not State.AUTHENTICATING:
            return []
        if error is not None:
            return self._fail(error)
        self._transition("authenticated")
        return self._after_answer() if self.reading_paused else self._read(b"")

    def data_received(self, data: bytes) -> list[Action]:
        """Bytes from the peer."""
        if self.state is State.SPLICED:
            raise RuntimeError("bytes of a spliced connection go to its circuit")
        if self.state in (State.HANDSHAKING, State.AUTHENTICATING, State.ACCEPTING):
            # Kept until requests may run, or (accepting) for the circuit if it is joined;
            # past one frame's worth, reading pauses until then.
            try:
                self.decoder.append(data)
            except FrameError:
                pass
            if self.decoder.pending > self.limits.max_frame and not self.reading_paused:
                self.reading_paused = True
                return [PauseReading()]
            return []
        if self.state is not State.OPEN:
            return []  # closed: nothing more is read
        return self._read(data)

    def _read(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        try:
            self.decoder.append(data)
        except FrameError:
            pass
        got_frame = False
        while self.state is State.OPEN and not self.reading_paused:
            try:
                frame = self.decoder.next_frame()
            except FrameTooLarge as error:
                return actions + self._fail(errors.TooLargeFrame(f"frames may be at most {error.cap} bytes"))
            except FrameError as error:
                return actions + self._fail(errors.MalformedMessage(str(error)))
            if frame is None:
                break
            got_frame = True
            actions += self._request(frame)
        if self.state is State.CLOSED:
            return actions
        if got_frame or data:
            actions.append(self._idle())
        if self.state is State.OPEN and self.decoder.in_frame:
            if got_frame or Deadline.FRAME not in self._armed:
                actions.append(self._arm(Deadline.FRAME, self.limits.frame_timeout))
        else:
            actions += self._cancel(Deadline.FRAME)
        return actions

    def _request(self, frame: bytes) -> list[Action]:
        try:
            request = parse_request(frame)
        except Refused as refused:
            log.warn("Bad request from {host}: {error}", host=self.peer_host, error=str(refused.error))
            if refused.error.fatal or refused.request_id == 0 or refused.request_id in self.outstanding:
                return self._fail(refused.error)
            return [Send(encode_frame(encode_error(refused.request_id, refused.error)))]
        if request.id in self.outstanding:
            return self._fail(errors.MalformedMessage(f"request id {request.id} is already outstanding"))
        if isinstance(request.operation, Accept):
            if self.outstanding or self.kept:
                error = errors.UnexpectedMessage("<accept> must be the only request on its connection")
                return [Send(encode_frame(encode_error(request.id, error)))]
            self._transition("accept dispatched")
        self.outstanding.add(request.id)
        actions: list[Action] = [Dispatch(request)]
        if len(self.outstanding) >= self.limits.max_outstanding and not self.reading_paused:
            self.reading_paused = True
            actions.append(PauseReading())
        return actions

    def request_answered(self, request: Request, result: Result) -> list[Action]:
        """``request`` succeeded with ``result``."""
        if request.id not in self.outstanding or self.closing:
            return []
        self.outstanding.discard(request.id)
        actions: list[Action] = [Send(encode_frame(encode_response(request.id, result)))]
        if isinstance(result, Accepted):
            self._transition("accepted")
            actions += self._cancel(Deadline.IDLE, Deadline.FRAME)
            return [*actions, Splice(self.decoder.take_pending())]
        return actions + self._after_answer()

    def request_failed(self, request: Request, error: errors.IntermediaryError) -> list[Action]:
        """``request`` failed with ``error`` (InternalError for anything unexpected)."""
        if request.id not in self.outstanding or self.closing:
            return []
        self.outstanding.discard(request.id)
        if error.fatal:
            return self._fail(error, request.id)
        actions: list[Action] = [Send(encode_frame(encode_error(request.id, error)))]
        if self.state is State.ACCEPTING:
            self._transition("accept refused")
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
        """The connection now holds (or no longer holds) a subscription or reservation."""
        self.kept = kept
        return [self._idle()] if self.state is State.OPEN else []

    def push(self, event: Event) -> list[Action]:
        """Send an event (nothing once closed or spliced)."""
        if self.state not in (State.OPEN, State.ACCEPTING):
            return []
        return [Send(encode_frame(encode_push(event)))]

    def deadline_expired(self, deadline: Deadline) -> list[Action]:
        """``deadline`` expired."""
        if deadline not in self._armed:
            return []
        self._armed.discard(deadline)
        if deadline is Deadline.CLOSE or self.state is State.CLOSED:
            return [Abort()]
        if deadline is Deadline.FRAME:
            return self._fail(errors.Timeout("the request arrived too slowly"))
        if self.state is State.HANDSHAKING:
            self._transition("ending error")
            return [*self._cancel(Deadline.FRAME), Abort()]
        if self.state in (State.AUTHENTICATING,):
            return self._fail(errors.Timeout("the certificate check took too long"))
        if self.outstanding:
            return [self._idle()]  # requests still running: not idle
        return self._fail(errors.Timeout("the connection was silent too long"))

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
        return self._fail(errors.InternalError())

    def connection_lost(self) -> list[Action]:
        """The connection is gone."""
        self._transition("transport gone")
        self.outstanding.clear()
        return self._cancel(*Deadline)

    def _fail(self, error: errors.IntermediaryError, request_id: int | None = None) -> list[Action]:
        """Send ``error`` (with ``request_id`` when it answers one) and close."""
        if self.closing:
            return []
        log.warn("Closing connection from {host}: {error}", host=self.peer_host, error=str(error))
        send: list[Action] = []
        if self.state is not State.SPLICED:  # before TLS is up, the TLS layer holds it
            send.append(Send(encode_frame(encode_error(request_id, error))))
        self._transition("ending error")
        return [*send, *self._cancel(Deadline.IDLE, Deadline.FRAME), Close(), self._arm(Deadline.CLOSE, self.limits.frame_timeout)]
