"""The OCSP core and the responder's status and caching rules, with real keys and a fake
status source (no database, no network)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from irp.errors import Unavailable
from irp.server.ca import CertificateAuthority, generate_key
from irp.server.http.credentials import responder_certificate
from irp.server.http.ocsp import (
    MAX_OCSP_REQUEST,
    OCSPRefusal,
    Responder,
    find_responder,
    parse_request,
    refusal_response,
    sign_response,
)
from irp.server.http.responder import OCSPResponder
from irp.wire.records import CertificateInfo

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def make_ca() -> tuple[CertificateAuthority, Responder]:
    ca = CertificateAuthority.create("example.org", key_type="p256", now=lambda: NOW)
    key = generate_key("p256")
    certificate = responder_certificate("example.org", ca.issuing_certificate, ca.issuing_key, key.public_key(), NOW)
    return ca, Responder(ca.issuing_certificate, certificate, key)


def user_certificate(ca: CertificateAuthority, name: str = "alice") -> x509.Certificate:
    return ca.issue_user_certificate(Identity(name, "example.org"), generate_key("p256").public_key())


def request_for(
    certificate: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, algorithm or hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 128:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _contents(der: bytes) -> bytes:
    length = der[1]
    start = 2
    if length & 0x80:
        start += length & 0x7F
    return der[start:]


def two_cert_ids(single: bytes) -> bytes:
    """A request asking about its one CertID twice (cryptography builds only one)."""
    tbs = _contents(single)  # OCSPRequest -> TBSRequest
    request_list = _contents(tbs)  # TBSRequest -> requestList (the only field here)
    entries = _contents(request_list)  # requestList -> Request
    return _der(0x30, _der(0x30, _der(0x30, entries + entries)))


class ParseTests(TestCase):
    """What requests are accepted, and the refusal of the others."""

    def setUp(self) -> None:
        self.ca, self.responder = make_ca()
        self.certificate = user_certificate(self.ca)

    def assertRefused(self, der: bytes, status: ocsp.OCSPResponseStatus, words: str) -> None:
        with self.assertRaises(OCSPRefusal) as caught:
            parse_request(der)
        self.assertEqual(caught.exception.status, status)
        self.assertIn(words, caught.exception.why)

    def test_sha256_with_nonce(self) -> None:
        """The CertID, its hash and the nonce are read."""
        query = parse_request(request_for(self.certificate, self.ca.issuing_certificate, nonce=b"n" * 16))
        self.assertEqual((query.algorithm, query.serial, query.nonce), ("sha256", self.certificate.serial_number, b"n" * 16))
        self.assertIs(find_responder(query, [self.responder]), self.responder)

    def test_sha1(self) -> None:
        """SHA-1 CertIDs (openssl ocsp's default) are answered."""
        query = parse_request(request_for(self.certificate, self.ca.issuing_certificate, hashes.SHA1()))
        self.assertEqual((query.algorithm, query.nonce), ("sha1", None))
        self.assertIs(find_responder(query, [self.responder]), self.responder)

    def test_other_hash(self) -> None:
        """A SHA-384 CertID is malformedRequest."""
        der = request_for(self.certificate, self.ca.issuing_certificate, hashes.SHA384())
        self.assertRefused(der, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "neither SHA-1 nor SHA-256")

    def test_garbage(self) -> None:
        """Bytes that are not a DER OCSP request, nothing, or too much: malformedRequest."""
        malformed = ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        self.assertRefused(b"\x30\x03\x02\x01\x00", malformed, "not a DER OCSP request")
        self.assertRefused(b"GET / HTTP/1.1\r\n", malformed, "not a DER OCSP request")
        self.assertRefused(b"", malformed, "empty")
        self.assertRefused(b"\x30" * (MAX_OCSP_REQUEST + 1), malformed, "larger than")

    def test_several_cert_ids(self) -> None:
        """A request about two certificates is malformedRequest (one CertID per request)."""
        der = two_cert_ids(request_for(self.certificate, self.ca.issuing_certificate))
        self.assertRefused(der, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "more than one certificate")

    def test_long_nonce(self) -> None:
        """A nonce over 32 octets is malformedRequest (RFC 8954)."""
        der = request_for(self.certificate, self.ca.issuing_certificate, nonce=b"n" * 33)
        self.assertRefused(der, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "nonce")

    def test_foreign_issuer(self) -> None:
        """A CertID naming another CA's issuer is unauthorized."""
        other, _ = make_ca()
        query = parse_request(request_for(user_certificate(other), other.issuing_certificate))
        with self.assertRaises(OCSPRefusal) as caught:
            find_responder(query, [self.responder])
        self.assertEqual(caught.exception.status, ocsp.OCSPResponseStatus.UNAUTHORIZED)


class SignTests(TestCase):
    """Signed responses."""

    def test_revoked_with_nonce(self) -> None:
        """The response carries the status, reason and time, both update times, the nonce,
        and the responder certificate whose key signed it."""
        from irp.server.http.ocsp import Status

        ca, responder = make_ca()
        certificate = user_certificate(ca)
        query = parse_request(request_for(certificate, ca.issuing_certificate, nonce=b"\x01" * 8))
        revoked_at = NOW - datetime.timedelta(days=1)
        status = Status(ocsp.OCSPCertStatus.REVOKED, revoked_at, x509.ReasonFlags.key_compromise)
        der = sign_response(query, responder, status, NOW, NOW + datetime.timedelta(hours=1))
        response = ocsp.load_der_ocsp_response(der)
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.SUCCESSFUL)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        self.assertEqual(response.revocation_time_utc, revoked_at)
        self.assertEqual(response.revocation_reason, x509.ReasonFlags.key_compromise)
        self.assertEqual((response.this_update_utc, response.next_update_utc), (NOW, NOW + datetime.timedelta(hours=1)))
        self.assertEqual(response.serial_number, certificate.serial_number)
        self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, b"\x01" * 8)
        self.assertEqual(response.certificates, [responder.certificate])
        key = responder.certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        algorithm = response.signature_hash_algorithm
        assert algorithm is not None
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        responder.certificate.verify_directly_issued_by(ca.issuing_certificate)

    def test_refusals(self) -> None:
        """Unsuccessful responses hold only their status."""
        for status in (ocsp.OCSPResponseStatus.MALFORMED_REQUEST, ocsp.OCSPResponseStatus.TRY_LATER):
            self.assertEqual(ocsp.load_der_ocsp_response(refusal_response(status)).response_status, status)


