"""Registry records and the server's signature over them.

The registry signs each public record (a user's directory entry, a user's addresses) when
it is written, and delivers the signature with every look-up. The signature covers a
canonical byte string built from the record's fields (never from XML), so any client can
rebuild it from the parsed answer:

    b"IRP-RECORD-V1\\x00" || field || field || ...

where each field is a 4-byte big-endian length followed by its UTF-8 bytes, and the first
field names the record kind. Records are signed with the registry's Ed25519 record-signing
key, whose certificate the domain's CA issues (see :mod:`irp.server.ca`).
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.identity import Identity
from irp.errors import InvalidArgument, ServerVerificationFailed
from irp.wire.messages import parse_decimal

DOMAIN_SEPARATOR = b"IRP-RECORD-V1\x00"

PRESENCE_STATES = ("online", "away", "busy", "offline")

MAX_ENDPOINTS = 8
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_NAME = 64
MAX_TEXT_FIELD = 256
MAX_ATTRIBUTE_VALUE = 1024


def _encode_fields(fields: Iterable[str]) -> bytes:
    parts = [DOMAIN_SEPARATOR]
    for text in fields:
        data = text.encode("utf-8")
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    return b"".join(parts)


@dataclass(frozen=True, order=True)
class Endpoint:
    """One address a user's agent listens on."""

    address: str
    port: int

    @classmethod
    def parse(cls, address: str, port: int | str) -> Endpoint:
        """Validate and normalise an IPv6 or IPv4 address and a TCP port, for registering.

        IPv4-mapped (``::ffff:192.0.2.1``) and IPv4-compatible (``::192.0.2.1``) IPv6
        addresses are refused: the IPv4 address itself is registered instead (and Python
        versions write such addresses differently, see gh-87799, while the record's
        signature covers the text).
        """
        ip = _check_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and (
            ip.ipv4_mapped is not None or (int(ip) >> 32 == 0 and int(ip) > 1)
        ):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            raise InvalidArgument(
                f"{address} is an IPv4 address written as IPv6: register {embedded} instead"
            )
        return cls(ip.compressed, _check_port(port))

    @classmethod
    def received(cls, address: str, port: str) -> Endpoint:
        """Validate an endpoint of a record received from a registry, keeping the address
        text exactly as sent: the record's signature covers that text."""
        _check_address(address)
        return cls(address, _check_port(port))

    @property
    def family(self) -> str:
        """``"ipv6"`` or ``"ipv4"``."""
        return "ipv6" if ":" in self.address else "ipv4"


