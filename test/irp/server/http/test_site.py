"""The HTTP adapter under hostile and odd input, on Twisted's fakes (a string transport
and a fake clock): caps, deadlines, routes, methods, media types, caching headers, and one
log line per refusal."""

from __future__ import annotations

import base64
import datetime
from typing import Any, cast
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from irp.server.http.publisher import Published
from irp.server.http.responder import OCSPResponder
from irp.server.http.site import IDLE_TIMEOUT, MAX_BODY, REQUEST_DEADLINE, PKIResource, PKISite
from test.irp.server.http.test_ocsp import NOW, FakeSource, make_ca, request_for, user_certificate


class FakePublisher:
    """A CRL and a certificate, and a health answer the test sets."""

    def __init__(self) -> None:
        self.unhealthy: str | None = None

    def certificate(self, name: str) -> Published | None:
        return Published(b"certificate " + name.encode(), NOW) if name == "root" else None

    async def crl(self, name: str) -> Published | None:
        if name != "issuing":
            return None
        return Published(b"crl", NOW, NOW + datetime.timedelta(hours=2))

    async def health(self) -> str | None:
        return self.unhealthy


class SiteTests(TestCase):
    """Requests written byte by byte into one connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        ca, responder = make_ca()
        self.ca = ca
        self.certificate = user_certificate(ca)
        self.source = FakeSource()
        self.source.add(self.certificate)
        self.publisher = FakePublisher()
        self.responder = OCSPResponder(
            [responder], self.source, lambda: datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        )
        self.site = PKISite(PKIResource(self.publisher, self.responder, self.clock.seconds), self.clock)  # type: ignore[arg-type]
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def connect(self, host: str = "192.0.2.7") -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        channel.makeConnection(transport)
        return channel, transport

    def exchange(self, data: bytes) -> bytes:
        channel, transport = self.connect()
        channel.dataReceived(data)
        return transport.value()

    def refusals(self) -> list[str]:
        return [
            str(event.get("log_format", ""))
            for event in self.events
            if str(event.get("log_format", "")).startswith(("HTTP: refused", "HTTP: closed", "OCSP: answered"))
        ]

    def ocsp_body(self, reply: bytes) -> ocsp.OCSPResponse:
        head, _, body = reply.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"Content-Type: application/ocsp-response", head)
        return ocsp.load_der_ocsp_response(body)

    def post(self, body: bytes, content_type: bytes = b"application/ocsp-request") -> bytes:
        return self.exchange(
            b"POST /ocsp HTTP/1.1\r\nHost: pki\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def test_declared_body_too_large(self) -> None:
        """A Content-Length over 16 KiB: 413 before the body is read, connection closed."""
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST /ocsp HTTP/1.1\r\nHost: pki\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: " + str(MAX_BODY + 1).encode() + b"\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.refusals()), 1)

    def test_body_too_large_expecting_continue(self) -> None:
        """A client that waits for "100 Continue" before sending a body over the cap gets
        the 413 alone."""
        reply = self.exchange(
            b"POST /ocsp HTTP/1.1\r\nHost: pki\r\nContent-Type: application/ocsp-request\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", reply)

    def test_chunked_body_too_large(self) -> None:
        """A chunked body passing 16 KiB: 413, closed, its request never handled."""
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST /ocsp HTTP/1.1\r\nHost: pki\r\nContent-Type: application/ocsp-request\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 4096
        for _ in range(5):
            channel.dataReceived(b"1000\r\n" + chunk + b"\r\n")
        channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.responder.signed, 0)

    def test_slow_request(self) -> None:
        """A request dripping in (a byte every 10 seconds, within the idle timeout) is
        closed with 408 when its 30 seconds are up."""
        channel, transport = self.connect()
        for byte in b"GET /health HTTP/1.1\r\n":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(10)
            if transport.disconnecting:
                break
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(self.clock.seconds() - NOW.timestamp(), REQUEST_DEADLINE + 10)
        self.assertEqual(len(self.refusals()), 1)

    def test_idle_connection(self) -> None:
        """A connection that sends nothing is closed after the idle timeout."""
        _channel, transport = self.connect()
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_keep_alive_deadline_per_request(self) -> None:
        """Each request of a kept-alive connection gets its own deadline."""
        channel, transport = self.connect()
        for _ in range(3):
            channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: pki\r\n\r\n")
            self.clock.advance(REQUEST_DEADLINE - 20)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_connections_per_address(self) -> None:
        """Past 64 open connections from one address, new ones are closed at once (logged
        once); other addresses still get in; a closed one frees its place."""
        from irp.server.http.site import MAX_CONNECTIONS_PER_ADDRESS

        opened = [self.connect() for _ in range(MAX_CONNECTIONS_PER_ADDRESS)]
        for _ in range(3):
            self.assertIsNone(self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40001)))
        self.assertEqual(len([e for e in self.events if "refusing connections" in str(e.get("log_format"))]), 1)
        self.assertIsNotNone(self.site.buildProtocol(IPv4Address("TCP", "198.51.100.1", 40001)))
        channel, _transport = opened[0]
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40002)))

    def test_bad_http(self) -> None:
        """Not HTTP, or headers too long: 400 from twisted.web, closed, logged."""
        channel, transport = self.connect()
        channel.dataReceived(b"\x16\x03\x01garbage\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)
        channel, transport = self.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 17_000 + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        channel, transport = self.connect()
        channel.dataReceived(b"GET /health HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 9_000 + b"\r\n" + b"X-More: " + b"a" * 9_000 + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(len(self.refusals()), 3)

    def test_malformed_ocsp(self) -> None:
        """Bytes that are not an OCSP request: a malformedRequest response (HTTP 200), logged."""
        response = self.ocsp_body(self.post(b"\x30\x82\xff\xff garbage"))
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        self.assertEqual(len(self.refusals()), 1)

    def test_wrong_media_type(self) -> None:
        """A POST that is not application/ocsp-request: 415."""
        der = request_for(self.certificate, self.ca.issuing_certificate)
        self.assertTrue(self.post(der, b"application/x-www-form-urlencoded").startswith(b"HTTP/1.1 415 "))

    def test_post_good_cacheable(self) -> None:
        """A POST without a nonce: good, with Cache-Control up to nextUpdate."""
        reply = self.post(request_for(self.certificate, self.ca.issuing_certificate))
        self.assertEqual(self.ocsp_body(reply).certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertIn(b"Cache-Control: public, max-age=3600, no-transform", reply)
        nonce = self.post(request_for(self.certificate, self.ca.issuing_certificate, nonce=b"12345678"))
        self.assertIn(b"Cache-Control: no-store", nonce)

    def test_get(self) -> None:
        """GET /ocsp/<URL-encoded base64 of the request> (RFC 6960 A.1); bad base64 is
        malformedRequest."""
        der = request_for(self.certificate, self.ca.issuing_certificate)
        path = b"/ocsp/" + quote(base64.b64encode(der).decode(), safe="").encode()
        response = self.ocsp_body(self.exchange(b"GET " + path + b" HTTP/1.1\r\nHost: pki\r\n\r\n"))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        raw = b"/ocsp/" + base64.b64encode(der)  # slashes and pluses left as they are
        response = self.ocsp_body(self.exchange(b"GET " + raw + b" HTTP/1.1\r\nHost: pki\r\n\r\n"))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        bad = self.ocsp_body(self.exchange(b"GET /ocsp/%%%not-base64 HTTP/1.1\r\nHost: pki\r\n\r\n"))
        self.assertEqual(bad.response_status, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    def test_unknown_path_and_method(self) -> None:
        """Unknown paths: 404; a method a path does not take: 405 naming the allowed ones.
        One log line each."""
        self.assertTrue(self.exchange(b"GET /etc/passwd HTTP/1.1\r\nHost: pki\r\n\r\n").startswith(b"HTTP/1.1 404 "))
        self.assertTrue(self.exchange(b"GET /crl/../x.crl HTTP/1.1\r\nHost: pki\r\n\r\n").startswith(b"HTTP/1.1 404 "))
        reply = self.exchange(b"DELETE /crl/issuing.crl HTTP/1.1\r\nHost: pki\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 405 "))
        self.assertIn(b"Allow: GET, HEAD", reply)
        self.assertTrue(self.exchange(b"GET /ocsp HTTP/1.1\r\nHost: pki\r\n\r\n").startswith(b"HTTP/1.1 405 "))
        self.assertEqual(len(self.refusals()), 4)

    def test_crl_and_etag(self) -> None:
        """A CRL with its media type, caching headers and ETag; the same ETag back: 304."""
        reply = self.exchange(b"GET /crl/issuing.crl HTTP/1.1\r\nHost: pki\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        self.assertEqual(body, b"crl")
        self.assertIn(b"Content-Type: application/pkix-crl", head)
        self.assertIn(b"Cache-Control: public, max-age=7200, no-transform", head)
        etag = next(line for line in head.split(b"\r\n") if line.startswith(b"ETag: "))[6:]
        again = self.exchange(b"GET /crl/issuing.crl HTTP/1.1\r\nHost: pki\r\nIf-None-Match: " + etag + b"\r\n\r\n")
        self.assertTrue(again.startswith(b"HTTP/1.1 304 "))
        self.assertTrue(again.endswith(b"\r\n\r\n"))
        self.assertTrue(self.exchange(b"GET /crl/root.crl HTTP/1.1\r\nHost: pki\r\n\r\n").startswith(b"HTTP/1.1 404 "))
        certificate = self.exchange(b"GET /ca/root.crt HTTP/1.1\r\nHost: pki\r\n\r\n")
        self.assertIn(b"Content-Type: application/pkix-cert", certificate)
        self.assertTrue(certificate.endswith(b"certificate root"))

    def test_health(self) -> None:
        """/health: 200 ok, or 503 with the reason (one line)."""
        self.assertTrue(self.exchange(b"GET /health HTTP/1.1\r\nHost: pki\r\n\r\n").endswith(b"\r\n\r\nok\n"))
        self.publisher.unhealthy = "the database is unavailable: disk I/O error"
        reply = self.exchange(b"GET /health HTTP/1.1\r\nHost: pki\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 503 "))
        self.assertTrue(reply.endswith(b"\r\n\r\nthe database is unavailable: disk I/O error\n"))

    def test_try_later(self) -> None:
        """The database down: tryLater."""
        from irp.errors import Unavailable

        self.source.failure = Unavailable("down")
        response = self.ocsp_body(self.post(request_for(self.certificate, self.ca.issuing_certificate)))
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.TRY_LATER)
        self.assertEqual(
            response.public_bytes(serialization.Encoding.DER),
            ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(serialization.Encoding.DER),
        )