class FakeSource:
    """The store's two reads, from a dictionary (or failing)."""

    def __init__(self) -> None:
        self.generation = 0
        self.certificates: dict[int, CertificateInfo] = {}
        self.failure: Exception | None = None

    def revocation_generation(self) -> Deferred[int]:
        return fail(self.failure) if self.failure is not None else succeed(self.generation)

    def get_certificate(self, serial: int) -> Deferred[CertificateInfo | None]:
        return succeed(self.certificates.get(serial))

    def add(self, certificate: x509.Certificate, revoked_at: int | None = None, reason: str | None = None) -> None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.certificates[certificate.serial_number] = CertificateInfo(
            certificate.serial_number, fingerprint(certificate), "alice", "issued", 0, 0, 0, revoked_at, reason, der
        )


class ResponderTests(TestCase):
    """Status rules and caching."""

    def setUp(self) -> None:
        self.ca, self.responder_entry = make_ca()
        self.source = FakeSource()
        self.now = NOW
        self.responder = OCSPResponder([self.responder_entry], self.source, lambda: self.now)
        self.certificate = user_certificate(self.ca)

    async def ask(self, certificate: x509.Certificate | None = None, nonce: bytes | None = None, issuer: x509.Certificate | None = None) -> ocsp.OCSPResponse:
        der = request_for(certificate or self.certificate, issuer or self.ca.issuing_certificate, nonce=nonce)
        return ocsp.load_der_ocsp_response((await self.responder.answer(der)).body)

    async def test_good_cached_until_revocation(self) -> None:
        """Without a nonce a good answer is signed once, until the generation moves."""
        self.source.add(self.certificate)
        first = await self.ask()
        second = await self.ask()
        self.assertEqual(first.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(first.public_bytes(serialization.Encoding.DER), second.public_bytes(serialization.Encoding.DER))
        self.assertEqual(self.responder.signed, 1)
        self.source.add(self.certificate, revoked_at=1_700_000_000, reason="unspecified")
        self.source.generation += 1
        third = await self.ask()
        self.assertEqual(third.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        self.assertIsNone(third.revocation_reason)  # unspecified is left out, as in the CRL
        self.assertEqual(self.responder.signed, 2)

    async def test_new_responder_certificate(self) -> None:
        """Renewed responder certificates drop the kept responses: the next is signed by
        the new one."""
        self.source.add(self.certificate)
        await self.ask()
        key = generate_key("p256")
        renewed = responder_certificate("example.org", self.ca.issuing_certificate, self.ca.issuing_key, key.public_key(), NOW)
        self.responder.responders = [Responder(self.ca.issuing_certificate, renewed, key)]
        response = await self.ask()
        self.assertEqual(self.responder.signed, 2)
        self.assertEqual(response.certificates, [renewed])

    async def test_cache_refreshed_at_half_life(self) -> None:
        """A kept response is replaced once half its lifetime (an hour) has passed."""
        self.source.add(self.certificate)
        await self.ask()
        self.now += datetime.timedelta(minutes=29)
        await self.ask()
        self.assertEqual(self.responder.signed, 1)
        self.now += datetime.timedelta(minutes=2)
        response = await self.ask()
        self.assertEqual(self.responder.signed, 2)
        self.assertEqual(response.this_update_utc, self.now)

    async def test_nonce_and_unknown_not_cached(self) -> None:
        """Requests with a nonce, and serials never issued, are signed every time."""
        self.source.add(self.certificate)
        for _ in range(2):
            response = await self.ask(nonce=b"abcd")
            self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, b"abcd")
        stranger = user_certificate(self.ca, "bob")
        for _ in range(2):
            self.assertEqual((await self.ask(stranger)).certificate_status, ocsp.OCSPCertStatus.UNKNOWN)
        self.assertEqual(self.responder.signed, 4)

    async def test_issued_by_another_issuer(self) -> None:
        """A serial issued by another of the registry's issuing CAs than the CertID names is
        unknown; the retired issuer's own responder answers for it."""
        retired, retired_responder = make_ca()
        old = user_certificate(retired)
        self.source.add(old)
        self.responder.responders = [self.responder_entry, retired_responder]
        # The serial asked about under the current issuer: not one it issued.
        current = parse_request(request_for(self.certificate, self.ca.issuing_certificate))
        query = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            current.issuer_name_hash, current.issuer_key_hash, old.serial_number, hashes.SHA256()
        ).build()
        response = ocsp.load_der_ocsp_response((await self.responder.answer(query.public_bytes(serialization.Encoding.DER))).body)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.UNKNOWN)
        response = await self.ask(old, issuer=retired.issuing_certificate)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(response.certificates, [retired_responder.certificate])

    async def test_database_down(self) -> None:
        """The store unavailable: tryLater; anything else failing: internalError, logged."""
        self.source.failure = Unavailable("down")
        self.assertEqual((await self.ask()).response_status, ocsp.OCSPResponseStatus.TRY_LATER)
        self.source.failure = RuntimeError("bug")
        self.assertEqual((await self.ask()).response_status, ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

