"""The HTTP endpoint as a twisted.web site: routes, media types, caching headers and the
refusals (see docs/http.rst). A thin adapter over :class:`~.publisher.Publisher` and
:class:`~.responder.OCSPResponder`.

Hostile input: past :data:`MAX_CONNECTIONS_PER_ADDRESS` open connections from one address
new ones are closed at once; a request body over :data:`MAX_BODY` is refused with 413 as soon as its
length is known (or its chunks pass the cap) and the connection closed; a request must
arrive whole within :data:`REQUEST_DEADLINE` seconds of its first byte (else 408 and the
connection closed); an idle connection is closed after :data:`IDLE_TIMEOUT` seconds;
unknown paths get 404, other methods 405. Each refusal is one log line.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
from collections.abc import Callable, Coroutine
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from common.limits import ConnectionCounter, SlidingWindow, address_key
from irp.server.http.ocsp import MAX_OCSP_REQUEST
from irp.server.http.publisher import Publisher
from irp.server.http.responder import OCSPResponder

log = Logger()

#: Largest request body accepted (an OCSP request), in bytes.
MAX_BODY = MAX_OCSP_REQUEST
#: Seconds a request has, from its first byte, to arrive whole.
REQUEST_DEADLINE = 30.0
#: Seconds a connection may stay idle between requests.
IDLE_TIMEOUT = 15.0
#: How long HTTP caches may keep a CA certificate, in seconds.
CERTIFICATE_MAX_AGE = 86_400
#: Open connections allowed per client address (IPv4, or IPv6 /64); more are closed at once.
MAX_CONNECTIONS_PER_ADDRESS = 64
#: Refused connections are logged once per address per this many seconds.
REFUSAL_LOG_WINDOW = 60.0
#: The longest path accepted (a GET OCSP request in base64 fits well within).
MAX_PATH = 4096

OCSP_REQUEST = b"application/ocsp-request"
OCSP_RESPONSE = b"application/ocsp-response"
PKIX_CRL = b"application/pkix-crl"
PKIX_CERT = b"application/pkix-cert"
TEXT = b"text/plain; charset=utf-8"

_NAME = r"(root|issuing|issuing-[0-9a-f]{16})"
_CRL_PATH = re.compile(rf"/crl/{_NAME}\.crl\Z".encode())
_CA_PATH = re.compile(rf"/ca/{_NAME}\.crt\Z".encode())

Reply = tuple[int, dict[bytes, bytes], bytes]


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "?"))


def _shown(path: bytes) -> str:
    """A path as logged: at most 80 characters, escaped."""
    text = path.decode("latin-1")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _raw_refusal(transport: Any, code: int, phrase: str, why: str) -> None:
    """Answer ``code`` on ``transport`` outside twisted.web's request cycle and close."""
    body = (why + "\n").encode()
    transport.write(
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    transport.loseConnection()


class CappedRequest(server.Request):
    """A request whose body may not exceed :data:`MAX_BODY` bytes (413 and close)."""

    max_body = MAX_BODY
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared body over the cap before reading it."""
        if length is not None and length > self.max_body:
            self._refuse_body(f"a {length}-byte body")
            return
        # Capped: always in memory (twisted.web would spool a chunked body to a file).
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body as it comes (chunked bodies declare no length)."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse_body("a chunked body")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request unless its body was refused."""
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse_body(self, what: str) -> None:
        self._refused = True
        self.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" after the refusal
        transport: Any = self.channel.transport
        log.info(
            "HTTP: refused {what} over {cap} bytes from {peer}",
            what=what, cap=self.max_body, peer=str(getattr(transport.getPeer(), "host", "?")),
        )
        _raw_refusal(transport, 413, "Content Too Large", f"the request body is larger than {self.max_body} bytes")


class DeadlineChannel(http.HTTPChannel):
    """An HTTP channel that gives each request :attr:`request_deadline` seconds from its
    first byte to arrive whole (the idle timeout alone lets a client that sends a byte a
    minute hold the connection forever)."""

    request_deadline = REQUEST_DEADLINE
    _deadline: Any = None
    _abort: Any = None

    def dataReceived(self, data: bytes) -> None:
        """Start the deadline with a request's first byte."""
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(self.request_deadline, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The request is whole: the deadline is met."""
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget the deadline and the connection's count."""
        self._cancel_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        site = getattr(self, "site", None)
        if isinstance(site, PKISite):
            site.connections.release(self._host)
        super().connectionLost(reason)

    @property
    def _host(self) -> str:
        return str(getattr(getattr(self.transport, "getPeer", lambda: None)(), "host", ""))

    def _respondToBadRequestAndDisconnect(self) -> None:
        """A request that is not HTTP/1.x or too long (twisted.web's 400): logged too."""
        log.info(
            "HTTP: refused a malformed or oversized request line or headers from {peer} (400)",
            peer=str(getattr(getattr(self.transport, "getPeer", lambda: None)(), "host", "?")),
        )
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request or header line over 16 KiB: 400 (twisted.web would just close)."""
        self._respondToBadRequestAndDisconnect()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        log.info(
            "HTTP: closed a connection from {peer}: its request did not arrive within {seconds:g} seconds",
            peer=str(getattr(transport.getPeer(), "host", "?")), seconds=self.request_deadline,
        )
        _raw_refusal(transport, 408, "Request Timeout", "the request took too long to arrive")
        self._abort = self.callLater(1.0, transport.abortConnection)


class PKIResource(Resource):
    """Every path of the site (see docs/http.rst, "URLs")."""

    isLeaf = True

    def __init__(self, publisher: Publisher, responder: OCSPResponder, clock: Callable[[], float]) -> None:
        super().__init__()
        self.publisher = publisher
        self.responder = responder
        self.clock = clock

    def render(self, request: Any) -> Any:
        """Route the request; answer later (the handlers read the database)."""
        path: bytes = request.path
        method: bytes = request.method
        handler, allowed = self._route(path, method)
        if handler is None:
            return self._finish_now(request, *self._refusal(request, 404, "no such resource"))
        if method not in allowed:
            code, headers, body = self._refusal(request, 405, f"use {', '.join(m.decode() for m in allowed)}")
            headers[b"Allow"] = b", ".join(allowed)
            return self._finish_now(request, code, headers, body)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        replying: Deferred[Reply] = Deferred.fromCoroutine(handler(request))

        def send(reply: Reply) -> None:
            if not gone:
                request.write(self._finish_now(request, *reply))
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("HTTP: {method} {path} failed", failure, method=method.decode("latin-1"), path=_shown(path))
            if not gone:
                request.write(self._finish_now(request, 500, {b"Content-Type": TEXT}, b"internal error\n"))
                request.finish()

        replying.addCallbacks(send, failed)
        return server.NOT_DONE_YET

    def _route(self, path: bytes, method: bytes) -> tuple[Callable[[Any], Coroutine[Any, Any, Reply]] | None, tuple[bytes, ...]]:
        get = (b"GET", b"HEAD")
        if len(path) > MAX_PATH:
            return None, ()
        if path == b"/health":
            return self._health, get
        if path == b"/ocsp":
            return self._ocsp_post, (b"POST",)
        if path.startswith(b"/ocsp/"):
            return self._ocsp_get, (b"GET",)
        if _CRL_PATH.match(path):
            return self._crl, get
        if _CA_PATH.match(path):
            return self._certificate, get
        return None, ()

    @staticmethod
    def _finish_now(request: Any, code: int, headers: dict[bytes, bytes], body: bytes) -> bytes:
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        etag = headers.get(b"ETag")
        if code == 200 and etag is not None and request.setETag(etag) == http.CACHED:
            return b""  # 304 Not Modified: the client has these bytes
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body if request.method != b"HEAD" else b""

    @staticmethod
    def _refusal(request: Any, code: int, why: str) -> Reply:
        log.info(
            "HTTP: refused {method} {path} from {peer} ({code}): {why}",
            method=request.method.decode("latin-1")[:16], path=_shown(request.path), peer=_peer(request), code=code, why=why,
        )
        return code, {b"Content-Type": TEXT, b"Cache-Control": b"no-store"}, (why + "\n").encode()

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)

    def _cacheable(self, content_type: bytes, body: bytes, expires: datetime.datetime | None, max_age: int | None = None) -> Reply:
        if max_age is None:
            max_age = 0 if expires is None else max(0, int((expires - self._now()).total_seconds()))
        headers = {
            b"Content-Type": content_type,
            b"Cache-Control": f"public, max-age={max_age}, no-transform".encode(),
            b"ETag": b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
        }
        if expires is not None:
            headers[b"Expires"] = http.datetimeToString(int(expires.timestamp()))
        return 200, headers, body

    async def _health(self, request: Any) -> Reply:
        why = await self.publisher.health()
        if why is None:
            return 200, {b"Content-Type": TEXT, b"Cache-Control": b"no-store"}, b"ok\n"
        return self._refusal(request, 503, why)

    async def _crl(self, request: Any) -> Reply:
        match = _CRL_PATH.match(request.path)
        assert match is not None
        from irp.errors import Unavailable

        try:
            crl = await self.publisher.crl(match.group(1).decode())
        except Unavailable:
            return self._refusal(request, 503, "the database is unavailable; try again later")
        if crl is None:
            return self._refusal(request, 404, "no such CRL")
        reply = self._cacheable(PKIX_CRL, crl.der, crl.expires)
        reply[1][b"Last-Modified"] = http.datetimeToString(int(crl.made.timestamp()))
        return reply

    async def _certificate(self, request: Any) -> Reply:
        match = _CA_PATH.match(request.path)
        assert match is not None
        certificate = self.publisher.certificate(match.group(1).decode())
        if certificate is None:
            return self._refusal(request, 404, "no such CA certificate")
        return self._cacheable(PKIX_CERT, certificate.der, None, CERTIFICATE_MAX_AGE)

    async def _ocsp_post(self, request: Any) -> Reply:
        content_type = (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()
        if content_type != OCSP_REQUEST:
            return self._refusal(request, 415, "an OCSP request must be sent as application/ocsp-request")
        request.content.seek(0)
        return await self._ocsp(request, request.content.read(MAX_BODY + 1))

    async def _ocsp_get(self, request: Any) -> Reply:
        encoded = unquote_to_bytes(request.path[len(b"/ocsp/") :])
        try:
            der = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            der = b""  # answered malformedRequest, like any request that is not DER
        return await self._ocsp(request, der)

    async def _ocsp(self, request: Any, der: bytes) -> Reply:
        answer = await self.responder.answer(der)
        if answer.why is not None:
            log.info(
                "OCSP: answered {outcome} to {peer}: {why}", outcome=answer.outcome, peer=_peer(request), why=answer.why
            )
        if answer.expires is None:
            return 200, {b"Content-Type": OCSP_RESPONSE, b"Cache-Control": b"no-store"}, answer.body
        return self._cacheable(OCSP_RESPONSE, answer.body, answer.expires)


class PKISite(server.Site):
    """The site: connections per address capped, capped requests, per-request deadlines,
    no access log (refusals are logged by the resource)."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, resource: PKIResource, reactor: Any, max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS) -> None:
        super().__init__(resource, requestFactory=CappedRequest, reactor=reactor, timeout=IDLE_TIMEOUT)
        self.connections = ConnectionCounter(max_connections_per_address)
        self._refused = SlidingWindow(reactor, limit=1, window=REFUSAL_LOG_WINDOW)

    def buildProtocol(self, addr: Any) -> Any:
        """A channel, or None (closed at once) past the address's connection limit."""
        host = str(getattr(addr, "host", ""))
        if not self.connections.acquire(host):
            if self._refused.record(address_key(host)) == 1:
                log.info(
                    "HTTP: refusing connections from {peer}: over {limit} open (logged once a minute)",
                    peer=host, limit=self.connections.limit,
                )
            return None
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        """No access log line per request (a responder answers thousands a second)."""
