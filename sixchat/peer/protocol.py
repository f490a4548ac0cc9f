"""The Twisted adapter of one SixChat connection: bytes in, handshake and session events out.

:class:`PeerConnection` feeds the sans-I/O :class:`~sixchat.handshake.Handshake` and then the
:class:`~sixchat.record.Session`, writes what they return, and reports to its owner (the
agent) through the :class:`ConnectionOwner` interface. It enforces the time limits (a
handshake deadline, an idle limit on sessions) and has a single exit: every failure ends in
:meth:`PeerConnection._end`, which sends the alert the core produced and closes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from cryptography import x509
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from common.identity import Identity
from sixchat import errors
from sixchat.handshake import (
    Handshake,
    HandshakeAborted,
    HandshakeComplete,
    LocalCredentials,
    PeerNeedsVerification,
    Role,
    SendData,
)
from sixchat.record import (
    AlertReceived,
    CloseReceived,
    DataReceived,
    MessageReceived,
    Session,
)
from sixchat.wire import application

if TYPE_CHECKING:
    from sixid.ids import SixId, SixIdAddress

log = Logger()

#: Why the connection's one timer runs, when it is not a Timeout's message or "idle".
_VERIFYING = "verifying"
_ABORTING = "aborting"


@dataclass
class ConnectionLimits:
    """Time limits of peer connections (seconds)."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 600.0
    verification_timeout: float = 15.0


class ConnectionOwner(TypingProtocol):
    """What a :class:`PeerConnection` needs from the agent."""

    clock: IReactorTime
    credentials: LocalCredentials
    limits: ConnectionLimits

    def verify_peer(self, connection: PeerConnection, identity: Identity, chain: list[x509.Certificate]) -> Deferred[None]:
        """Fire if the peer may talk to us; fail with a SixChatError otherwise."""

    def connection_started(self, connection: PeerConnection) -> None:
        """A connection (either role) was opened."""

    def session_established(self, connection: PeerConnection) -> None:
        """The handshake completed: ``connection.session`` is ready."""

    def message_received(self, connection: PeerConnection, message: application.ApplicationMessage) -> None:
        """An application message arrived on an established session."""

    def connection_ended(self, connection: PeerConnection, error: errors.SixChatError | None) -> None:
        """The connection is over (``error`` is None after a clean close)."""


