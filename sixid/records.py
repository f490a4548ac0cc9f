"""The signed structures of sixid: a device's registration and the registry's record
(sans-I/O; byte layouts in docs/sixid.rst).

Every field is ``F(b) = uint32_be(len(b)) || b``; text is UTF-8; integers are decimal ASCII
without sign or leading zeros. Parsing is strict: the exact prefix, canonical decimals,
canonical texts (domain, ID, endpoint addresses), the announced count of endpoints, no
byte after the last field; anything else is :class:`~sixid.errors.MalformedRecord`.

* A **registration** is what the ID's key signs: the domain, the ID, a sequence number,
  when it was signed, when it expires and 0 to 8 endpoints.
* A **record** is what the registry signs with its Ed25519 record-signing key: the domain,
  the ID, the owner (a user of the domain whose CA certified the key, or nobody), when the
  registry accepted it, and the registration with the device's key and signature.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.endpoint import Endpoint, InvalidEndpoint
from common.identity import Identity, InvalidIdentity, check_domain
from common.integers import parse_decimal
from common.pki import errors as pki_errors
from common.pki.keyfiles import PrivateKey
from common.pki.keys import AcceptedPublicKey, check_public_key, sign, verify_signature
from sixid import errors
from sixid.ids import InvalidSixId, SixId, SixIdAddress, id_of_spki, spki_der

REGISTRATION_PREFIX: Final = b"SIXID-REGISTRATION-V1\x00"
RECORD_PREFIX: Final = b"SIXID-RECORD-V1\x00"
#: Endpoints in one registration.
MAX_ENDPOINTS: Final = 8
#: The largest seq, signed_at, expires and accepted_at (a signed 64-bit integer).
MAX_INTEGER: Final = 2**63 - 1
#: The largest DER SubjectPublicKeyInfo (an RSA key of 8192 bits takes 1,062 bytes).
MAX_SPKI: Final = 1100
#: The largest device signature (RSA-PSS with an 8192-bit key: 1,024 bytes).
MAX_DEVICE_SIGNATURE: Final = 1024
#: The largest registration (8 endpoints of the longest IPv6 text, a 253-byte domain).
MAX_REGISTRATION: Final = 1024
#: The registry's signature: Ed25519.
REGISTRY_SIGNATURE_SIZE: Final = 64
#: The largest signed record.
MAX_RECORD: Final = 4096

_LENGTH = struct.Struct(">I")
_MAX_DIGITS = 19  # 2^63 - 1 has 19 digits


def field_bytes(value: bytes) -> bytes:
    """``F(value)``: its length as 4 big-endian bytes, then the value."""
    return _LENGTH.pack(len(value)) + value


def _fields(*values: bytes) -> bytes:
    return b"".join(field_bytes(value) for value in values)


class _Reader:
    """Reads ``F`` fields off signed bytes, strictly (MalformedRecord)."""

    def __init__(self, data: bytes, prefix: bytes, what: str) -> None:
        self.what = what
        if not isinstance(data, bytes | bytearray) or not bytes(data).startswith(prefix):
            raise errors.MalformedRecord(f"{what} does not start with {prefix[:-1].decode()}")
        self.data = bytes(data)
        self.offset = len(prefix)

    def take(self, name: str, limit: int) -> bytes:
        """The next field (at most ``limit`` bytes)."""
        end = self.offset + _LENGTH.size
        if end > len(self.data):
            raise errors.MalformedRecord(f"{self.what} ends before its field {name}")
        (length,) = _LENGTH.unpack_from(self.data, self.offset)
        if length > limit:
            raise errors.MalformedRecord(f"{self.what}'s field {name} is longer than {limit} bytes")
        if end + length > len(self.data):
            raise errors.MalformedRecord(f"{self.what}'s field {name} runs past its end")
        self.offset = end + length
        return self.data[end : self.offset]

    def text(self, name: str, limit: int) -> str:
        """The next field as UTF-8 text."""
        try:
            return self.take(name, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.MalformedRecord(f"{self.what}'s field {name} is not UTF-8") from None

    def integer(self, name: str, low: int, high: int = MAX_INTEGER) -> int:
        """The next field as a canonical decimal from ``low`` to ``high``."""
        value = parse_decimal(self.text(name, _MAX_DIGITS), _MAX_DIGITS)
        if value is None:
            raise errors.MalformedRecord(
                f"{self.what}'s field {name} is not a decimal integer without sign or leading zeros"
            )
        if not low <= value <= high:
            raise errors.MalformedRecord(f"{self.what}'s field {name} must be from {low} to {high}")
        return value

    def end(self) -> None:
        """No byte may follow the last field."""
        if self.offset != len(self.data):
            raise errors.MalformedRecord(f"{self.what} has {len(self.data) - self.offset} bytes after its last field")


def _domain(text: str, what: str) -> str:
    try:
        canonical: str | None = check_domain(text)
    except InvalidIdentity:
        canonical = None
    if canonical != text:
        raise errors.MalformedRecord(f"{what}'s domain is not a domain name in canonical form (lower case, no final dot)")
    return text


def _sixid(text: str, what: str) -> SixId:
    try:
        return SixId.from_canonical(text)
    except InvalidSixId:
        raise errors.MalformedRecord(f"{what}'s ID is not 32 characters of a-z and 2-7") from None


def endpoint_text(endpoint: Endpoint) -> str:
    """``"<address> <port>"``, as a registration carries an endpoint."""
    return f"{endpoint.address} {endpoint.port}"


def parse_endpoint_text(text: str) -> Endpoint:
    """An endpoint of a registration: canonical address text, one space, a port 1..65535;
    else MalformedRecord."""
    address, space, port = text.partition(" ")
    try:
        if not space:
            raise InvalidEndpoint("no port")
        endpoint = Endpoint.parse(address, port)
    except InvalidEndpoint as error:
        raise errors.MalformedRecord(f"the endpoint {text[:60]!r} is not acceptable: {error.message}") from None
    if endpoint_text(endpoint) != text:
        raise errors.MalformedRecord(f"the endpoint {text[:60]!r} is not in canonical form ({endpoint_text(endpoint)!r})")
    return endpoint


# -- the registration -------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What a device signs: where the ID can be reached, from ``signed_at`` to ``expires``.

    ``seq`` is 1 .. 2^63-1 and must grow with every registration of the ID; no endpoint
    (a withdrawal) means "not reachable now".
    """

    domain: str
    sixid: SixId
    seq: int
    signed_at: int
    expires: int
    endpoints: tuple[Endpoint, ...] = ()

    def to_bytes(self) -> bytes:
        """The signed bytes; MalformedRecord if a value breaks the rules."""
        _domain(self.domain, "the registration")
        _check_integer(self.seq, "seq", 1)
        _check_integer(self.signed_at, "signed_at", 0)
        _check_integer(self.expires, "expires", 0)
        if len(self.endpoints) > MAX_ENDPOINTS:
            raise errors.MalformedRecord(f"a registration holds at most {MAX_ENDPOINTS} endpoints")
        texts = [endpoint_text(endpoint) for endpoint in self.endpoints]
        for text in texts:
            parse_endpoint_text(text)
        if len(set(texts)) != len(texts):
            raise errors.MalformedRecord("a registration may not name an endpoint twice")
        data = REGISTRATION_PREFIX + _fields(
            self.domain.encode(),
            str(self.sixid).encode(),
            str(self.seq).encode(),
            str(self.signed_at).encode(),
            str(self.expires).encode(),
            str(len(texts)).encode(),
            *(text.encode() for text in texts),
        )
        if len(data) > MAX_REGISTRATION:
            raise errors.MalformedRecord(f"a registration may be at most {MAX_REGISTRATION} bytes")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Registration:
        """Parse signed registration bytes strictly; else MalformedRecord."""
        what = "the registration"
        if len(data) > MAX_REGISTRATION:
            raise errors.MalformedRecord(f"a registration may be at most {MAX_REGISTRATION} bytes")
        reader = _Reader(data, REGISTRATION_PREFIX, what)
        domain = _domain(reader.text("domain", 253), what)
        sixid = _sixid(reader.text("sixid", 32), what)
        seq = reader.integer("seq", 1)
        signed_at = reader.integer("signed_at", 0)
        expires = reader.integer("expires", 0)
        count = reader.integer("count", 0, MAX_ENDPOINTS)
        endpoints = tuple(parse_endpoint_text(reader.text(f"endpoint {index + 1}", 64)) for index in range(count))
        reader.end()
        if len(set(endpoints)) != len(endpoints):
            raise errors.MalformedRecord("a registration may not name an endpoint twice")
        return cls(domain, sixid, seq, signed_at, expires, endpoints)


