"""The registry's Twisted protocol: a thin adapter from TLS bytes to :class:`Registry`.

It frames and parses requests (sans-I/O codecs), runs them one at a time in order, writes
responses, and enforces the connection's limits: a deadline for the TLS handshake and the
first request, an idle timeout, a deadline for finishing a frame once started (against
slow senders), a cap on frame size and on pipelined requests, and a cap on connections per
address. Every refusal is an error response on the wire and a log line; fatal ones close
the connection.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from common.factory import QuietFactory
from common.pki.certificates import UnusableCertificate, load_certificate
from common.pki.trust import TrustStore
from common.tls import send_without_delay
from common.wire.framing import FrameDecoder, FrameError, FrameTooLarge, encode_frame
from common.wire.xmlcodec import Element
from irp import errors
from irp.server.admission import ConnectionAdmission
from irp.server.registry import Registry, Session
from irp.wire.messages import (
    Request,
    error_response,
    ok_response,
    parse_request,
    request_id_of,
)

log = Logger()


@dataclass(frozen=True)
class Refusal:
    """A request refused while parsing, answered in its turn among the others."""

    request_id: int
    error: errors.IRPError


@dataclass
class ConnectionLimits:
    """Per-connection limits (seconds and bytes)."""

    max_request: int = 256 * 1024
    handshake_timeout: float = 30.0
    idle_timeout: float = 300.0
    frame_timeout: float = 30.0
    max_pipelined: int = 32
    max_connections_per_address: int = 64


@implementer(IHandshakeListener, IPushProducer)
class RegistryServerProtocol(Protocol):
    """One client connection to the registry."""

    factory: RegistryServerFactory

    def __init__(self) -> None:
        self.session: Session | None = None
        self.decoder: FrameDecoder | None = None
        self.pending: deque[Request | Refusal] = deque()
        self.busy = False
        self.draining = False
        #: Set once a fatal request is queued: nothing after it is read.
        self.reading_stopped = False
        #: Reading was paused because too many requests are queued (resumed when drained).
        self.reading_paused = False
        self.handshake_done = False
        self.closing = False
        self.writes_paused = False
        self.counted = False
        #: Whether the protocol is registered as its transport's producer.
        self.producing = False
        self._deadline: IDelayedCall | None = None
        self._deadline_reason = "the connection was idle too long"
        self._deadline_seconds = 0.0
        #: Whether a request since the idle deadline was last set counts as activity
        #: (one refused for want of a login does not: see _request_done).
        self._active = False
        self._frame_deadline: IDelayedCall | None = None
        self._peer_host = "unknown"

    # -- connection lifecycle -------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        """The reactor's clock (a fake one in tests)."""
        return self.factory.clock

    @property
    def limits(self) -> ConnectionLimits:
        """The factory's limits."""
        return self.factory.limits

    def connectionMade(self) -> None:
        """Count the connection and start the handshake deadline."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._peer_host = getattr(peer, "host", "unknown")
        self.session = Session(peer_host=self._peer_host)
        self.decoder = FrameDecoder(self.limits.max_request)
        if not self.factory.connections.acquire(self._peer_host):
            log.warn("Refused a connection from {host}: too many connections", host=self._peer_host)
            self._fail(errors.TooManyConnections())
            return
        self.counted = True
        send_without_delay(self.transport)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.producing = True
        self._set_deadline(self.limits.handshake_timeout, "the TLS handshake and first request took too long")

    def handshakeCompleted(self) -> None:
        """TLS is up: log in with the client certificate, if one was presented."""
        self.handshake_done = True
        self._active = True
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        peer = handle.get_peer_certificate()
        if peer is None:
            self._drain()
            return
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)

        def intermediates() -> list[bytes]:
            # Read only when needed: certificates this registry issued need no path.
            chain = (crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in handle.get_peer_cert_chain() or [])
            return [der for der in chain if der != leaf_der]

        assert self.session is not None  # made in connectionMade
        result = self.factory.authenticate(self.session, leaf_der, intermediates)
        if result is None:  # decided at once
            self._drain()
            return
        self.busy = True
        result.addErrback(self._internal_failure)
        result.addBoth(self._request_finished)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Release the connection's slot and cancel its timers."""
        self.closing = True
        self._cancel(self._deadline)
        self._cancel(self._frame_deadline)
        self._deadline = self._frame_deadline = None
        if self.counted:
            self.factory.connections.release(self._peer_host)
            self.counted = False
        self.pending.clear()

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Split frames, parse requests, queue them."""
        if self.closing or self.decoder is None or self.reading_stopped:
            return
        try:
            frames = self.decoder.feed(data)
        except FrameError:
            frames = []  # the error is in decoder.error, answered below in order
        for frame in frames:
            try:
                request = parse_request(frame)
            except errors.IRPError as error:
                log.warn("Bad request from {host}: {error}", host=self._peer_host, error=str(error))
                # Answered in order, after the requests before it; a fatal one ends the
                # connection once those are answered, and nothing after it is read. A
                # refusal that cannot name its request is fatal too: id 0 on the wire
                # always means the connection is ending.
                request_id = request_id_of(error)
                if error.fatal or request_id == 0:
                    self._refuse_and_stop(error)
                    return
                self.pending.append(Refusal(request_id, error))
                continue
            self.pending.append(request)
        framing = self.decoder.error
        if framing is not None:
            # The frames before the bad header are answered first, then the refusal.
            if isinstance(framing, FrameTooLarge):
                self._refuse_and_stop(errors.MessageTooLarge(f"the request is larger than {framing.cap} bytes"))
            else:
                self._refuse_and_stop(errors.MalformedMessage(str(framing)))
            return
        self._watch_frame(restart=bool(frames))
        if len(self.pending) > self.limits.max_pipelined and not self.reading_paused:
            self.reading_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._drain()

    def _refuse_and_stop(self, error: errors.IRPError) -> None:
        """Queue a connection-ending refusal after what is queued, and read no more."""
        log.warn("Refusing input from {host}: {error}", host=self._peer_host, error=str(error))
        if not self.handshake_done:
            self._fail(error)  # nothing is queued before the handshake
            return
        self.pending.append(Refusal(0, error))
        self.reading_stopped = True
        self._cancel(self._frame_deadline)
        self._frame_deadline = None
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._drain()

    def _drain(self) -> None:
        """Run queued requests, one at a time, until one is still running.

        A loop, not a recursion: requests that complete at once come back here through
        ``_request_done`` and are picked up by the loop already running.
        """
        if self.draining:
            return
        self.draining = True
        try:
            while not (self.busy or self.closing or self.writes_paused or not self.handshake_done):
                if not self.pending:
                    anonymous = self.session is None or self.session.identity is None
                    idle = self.limits.handshake_timeout if anonymous else self.limits.idle_timeout
                    deadline = self._deadline
                    if self._active or deadline is None or not deadline.active() or idle != self._deadline_seconds:
                        self._set_deadline(idle, "the connection was idle too long")
                    self._active = False
                    if self.reading_paused and not self.reading_stopped:
                        self.reading_paused = False
                        self.transport.resumeProducing()  # type: ignore[union-attr]
                    return
                request = self.pending.popleft()
                if isinstance(request, Refusal):
                    if request.error.fatal or request.request_id == 0:
                        self._fail(request.error, request.request_id)
                    else:
                        self._write(error_response(request.request_id, request.error))
                    continue
                self.busy = True
                result = self.factory.registry.handle_now(self.session, request)  # type: ignore[arg-type]
                if isinstance(result, Deferred):
                    result.addBoth(self._request_done, request)
                else:
                    self._request_done(result, request)
                if self.busy:
                    # Still running (it waits for the database, a hash, ...): the
                    # connection is not idle. A request answered at once leaves the
                    # deadline to be moved when the queue is empty.
                    self._cancel(self._deadline)
                    self._deadline = None
        finally:
            self.draining = False

    def _request_done(self, outcome: list[Element] | Failure, request: Request) -> None:
        """Answer ``request`` (one callback: most requests are answered at once, and every
        callback added to a fired Deferred costs a run of its chain), then go on."""
        # A request refused for want of a login (a refused client certificate, say) is
        # not activity: such requests must not keep a connection open for ever.
        if not (isinstance(outcome, Failure) and outcome.check(errors.NotAuthenticated) and request.operation != "login"):
            self._active = True
        try:
            if isinstance(outcome, Failure):
                self._request_failed(outcome, request)
            else:
                self._respond(outcome, request)
        except Exception:  # noqa: BLE001 - a bug while answering: logged, connection closed
            self._internal_failure(Failure())
        self._request_finished(None)

    def _respond(self, results: list[Element], request: Request) -> None:
        self._write(ok_response(request.id, results))

    def _request_failed(self, failure: Failure, request: Request) -> None:
        if not failure.check(errors.IRPError):
            log.failure("Request {op} from {host} failed", failure, op=request.operation, host=self._peer_host)
            error: errors.IRPError = errors.InternalError()
        else:
            error = cast(errors.IRPError, failure.value)
            log.info(
                "Request {op} from {host} refused: {error}",
                op=request.operation,
                host=self._peer_host,
                error=str(error),
            )
        if error.fatal:
            self._fail(error, request.id)
        else:
            self._write(error_response(request.id, error))

    def _internal_failure(self, failure: Failure) -> None:
        log.failure("Internal failure serving {host}", failure, host=self._peer_host)
        self._fail(errors.InternalError())

    def _request_finished(self, _: Any) -> None:
        self.busy = False
        self._drain()

    # -- output and flow control ------------------------------------------------------

    def _write(self, payload: bytes) -> None:
        if not self.closing:
            self.transport.write(encode_frame(payload))  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        """The client is not reading our answers: stop answering (and reading)."""
        self.writes_paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._set_deadline(self.limits.idle_timeout, "the client stopped reading answers")

    def resumeProducing(self) -> None:
        """The client caught up."""
        self.writes_paused = False
        if not self.reading_paused:  # else reading resumes once the queue is drained
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._drain()

    def stopProducing(self) -> None:
        """The transport is going away."""
        self.closing = True

    # -- failures and timers ----------------------------------------------------------

    def _fail(self, error: errors.IRPError, request_id: int = 0) -> None:
        """Send ``error`` and close: the single exit for fatal conditions."""
        if self.closing:
            return
        log.warn("Closing connection from {host}: {error}", host=self._peer_host, error=str(error))
        self._write(error_response(request_id, error))
        self.closing = True
        self._cancel(self._deadline)
        self._cancel(self._frame_deadline)
        self._frame_deadline = None
        if self.producing:
            # While a producer is registered, the TLS layer holds close_notify back (it
            # waits for the producer to go), and the socket would stay open until _abort.
            self.producing = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        # Read again (reading may be paused), so that the peer's close_notify, which
        # completes the TLS shutdown and closes the socket, is seen; nothing read after
        # this point reaches dataReceived's parser.
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        # A peer that does not read what we send, or does not answer close_notify, cannot
        # hold the socket (and its per-address slot) open.
        self._deadline = self.clock.callLater(self.limits.frame_timeout, self._abort)

    def _abort(self) -> None:
        self._deadline = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _set_deadline(self, seconds: float, why: str) -> None:
        # Moving a pending deadline (reset) is much cheaper than cancelling it and
        # scheduling a new one, and happens on every request.
        self._deadline_reason = why
        self._deadline_seconds = seconds
        deadline = self._deadline
        if deadline is not None and deadline.active() and deadline.func == self._timed_out:  # type: ignore[attr-defined]
            deadline.reset(seconds)
        else:
            self._cancel(deadline)
            self._deadline = self.clock.callLater(seconds, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if not self.handshake_done:
            # The peer never finished TLS: there is no way to tell it why, and no reason to
            # keep its socket (and its address's slot) for another deadline.
            log.warn("Closing connection from {host}: no TLS handshake in time", host=self._peer_host)
            self.closing = True
            self._cancel(self._frame_deadline)
            self._frame_deadline = None
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._fail(errors.Timeout(self._deadline_reason))

    def _watch_frame(self, restart: bool) -> None:
        """Give a started frame ``frame_timeout`` seconds to complete.

        ``restart`` (frames were completed) starts a new deadline for the frame now
        under way, which is another frame than the one the old deadline was for.
        """
        assert self.decoder is not None
        if self.decoder.in_frame:
            if restart:
                self._cancel(self._frame_deadline)
                self._frame_deadline = None
            if self._frame_deadline is None:
                self._frame_deadline = self.clock.callLater(
                    self.limits.frame_timeout, self._frame_timed_out
                )
        else:
            self._cancel(self._frame_deadline)
            self._frame_deadline = None

    def _frame_timed_out(self) -> None:
        self._frame_deadline = None
        self._fail(errors.Timeout("the request arrived too slowly"))

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


class RegistryServerFactory(QuietFactory):
    """Builds :class:`RegistryServerProtocol` connections sharing one registry."""

    protocol = RegistryServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: Registry,
        trust: TrustStore,
        clock: IReactorTime,
        limits: ConnectionLimits | None = None,
        known_intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        #: Intermediates to complete client chains with (clients may send only their leaf).
        self.known_intermediates = list(known_intermediates)
        self.registry = registry
        self.trust = trust
        self.clock = clock
        self.limits = limits or ConnectionLimits()
        self.admission = ConnectionAdmission(clock, self.limits.max_connections_per_address)
        #: Open connections per address (see :mod:`irp.server.admission`).
        self.connections = self.admission.connections

    def admit(self, host: str) -> bool:
        """Whether to start TLS for a new connection from ``host``: always within its
        connection limit; past it, only for the first few refusals (see
        :class:`~irp.server.admission.ConnectionAdmission`)."""
        return self.admission.admit(host)

    def authenticate(
        self, session: Session, leaf_der: bytes, intermediates: Callable[[], Sequence[bytes]]
    ) -> Deferred[None] | None:
        """Log the session in with the client certificate ``leaf_der`` (DER, as received);
        None when decided at once, else a Deferred that fires when decided.

        A certificate this registry issued is recognised by its exact fingerprint (no
        path to build: the registry checks its status and owner). Any other goes through
        the trust store first: a user of a federated domain, or a refusal with a reason.
        ``intermediates`` gives the other certificates the client presented, when needed.
        """
        digest = hashlib.sha256(leaf_der).hexdigest()
        known = self.registry.cached_certificate(digest)
        if known is not None and known.origin == "issued":
            self.registry.login_with_issued_certificate(session, known)
            return None
        return Deferred.fromCoroutine(self._authenticate(session, digest, leaf_der, intermediates))

    async def _authenticate(
        self, session: Session, digest: str, leaf_der: bytes, intermediates: Callable[[], Sequence[bytes]]
    ) -> None:
        from datetime import datetime, timezone

        issued = await self.registry.certificate(digest)
        if issued is not None and issued.origin == "issued":
            self.registry.login_with_issued_certificate(session, issued)
            return
        try:
            leaf, presented = _load_presented(leaf_der, intermediates)
            verified = self.trust.verify_user_certificate(
                leaf,
                [*presented, *self.known_intermediates],
                now=datetime.fromtimestamp(self.clock.seconds(), timezone.utc),
            )
        except errors.CertificateRejected as error:
            # The session keeps the reason: each request that needs a login is refused
            # with a new certificate-rejected error saying it.
            reason = getattr(error, "reason", None)
            self.registry.refuse_certificate(session, error.message if reason is None else f"{error.message} ({reason})")
            return
        await self.registry.authenticate_certificate(session, leaf, verified.chain)


def _load_presented(
    leaf_der: bytes, intermediates: Callable[[], Sequence[bytes]]
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The client's certificate and the others it presented, or CertificateInvalid."""
    try:
        return load_certificate(leaf_der), [load_certificate(der) for der in intermediates()]
    except UnusableCertificate as unusable:
        raise errors.CertificateInvalid("malformed", str(unusable)) from None
