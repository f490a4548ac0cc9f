"""sixid's error hierarchy.

Every error sixid reports carries a numeric wire code (grouped as in IRP: 4xx the request
or the requester, 5xx the server; 0 local to the client), a stable wire name and a sentence
a user can read. Errors become ``<error>`` elements in exactly one place,
:func:`sixid.wire.encode_error`; received ones become errors again through
:func:`error_class_for`. The PKI's errors become sixid errors in exactly one place,
:func:`from_pki`.
"""

from __future__ import annotations

from typing import ClassVar

from common import errors as common_errors
from common.errors import ProtocolError
from common.pki import errors as pki_errors


class SixidError(ProtocolError):
    """Base of every sixid error (wire name ``internal-error``)."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal-error"
    default_message: ClassVar[str] = "The sixid server failed to handle the request."
    #: Whether the connection ends after this error is sent.
    fatal: ClassVar[bool] = False


class MalformedMessage(SixidError):
    """A frame, document or field breaks the rules: the stream cannot be trusted any more."""

    code = 400
    name = "malformed-message"
    default_message = "The message is not a valid sixid message."
    fatal = True


class MalformedRecord(MalformedMessage):
    """Signed bytes (a registration or a record) that do not parse strictly.

    On the wire it is ``malformed-message`` too, but the document around the bytes was
    sound, so the connection stays open.
    """

    default_message = "The signed bytes are not a valid sixid registration or record."
    fatal = False


class UnexpectedMessage(SixidError):
    """A well-formed message that is not allowed (an unknown operation)."""

    code = 401
    name = "unexpected-message"
    default_message = "This message is not allowed here."


class InvalidArgument(SixidError):
    """A value the server refuses: a domain not its own, a refused key, a key that does
    not match the ID, an expiry too far away, a bad endpoint."""

    code = 402
    name = "invalid-argument"
    default_message = "A value in the request is not acceptable."


class NotAllowed(SixidError):
    """The domain's policy does not serve this ID (the message says which policy, and
    what would do), or the registry holds its maximum of IDs."""

    code = 403
    name = "not-allowed"
    default_message = "This registry does not serve this ID."


class UnknownId(SixidError):
    """No current record for the ID."""

    code = 404
    name = "unknown-id"
    default_message = "This registry holds no current record for that ID."


class BadSignature(SixidError):
    """The device signature over the registration does not verify with its key."""

    code = 405
    name = "bad-signature"
    default_message = "The registration's signature does not verify."


class Replayed(SixidError):
    """The registration's seq is not greater than the one the registry holds."""

    code = 406
    name = "replayed"
    default_message = "A registration with this seq or a later one was already accepted."


class Stale(SixidError):
    """``signed_at`` is too far from the registry's clock, or the registration expired."""

    code = 407
    name = "stale"
    default_message = "The registration is stale: check the device's clock."


class Timeout(SixidError):
    """The peer was silent or too slow: the connection is closed."""

    code = 408
    name = "timeout"
    default_message = "The connection was idle or too slow and is closed."
    fatal = True


class CertificateRejected(SixidError):
    """The certificate chain given is not of this domain's CA, is revoked or expired, or
    does not certify the registration's key."""

    code = 409
    name = "certificate-rejected"
    default_message = "The certificate is not accepted by this registry."


class TooLarge(SixidError):
    """A frame or a field is larger than allowed."""

    code = 413
    name = "too-large"
    default_message = "The message is larger than the sixid server accepts."


class TooLargeFrame(TooLarge):
    """A frame over the cap: the stream is closed."""

    fatal = True


class RateLimited(SixidError):
    """Too many requests of a kind, or connections from an address."""

    code = 429
    name = "rate-limited"
    default_message = "Too many requests; wait and try again."


class TooManyConnections(RateLimited):
    """The source address holds too many connections."""

    default_message = "Too many connections from your address."
    fatal = True


class TooManyWatches(SixidError):
    """The connection watches the most IDs it may."""

    code = 430
    name = "too-many-watches"
    default_message = "This connection watches too many IDs; unwatch some first."


class InternalError(SixidError):
    """An unexpected failure inside the server; details are in its log only."""


class Unavailable(SixidError):
    """The service or one it depends on (the database) is unavailable."""

    code = 503
    name = "unavailable"
    default_message = "The sixid server is unavailable; try again later."


class ClientError(SixidError):
    """A local failure in the client library (not a wire error)."""

    code = 0
    name = "client-error"
    default_message = "The sixid client failed."


class VerificationFailed(ClientError):
    """A record received did not verify (the message names the check that failed)."""

    name = "verification-failed"
    default_message = "The sixid record did not verify."


class ServerVerificationFailed(ClientError):
    """The server's certificate, or its record-signing chain, does not prove it is the
    domain's registry."""

    name = "server-verification-failed"
    default_message = "The sixid server's certificate did not verify."


class ConnectionLost(ClientError):
    """The connection closed before an answer arrived."""

    name = "connection-lost"
    default_message = "The connection to the sixid server was lost."


def error_class_for(name: str, code: int) -> type[SixidError]:
    """The class a received error (wire name, code) stands for."""
    return common_errors.error_class_for(SixidError, name, code)


def from_pki(error: pki_errors.PKIError, *, about: str | None = None) -> SixidError:
    """The sixid error a PKI error stands for (the one translation).

    A refused certificate chain is ``certificate-rejected`` with the PKI's reason in its
    message; a revocation status that cannot be learnt is ``unavailable``; a key the key
    policy refuses is ``invalid-argument``.
    """
    message = error.message if about is None else f"{about}: {error.message}"
    if isinstance(error, pki_errors.CertificateInvalid):
        return CertificateRejected(f"{message} ({error.reason})")
    if isinstance(error, pki_errors.CertificateRevoked):
        return CertificateRejected(f"{message} (revoked)")
    if isinstance(error, pki_errors.RevocationUnknown):
        return Unavailable(message)
    if isinstance(error, pki_errors.WeakKey | pki_errors.UnknownKeyType):
        return InvalidArgument(message)
    return CertificateRejected(message)