def _check_integer(value: int, name: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_INTEGER:
        raise errors.MalformedRecord(f"the registration's {name} must be an integer from {low} to {MAX_INTEGER}")


def load_spki(spki: bytes) -> AcceptedPublicKey:
    """The public key of a DER SubjectPublicKeyInfo, which must be canonical (it
    re-serialises to the same bytes) and pass the key policy; else InvalidArgument."""
    if not 0 < len(spki) <= MAX_SPKI:
        raise errors.InvalidArgument(f"the key must be a DER SubjectPublicKeyInfo of at most {MAX_SPKI} bytes")
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError, NotImplementedError):
        raise errors.InvalidArgument("the key is not a DER SubjectPublicKeyInfo") from None
    try:
        accepted = check_public_key(key)
    except pki_errors.PKIError as error:
        raise errors.from_pki(error, about="the key is refused") from None
    if spki_der(accepted) != spki:
        raise errors.InvalidArgument("the key's SubjectPublicKeyInfo is not in canonical DER")
    return accepted


@dataclass(frozen=True)
class SignedRegistration:
    """A registration, the device's key (DER SPKI) and its signature over the bytes, and
    optionally the certificate chain (DER, leaf first) of the domain's CA for that key."""

    registration_bytes: bytes = field(repr=False)
    spki: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    certificates: tuple[bytes, ...] = field(default=(), repr=False)

    @functools.cached_property
    def registration(self) -> Registration:
        """The registration parsed (MalformedRecord)."""
        return Registration.from_bytes(self.registration_bytes)

    def public_key(self) -> AcceptedPublicKey:
        """The device's key; InvalidArgument if it is not a canonical SPKI or the key
        policy refuses it."""
        return load_spki(self.spki)

    def verify(self) -> Registration:
        """Check the registration parses (MalformedRecord), the key passes the key policy
        and hashes to the registration's ID (InvalidArgument), and the signature verifies
        (BadSignature); return the registration."""
        registration = self.registration
        key = self.public_key()
        if id_of_spki(self.spki) != registration.sixid:
            raise errors.InvalidArgument("the key does not match the ID: the ID is not the hash of this key")
        if not 0 < len(self.signature) <= MAX_DEVICE_SIGNATURE or not verify_signature(key, self.signature, self.registration_bytes):
            raise errors.BadSignature("the device signature over the registration does not verify with its key")
        return registration


