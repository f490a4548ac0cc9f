"""XML forms of the registry's records, both directions (sans-I/O).

Servers build elements with the ``*_element`` functions; clients parse them back with the
``parse_*`` functions, which are strict (unknown fields are refused) so that a record a
client verifies is exactly the record it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from common.endpoint import InvalidEndpoint
from common.identity import Identity, InvalidIdentity
from common.integers import parse_decimal
from common.pki.certificates import UnusableCertificate, load_certificate
from common.timeutil import format_timestamp, parse_timestamp
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.wire.fields import (
    FIELDS,
    bool_text,
    check_fields,
    child_text,
    decode_base64,
    encode_base64,
    parse_serial,
    required,
)
from irp.wire.records import AddressRecord, CertificateInfo, Endpoint, Pkcs12Info, UserRecord


def parse_identity(text: str) -> Identity:
    """An identity from an answer (bad-request if malformed)."""
    try:
        return Identity.parse(text)
    except InvalidIdentity as error:
        raise errors.BadRequest(str(error)) from None


def timestamp_attribute(element: Element, name: str) -> int:
    """A required RFC 3339 timestamp attribute (ASCII digits only), as POSIX seconds."""
    text = required(element, name)
    try:
        if not text.isascii():
            raise ValueError(f"invalid timestamp {text!r}: expected YYYY-MM-DDTHH:MM:SSZ")
        return parse_timestamp(text)
    except ValueError as error:
        raise errors.BadRequest(str(error)) from None


def int_attribute(element: Element, name: str) -> int:
    """A required non-negative integer attribute (ASCII digits, at most 19)."""
    number = parse_decimal(required(element, name), 19)
    if number is None:
        raise errors.BadRequest(FIELDS.messages.not_decimal.format(name=name))
    return number


# -- user entries -------------------------------------------------------------------


@dataclass(frozen=True)
class AccountView:
    """Private account settings, shown only to the user and administrators."""

    is_admin: bool
    password_login: bool
    has_password: bool
    created_at: int
    updated_at: int


def user_element(record: UserRecord, account: AccountView | None = None) -> Element:
    """``<user>``: a signed public entry, plus ``<account>`` for the user or an admin."""
    element = make_element(
        "user",
        {
            "id": str(record.identity),
            "display-name": record.display_name,
            "email": record.email,
            "seq": str(record.seq),
            "signed-at": format_timestamp(record.signed_at),
            "signature": encode_base64(record.signature),
        },
    )
    for name, value in record.attributes:
        sub_element(element, "attribute", {"name": name}, value)
    if account is not None:
        sub_element(
            element,
            "account",
            {
                "admin": bool_text(account.is_admin),
                "password-login": bool_text(account.password_login),
                "has-password": bool_text(account.has_password),
                "created": format_timestamp(account.created_at),
                "updated": format_timestamp(account.updated_at),
            },
        )
    return element


def parse_user(element: Element) -> tuple[UserRecord, AccountView | None]:
    """Parse ``<user>`` into its record and, when present, the account view."""
    check_fields(element, ("id", "display-name", "email", "seq", "signed-at", "signature"), ("attribute", "account"))
    attributes = []
    account = None
    for child in element:
        if child.tag == "attribute":
            check_fields(child, ("name",), text=True)
            attributes.append((required(child, "name"), child.text or ""))
        elif account is None:
            check_fields(child, ("admin", "password-login", "has-password", "created", "updated"))
            account = AccountView(
                is_admin=required(child, "admin") == "true",
                password_login=required(child, "password-login") == "true",
                has_password=required(child, "has-password") == "true",
                created_at=timestamp_attribute(child, "created"),
                updated_at=timestamp_attribute(child, "updated"),
            )
        else:
            raise errors.BadRequest("<user> has more than one <account>")
    record = UserRecord(
        identity=parse_identity(required(element, "id")),
        display_name=required(element, "display-name"),
        email=required(element, "email"),
        attributes=tuple(attributes),
        seq=int_attribute(element, "seq"),
        signed_at=timestamp_attribute(element, "signed-at"),
        signature=decode_base64(required(element, "signature"), "signature"),
    )
    return record, account


# -- addresses ----------------------------------------------------------------------


def addresses_element(record: AddressRecord) -> Element:
    """``<addresses>``: a user's signed addresses and presence."""
    element = make_element(
        "addresses",
        {
            "id": str(record.identity),
            "presence": record.presence,
            "expires": format_timestamp(record.expires_at),
            "seq": str(record.seq),
            "signed-at": format_timestamp(record.signed_at),
            "signature": encode_base64(record.signature),
        },
    )
    for endpoint in record.endpoints:
        sub_element(element, "endpoint", {"address": endpoint.address, "port": str(endpoint.port)})
    return element


