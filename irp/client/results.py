"""What the registry answers, parsed strictly: sessions, certificate states, CRLs and the
domain's CA chain (verified against the pinned root)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import Element
from irp import errors
from irp.wire.elements import parse_identity, timestamp_attribute
from irp.wire.fields import check_fields, parse_serial, required
from irp.wire.records import RECORD_SIGNING_OID


@dataclass(frozen=True)
class SessionInfo:
    """The answer to login and whoami."""

    user: Identity | None
    method: str
    is_admin: bool


@dataclass(frozen=True)
class CRLInfo:
    """A CRL fetched from the registry and verified against the CA."""

    issuer: str
    number: int
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class CertificateStatus:
    """The registry's answer about one certificate."""

    serial: int
    state: str
    user: str | None
    revoked_at: str | None
    reason: str | None


@dataclass(frozen=True)
class CAChain:
    """The domain's root and issuing CA and the record-signing certificate."""

    domain: str
    root: x509.Certificate
    issuing: x509.Certificate
    record_signing: x509.Certificate


def verify_ca_chain(chain: CAChain, pinned_roots: Sequence[x509.Certificate], now: datetime) -> None:
    """Check that the chain's root is pinned and the others descend from it correctly."""
    pinned = {fingerprint(root) for root in pinned_roots}
    if fingerprint(chain.root) not in pinned:
        raise errors.ServerVerificationFailed("the registry's root CA is not the one you trust (fingerprint differs)")
    try:
        chain.issuing.verify_directly_issued_by(chain.root)
        chain.record_signing.verify_directly_issued_by(chain.issuing)
    except (ValueError, TypeError, InvalidSignature):
        raise errors.ServerVerificationFailed("the registry's CA chain does not verify") from None
    for certificate in (chain.root, chain.issuing, chain.record_signing):
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise errors.ServerVerificationFailed("a certificate of the registry's CA chain is expired")
    try:
        usages = chain.record_signing.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise errors.ServerVerificationFailed("the record-signing certificate has no extended key usage") from None
    if RECORD_SIGNING_OID not in usages:
        raise errors.ServerVerificationFailed("the record-signing certificate is not for signing records")


CA_ROLES = ("root", "issuing", "record-signing")


def parse_ca_chain(element: Element) -> CAChain:
    """Parse ``<ca-chain>`` (strictly: its three certificates, once each, nothing else)."""
    check_fields(element, ("domain", "root-fingerprint"), ("ca",))
    found: dict[str, x509.Certificate] = {}
    for child in element:
        check_fields(child, ("role",), text=True)
        role = required(child, "role")
        if role not in CA_ROLES:
            raise errors.BadRequest(f"unknown CA role {role!r}")
        if role in found:
            raise errors.BadRequest(f"the CA chain lists the {role} certificate twice")
        try:
            found[role] = x509.load_pem_x509_certificate((child.text or "").encode("ascii"))
        except ValueError:
            raise errors.BadRequest(f"the {role} CA certificate is not valid PEM") from None
    missing = set(CA_ROLES) - found.keys()
    if missing:
        raise errors.BadRequest(f"the CA chain lacks {', '.join(sorted(missing))}")
    if required(element, "root-fingerprint") != fingerprint(found["root"]):
        raise errors.BadRequest("the CA chain's root-fingerprint is not its root's")
    return CAChain(required(element, "domain"), found["root"], found["issuing"], found["record-signing"])


def parse_boolean(element: Element, name: str) -> bool:
    value = required(element, name)
    if value not in ("true", "false"):
        raise errors.BadRequest(f"{name!r} must be 'true' or 'false'")
    return value == "true"


STATUS_STATES = ("good", "revoked", "expired", "not-yet-valid", "unknown")


def parse_status(element: Element, asked: int) -> CertificateStatus:
    """Parse ``<status>`` (strictly), which must be about the serial number ``asked``."""
    check_fields(element, ("serial", "state", "user", "not-after", "revoked", "reason"))
    serial = parse_serial(required(element, "serial"))
    if serial != asked:
        raise errors.ServerVerificationFailed(f"asked about certificate {asked:x}, the registry answered about {serial:x}")
    state = required(element, "state")
    if state not in STATUS_STATES:
        raise errors.BadRequest(f"unknown certificate state {state!r}")
    user = element.get("user")
    if (user is None) != (state == "unknown") or (element.get("not-after") is None) != (state == "unknown"):
        raise errors.BadRequest("a status names the user and not-after exactly when the certificate is known")
    if user is not None:
        parse_identity(user)
        timestamp_attribute(element, "not-after")
    revoked = element.get("revoked")
    reason = element.get("reason")
    if (revoked is not None) != (state == "revoked") or (reason is not None) != (state == "revoked"):
        raise errors.BadRequest("a status gives revoked and reason exactly when the certificate is revoked")
    if revoked is not None:
        timestamp_attribute(element, "revoked")
    return CertificateStatus(serial=serial, state=state, user=user, revoked_at=revoked, reason=reason)