def sign_registration(
    private_key: PrivateKey, registration: Registration, certificates: Sequence[bytes] = ()
) -> SignedRegistration:
    """Sign ``registration`` with the ID's private key (the key must hash to the ID:
    InvalidArgument otherwise)."""
    spki = spki_der(private_key.public_key())
    if id_of_spki(spki) != registration.sixid:
        raise errors.InvalidArgument("the key does not match the registration's ID")
    data = registration.to_bytes()
    return SignedRegistration(data, spki, sign(private_key, data), tuple(certificates))


# -- the record -------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What the registry signs: a registration it accepted, with its key and signature."""

    domain: str
    sixid: SixId
    owner: str
    accepted_at: int
    registration_bytes: bytes = field(repr=False)
    spki: bytes = field(repr=False)
    device_signature: bytes = field(repr=False)

    def signing_bytes(self) -> bytes:
        """``record_tbs``: the bytes the registry signs."""
        return RECORD_PREFIX + _fields(
            self.domain.encode(),
            str(self.sixid).encode(),
            self.owner.encode(),
            str(self.accepted_at).encode(),
            self.registration_bytes,
            self.spki,
            self.device_signature,
        )


@dataclass(frozen=True)
class SignedRecord:
    """A record and the registry's Ed25519 signature over its signing bytes."""

    record: Record
    signature: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """``record_tbs || F(signature)``."""
        return self.record.signing_bytes() + field_bytes(self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRecord:
        """Parse a signed record strictly (the registration inside it too); else
        MalformedRecord."""
        what = "the record"
        if len(data) > MAX_RECORD:
            raise errors.MalformedRecord(f"a record may be at most {MAX_RECORD} bytes")
        reader = _Reader(data, RECORD_PREFIX, what)
        domain = _domain(reader.text("domain", 253), what)
        sixid = _sixid(reader.text("sixid", 32), what)
        owner = reader.text("owner", 320)
        if owner:
            try:
                Identity.parse(owner)
            except InvalidIdentity:
                raise errors.MalformedRecord("the record's owner is not a user identity (user@domain)") from None
        accepted_at = reader.integer("accepted_at", 0)
        registration_bytes = reader.take("registration", MAX_REGISTRATION)
        Registration.from_bytes(registration_bytes)
        spki = reader.take("spki", MAX_SPKI)
        device_signature = reader.take("device_signature", MAX_DEVICE_SIGNATURE)
        signature = reader.take("registry_signature", REGISTRY_SIGNATURE_SIZE)
        reader.end()
        if len(signature) != REGISTRY_SIGNATURE_SIZE:
            raise errors.MalformedRecord(f"the registry's signature must be {REGISTRY_SIGNATURE_SIZE} bytes (Ed25519)")
        record = Record(domain, sixid, owner, accepted_at, registration_bytes, spki, device_signature)
        return cls(record, signature)


def sign_record(signing_key: Ed25519PrivateKey, record: Record) -> SignedRecord:
    """The registry's signature over ``record``."""
    return SignedRecord(record, signing_key.sign(record.signing_bytes()))


@dataclass(frozen=True)
class VerifiedRecord:
    """A record that verified: where ``address`` can be reached, until ``expires``."""

    address: SixIdAddress
    owner: Identity | None
    seq: int
    signed_at: int
    expires: int
    accepted_at: int
    endpoints: tuple[Endpoint, ...]
    spki: bytes = field(repr=False)
    #: The signed record bytes.
    data: bytes = field(repr=False)


def verify_record(data: bytes, *, expected: SixIdAddress, signer: Ed25519PublicKey, now: float) -> VerifiedRecord:
    """Check a signed record received for ``expected`` and return what it says.

    In order: it parses; the registry's signature verifies with ``signer``; the record's
    domain and ID, and the registration's, are ``expected``'s; the owner, if any, is a user
    of that domain; the key passes the key policy and hashes to the ID; the device
    signature verifies; ``now`` is before the registration's expiry. Each failure is
    :class:`~sixid.errors.VerificationFailed` with a sentence naming it.
    """
    try:
        signed = SignedRecord.from_bytes(data)
        registration = Registration.from_bytes(signed.record.registration_bytes)
    except errors.MalformedRecord as error:
        raise errors.VerificationFailed(f"the record does not parse: {error.message}") from None
    record = signed.record
    try:
        signer.verify(signed.signature, record.signing_bytes())
    except InvalidSignature:
        raise errors.VerificationFailed("the registry's signature over the record does not verify") from None
    if record.domain != expected.domain or registration.domain != expected.domain:
        raise errors.VerificationFailed(f"the record is not of the domain {expected.domain}")
    if record.sixid != expected.sixid or registration.sixid != expected.sixid:
        raise errors.VerificationFailed(f"the record is not of the ID {expected.sixid}")
    owner = None
    if record.owner:
        owner = Identity.parse(record.owner)
        if owner.domain != expected.domain:
            raise errors.VerificationFailed(f"the record's owner {owner} is not a user of {expected.domain}")
    try:
        key = load_spki(record.spki)
    except errors.SixidError as error:
        raise errors.VerificationFailed(f"the record's key is refused: {error.message}") from None
    if id_of_spki(record.spki) != expected.sixid:
        raise errors.VerificationFailed("the record's key does not hash to its ID")
    if not verify_signature(key, record.device_signature, record.registration_bytes):
        raise errors.VerificationFailed("the device signature over the registration does not verify")
    if not now < registration.expires:
        raise errors.VerificationFailed("the record has expired")
    return VerifiedRecord(
        address=expected,
        owner=owner,
        seq=registration.seq,
        signed_at=registration.signed_at,
        expires=registration.expires,
        accepted_at=record.accepted_at,
        endpoints=registration.endpoints,
        spki=record.spki,
        data=bytes(data),
    )