class PeerConnection(Protocol, TimeoutMixin):
    """One TCP connection to a peer, in either role.

    Its one deadline (TimeoutMixin, on the owner's clock) is, in turn: the handshake's,
    the peer check's, the idle limit of the session, and, once closed, the time the peer
    has to let the connection go.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        role: Role,
        expected_peer: Identity | None = None,
        on_handshake_over: Callable[[], None] | None = None,
        expected_device: SixIdAddress | None = None,
    ) -> None:
        self.owner = owner
        #: The device dialled by its sixid device ID: the peer's key must be that ID's.
        self.expected_device = expected_device
        #: The device ID of the key the peer proved in the handshake (set when checked).
        self.peer_device: SixId | None = None
        #: Called once when the handshake is over, established or not (an admission slot).
        self._on_handshake_over = on_handshake_over
        self.role = role
        self.expected_peer = expected_peer
        self.handshake: Handshake | None = None
        self.session: Session | None = None
        self.peer: Identity | None = expected_peer
        self.peer_host = "unknown"
        self.ended = False
        #: Why the connection ended before a session existed (None otherwise).
        self.failure: errors.SixChatError | None = None
        self._established_waiters: list[Deferred[PeerConnection]] = []
        #: What the running deadline is for (see :meth:`timeoutConnection`).
        self._deadline = ""
        #: Called when the peer check outlives its deadline (None when no check runs).
        self._verification_expired: Callable[[], None] | None = None
        #: Bytes of binary data records received (no agent feature uses them yet).
        self.ignored_data_bytes = 0
        #: True once the TCP connection is gone.
        self.disconnected = False
        self._lost_waiters: list[Deferred[None]] = []

    @property
    def is_established(self) -> bool:
        """True while the session can carry messages."""
        return self.session is not None and self.session.is_open and not self.ended

    # -- lifecycle --------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Start the handshake and its deadline."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer_host = getattr(peer, "host", "unknown")
        self.owner.connection_started(self)
        #: The credentials this connection presents (the owner's may be reloaded later).
        self.credentials = self.owner.credentials
        self.handshake = Handshake(self.role, self.credentials, expected_peer=self.expected_peer)
        self._arm(self.owner.limits.handshake_timeout, "the handshake took too long")
        self._write_all(self.handshake.start())

    def dataReceived(self, data: bytes) -> None:
        """Route bytes to the handshake or the session."""
        if self.ended:
            return
        if self.session is not None:
            self._session_data(data)
            return
        assert self.handshake is not None
        self._handshake_events(self.handshake.receive_data(data))

    def when_established(self) -> Deferred[PeerConnection]:
        """A Deferred that fires with this connection once its session is established, or
        fails with the SixChatError that ended it first."""
        if self.session is not None:
            return succeed(self)
        if self.ended:
            return fail(self.failure or errors.Closed())
        waiter: Deferred[PeerConnection] = Deferred()
        self._established_waiters.append(waiter)
        return waiter

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the TCP connection is gone."""
        if self.disconnected:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Report the end to the owner (Truncated if it was not a clean close)."""
        self._cancel_timers()
        self.disconnected = True
        waiters, self._lost_waiters = self._lost_waiters, []
        try:
            self._lost(reason)
        finally:
            for waiter in waiters:
                waiter.callback(None)

    def _lost(self, reason: Failure) -> None:
        self._handshake_over()
        if self.ended:
            return
        self.ended = True
        error: errors.SixChatError | None
        if self.session is not None:
            error = self.session.connection_lost()
        else:
            error = errors.Truncated(f"the connection closed during the handshake: {reason.getErrorMessage()}")
        if error is not None:
            self._log_failure(error)
        self._fail_established(error or errors.Closed())
        self.owner.connection_ended(self, error)

    def _fail_established(self, error: errors.SixChatError) -> None:
        if self.session is None:
            self.failure = error
        waiters, self._established_waiters = self._established_waiters, []
        for waiter in waiters:
            waiter.errback(error)

    # -- handshake --------------------------------------------------------------------

    def _handshake_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, SendData):
                self.transport.write(event.data)  # type: ignore[union-attr]
            elif isinstance(event, PeerNeedsVerification):
                self.peer = event.identity
                self._verify(event)
            elif isinstance(event, HandshakeComplete):
                self._complete(event)
            elif isinstance(event, HandshakeAborted):
                self._end(event.error, alert=b"")

    def _verify(self, event: PeerNeedsVerification) -> None:
        # Nothing more is read until the verdict: the core buffers at most a bounded amount.
        self.transport.pauseProducing()  # type: ignore[union-attr]
        # Our own checks (a CRL fetch) are not the peer's slowness: from here the
        # verification deadline applies instead of the handshake's.
        self._disarm()
        verdict = self.owner.verify_peer(self, event.identity, event.chain)
        timed_out: list[bool] = []

        def expire() -> None:
            if not verdict.called:
                timed_out.append(True)
                verdict.cancel()

        self._verification_expired = expire
        self._arm(self.owner.limits.verification_timeout, _VERIFYING)

        def settled() -> None:
            # The deadline is this check's only while the connection still waits for it.
            if self._verification_expired is expire:
                self._verification_expired = None
                self._disarm()

        def accepted(_: Any) -> None:
            settled()
            if not self.ended and self.handshake is not None:
                self.transport.resumeProducing()  # type: ignore[union-attr]
                self._handshake_events(self.handshake.accept_peer())

        def refused(failure: Failure) -> None:
            settled()
            error = failure.value
            if timed_out:
                error = errors.Timeout(f"checking {event.identity} took too long")
            elif not isinstance(error, errors.SixChatError):
                log.failure("Checking {peer} failed", failure, peer=str(event.identity))
                error = errors.InternalError("the peer could not be checked")
            if not self.ended and self.handshake is not None:
                self.transport.resumeProducing()  # type: ignore[union-attr]
                self._handshake_events(self.handshake.reject_peer(error))

        verdict.addCallbacks(accepted, refused)

    def _handshake_over(self) -> None:
        callback, self._on_handshake_over = self._on_handshake_over, None
        if callback is not None:
            callback()

    def _complete(self, event: HandshakeComplete) -> None:
        self._handshake_over()
        self.session = event.session
        self.peer = event.peer
        self._arm(self.owner.limits.idle_timeout, "idle")
        log.info("Session with {peer} at {host} established ({role})", peer=str(event.peer), host=self.peer_host, role=self.role.name.lower())
        waiters, self._established_waiters = self._established_waiters, []
        for waiter in waiters:
            waiter.callback(self)
        self.owner.session_established(self)
        if event.leftover and not self.ended:
            self._session_data(event.leftover)

    # -- session ----------------------------------------------------------------------

    def _session_data(self, data: bytes) -> None:
        assert self.session is not None
        try:
            events = self.session.receive_data(data)
        except errors.SixChatError as error:
            # What authenticated before the failure is delivered; then the session ends
            # with the alert. A close among them is not answered with our close: the
            # alert takes its place (a record after a close is unexpected-message).
            before = [event for event in error.events_before if not isinstance(event, CloseReceived)]
            self._dispatch(before)
            if not self.ended:
                self._end(error, alert=self.session.abort(error))
            return
        self._arm(self.owner.limits.idle_timeout, "idle")
        self._dispatch(events)

    def _dispatch(self, events: list[Any]) -> None:
        """Act on session events in order (stopping if the connection ends)."""
        for event in events:
            if self.ended:
                return
            if isinstance(event, MessageReceived):
                self.owner.message_received(self, event.message)
            elif isinstance(event, CloseReceived):
                self.close(event.reason)
            elif isinstance(event, AlertReceived):
                self._end(event.error, alert=b"")
            elif isinstance(event, DataReceived):
                # No agent feature uses binary records yet: counted, not logged (a log
                # event per 64 KiB record cost 13% of a bulk transfer).
                self.ignored_data_bytes += len(event.data)

    def send(self, message: application.ApplicationMessage) -> None:
        """Encrypt and send one application message."""
        if not self.is_established:
            raise errors.Closed("the session is not established")
        assert self.session is not None
        self.transport.write(self.session.send_message(message))  # type: ignore[union-attr]

    def close(self, reason: str = "bye") -> None:
        """Close the session with an authenticated close, then the connection."""
        if self.ended:
            return
        if self.session is not None and self.session.is_open:
            self.transport.write(self.session.close(reason))  # type: ignore[union-attr]
        elif self.session is None and self.handshake is not None:
            self._handshake_events(self.handshake.abort(errors.Closed(f"closing: {reason}")))
            return
        self._finish(None)

    def abort(self, error: errors.SixChatError) -> None:
        """End the connection because of ``error`` (sending an alert where possible)."""
        if self.ended:
            return
        if self.session is not None:
            self._end(error, alert=self.session.abort(error))
        elif self.handshake is not None:
            self._handshake_events(self.handshake.abort(error))

    # -- the single exit ----------------------------------------------------------------

    def _end(self, error: errors.SixChatError, *, alert: bytes) -> None:
        if self.ended:
            return
        self._log_failure(error)
        if alert:
            self.transport.write(alert)  # type: ignore[union-attr]
        self._finish(error)

    def _log_failure(self, error: errors.SixChatError) -> None:
        log.warn(
            "Connection with {peer} at {host} failed: {error}",
            peer=str(self.peer) if self.peer else "an unknown peer",
            host=self.peer_host,
            error=str(error),
        )

    def _finish(self, error: errors.SixChatError | None) -> None:
        self.ended = True
        self._handshake_over()
        self._cancel_timers()
        self._fail_established(error or errors.Closed())
        self.owner.connection_ended(self, error)
        self.transport.loseConnection()  # type: ignore[union-attr]
        # A peer that stops reading cannot hold the socket open.
        self._arm(self.owner.limits.handshake_timeout, _ABORTING)

    # -- timers -------------------------------------------------------------------------

    def _write_all(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.transport.write(frame)  # type: ignore[union-attr]

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's clock: the owner's."""
        return self.owner.clock.callLater(period, func)

    def _arm(self, seconds: float, why: str) -> None:
        """(Re)start the deadline: ``seconds`` from now, for ``why``."""
        self._deadline = why
        self.setTimeout(seconds)  # resets a running timer rather than scheduling another

    def _disarm(self) -> None:
        self.setTimeout(None)

    def _cancel_timers(self) -> None:
        self._disarm()
        self._verification_expired = None

    def timeoutConnection(self) -> None:
        """The deadline passed: act on what it was for."""
        why = self._deadline
        if why == _ABORTING:
            self.transport.abortConnection()  # type: ignore[union-attr]
        elif why == _VERIFYING:
            expire, self._verification_expired = self._verification_expired, None
            if expire is not None:
                expire()
        elif self.session is not None and why == "idle":
            log.info("Closing the idle session with {peer}", peer=str(self.peer))
            self.close("idle")
        else:
            self.abort(errors.Timeout(why))
