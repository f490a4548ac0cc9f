"""One registry connection as a state machine (sans-I/O: no reactor, no Deferred, no
transport).

:class:`Connection` takes what happens to a connection as method calls (bytes received,
TLS handshake completed, a request answered or failed, a deadline expired, the write
buffer full or drained, the connection lost) and returns what to do about it as a list of
actions (:data:`Action`): bytes to send, a request to run, reading to pause or resume,
deadlines to arm or cancel, the connection to close or abort. The Twisted adapter,
:class:`irp.server.protocol.RegistryServerProtocol`, only performs those actions.

What it owns:

* framing and parsing of requests, and the queue of pipelined requests, answered one at a
  time and in order, refusals included (a request refused while parsing is answered in its
  turn);
* the rule that ends a connection (:func:`ends_connection`: a fatal error, or one that
  cannot name its request, since id 0 on the wire always means the connection is ending),
  and the one place where errors and results become wire bytes (:meth:`Connection._answer`,
  through :func:`irp.wire.messages.error_response` and :func:`~irp.wire.messages.ok_response`);
* the limits of :class:`ConnectionLimits`, with three deadlines (:class:`Deadline`): the
  TLS handshake, idleness and a client that stops reading (``IDLE``), a frame started but
  not finished (``FRAME``), and the time a closed connection has to go (``CLOSE``).

The connection's life is :class:`State`, and every change of it is in :data:`TRANSITIONS`.
Independent of it are flow-control flags (a request running, writes paused by the
transport, reading paused by the pipelining cap) and whether anything happened since the
idle deadline was last armed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeAlias

from twisted.logger import Logger

from common.wire.framing import FrameDecoder, FrameError, FrameTooLarge, encode_frame
from irp import errors
from irp.wire.messages import Request, Result, error_response, ok_response, parse_request, request_id_of

log = Logger()


@dataclass
class ConnectionLimits:
    """Per-connection limits (seconds and bytes)."""

    max_request: int = 256 * 1024
    handshake_timeout: float = 30.0
    idle_timeout: float = 300.0
    frame_timeout: float = 30.0
    max_pipelined: int = 32
    max_connections_per_address: int = 64


@dataclass(frozen=True)
class Refusal:
    """A request refused while parsing, answered in its turn among the others."""

    request_id: int
    error: errors.IRPError


def ends_connection(error: errors.IRPError, request_id: int) -> bool:
    """Whether answering ``error`` to request ``request_id`` ends the connection: the one
    rule. Fatal errors do, and so does any error with id 0, which on the wire always means
    the connection is ending (its answer could not be matched to a request)."""
    return error.fatal or request_id == 0


# ---------------------------------------------------------------------------------------
# Actions


class Deadline(Enum):
    """The connection's deadlines (each armed at most once at a time)."""

    #: The TLS handshake and first request, idleness, or a client not reading answers.
    IDLE = "idle"
    #: A frame started must be complete in time (against slow senders).
    FRAME = "frame"
    #: A closed connection must be gone in time (a peer that does not read what we send,
    #: or does not answer close_notify, cannot hold its socket open).
    CLOSE = "close"


