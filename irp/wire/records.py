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

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.endpoint import Endpoint
from common.identity import Identity
from irp.errors import InvalidArgument, ServerVerificationFailed

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
