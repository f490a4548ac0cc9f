"""The PKI's errors: why a certificate, chain or key was refused, without wire codes.

Trust (path validation), revocation and the key policy raise these. Each protocol turns
them into its own wire errors in one function (``irp.errors.from_pki``,
``sixchat.errors.from_pki``).
"""

from __future__ import annotations

from typing import ClassVar


class PKIError(Exception):
    """Base of the PKI's errors; ``message`` is a sentence a user can read."""

    default_message: ClassVar[str] = "The certificate or key is not acceptable."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


#: Why a certificate was rejected: the ``reason`` of :class:`CertificateInvalid`.
CERTIFICATE_REJECTION_REASONS = frozenset(
    {
        "expired",
        "not-yet-valid",
        "unknown-issuer",
        "wrong-usage",
        "weak-key",
        "chain-too-long",
        "bad-identity",
        "bad-signature",
        "malformed",
    }
)



def rejection_reason(reason: str) -> str:
    """``reason`` if it is one of :data:`CERTIFICATE_REJECTION_REASONS`; else ValueError
    (a programming error: the reasons are a closed list)."""
    if reason not in CERTIFICATE_REJECTION_REASONS:
        raise ValueError(f"unknown certificate rejection reason {reason!r}")
    return reason


class CertificateInvalid(PKIError):
    """A user certificate failed verification; ``reason`` says why, in one word.

    ``reason`` is one of :data:`CERTIFICATE_REJECTION_REASONS`.
    """

    default_message = "The client certificate is not valid for this registry."

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = rejection_reason(reason)
        super().__init__(message)


class CertificateRevoked(PKIError):
    """The certificate is on its CA's current CRL."""

    default_message = "The certificate has been revoked."


class RevocationUnknown(PKIError):
    """The certificate's revocation status cannot be learnt (no usable CRL)."""

    default_message = "The certificate's revocation status cannot be checked now."


class WeakKey(PKIError):
    """A public key is of a type or size the key policy does not accept."""

    default_message = (
        "The key is too weak: use EC P-256, P-384 or P-521, Ed25519, or RSA of at least 3072 bits."
    )


class UnknownKeyType(PKIError):
    """A key type the key policy cannot generate was asked for."""

    default_message = "Unknown key type."
