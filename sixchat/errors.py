"""The SixChat error hierarchy.

Every failure of the SixChat End2End Direct protocol is a :class:`SixChatError`. Each class
carries a numeric wire code (grouped by hundreds: 1xx message format, 2xx version, 3xx
authentication, 4xx record layer, 5xx local and transport conditions, 6xx sealed messages
stored and forwarded by an intermediary, see docs/sealed.rst), a stable wire name,
a sentence a user can read, and whether the connection must end. The PKI's errors
(:mod:`common.pki.errors`) become SixChat errors in exactly one place, :func:`from_pki`.

Errors become ``<alert>`` messages in exactly one place, :func:`sixchat.wire.handshake.alert_for`,
and alerts become errors again in :func:`sixchat.wire.handshake.error_from_alert`. The message of
a local error (``str(error)``) may carry details for logs; the wire alert never does.
"""

from __future__ import annotations

from typing import ClassVar, Final

from common import errors as common_errors
from common.errors import ProtocolError, subclasses_of
from common.pki import errors as pki_errors


class SixChatError(ProtocolError):
    """Base of every SixChat protocol error (wire name ``internal-error``)."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal-error"
    default_message: ClassVar[str] = "The SixChat peer failed."
    #: Whether the connection must end after this error. The class value is the default;
    #: an instance may override it (a refused ``send_data`` of an oversized buffer leaves
    #: the session usable, so that error is raised with ``fatal=False``).
    fatal: bool = True
    #: True for an error the peer reported in an alert (set by ``error_from_alert``), so
    #: that the agent can tell "they refused us" from "we refused them".
    from_peer: bool = False

    #: Events decoded (authentic) before the failure in the same call, for the caller
    #: to act on before ending the session (see Session.receive_data).
    events_before: list[object]

    def __init__(self, message: str | None = None, *, fatal: bool | None = None) -> None:
        self.events_before = []
        self.message = message or self.default_message
        if fatal is not None:
            self.fatal = fatal
        super().__init__(self.message)


# 1xx: the bytes do not form an acceptable message.


class MalformedMessage(SixChatError):
    """A frame, XML document, field, base64 value or length breaks the rules."""

    code = 100
    name = "malformed-message"
    default_message = "The peer sent a malformed message."


class UnexpectedMessage(SixChatError):
    """A well-formed message arrived in a state where it is not allowed."""

    code = 101
    name = "unexpected-message"
    default_message = "The peer sent a message that is not allowed at this point."


class MessageTooLarge(SixChatError):
    """A frame, record or buffer exceeds its size limit."""

    code = 102
    name = "message-too-large"
    default_message = "The message is larger than allowed."


# 2xx: versions and suites.


class UnsupportedVersion(SixChatError):
    """The peer offers no protocol version or cipher suite we speak."""

    code = 200
    name = "unsupported-version"
    default_message = "The peer does not offer SixChat version 1 with its one cipher suite."


class DowngradeDetected(UnsupportedVersion):
    """The responder selected a version or suite the initiator did not offer."""

    code = 201
    name = "downgrade-detected"
    default_message = "The peer selected a version or cipher suite that was not offered."


# 3xx: authentication.


class HandshakeFailed(SixChatError):
    """The peer could not be authenticated (base of the authentication errors)."""

    code = 300
    name = "handshake-failed"
    default_message = "The handshake failed."


class BadSignature(HandshakeFailed):
    """The transcript signature does not verify with the peer's certificate key."""

    code = 301
    name = "bad-signature"
    default_message = "The peer's handshake signature does not verify."


class BadFinished(HandshakeFailed):
    """The Finished MAC does not match our transcript."""

    code = 302
    name = "bad-finished"
    default_message = "The peer's Finished message does not match the transcript."


class IdentityMismatch(HandshakeFailed):
    """The peer is not the identity (or certificate) that was meant."""

    code = 303
    name = "identity-mismatch"
    default_message = "The peer is not the user that was meant."


class SelfConnection(HandshakeFailed):
    """The peer presented our own certificate (reflection or dialling oneself)."""

    code = 304
    name = "self-connection"
    default_message = "The peer presented our own certificate."


#: Reasons a :class:`PeerRejected` may carry, and the reason each one shows on the wire.
#: ``denied`` and ``not-a-contact`` both travel as ``policy`` so that a blocked user cannot
#: tell being blocked from being unknown.
PEER_REJECTED_WIRE_REASONS: Final[dict[str, str]] = {
    "policy": "policy",
    "not-a-contact": "policy",
    "denied": "policy",
    "revoked": "revoked",
    "expired": "expired",
    "untrusted-ca": "untrusted-ca",
}


class PeerRejected(HandshakeFailed):
    """Local policy refuses the authenticated peer; ``reason`` says why."""

    code = 305
    name = "peer-rejected"
    default_message = "The peer refused the connection."

    def __init__(
        self, message: str | None = None, *, reason: str = "policy", fatal: bool | None = None
    ) -> None:
        if reason not in PEER_REJECTED_WIRE_REASONS:
            raise ValueError(
                f"unknown rejection reason {reason!r}; use one of"
                f" {sorted(PEER_REJECTED_WIRE_REASONS)}"
            )
        super().__init__(message or f"{self.default_message} ({reason})", fatal=fatal)
        self.reason = reason

    @property
    def wire_reason(self) -> str:
        """The reason as the peer is told it."""
        return PEER_REJECTED_WIRE_REASONS[self.reason]