@dataclass(frozen=True)
class Send:
    """Write these (framed) bytes."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Dispatch:
    """Run ``request``; report with :meth:`Connection.request_answered` or
    :meth:`Connection.request_failed` (and :meth:`Connection.request_running` if that does
    not happen at once)."""

    request: Request


@dataclass(frozen=True)
class PauseReading:
    """Stop reading from the peer."""


@dataclass(frozen=True)
class ResumeReading:
    """Read from the peer again."""


@dataclass(frozen=True)
class ArmDeadline:
    """Let ``deadline`` expire ``seconds`` from now (replacing any earlier arming of it);
    report it with :meth:`Connection.deadline_expired`."""

    deadline: Deadline
    seconds: float


@dataclass(frozen=True)
class CancelDeadline:
    """``deadline`` is no longer wanted."""

    deadline: Deadline


@dataclass(frozen=True)
class Close:
    """Close the connection cleanly once what was sent is written (and stop being the
    transport's producer, and read again, so that the peer's close_notify is seen)."""


@dataclass(frozen=True)
class Abort:
    """Drop the connection at once."""


Action: TypeAlias = Send | Dispatch | PauseReading | ResumeReading | ArmDeadline | CancelDeadline | Close | Abort


# ---------------------------------------------------------------------------------------
# The state machine


class State(Enum):
    """The life of a connection."""

    HANDSHAKING = "handshaking"  # TLS not up yet: requests are queued, none is run
    OPEN = "open"  # requests are read and run
    STOPPED = "stopped"  # a connection-ending refusal is queued: nothing more is read
    CLOSED = "closed"  # closed, closing or lost: nothing more is read, run or written


#: Every change of state: (state, event) -> next state. Any other pair is a bug.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.HANDSHAKING, "handshake completed"): State.OPEN,
    (State.HANDSHAKING, "ending error"): State.CLOSED,
    (State.HANDSHAKING, "handshake too slow"): State.CLOSED,
    (State.OPEN, "ending refusal queued"): State.STOPPED,
    (State.OPEN, "ending error"): State.CLOSED,
    (State.STOPPED, "ending error"): State.CLOSED,
    # A connection refused at once (too many from its address) may still finish TLS.
    (State.CLOSED, "handshake completed"): State.CLOSED,
    **{(state, "transport gone"): State.CLOSED for state in State},
}

#: The IDLE deadline's reasons, said in the timeout error.
HANDSHAKE_TOO_SLOW = "the TLS handshake and first request took too long"
IDLE_TOO_LONG = "the connection was idle too long"
NOT_READING = "the client stopped reading answers"


class Connection:
    """The connection core: feed it events, perform the actions it returns, in order.

    ``peer_host`` names the client in log lines; ``anonymous`` says whether the session is
    logged in (an anonymous connection may stay idle for ``handshake_timeout`` only).

    One is held per open connection, idle ones included: it has slots, and its queue and
    armed deadlines are lists (an empty deque costs some 600 bytes, an empty set 200).
    """

    __slots__ = (
        "_active",
        "_anonymous",
        "_armed",
        "_idle_reason",
        "_idle_seconds",
        "busy",
        "decoder",
        "limits",
        "peer_host",
        "pending",
        "reading_paused",
        "state",
        "writes_paused",
    )

    def __init__(self, limits: ConnectionLimits, peer_host: str, anonymous: Callable[[], bool]) -> None:
        self.limits = limits
        self.peer_host = peer_host
        self._anonymous = anonymous
        self.state = State.HANDSHAKING
        self.decoder = FrameDecoder(limits.max_request)
        #: Requests and refusals read and not yet answered, in order.
        self.pending: list[Request | Refusal] = []
        #: A request (or the certificate check) is running.
        self.busy = False
        #: The transport's write buffer is full: run nothing more until it drains.
        self.writes_paused = False
        #: Reading is paused because too many requests are queued (resumed once drained).
        self.reading_paused = False
        #: Whether a request since the idle deadline was last armed counts as activity
        #: (one refused for want of a login does not: see _request_done).
        self._active = False
        #: Armed deadlines, and the IDLE deadline's length and reason.
        self._armed: list[Deadline] = []
        self._idle_seconds = 0.0
        self._idle_reason = IDLE_TOO_LONG

    # -- state ------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the connection is closed or closing."""
        return self.state is State.CLOSED

    @property
    def reading_stopped(self) -> bool:
        """Whether a connection-ending refusal is queued (nothing more is read)."""
        return self.state is State.STOPPED

    def _transition(self, event: str) -> None:
        next_state = TRANSITIONS.get((self.state, event))
        if next_state is None:
            raise RuntimeError(f"{event!r} is not allowed in state {self.state.value}")
        self.state = next_state

    def _arm(self, deadline: Deadline, seconds: float) -> ArmDeadline:
        if deadline not in self._armed:
            self._armed.append(deadline)
        return ArmDeadline(deadline, seconds)

    def _cancel(self, *deadlines: Deadline) -> list[Action]:
        cancelled: list[Action] = [CancelDeadline(deadline) for deadline in deadlines if deadline in self._armed]
        if cancelled:
            self._armed = [deadline for deadline in self._armed if deadline not in deadlines]
        return cancelled

    def _arm_idle(self, seconds: float, why: str) -> ArmDeadline:
        self._idle_seconds = seconds
        self._idle_reason = why
        return self._arm(Deadline.IDLE, seconds)

    # -- events -----------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The connection is accepted: the TLS handshake and first request have
        ``handshake_timeout`` seconds."""
        return [self._arm_idle(self.limits.handshake_timeout, HANDSHAKE_TOO_SLOW)]

    def refuse(self, error: errors.IRPError) -> list[Action]:
        """Refuse the whole connection with ``error`` (sent with id 0) and close it."""
        return self._fail(error)

    def handshake_completed(self, *, authenticating: bool = False) -> list[Action]:
        """TLS is up. With ``authenticating``, the client certificate is being checked:
        requests wait for :meth:`authentication_finished`."""
        self._transition("handshake completed")
        self._active = True
        if authenticating:
            self.busy = True
            return []
        return self._drain()

    def authentication_finished(self) -> list[Action]:
        """The client certificate check is over (whatever its verdict)."""
        self.busy = False
        return self._drain()

    def internal_failure(self) -> list[Action]:
        """Something failed unexpectedly (logged by the caller): internal-error, close."""
        return self._fail(errors.InternalError())

    def data_received(self, data: bytes) -> list[Action]:
        """Split frames, parse requests, queue them, run what can run."""
        if self.state in (State.CLOSED, State.STOPPED):
            return []
        try:
            frames = self.decoder.feed(data)
        except FrameError:
            frames = []  # the error is in decoder.error, answered below in order
        for frame in frames:
            try:
                request = parse_request(frame)
            except errors.IRPError as error:
                log.warn("Bad request from {host}: {error}", host=self.peer_host, error=str(error))
                # Answered in order, after the requests before it; one that ends the
                # connection does so once those are answered, and nothing after it is read.
                request_id = request_id_of(error)
                if ends_connection(error, request_id):
                    return self._refuse_and_stop(error)
                self.pending.append(Refusal(request_id, error))
                continue
            self.pending.append(request)
        framing = self.decoder.error
        if framing is not None:
            # The frames before the bad header are answered first, then the refusal.
            if isinstance(framing, FrameTooLarge):
                return self._refuse_and_stop(errors.MessageTooLarge(f"the request is larger than {framing.cap} bytes"))
            return self._refuse_and_stop(errors.MalformedMessage(str(framing)))
        actions = self._watch_frame(restart=bool(frames))
        if len(self.pending) > self.limits.max_pipelined and not self.reading_paused:
            self.reading_paused = True
            actions.append(PauseReading())
        actions += self._drain()
        return actions

    def request_running(self) -> list[Action]:
        """The request dispatched is not answered at once (it waits for the database, a
        hash, ...): the connection is not idle meanwhile."""
        return self._cancel(Deadline.IDLE)

    def request_answered(self, request: Request, results: Iterable[Result]) -> list[Action]:
        """``request`` succeeded with ``results``: answer it and go on."""
        return self._request_done(request, None, results)

    def request_failed(self, request: Request, error: errors.IRPError) -> list[Action]:
        """``request`` failed with ``error`` (an InternalError for anything unexpected,
        logged by the caller): answer it, or close if the error ends the connection."""
        return self._request_done(request, error, ())

    def deadline_expired(self, deadline: Deadline) -> list[Action]:
        """``deadline`` (armed by this core) expired."""
        if deadline not in self._armed:
            return []  # cancelled meanwhile
        self._armed.remove(deadline)
        if deadline is Deadline.CLOSE:
            return [Abort()]
        if deadline is Deadline.FRAME:
            return self._fail(errors.Timeout("the request arrived too slowly"))
        if self.state is State.HANDSHAKING:
            # The peer never finished TLS: there is no way to tell it why, and no reason
            # to keep its socket (and its address's slot) for another deadline.
            log.warn("Closing connection from {host}: no TLS handshake in time", host=self.peer_host)
            self._transition("handshake too slow")
            return [*self._cancel(Deadline.FRAME), Abort()]
        if self.state is State.CLOSED:
            return [Abort()]
        return self._fail(errors.Timeout(self._idle_reason))

    def pause_writing(self) -> list[Action]:
        """The client is not reading our answers: stop answering (and reading), and give
        it ``idle_timeout`` seconds to catch up."""
        self.writes_paused = True
        actions: list[Action] = [PauseReading()]
        if not self.closing:
            actions.append(self._arm_idle(self.limits.idle_timeout, NOT_READING))
        return actions

    def resume_writing(self) -> list[Action]:
        """The client caught up."""
        self.writes_paused = False
        actions: list[Action] = []
        if not self.reading_paused:  # else reading resumes once the queue is drained
            actions.append(ResumeReading())
        return actions + self._drain()

    def transport_gone(self) -> list[Action]:
        """The transport is going away (stopProducing)."""
        self._transition("transport gone")
        return []

    def connection_lost(self) -> list[Action]:
        """The connection is gone: forget the queue, cancel every deadline."""
        self._transition("transport gone")
        self.pending.clear()
        return self._cancel(*Deadline)

    # -- inner steps ------------------------------------------------------------------

    def _refuse_and_stop(self, error: errors.IRPError) -> list[Action]:
        """Queue a connection-ending refusal after what is queued, and read no more."""
        log.warn("Refusing input from {host}: {error}", host=self.peer_host, error=str(error))
        if self.state is State.HANDSHAKING:
            return self._fail(error)  # nothing is run before the handshake
        self.pending.append(Refusal(0, error))
        self._transition("ending refusal queued")
        return [*self._cancel(Deadline.FRAME), PauseReading(), *self._drain()]

    def _drain(self) -> list[Action]:
        """Answer queued refusals and dispatch the next request, if the connection may."""
        actions: list[Action] = []
        while not (self.busy or self.writes_paused or self.state not in (State.OPEN, State.STOPPED)):
            if not self.pending:
                idle = self.limits.handshake_timeout if self._anonymous() else self.limits.idle_timeout
                if self._active or Deadline.IDLE not in self._armed or idle != self._idle_seconds:
                    actions.append(self._arm_idle(idle, IDLE_TOO_LONG))
                self._active = False
                if self.reading_paused and self.state is not State.STOPPED:
                    self.reading_paused = False
                    actions.append(ResumeReading())
                return actions
            item = self.pending.pop(0)
            if isinstance(item, Refusal):
                actions += self._answer(item.request_id, item.error)
                continue
            self.busy = True
            actions.append(Dispatch(item))
        return actions

    def _request_done(self, request: Request, error: errors.IRPError | None, results: Iterable[Result]) -> list[Action]:
        # A request refused for want of a login (a refused client certificate, say) is
        # not activity: such requests must not keep a connection open for ever.
        if not (isinstance(error, errors.NotAuthenticated) and request.operation != "login"):
            self._active = True
        try:
            actions = self._answer(request.id, error, results)
        except Exception:  # noqa: BLE001 - a bug while answering: logged, connection closed
            log.failure("Internal failure serving {host}", host=self.peer_host)
            actions = self.internal_failure()
        self.busy = False
        return actions + self._drain()

    def _answer(self, request_id: int, error: errors.IRPError | None, results: Iterable[Result] = ()) -> list[Action]:
        """The one place answers become wire bytes: ``results``, or ``error`` (which may
        end the connection)."""
        if error is not None and ends_connection(error, request_id):
            return self._fail(error, request_id)
        if self.closing:
            return []
        payload = ok_response(request_id, results) if error is None else error_response(request_id, error)
        return [Send(encode_frame(payload))]

    def _fail(self, error: errors.IRPError, request_id: int = 0) -> list[Action]:
        """Send ``error`` and close: the single exit for connection-ending conditions."""
        if self.closing:
            return []
        log.warn("Closing connection from {host}: {error}", host=self.peer_host, error=str(error))
        actions: list[Action] = [Send(encode_frame(error_response(request_id, error)))]
        self._transition("ending error")
        actions += self._cancel(Deadline.IDLE, Deadline.FRAME)
        actions += [Close(), self._arm(Deadline.CLOSE, self.limits.frame_timeout)]
        return actions

    def _watch_frame(self, restart: bool) -> list[Action]:
        """Give a started frame ``frame_timeout`` seconds to complete.

        ``restart`` (frames were completed) starts a new deadline for the frame now
        under way, which is another frame than the one the old deadline was for.
        """
        if not self.decoder.in_frame:
            return self._cancel(Deadline.FRAME)
        if restart or Deadline.FRAME not in self._armed:
            return [self._arm(Deadline.FRAME, self.limits.frame_timeout)]
        return []
