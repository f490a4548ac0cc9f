"""The intermediary's error hierarchy.

Every error the intermediary reports carries a numeric wire code (grouped as in IRP: 4xx
the request or the requester, 5xx the server; 0 local to the client), a stable wire name
and a sentence a user can read. Errors become ``<error>`` elements in exactly one place,
:func:`intermediary.wire.encode_error`; received ones become errors again through
:func:`error_class_for`. The PKI's errors become intermediary errors in exactly one place,
:func:`from_pki`.
"""

from __future__ import annotations

from typing import ClassVar

from common import errors as common_errors
from common.errors import ProtocolError
from common.pki import errors as pki_errors


class IntermediaryError(ProtocolError):
    """Base of every intermediary error (wire name ``internal-error``)."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal-error"
    default_message: ClassVar[str] = "The intermediary failed to handle the request."
    #: Whether the connection ends after this error is sent.
    fatal: ClassVar[bool] = False


class MalformedMessage(IntermediaryError):
    """A frame or document breaks the rules: the stream cannot be trusted any more."""

    code = 400
    name = "malformed-message"
    default_message = "The message is not a valid intermediary message."
    fatal = True


class UnexpectedMessage(IntermediaryError):
    """A well-formed message that is not allowed now (an unknown operation, a request on a
    connection that carries a circuit)."""

    code = 401
    name = "unexpected-message"
    default_message = "This message is not allowed here."


class InvalidArgument(IntermediaryError):
    """A field holds a value the intermediary refuses."""

    code = 402
    name = "invalid-argument"
    default_message = "A value in the request is not acceptable."


class NotAllowed(IntermediaryError):
    """The caller may not do this (another domain's user subscribing or reserving,
    publishing someone else's prekeys)."""

    code = 403
    name = "not-allowed"
    default_message = "You are not allowed to do this."


class UnknownUser(IntermediaryError):
    """No such user here, or the user never published prekeys."""

    code = 404
    name = "unknown-user"
    default_message = "This intermediary holds no prekeys for that user."


class UnknownMessage(IntermediaryError):
    """No stored message of the caller has that id."""

    code = 405
    name = "unknown-message"
    default_message = "No such message."


class UnknownCircuit(IntermediaryError):
    """No circuit waits for the caller under that id."""

    code = 406
    name = "unknown-circuit"
    default_message = "No such circuit."


class Expired(IntermediaryError):
    """An expiry time in the past, or too far in the future."""

    code = 407
    name = "expired"
    default_message = "The expiry time is not acceptable."


class Timeout(IntermediaryError):
    """The peer was silent or too slow: the connection is closed."""

    code = 408
    name = "timeout"
    default_message = "The connection was idle or too slow and is closed."
    fatal = True


class CertificateRejected(IntermediaryError):
    """The client certificate is not one of a known user of a trusted domain."""

    code = 409
    name = "certificate-rejected"
    default_message = "Your certificate is not accepted by this intermediary."
    fatal = True


class TooLarge(IntermediaryError):
    """A frame or an envelope is larger than allowed."""

    code = 413
    name = "too-large"
    default_message = "The message is larger than the intermediary accepts."


class TooLargeFrame(TooLarge):
    """A frame over the cap: the stream is closed."""

    fatal = True


class RateLimited(IntermediaryError):
    """Too many requests of a kind, or connections from an address."""

    code = 429
    name = "rate-limited"
    default_message = "Too many requests; wait and try again."


class TooManyConnections(RateLimited):
    """The source address holds too many connections."""

    default_message = "Too many connections from your address."
    fatal = True


class QuotaExceeded(IntermediaryError):
    """A per-recipient, per-sender or per-user quota is full."""

    code = 430
    name = "quota-exceeded"
    default_message = "A quota is full; try again later."


class InternalError(IntermediaryError):
    """An unexpected failure inside the server; details are in its log only."""


class Unavailable(IntermediaryError):
    """The service or one it depends on (database, registry, relay ports) is unavailable."""

    code = 503
    name = "unavailable"
    default_message = "The intermediary is unavailable; try again later."


class ClientError(IntermediaryError):
    """A local failure in the client library (not a wire error)."""

    code = 0
    name = "client-error"
    default_message = "The intermediary client failed."


class ServerVerificationFailed(ClientError):
    """The server's certificate does not prove it is the domain's intermediary."""

    name = "server-verification-failed"
    default_message = "The intermediary's certificate did not verify."


class ConnectionLost(ClientError):
    """The connection closed before an answer arrived."""

    name = "connection-lost"
    default_message = "The connection to the intermediary was lost."


def error_class_for(name: str, code: int) -> type[IntermediaryError]:
    """The class a received error (wire name, code) stands for."""
    return common_errors.error_class_for(IntermediaryError, name, code)


def from_pki(error: pki_errors.PKIError, *, about: str | None = None) -> IntermediaryError:
    """The intermediary error a PKI error stands for (the one translation): a refused
    client certificate is ``certificate-rejected`` with the PKI's reason in its message;
    a revocation status that cannot be learnt is ``unavailable``."""
    message = error.message if about is None else f"{about}: {error.message}"
    if isinstance(error, pki_errors.CertificateInvalid):
        return CertificateRejected(f"{message} ({error.reason})")
    if isinstance(error, pki_errors.CertificateRevoked):
        return CertificateRejected(f"{message} (revoked)")
    if isinstance(error, pki_errors.RevocationUnknown):
        return Unavailable(message)
    return CertificateRejected(message)
