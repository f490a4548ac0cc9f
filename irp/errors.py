"""The IRP error hierarchy.

Every error the registry can report carries its wire code (an integer, grouped as in
HTTP: 4xx the request, 5xx the server), a stable wire name and a sentence a user can read.
Errors become ``<error>`` elements in exactly one place: :func:`irp.wire.messages.error_response`.
The PKI's errors (:mod:`common.pki.errors`) become IRP errors in exactly one place:
:func:`from_pki`.
"""

from __future__ import annotations

from typing import ClassVar

from common import errors as common_errors
from common.errors import ProtocolError
from common.pki import errors as pki_errors
from common.pki.errors import rejection_reason


class IRPError(ProtocolError):
    """Base of every error reported by the IRP server, client or tools."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal-error"
    default_message: ClassVar[str] = "The registry failed to handle the request."
    #: Whether the connection must be closed after the error is sent.
    fatal: ClassVar[bool] = False


class BadRequest(IRPError):
    """The message is not a valid IRP request."""

    code = 400
    name = "bad-request"
    default_message = "The request is not a valid IRP message."


class MalformedMessage(BadRequest):
    """The bytes are not well-formed, safe XML; the stream cannot be trusted any more."""

    name = "malformed-message"
    default_message = "The message is not well-formed XML."
    fatal = True


class ForbiddenMarkup(MalformedMessage):
    """The document uses a DTD, entity, comment, CDATA or processing instruction."""

    name = "forbidden-markup"
    default_message = "DTDs, entities, comments, CDATA and processing instructions are not allowed."


class UnknownOperation(BadRequest):
    """The request names an operation this server does not know."""

    name = "unknown-operation"
    default_message = "The server does not know this operation."


class NotAuthenticated(IRPError):
    """The operation needs a logged-in user."""

    code = 401
    name = "not-authenticated"
    default_message = "Log in first, with a client certificate or a password."


class LoginFailed(NotAuthenticated):
    """Wrong user name or password (deliberately not telling which)."""

    name = "login-failed"
    default_message = "The user name or password is wrong."


class PasswordLoginDisabled(NotAuthenticated):
    """Password login is disabled for this user: only certificates work."""

    name = "password-login-disabled"
    default_message = "Password login is disabled for this user; log in with a certificate."


class CertificateRejected(NotAuthenticated):
    """The client certificate is revoked, expired, unknown or not this CA's."""

    name = "certificate-rejected"
    default_message = "The client certificate is not valid for this registry."


class Forbidden(IRPError):
    """The caller may not do this."""

    code = 403
    name = "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(IRPError):
    """The user, certificate or file does not exist."""

    code = 404
    name = "not-found"
    default_message = "No such object."


class Timeout(IRPError):
    """The peer was too slow or silent."""

    code = 408
    name = "timeout"
    default_message = "The connection was idle or too slow and is closed."
    fatal = True


class Conflict(IRPError):
    """The object already exists or changed meanwhile."""

    code = 409
    name = "conflict"
    default_message = "The object already exists."


class QuotaExceeded(Conflict):
    """The user already holds the most items of a kind allowed (a ``conflict`` on the
    wire; its own class so that retries after other conflicts do not retry it)."""

    default_message = "The user already holds the most allowed."


class MessageTooLarge(IRPError):
    """A frame or document exceeds the size limits."""

    code = 413
    name = "message-too-large"
    default_message = "The message is larger than the server accepts."
    fatal = True


class InvalidArgument(IRPError):
    """A field has a value the server refuses (bad CSR, weak key, bad address...)."""

    code = 422
    name = "invalid-argument"
    default_message = "A value in the request is not acceptable."


class RateLimited(IRPError):
    """Too many attempts; try again later."""

    code = 429
    name = "rate-limited"
    default_message = "Too many attempts; wait and try again."


class TooManyConnections(RateLimited):
    """The address holds too many connections."""

    name = "too-many-connections"
    default_message = "Too many connections from your address."
    fatal = True


class InternalError(IRPError):
    """An unexpected failure inside the server; details are in its log only."""


class Unavailable(IRPError):
    """The server is shutting down or a dependency is unavailable."""

    code = 503
    name = "unavailable"
    default_message = "The registry is unavailable; try again later."


class UnsupportedVersion(IRPError):
    """The peer speaks a protocol version we do not."""

    code = 505
    name = "unsupported-version"
    default_message = "This protocol version is not supported."
    fatal = True


class ClientError(IRPError):
    """A local failure in the client library or command (not a wire error)."""

    code = 0
    name = "client-error"
    default_message = "The client failed."


class ServerVerificationFailed(ClientError):
    """The server's certificate, chain or a record signature did not verify."""

    name = "server-verification-failed"
    default_message = "The registry's identity or signature did not verify."


class ConnectionLost(ClientError):
    """The connection closed before an answer arrived."""

    name = "connection-lost"
    default_message = "The connection to the registry was lost."


def error_class_for(name: str, code: int) -> type[IRPError]:
    """Return the error class for a wire name (falling back to the code's class).

    Where several classes share a wire name, the most general one is returned, so it can
    always be built from a message alone (see :func:`common.errors.error_class_for`).
    """
    return common_errors.error_class_for(IRPError, name, code)


class WeakKey(InvalidArgument):
    """A public key is of a type or size the registry does not accept."""

    name = "weak-key"
    default_message = (
        "The key is too weak: use EC P-256, P-384 or P-521, Ed25519, or RSA of at least 3072 bits."
    )


class CertificateInvalid(CertificateRejected):
    """A user certificate failed verification; ``reason`` says why, in one word.

    ``reason`` is one of :data:`common.pki.errors.CERTIFICATE_REJECTION_REASONS`. On the wire
    this is still a ``certificate-rejected`` error.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = rejection_reason(reason)
        super().__init__(message)


class CertificateRevoked(CertificateRejected):
    """The certificate is on its CA's current CRL."""

    default_message = "The certificate has been revoked."


class RevocationUnknown(CertificateRejected):
    """The certificate's revocation status cannot be learnt (no usable CRL)."""

    default_message = "The certificate's revocation status cannot be checked now."


def from_pki(error: pki_errors.PKIError) -> IRPError:
    """The IRP error a PKI error stands for: the one translation from the shared PKI.

    A refused certificate is a ``certificate-rejected`` error (keeping its reason), a
    refused key a ``weak-key`` error, an unknown key type an ``invalid-argument``; the
    message is the PKI's.
    """
    if isinstance(error, pki_errors.CertificateInvalid):
        return CertificateInvalid(error.reason, error.message)
    if isinstance(error, pki_errors.CertificateRevoked):
        return CertificateRevoked(error.message)
    if isinstance(error, pki_errors.RevocationUnknown):
        return RevocationUnknown(error.message)
    if isinstance(error, pki_errors.WeakKey):
        return WeakKey(error.message)
    if isinstance(error, pki_errors.UnknownKeyType):
        return InvalidArgument(error.message)
    return CertificateRejected(error.message)