class CertificateInvalid(HandshakeFailed):
    """The peer's certificate or chain is unusable (raised by the core or the adapter)."""

    code = 306
    name = "certificate-invalid"
    default_message = "The peer's certificate is not valid."


# 4xx: the record layer.


class DecryptFailed(SixChatError):
    """An encrypted record or sealed message failed authentication (tamper, replay, reorder)."""

    code = 400
    name = "decrypt-failed"
    default_message = "A record failed to decrypt."


class SequenceExhausted(SixChatError):
    """A traffic key reached its hard record or byte limit without a key update."""

    code = 401
    name = "sequence-exhausted"
    default_message = "A traffic key was used up without a key update."


class Truncated(SixChatError):
    """The connection ended without an authenticated close."""

    code = 402
    name = "truncated"
    default_message = "The connection ended without an authenticated close."


class Closed(SixChatError):
    """The session or handshake is finished and cannot be used any more."""

    code = 403
    name = "closed"
    default_message = "The session is closed."
    fatal = False


# 5xx: local and transport conditions (the adapter raises most of them).


class InternalError(SixChatError):
    """An unexpected local failure."""


class Timeout(SixChatError):
    """The peer was silent or too slow."""

    code = 501
    name = "timeout"
    default_message = "The peer was too slow."


class RateLimited(SixChatError):
    """Too many handshakes or messages; try again later."""

    code = 502
    name = "rate-limited"
    default_message = "Too many attempts; wait and try again."


class PeerUnreachable(SixChatError):
    """No address of the peer answered with the right identity (local only)."""

    code = 503
    name = "peer-unreachable"
    default_message = "The peer could not be reached."


# 6xx: sealed messages (docs/sealed.rst). A refused envelope or prekey ends nothing but
# itself: no connection carries it, so these errors are not fatal.


class SealedMalformed(SixChatError):
    """A sealed envelope, prekey or prekey secret breaks the encoding rules or a size limit."""

    code = 600
    name = "sealed-malformed"
    default_message = "The sealed message or prekey is malformed."
    fatal = False


class SealedBadSignature(SixChatError):
    """The sender's (or prekey owner's) signature does not verify, or its certificate does
    not name the identity it claims."""

    code = 601
    name = "sealed-bad-signature"
    default_message = "The sealed message's or prekey's signature does not verify."
    fatal = False


class SealedWrongRecipient(SixChatError):
    """The envelope (or prekey) is addressed to (or owned by) someone else."""

    code = 602
    name = "sealed-wrong-recipient"
    default_message = "The sealed message is addressed to another user."
    fatal = False


class SealedExpired(SixChatError):
    """The envelope or prekey has expired, or its times are out of their limits."""

    code = 603
    name = "sealed-expired"
    default_message = "The sealed message or prekey has expired."
    fatal = False


class SealedReplayed(SixChatError):
    """The sender's sequence number or message id was already accepted."""

    code = 604
    name = "sealed-replayed"
    default_message = "The sealed message was already received."
    fatal = False


class SealedUnknownPrekey(SixChatError):
    """No secret is held for the prekey the envelope was sealed to (never ours, expired, or
    a one-time prekey already used: its secret is deleted)."""

    code = 605
    name = "sealed-unknown-prekey"
    default_message = "The sealed message names a prekey we do not hold."
    fatal = False


class SealedDecryptFailed(SixChatError):
    """The body did not authenticate under the key the envelope derives."""

    code = 606
    name = "sealed-decrypt-failed"
    default_message = "The sealed message failed to decrypt."
    fatal = False


#: Every error a sealed envelope or prekey can be refused with (``except SEALED_ERRORS``).
SEALED_ERRORS: Final[tuple[type[SixChatError], ...]] = (
    SealedMalformed,
    SealedBadSignature,
    SealedWrongRecipient,
    SealedExpired,
    SealedReplayed,
    SealedUnknownPrekey,
    SealedDecryptFailed,
)


def error_classes() -> list[type[SixChatError]]:
    """Every error class, the base first."""
    return [SixChatError, *subclasses_of(SixChatError)]


def error_class_for(name: str, code: int) -> type[SixChatError]:
    """Return the class for a wire name, falling back to the code, then to the base
    (see :func:`common.errors.error_class_for`)."""
    return common_errors.error_class_for(SixChatError, name, code)


def from_pki(error: pki_errors.PKIError, *, about: str | None = None) -> SixChatError:
    """The SixChat error a PKI error stands for: the one translation from the shared PKI.

    A peer whose CA we do not trust, or whose revocation status cannot be learnt, is
    rejected as ``untrusted-ca``; an expired or revoked certificate is rejected with that
    reason; any other refusal is ``certificate-invalid`` naming the reason. ``about`` (the
    peer's identity) prefixes the message.
    """
    message = error.message if about is None else f"{about}: {error.message}"
    if isinstance(error, pki_errors.CertificateInvalid):
        if error.reason == "unknown-issuer":
            return PeerRejected(message, reason="untrusted-ca")
        if error.reason == "expired":
            return PeerRejected(message, reason="expired")
        return CertificateInvalid(f"{message} ({error.reason})")
    if isinstance(error, pki_errors.CertificateRevoked):
        return PeerRejected(message, reason="revoked")
    if isinstance(error, pki_errors.RevocationUnknown):
        return PeerRejected(message, reason="untrusted-ca")
    return CertificateInvalid(message)
