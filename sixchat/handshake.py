"""The SixChat 1 handshake state machine (sans-I/O).

Three flights, TLS 1.3 shaped, every frame one XML document::

    initiator                                            responder
    M1  <hello to> versions, suites, random, X25519 key, ML-KEM-768 key  ->
                       <- M2  <reply version suite> random, X25519 key, ML-KEM ciphertext
                       <- M2b <sealed> {<auth> chain, signature, Finished} (responder hs key)
    (PeerNeedsVerification; the adapter checks the chain, then accept_peer())
    M3  <sealed> {<auth> chain, signature, Finished} (initiator hs key)   ->
    (HandshakeComplete)                   (PeerNeedsVerification, accept_peer(),
                                            HandshakeComplete)

The responder's identity, signature and Finished are checked before the initiator shows its
certificate, so the initiator reveals its identity only to the authenticated peer it meant.
All state transitions are listed in :data:`TRANSITIONS`; any other input is an
:class:`~sixchat.errors.UnexpectedMessage`. Any failure sends at most one alert (in clear
before keys exist, sealed or as a record afterwards) and ends the handshake for good.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from enum import Enum
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import (
    x25519,
)

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.certificates import UnusableCertificate, load_certificate
from common.pki.keyfiles import parse_fingerprint
from common.pki.keys import sign
from common.wire.framing import (
    HEADER_SIZE,
    EmptyFrame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
)
from sixchat import errors
from sixchat.credentials import (
    EphemeralKeys,
    LocalCredentials,
    Role,
    encapsulate,
    leaf_public_key,
    signature_algorithm_for,
    verify_signature,
)
from sixchat.handshake_events import (
    HandshakeAborted,
    HandshakeComplete,
    HandshakeEvent,
    PeerNeedsVerification,
    SendData,
)
from sixchat.keyschedule import (
    ITEM_CERTIFICATE,
    ITEM_CERTIFICATE_VERIFY,
    ITEM_FINISHED,
    KeySchedule,
    Trace,
    Transcript,
    certificate_item_body,
    finished_mac,
)
from sixchat.record import (
    InnerType,
    RecordLimits,
    Session,
    TrafficProtection,
    certificate_fingerprint,
)
from sixchat.wire import handshake as wire

#: The largest handshake frame payload accepted by default.
MAX_HANDSHAKE_FRAME: Final = 32 * 1024
#: The signature contexts (followed by a zero byte and the transcript hash).
RESPONDER_SIGNATURE_LABEL: Final = b"SixChat 1 responder signature"
INITIATOR_SIGNATURE_LABEL: Final = b"SixChat 1 initiator signature"
#: The additional data of sealed handshake messages.
SEALED_AAD: Final = b"sixchat1 sealed"

# ---------------------------------------------------------------------------------------
# Signatures (the key policy is common.pki.keys; sixchat.credentials turns its refusals
# into SixChat errors)


def signed_content(label: bytes, transcript_hash: bytes) -> bytes:
    """What a transcript signature covers: role label, a zero byte, transcript hash."""
    return label + b"\x00" + transcript_hash


# ---------------------------------------------------------------------------------------
# The state machine


class State(Enum):
    """Handshake states."""

    START = "start"  # initiator before start()
    WAIT_REPLY = "wait-reply"  # initiator sent M1
    WAIT_RESPONDER_AUTH = "wait-responder-auth"  # initiator has handshake keys
    WAIT_HELLO = "wait-hello"  # responder before M1
    WAIT_INITIATOR_AUTH = "wait-initiator-auth"  # responder sent M2 and M2b
    WAIT_VERDICT = "wait-verdict"  # peer authenticated; waiting for accept/reject
    COMPLETE = "complete"
    FAILED = "failed"


class _Channel(Enum):
    """How an alert would reach the peer now."""

    CLEAR = "clear"  # a clear <alert> frame
    SEALED = "sealed"  # a <sealed> <alert> under our handshake key
    RECORD = "record"  # an alert record under our application key


#: Every transition: (state, input) -> next state. Inputs are the message classes of clear
#: frames (Hello, Reply, Alert), of sealed contents ("sealed Auth", "sealed Alert") and the
#: API calls. A frame or content not listed for the current state is UnexpectedMessage.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.START, "start"): State.WAIT_REPLY,
    (State.WAIT_HELLO, "start"): State.WAIT_HELLO,
    (State.WAIT_HELLO, "Hello"): State.WAIT_INITIATOR_AUTH,
    # An initiator may give up before saying hello: an alert is never answered.
    (State.WAIT_HELLO, "Alert"): State.FAILED,
    (State.WAIT_REPLY, "Reply"): State.WAIT_RESPONDER_AUTH,
    (State.WAIT_REPLY, "Alert"): State.FAILED,
    (State.WAIT_RESPONDER_AUTH, "Sealed"): State.WAIT_RESPONDER_AUTH,
    (State.WAIT_RESPONDER_AUTH, "sealed Auth"): State.WAIT_VERDICT,
    (State.WAIT_INITIATOR_AUTH, "Alert"): State.FAILED,
    (State.WAIT_INITIATOR_AUTH, "Sealed"): State.WAIT_INITIATOR_AUTH,
    (State.WAIT_INITIATOR_AUTH, "sealed Auth"): State.WAIT_VERDICT,
    (State.WAIT_INITIATOR_AUTH, "sealed Alert"): State.FAILED,
    (State.WAIT_VERDICT, "accept"): State.COMPLETE,
    (State.WAIT_VERDICT, "reject"): State.FAILED,
}

#: States in which incoming bytes are parsed as handshake frames.
_FRAME_STATES: Final = frozenset(
    {
        State.START,
        State.WAIT_REPLY,
        State.WAIT_RESPONDER_AUTH,
        State.WAIT_HELLO,
        State.WAIT_INITIATOR_AUTH,
    }
)


class Handshake:
    """One side of a SixChat 1 handshake.

    ``expected_peer`` is required for the initiator (it is M1's ``to``) and must be None
    for the responder. ``expected_fingerprint`` (initiator only) pins the responder's leaf
    certificate, in any form :func:`common.pki.keyfiles.parse_fingerprint` accepts.
    ``ephemeral``, ``entropy`` and ``mlkem_encapsulate`` are for known-answer vectors;
    ``trace`` receives every derived secret and transcript hash (debugging and vectors
    only: never set it in production).
    """

    def __init__(
        self,
        role: Role,
        credentials: LocalCredentials,
        *,
        expected_peer: Identity | None = None,
        expected_fingerprint: str | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
        ephemeral: EphemeralKeys | None = None,
        mlkem_encapsulate: Callable[[bytes], tuple[bytes, bytes]] | None = None,
        max_frame: int = MAX_HANDSHAKE_FRAME,
        record_limits: RecordLimits | None = None,
        trace: Trace | None = None,
    ) -> None:
        if role is Role.INITIATOR and expected_peer is None:
            raise ValueError("the initiator must name the peer it expects")
        if role is Role.RESPONDER and (expected_peer or expected_fingerprint):
            raise ValueError("the responder cannot expect a peer")
        if ephemeral is not None and role is Role.INITIATOR and ephemeral.mlkem is None:
            raise ValueError("the initiator needs an ML-KEM-768 ephemeral key")
        self.role = role
        self._credentials = credentials
        self._expected_peer = expected_peer
        self._expected_fingerprint = (
            parse_fingerprint(expected_fingerprint) if expected_fingerprint else None
        )
        self._entropy = entropy
        self._ephemeral = ephemeral
        self._encapsulate = mlkem_encapsulate or encapsulate
        self._limits = record_limits or RecordLimits()
        self._trace = trace
        self.state = State.START if role is Role.INITIATOR else State.WAIT_HELLO
        self._channel = _Channel.CLEAR
        self._frames = FrameDecoder(max_frame)
        self._transcript = Transcript()
        self._schedule: KeySchedule | None = None
        self._send_handshake: TrafficProtection | None = None
        self._receive_handshake: TrafficProtection | None = None
        self._send_handshake_secret = b""
        self._receive_handshake_secret = b""
        self._application: tuple[bytes, bytes, bytes, bytes] | None = None
        self._peer: tuple[Identity, list[x509.Certificate], str] | None = None

    # -- public API ---------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Begin: the initiator returns [M1 frame]; the responder returns []."""
        self._check_alive()
        self._transition("start")
        if self.role is Role.RESPONDER:
            return []
        if self._ephemeral is None:
            self._ephemeral = EphemeralKeys.generate(Role.INITIATOR)
        assert self._ephemeral.mlkem is not None and self._expected_peer is not None
        hello = wire.Hello(
            to=self._expected_peer,
            random=self._random_bytes(),
            x25519_key=self._ephemeral.x25519.public_key().public_bytes_raw(),
            mlkem_key=self._ephemeral.mlkem.public_key().public_bytes_raw(),
        )
        frame = encode_frame(hello.to_xml())
        self._transcript.add(frame)
        return [frame]

    def receive_data(self, data: bytes) -> list[HandshakeEvent]:
        """Feed raw bytes from the peer; returns what to do.

        After HandshakeComplete or HandshakeAborted, raises :class:`~sixchat.errors.Closed`.
        """
        self._check_alive()
        events: list[HandshakeEvent] = []
        try:
            self._frames.append(data)
            while self.state in _FRAME_STATES:
                frame = self._next_frame()
                if frame is None:
                    break
                events.extend(self._handle_frame(frame))
            if self.state is State.WAIT_VERDICT and self._frames.pending > self._limits.max_pending:
                raise errors.MessageTooLarge(
                    "too much data arrived before the peer was accepted"
                )
        except _PeerAborted as aborted:
            events.extend(self._fail(aborted.error, send_alert=False))
        except errors.SixChatError as error:
            events.extend(self._fail(error))
        except BaseException:
            self.state = State.FAILED
            raise
        return events

    def accept_peer(self) -> list[HandshakeEvent]:
        """The adapter approves the peer announced by PeerNeedsVerification."""
        self._check_verdict_pending()
        try:
            if self.role is Role.INITIATOR:
                return self._complete_initiator()
            return [self._complete(self._transition_to_complete())]
        except BaseException:
            self.state = State.FAILED
            raise

    def reject_peer(self, error: errors.SixChatError) -> list[HandshakeEvent]:
        """The adapter refuses the peer: the alert to send, then HandshakeAborted."""
        self._check_verdict_pending()
        self._transition("reject")
        return self._fail(error)

    def abort(self, error: errors.SixChatError) -> list[HandshakeEvent]:
        """End the handshake now (timeout, rate limit, shutdown); sends the alert if it can."""
        self._check_alive()
        return self._fail(error)

    @property
    def peer(self) -> Identity | None:
        """The authenticated peer identity, once known."""
        return self._peer[0] if self._peer else None

    # -- plumbing -----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.state in (State.COMPLETE, State.FAILED):
            raise errors.Closed("the handshake is over")

    def _check_verdict_pending(self) -> None:
        self._check_alive()
        if self.state is not State.WAIT_VERDICT:
            raise RuntimeError("accept_peer()/reject_peer() before PeerNeedsVerification")

    def _transition(self, event: str) -> None:
        next_state = TRANSITIONS.get((self.state, event))
        if next_state is None:
            raise errors.UnexpectedMessage(
                f"{event} is not allowed in state {self.state.value}"
            )
        self.state = next_state

    def _random_bytes(self) -> bytes:
        value = self._entropy(wire.RANDOM_LENGTH)
        if len(value) != wire.RANDOM_LENGTH:
            raise ValueError("the entropy source returned the wrong length")
        return value

    def _next_frame(self) -> bytes | None:
        """The next whole frame (length prefix included), or None until one is complete."""
        try:
            payload = self._frames.next_frame()
        except EmptyFrame:
            raise errors.MalformedMessage("empty frame") from None
        except FrameTooLarge as error:
            raise errors.MessageTooLarge(
                f"a handshake frame of {error.length} bytes exceeds {error.cap} bytes"
            ) from None
        except FrameError as error:  # pragma: no cover - the two above are all there are
            raise errors.MalformedMessage(str(error)) from None
        return None if payload is None else encode_frame(payload)

    def _handle_frame(self, frame: bytes) -> list[HandshakeEvent]:
        message = wire.parse_handshake_frame(frame[HEADER_SIZE:])
        kind = type(message).__name__
        self._transition(kind)
        if isinstance(message, wire.Hello):
            return self._on_hello(frame, message)
        if isinstance(message, wire.Reply):
            self._on_reply(frame, message)
            return []
        if isinstance(message, wire.Alert):
            raise _PeerAborted(message)
        return self._on_sealed(message)

    def _on_sealed(self, sealed: wire.Sealed) -> list[HandshakeEvent]:
        assert self._receive_handshake is not None
        plaintext = self._receive_handshake.open(sealed.ciphertext, SEALED_AAD)
        content = wire.parse_sealed_content(plaintext)
        self._transition("sealed " + type(content).__name__)
        if isinstance(content, wire.Alert):
            raise _PeerAborted(content)
        return self._on_auth(content, plaintext)

    def _fail(self, error: errors.SixChatError, *, send_alert: bool = True) -> list[HandshakeEvent]:
        events: list[HandshakeEvent] = []
        if send_alert and self.state is not State.START:
            alert = self._alert_frame(error)
            if alert:
                events.append(SendData(alert))
        self.state = State.FAILED
        self._forget_secrets()
        events.append(HandshakeAborted(error))
        return events

    def _alert_frame(self, error: errors.SixChatError) -> bytes:
        body = wire.alert_for(error)
        if self._channel is _Channel.RECORD:
            assert self._application is not None
            protection = TrafficProtection(self._application[0], self._limits)
            return protection.seal_record(InnerType.ALERT, body)
        if self._channel is _Channel.SEALED:
            assert self._send_handshake is not None
            sealed = wire.Sealed(self._send_handshake.seal(body, SEALED_AAD))
            return encode_frame(sealed.to_xml())
        return encode_frame(body)

    def _forget_secrets(self) -> None:
        self._schedule = None
        self._send_handshake = self._receive_handshake = None
        self._send_handshake_secret = self._receive_handshake_secret = b""
        self._application = None
        self._ephemeral = None
        self._frames = FrameDecoder(self._frames.max_frame)

    # -- key agreement ------------------------------------------------------------------

    def _on_hello(self, frame: bytes, hello: wire.Hello) -> list[HandshakeEvent]:
        """Responder: check M1, answer with M2 and M2b."""
        if hello.versions != (wire.VERSION,) or hello.suites != (wire.SUITE,):
            raise errors.UnsupportedVersion(
                f"the initiator must offer exactly version {wire.VERSION} and"
                f" {wire.SUITE}"
            )
        if hello.to != self._credentials.identity:
            raise errors.IdentityMismatch(f"the initiator wants {hello.to}, not us")
        self._transcript.add(frame)
        if self._ephemeral is None:
            self._ephemeral = EphemeralKeys.generate(Role.RESPONDER)
        x25519_secret = _x25519(self._ephemeral.x25519, hello.x25519_key)
        try:
            mlkem_secret, ciphertext = self._encapsulate(hello.mlkem_key)
        except ValueError:
            raise errors.MalformedMessage("invalid ML-KEM-768 encapsulation key") from None
        reply = wire.Reply(
            random=self._random_bytes(),
            x25519_key=self._ephemeral.x25519.public_key().public_bytes_raw(),
            mlkem_ciphertext=ciphertext,
        )
        reply_frame = encode_frame(reply.to_xml())
        self._transcript.add(reply_frame)
        self._derive_handshake_keys(mlkem_secret + x25519_secret)
        # The channel stays CLEAR until M3 is authenticated: the initiator, already in its
        # session by then, reads a clear alert as the first frame, or alert records.
        return [SendData(reply_frame + self._auth_frame(RESPONDER_SIGNATURE_LABEL))]

    def _on_reply(self, frame: bytes, reply: wire.Reply) -> None:
        """Initiator: check M2 and derive the handshake keys."""
        if reply.version != wire.VERSION or reply.suite != wire.SUITE:
            raise errors.DowngradeDetected()
        assert self._ephemeral is not None and self._ephemeral.mlkem is not None
        self._transcript.add(frame)
        x25519_secret = _x25519(self._ephemeral.x25519, reply.x25519_key)
        try:
            mlkem_secret = self._ephemeral.mlkem.decapsulate(reply.mlkem_ciphertext)
        except ValueError:
            raise errors.MalformedMessage("invalid ML-KEM-768 ciphertext") from None
        self._derive_handshake_keys(mlkem_secret + x25519_secret)
        self._channel = _Channel.SEALED

    def _derive_handshake_keys(self, shared_secret: bytes) -> None:
        schedule = KeySchedule(shared_secret, self._trace)
        initiator, responder = schedule.handshake_traffic_secrets(self._transcript.digest())
        if self.role is Role.INITIATOR:
            send, receive = initiator, responder
        else:
            send, receive = responder, initiator
        self._schedule = schedule
        self._note("reply_transcript_hash", self._transcript.digest())
        self._send_handshake_secret = send
        self._send_handshake = TrafficProtection(send, self._limits)
        self._receive_handshake_secret = receive
        self._receive_handshake = TrafficProtection(receive, self._limits)

    # -- authentication -----------------------------------------------------------------

    def _note(self, name: str, value: bytes) -> None:
        if self._trace is not None:
            self._trace(name, value)

    def _auth_frame(self, label: bytes) -> bytes:
        """Our sealed <auth>: chain, signature over the transcript, Finished."""
        credentials = self._credentials
        assert self._send_handshake is not None
        transcript = self._transcript
        transcript.add_item(ITEM_CERTIFICATE, certificate_item_body(credentials.certificates_der))
        certificate_hash = transcript.digest()
        signature = sign(credentials.private_key, signed_content(label, certificate_hash))
        transcript.add_item(ITEM_CERTIFICATE_VERIFY, signature)
        verify_hash = transcript.digest()
        finished = finished_mac(self._send_handshake_secret, verify_hash)
        transcript.add_item(ITEM_FINISHED, finished)
        auth = wire.Auth(
            certificates=credentials.certificates_der,
            signature_algorithm=credentials.signature_algorithm,
            signature=signature,
            finished=finished,
        )
        plaintext = auth.to_xml()
        if self._trace is not None:
            self._trace_auth(self.role, plaintext, certificate_hash, verify_hash)
        sealed = wire.Sealed(self._send_handshake.seal(plaintext, SEALED_AAD))
        return encode_frame(sealed.to_xml())

    def _trace_auth(
        self, role: Role, plaintext: bytes, certificate_hash: bytes, verify_hash: bytes
    ) -> None:
        self._note(f"{role.value}_auth", plaintext)
        self._note(f"{role.value}_certificate_transcript_hash", certificate_hash)
        self._note(f"{role.value}_verify_transcript_hash", verify_hash)

    def _on_auth(self, auth: wire.Auth, plaintext: bytes) -> list[HandshakeEvent]:
        """Either side: verify the peer's <auth>; then PeerNeedsVerification."""
        transcript = self._transcript
        transcript.add_item(ITEM_CERTIFICATE, certificate_item_body(auth.certificates))
        certificate_hash = transcript.digest()
        transcript.add_item(ITEM_CERTIFICATE_VERIFY, auth.signature)
        verify_hash = transcript.digest()
        transcript.add_item(ITEM_FINISHED, auth.finished)
        if self._trace is not None:
            peer_role = Role.INITIATOR if self.role is Role.RESPONDER else Role.RESPONDER
            self._trace_auth(peer_role, plaintext, certificate_hash, verify_hash)
        if self.role is Role.RESPONDER:
            # M3 is authentic (it decrypted): from here on, alerts are records the
            # initiator's session can read.
            self._derive_application_secrets()
            self._channel = _Channel.RECORD
            label = INITIATOR_SIGNATURE_LABEL
        else:
            label = RESPONDER_SIGNATURE_LABEL

        chain = _load_chain(auth.certificates)
        leaf = chain[0]
        try:
            identity = identity_from_certificate(leaf)
        except (InvalidIdentity, ValueError) as error:
            raise errors.CertificateInvalid(f"unusable peer certificate: {error}") from None
        public_key = leaf_public_key(leaf)
        if signature_algorithm_for(public_key) != auth.signature_algorithm:
            raise errors.BadSignature("the signature algorithm does not match the peer's key")
        verify_signature(public_key, auth.signature, signed_content(label, certificate_hash))
        expected = finished_mac(self._receive_handshake_secret, verify_hash)
        if not hmac.compare_digest(expected, auth.finished):
            raise errors.BadFinished()
        fingerprint = certificate_fingerprint(auth.certificates[0])
        if hmac.compare_digest(fingerprint, self._credentials.fingerprint):
            raise errors.SelfConnection()
        if self.role is Role.INITIATOR:
            if identity != self._expected_peer:
                raise errors.IdentityMismatch(
                    f"we called {self._expected_peer} but {identity} answered"
                )
            if self._expected_fingerprint is not None and not hmac.compare_digest(
                fingerprint, self._expected_fingerprint
            ):
                raise errors.IdentityMismatch(
                    f"{identity} answered with a certificate other than the one expected"
                )
        self._peer = (identity, chain, fingerprint)
        return [PeerNeedsVerification(identity, chain, fingerprint)]

    def _derive_application_secrets(self) -> None:
        assert self._schedule is not None
        transcript_hash = self._transcript.digest()
        initiator, responder, exporter = self._schedule.application_traffic_secrets(
            transcript_hash
        )
        if self.role is Role.INITIATOR:
            send, receive = initiator, responder
        else:
            send, receive = responder, initiator
        self._application = (send, receive, exporter, transcript_hash)
        self._note("final_transcript_hash", transcript_hash)

    def _complete_initiator(self) -> list[HandshakeEvent]:
        frame = self._auth_frame(INITIATOR_SIGNATURE_LABEL)
        self._derive_application_secrets()
        complete = self._complete(self._transition_to_complete())
        return [SendData(frame), complete]

    def _transition_to_complete(self) -> bytes:
        """Move to COMPLETE; returns the bytes received meanwhile."""
        self._transition("accept")
        return self._frames.take_pending()

    def _complete(self, leftover: bytes) -> HandshakeComplete:
        assert self._application is not None and self._peer is not None
        send, receive, exporter, transcript_hash = self._application
        identity, chain, fingerprint = self._peer
        session = Session(
            local=self._credentials.identity,
            peer=identity,
            peer_chain=chain,
            peer_fingerprint=fingerprint,
            send_secret=send,
            receive_secret=receive,
            exporter_secret=exporter,
            transcript_hash=transcript_hash,
            limits=self._limits,
            trace=self._trace,
        )
        self._forget_secrets()
        return HandshakeComplete(session, identity, chain[0], leftover)


def _x25519(private_key: x25519.X25519PrivateKey, peer_key: bytes) -> bytes:
    """X25519 with the peer's key; an all-zero output (small-order key) is refused."""
    try:
        shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_key))
    except ValueError:
        raise errors.MalformedMessage("invalid X25519 key") from None
    if not any(shared):  # pragma: no cover - OpenSSL already refuses it
        raise errors.MalformedMessage("invalid X25519 key")
    return shared


def _load_chain(certificates_der: tuple[bytes, ...]) -> list[x509.Certificate]:
    try:
        return [load_certificate(der) for der in certificates_der]
    except UnusableCertificate as error:
        raise errors.CertificateInvalid(f"a certificate cannot be used: {error}") from None


class _PeerAborted(Exception):
    """The peer sent an alert: fail with its error, and send no alert back."""

    def __init__(self, alert: wire.Alert) -> None:
        super().__init__(alert.name)
        self.error = wire.error_from_alert(alert)
