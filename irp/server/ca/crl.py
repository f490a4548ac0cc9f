"""Revocation: the reasons a user may give, revoked entries, and CRL building. No I/O."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509

from irp.errors import InvalidArgument
from irp.server.ca.issuance import CLOCK_SKEW_ALLOWANCE, MAX_SERIAL_BITS, aware_utc, check_serial

DEFAULT_CRL_LIFETIME = datetime.timedelta(days=1)
DEFAULT_ROOT_CRL_LIFETIME = datetime.timedelta(days=30)

#: Wire names of the revocation reasons a user or administrator may give. The CA-level
#: reasons (caCompromise, aACompromise), certificateHold (revocation here is final) and
#: removeFromCRL (delta CRLs only) are deliberately absent.
REVOCATION_REASONS: Mapping[str, x509.ReasonFlags] = MappingProxyType(
    {
        "unspecified": x509.ReasonFlags.unspecified,
        "key-compromise": x509.ReasonFlags.key_compromise,
        "affiliation-changed": x509.ReasonFlags.affiliation_changed,
        "superseded": x509.ReasonFlags.superseded,
        "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
        "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
    }
)
#: The reverse of :data:`REVOCATION_REASONS`.
REVOCATION_REASON_NAMES: Mapping[x509.ReasonFlags, str] = MappingProxyType(
    {flag: name for name, flag in REVOCATION_REASONS.items()}
)


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate, as listed in a CRL."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = None


def revocation_reason(name: str) -> x509.ReasonFlags:
    """Return the reason flag for a wire name such as ``"key-compromise"``."""
    try:
        return REVOCATION_REASONS[name]
    except KeyError:
        known = ", ".join(sorted(REVOCATION_REASONS))
        raise InvalidArgument(
            f"unknown revocation reason {name!r}; use one of: {known}"
        ) from None


def crl_builder(
    issuer: x509.Certificate,
    authority_key_identifier: x509.AuthorityKeyIdentifier,
    crl_number: int,
    next_update_after: datetime.timedelta,
    moment: datetime.datetime,
) -> x509.CertificateRevocationListBuilder:
    """An empty CRL of ``issuer`` made at ``moment``, unsigned."""
    if not 0 <= crl_number < 2**MAX_SERIAL_BITS:
        raise ValueError(
            f"CRL numbers must be non-negative and at most {MAX_SERIAL_BITS} bits"
        )
    if next_update_after <= datetime.timedelta(0):
        raise ValueError("next_update_after must be positive")
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(moment - CLOCK_SKEW_ALLOWANCE)
        .next_update(moment + next_update_after)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(authority_key_identifier, critical=False)
    )


def with_revoked(
    builder: x509.CertificateRevocationListBuilder, revoked: Iterable[RevokedEntry]
) -> x509.CertificateRevocationListBuilder:
    """``builder`` listing ``revoked`` (each serial once).

    Entries carry a CRLReason extension unless their reason is unknown or ``unspecified``
    (RFC 5280, 5.3.1 advises omitting it then).
    """
    seen: set[int] = set()
    for entry in revoked:
        if entry.serial in seen:
            raise ValueError(f"serial {entry.serial} is listed twice")
        seen.add(entry.serial)
        builder = builder.add_revoked_certificate(_revoked_certificate(entry))
    return builder


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    if entry.reason is x509.ReasonFlags.remove_from_crl:
        raise ValueError("removeFromCRL is only for delta CRLs")
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(check_serial(entry.serial))
        .revocation_date(aware_utc(entry.revoked_at, "revoked_at"))
    )
    if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()