def _check_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an endpoint address; refuse zones, multicast and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidArgument(f"{address!r} is not an IPv6 or IPv4 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # A zone (%eth0) means nothing off the registering host, and is free text.
        raise InvalidArgument("addresses with a zone (%...) cannot be registered")
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidArgument(f"{address} cannot be registered (multicast or unspecified)")
    return ip


def _check_port(port: int | str) -> int:
    """A TCP port, 1-65535 (as text: a wire integer, see :func:`irp.wire.messages.parse_decimal`)."""
    number = parse_decimal(port, 5) if isinstance(port, str) else port
    if not isinstance(number, int) or isinstance(number, bool):
        raise InvalidArgument(f"{port!r} is not a port number")
    if not 1 <= number <= 65535:
        raise InvalidArgument(f"port {number} is outside 1-65535")
    return number


@dataclass(frozen=True)
class AddressRecord:
    """A user's current addresses and presence, valid until ``expires_at``."""

    identity: Identity
    presence: str
    endpoints: tuple[Endpoint, ...]
    expires_at: int
    seq: int
    signed_at: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the registry signs."""
        return _encode_fields(
            [
                "addresses",
                str(self.identity),
                self.presence,
                str(self.expires_at),
                str(self.seq),
                str(self.signed_at),
                str(len(self.endpoints)),
                *(f"{endpoint.address} {endpoint.port}" for endpoint in self.endpoints),
            ]
        )

    def is_current(self, now: float) -> bool:
        """True if the record has not expired at ``now``."""
        return now < self.expires_at


@dataclass(frozen=True)
class UserRecord:
    """A user's public directory entry."""

    identity: Identity
    display_name: str
    email: str
    attributes: tuple[tuple[str, str], ...]
    seq: int
    signed_at: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the registry signs."""
        flattened: list[str] = []
        for name, value in self.attributes:
            flattened.extend((name, value))
        return _encode_fields(
            [
                "user",
                str(self.identity),
                self.display_name,
                self.email,
                str(self.seq),
                str(self.signed_at),
                str(len(self.attributes)),
                *flattened,
            ]
        )


@dataclass(frozen=True)
class CertificateInfo:
    """A certificate the registry holds for a user."""

    serial: int
    fingerprint: str
    username: str
    origin: str  # "issued" by this CA, or "external" (uploaded)
    not_before: int
    not_after: int
    issued_at: int
    revoked_at: int | None
    revocation_reason: str | None
    der: bytes

    def status(self, now: float) -> str:
        """``good``, ``revoked``, ``expired`` or ``not-yet-valid`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if now > self.not_after:
            return "expired"
        if now < self.not_before:
            return "not-yet-valid"
        return "good"

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_der_x509_certificate(self.der)


@dataclass(frozen=True)
class Pkcs12Info:
    """A PKCS#12 file held for a user (generated here or uploaded for escrow)."""

    id: int
    username: str
    label: str
    origin: str  # "generated" or "uploaded"
    certificate_serial: str | None
    created_at: int
    size: int
    data: bytes | None = None



Record = TypeVar("Record", AddressRecord, UserRecord)


def check_presence(presence: str) -> str:
    """Return ``presence`` if it is a known state, else raise InvalidArgument."""
    if presence not in PRESENCE_STATES:
        raise InvalidArgument(f"presence must be one of {', '.join(PRESENCE_STATES)}")
    return presence


def check_text_field(name: str, value: str, limit: int = MAX_TEXT_FIELD) -> str:
    """Refuse over-long or control-character text in a directory field."""
    if len(value) > limit:
        raise InvalidArgument(f"{name} is longer than {limit} characters")
    # All control characters (C0, DEL and C1, such as the one-byte CSI U+009B), tab apart:
    # these fields end up on other users' terminals.
    if any(unicodedata.category(character) == "Cc" and character != "\t" for character in value):
        raise InvalidArgument(f"{name} contains control characters")
    return value


def check_email(value: str) -> str:
    """Refuse an email address that is not empty, one text field with an ``@`` and no
    space (the registry does not otherwise judge addresses)."""
    check_text_field("email", value)
    if value and ("@" not in value or " " in value):
        raise InvalidArgument(f"{value!r} is not an email address")
    return value


def check_attributes(attributes: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Validate free attributes; return them sorted by name (names unique)."""
    result: dict[str, str] = {}
    for name, value in attributes:
        if not name or len(name) > MAX_ATTRIBUTE_NAME or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or not name.isascii():
            raise InvalidArgument(f"attribute name {name!r} must be 1-64 ASCII letters, digits, '-', '_' or '.'")
        if name in result:
            raise InvalidArgument(f"attribute {name!r} is given twice")
        result[name] = check_text_field(f"attribute {name}", value, MAX_ATTRIBUTE_VALUE)
    if len(result) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"at most {MAX_ATTRIBUTES} attributes are allowed")
    return tuple(sorted(result.items()))


#: The extended key usage of the registry's record-signing certificate (a UUID OID, X.667).
RECORD_SIGNING_OID = x509.ObjectIdentifier("2.25.177770641467619647013171859629156522888")


class RecordSigner:
    """Signs records with the registry's Ed25519 record-signing key."""

    def __init__(self, private_key: Ed25519PrivateKey, certificate: x509.Certificate) -> None:
        self.private_key = private_key
        self.certificate = certificate

    def sign(self, record: Record) -> Record:
        """Return ``record`` with its signature set."""
        signature = self.private_key.sign(record.signing_bytes())
        return replace(record, signature=signature)


@dataclass
class RecordVerifier:
    """Checks the registry's signature on records (client side)."""

    certificate: x509.Certificate
    _public_key: Ed25519PublicKey = field(init=False)

    def __post_init__(self) -> None:
        key = self.certificate.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ServerVerificationFailed("the record-signing certificate does not hold an Ed25519 key")
        self._public_key = key

    def verify(self, record: Record) -> Record:
        """Return ``record`` if its signature is valid, else raise ServerVerificationFailed."""
        try:
            self._public_key.verify(record.signature, record.signing_bytes())
        except InvalidSignature:
            raise ServerVerificationFailed(
                f"the registry's signature on the record for {record.identity} is not valid"
            ) from None
        return record
