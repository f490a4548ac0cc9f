"""The OCSP responder's core (RFC 6960): requests parsed and checked, answers decided and
signed. No I/O and no Twisted: the caller looks the certificate up (see
:mod:`irp.server.http.responder`).

The profile (docs/http.rst, "OCSP"): one CertID per request (several are refused with
``malformedRequest``: cryptography, like most responders, answers one); SHA-1 or SHA-256
CertIDs; a nonce of 1 to 32 octets (RFC 8954) is echoed; a CertID naming an issuer this
registry does not run is refused with ``unauthorized``; responses are signed by the
issuer's delegated responder certificate, which they carry, and name it by key hash.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from functools import cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from common.pki.certificates import issuing_crl_name
from common.pki.keyfiles import PrivateKey
from common.pki.keys import signature_hash
from irp.server.ca.issuance import subject_key_identifier

#: Largest OCSP request accepted, DER (a request for one certificate is about 100 bytes).
MAX_OCSP_REQUEST = 16 * 1024
#: Longest nonce accepted, in octets (RFC 8954: 1 to 32).
MAX_NONCE = 32
#: How long a response is good for at most (its nextUpdate - thisUpdate).
RESPONSE_LIFETIME = datetime.timedelta(hours=1)

#: CertID hash algorithms answered, by cryptography's name.
HASH_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}


class OCSPRefusal(Exception):
    """A request answered with an unsuccessful response status (no signature), and why
    (for the log line)."""

    def __init__(self, status: ocsp.OCSPResponseStatus, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(frozen=True)
class Query:
    """One parsed OCSP request: its single CertID and its nonce."""

    algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    nonce: bytes | None = None

    @property
    def cert_id(self) -> tuple[str, bytes, bytes, int]:
        """The CertID, as a key (the same CertID gets the same cached answer)."""
        return (self.algorithm, self.issuer_name_hash, self.issuer_key_hash, self.serial)


@dataclass(frozen=True)
class Status:
    """What the registry knows of a certificate: good, revoked (when, why) or unknown."""

    status: ocsp.OCSPCertStatus
    revoked_at: datetime.datetime | None = None
    reason: x509.ReasonFlags | None = None


GOOD = Status(ocsp.OCSPCertStatus.GOOD)
UNKNOWN = Status(ocsp.OCSPCertStatus.UNKNOWN)


@dataclass(frozen=True)
class Responder:
    """One issuing CA and its delegated responder certificate and key."""

    issuer: x509.Certificate
    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def label(self) -> str:
        """The issuer's name in URLs (``issuing-<16 hex>``)."""
        return issuing_crl_name(self.issuer)

    def matches(self, query: Query) -> bool:
        """Whether ``query``'s CertID names this issuer (its name and key hashes)."""
        name_hash, key_hash = _issuer_hashes(self.issuer, query.algorithm)
        return query.issuer_name_hash == name_hash and query.issuer_key_hash == key_hash

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether ``certificate`` was signed by this issuer (see :func:`issued_by`)."""
        return issued_by(certificate, self.issuer)


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``certificate`` names ``issuer`` as its issuer: its subject, and its key
    identifier when the certificate states one."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        identifier = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return True
    own = subject_key_identifier(issuer).digest
    return identifier.key_identifier in (None, own)


@cache
def _issuer_hashes(issuer: x509.Certificate, algorithm: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of ``issuer`` with ``algorithm`` (RFC 6960 4.1.1:
    the hash of the DER subject, and of the public key's BIT STRING contents)."""
    name = issuer.subject.public_bytes()
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    bits = _subject_public_key_bits(spki)
    return hashlib.new(algorithm, name).digest(), hashlib.new(algorithm, bits).digest()


def _subject_public_key_bits(spki: bytes) -> bytes:
    """The contents (after the unused-bits octet) of the subjectPublicKey BIT STRING of a
    DER SubjectPublicKeyInfo: SEQUENCE { AlgorithmIdentifier, BIT STRING }."""
    _outer_end, inside = _element(spki, 0)
    algorithm_end, _algorithm = _element(spki, inside)
    bits_end, bits = _element(spki, algorithm_end)
    return spki[bits + 1 : bits_end]


def _element(der: bytes, offset: int) -> tuple[int, int]:
    """(end, start of the contents) of the DER element at ``offset``."""
    length = der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    return start + length, start


def parse_request(der: bytes) -> Query:
    """The one CertID and the nonce of a DER OCSP request; :class:`OCSPRefusal`
    (``malformedRequest``) for anything else: not DER, too large, several CertIDs, a hash
    algorithm other than SHA-1 or SHA-256, a nonce longer than 32 octets or empty."""
    malformed = ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    if len(der) > MAX_OCSP_REQUEST:
        raise OCSPRefusal(malformed, f"the request is larger than {MAX_OCSP_REQUEST} bytes")
    if not der:
        raise OCSPRefusal(malformed, "the request is empty")
    try:
        request = ocsp.load_der_ocsp_request(der)
    except (ValueError, NotImplementedError) as error:
        why = "it asks about more than one certificate" if "more than one" in str(error) else "it is not a DER OCSP request"
        raise OCSPRefusal(malformed, f"the request is malformed: {why}") from None
    try:
        algorithm = request.hash_algorithm.name
    except UnsupportedAlgorithm:
        algorithm = "unsupported"
    if algorithm not in HASH_ALGORITHMS:
        raise OCSPRefusal(malformed, "the request's CertID hash is neither SHA-1 nor SHA-256")
    try:
        extensions = request.extensions
        nonce_extension = extensions.get_extension_for_class(x509.OCSPNonce)
        nonce: bytes | None = nonce_extension.value.nonce
    except x509.ExtensionNotFound:
        nonce = None
    except ValueError:
        raise OCSPRefusal(malformed, "the request's extensions are malformed") from None
    if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE:
        raise OCSPRefusal(malformed, f"the request's nonce is not 1 to {MAX_NONCE} octets long")
    return Query(algorithm, request.issuer_name_hash, request.issuer_key_hash, request.serial_number, nonce)


def find_responder(query: Query, responders: list[Responder]) -> Responder:
    """The responder of the issuer ``query`` names; :class:`OCSPRefusal` (``unauthorized``)
    when this registry runs no such issuing CA."""
    for responder in responders:
        if responder.matches(query):
            return responder
    raise OCSPRefusal(
        ocsp.OCSPResponseStatus.UNAUTHORIZED, "the request names an issuer this registry does not run"
    )


def next_update(this_update: datetime.datetime, crl_lifetime: datetime.timedelta) -> datetime.datetime:
    """A response's nextUpdate: :data:`RESPONSE_LIFETIME` after ``this_update``, or the
    issuing CRL's lifetime if that is shorter (a response never promises more than a CRL)."""
    return this_update + min(RESPONSE_LIFETIME, crl_lifetime)


def sign_response(
    query: Query,
    responder: Responder,
    status: Status,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
) -> bytes:
    """The DER ``successful`` response for ``query``, signed by ``responder``'s delegated
    certificate (which it carries), echoing the nonce if the request had one."""
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=query.issuer_name_hash,
            issuer_key_hash=query.issuer_key_hash,
            serial_number=query.serial,
            algorithm=HASH_ALGORITHMS[query.algorithm](),
            cert_status=status.status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=status.revoked_at,
            revocation_reason=status.reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.certificate)
        .certificates([responder.certificate])
    )
    if query.nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)
    response = builder.sign(responder.key, signature_hash(responder.key))
    return response.public_bytes(serialization.Encoding.DER)


@cache
def refusal_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """The DER unsuccessful response with ``status`` (unsigned, as RFC 6960 says)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