def parse_addresses(element: Element) -> AddressRecord:
    """Parse ``<addresses>``."""
    check_fields(element, ("id", "presence", "expires", "seq", "signed-at", "signature"), ("endpoint",))
    endpoints = []
    for child in element:
        check_fields(child, ("address", "port"))
        try:
            # Exactly as sent: the signature covers the address text, which another
            # Python version could format differently if it were normalised here.
            endpoints.append(Endpoint.received(required(child, "address"), required(child, "port")))
        except InvalidEndpoint as error:
            raise errors.BadRequest(error.message) from None
    return AddressRecord(
        identity=parse_identity(required(element, "id")),
        presence=required(element, "presence"),
        endpoints=tuple(endpoints),
        expires_at=timestamp_attribute(element, "expires"),
        seq=int_attribute(element, "seq"),
        signed_at=timestamp_attribute(element, "signed-at"),
        signature=decode_base64(required(element, "signature"), "signature"),
    )


# -- certificates -------------------------------------------------------------------


def pem_text(certificate: x509.Certificate) -> str:
    """PEM text of a certificate."""
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def certificate_element(info: CertificateInfo, domain: str, now: float, *, with_pem: bool) -> Element:
    """``<certificate>``: one certificate's metadata and, optionally, its PEM."""
    attributes = {
        "serial": format(info.serial, "x"),
        "fingerprint": info.fingerprint,
        "user": f"{info.username}@{domain}",
        "origin": info.origin,
        "status": info.status(now),
        "not-before": format_timestamp(info.not_before),
        "not-after": format_timestamp(info.not_after),
        "issued": format_timestamp(info.issued_at),
    }
    if info.revoked_at is not None:
        attributes["revoked"] = format_timestamp(info.revoked_at)
        attributes["reason"] = info.revocation_reason or "unspecified"
    element = make_element("certificate", attributes)
    if with_pem:
        sub_element(element, "pem", None, pem_text(info.certificate))
    return element


@dataclass(frozen=True)
class CertificateEntry:
    """A certificate as a client sees it in a listing or download."""

    serial: int
    fingerprint: str
    user: Identity
    origin: str
    status: str
    not_before: int
    not_after: int
    issued_at: int
    revoked_at: int | None
    reason: str | None
    certificate: x509.Certificate | None


def parse_certificate(element: Element) -> CertificateEntry:
    """Parse ``<certificate>``."""
    check_fields(
        element,
        ("serial", "fingerprint", "user", "origin", "status", "not-before", "not-after", "issued", "revoked", "reason"),
        ("pem",),
    )
    pem = child_text(element, "pem", required_child=False)
    certificate = None
    if pem is not None:
        try:
            certificate = load_certificate(pem.encode("ascii", "replace"))
        except UnusableCertificate:
            raise errors.BadRequest("<pem> does not hold a usable PEM certificate") from None
    revoked = element.get("revoked")
    return CertificateEntry(
        serial=parse_serial(required(element, "serial")),
        fingerprint=required(element, "fingerprint"),
        user=parse_identity(required(element, "user")),
        origin=required(element, "origin"),
        status=required(element, "status"),
        not_before=timestamp_attribute(element, "not-before"),
        not_after=timestamp_attribute(element, "not-after"),
        issued_at=timestamp_attribute(element, "issued"),
        revoked_at=None if revoked is None else timestamp_attribute(element, "revoked"),
        reason=element.get("reason"),
        certificate=certificate,
    )


# -- PKCS#12 files ------------------------------------------------------------------


def pkcs12_element(info: Pkcs12Info, domain: str) -> Element:
    """``<pkcs12>``: a stored PKCS#12 file, with ``<data>`` when it carries the bytes."""
    element = make_element(
        "pkcs12",
        {
            "id": str(info.id),
            "user": f"{info.username}@{domain}",
            "label": info.label,
            "origin": info.origin,
            "created": format_timestamp(info.created_at),
            "size": str(info.size),
            "certificate-serial": info.certificate_serial,
        },
    )
    if info.data is not None:
        sub_element(element, "data", None, encode_base64(info.data))
    return element


def parse_pkcs12(element: Element) -> Pkcs12Info:
    """Parse ``<pkcs12>`` (``data`` is None when the element carries no bytes)."""
    check_fields(element, ("id", "user", "label", "origin", "created", "size", "certificate-serial"), ("data",))
    text = child_text(element, "data", required_child=False, limit=1 << 20)
    return Pkcs12Info(
        id=int_attribute(element, "id"),
        username=parse_identity(required(element, "user")).username,
        label=required(element, "label"),
        origin=required(element, "origin"),
        certificate_serial=element.get("certificate-serial"),
        created_at=timestamp_attribute(element, "created"),
        size=int_attribute(element, "size"),
        data=None if text is None else decode_base64(text, "PKCS#12 data"),
    )
