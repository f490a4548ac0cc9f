"""The metrics endpoint (common.metrics): real HTTP on loopback, parsed with the
Prometheus client's own parser."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from common.metrics import MAX_BODY, MetricsEndpoint, new_registry, shift_port, split_endpoint
from test.helpers import http_get, scrape


class RawClient(Protocol):
    """Sends bytes and collects what comes back until the connection closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a plain TCP connection; what came back once it closed."""
    client = RawClient(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return await client.closed.addTimeout(10, reactor)


class EndpointTests(TestCase):
    """GET /metrics serves the service's own registry; nothing else is served."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = new_registry()
        self.counter = Counter("demo_events", "Demo.", ["kind"], registry=self.registry)
        self.endpoint = MetricsEndpoint(reactor, ["tcp:0:interface=127.0.0.1"], self.registry, "Test")
        self.endpoint.bind()
        ports = await self.endpoint.start()
        self.addCleanup(self.endpoint.stop)
        self.port = ports[0].getHost().port  # type: ignore[attr-defined]

    async def test_scrape_counts(self) -> None:
        before = await scrape(self.port)
        self.assertNotIn(("demo_events_total", (("kind", "a"),)), before)
        self.counter.labels("a").inc(3)
        after = await scrape(self.port)
        self.assertEqual(after[("demo_events_total", (("kind", "a"),))], 3.0)
        # The process's standard metrics are there; the library's global registry is not used.
        self.assertIn(("process_cpu_seconds_total", ()), after)

    async def test_registries_are_separate(self) -> None:
        other = new_registry()
        Counter("other_events", "Other.", registry=other).inc()
        self.assertNotIn(("other_events_total", ()), await scrape(self.port))

    async def test_head(self) -> None:
        code, _headers, body = await http_get(f"http://127.0.0.1:{self.port}/metrics", b"HEAD")
        self.assertEqual((code, body), (200, b""))

    async def test_unknown_path(self) -> None:
        for path in ("/", "/metrics/x", "/other"):
            code, _headers, _body = await http_get(f"http://127.0.0.1:{self.port}{path}")
            self.assertEqual(code, 404, path)

    async def test_other_method(self) -> None:
        code, headers, _body = await http_get(f"http://127.0.0.1:{self.port}/metrics", b"POST")
        self.assertEqual(code, 405)
        self.assertEqual(headers[b"Allow"], [b"GET, HEAD"])

    async def test_oversized_body_closes(self) -> None:
        request = (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        ) + b"x" * (MAX_BODY + 1)
        self.assertEqual(await raw_exchange(self.port, request), b"")
        chunked = b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += (b"%x\r\n" % 1024 + b"y" * 1024 + b"\r\n") * 5
        self.assertEqual(await raw_exchange(self.port, chunked), b"")
        # The endpoint still serves.
        await scrape(self.port)

    async def test_malformed_request(self) -> None:
        answer = await raw_exchange(self.port, b"NOT HTTP AT ALL\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)


class OffTests(TestCase):
    """Without endpoints nothing listens."""

    async def test_nothing_listens(self) -> None:
        endpoint = MetricsEndpoint(reactor, [], new_registry(), "Test")
        endpoint.bind()
        self.assertEqual(await endpoint.start(), [])
        await endpoint.stop()


class ShiftPortTests(TestCase):
    """Each registry worker's metrics get a port of their own."""

    def test_positional_and_keyword(self) -> None:
        self.assertEqual(shift_port("tcp:9604:interface=127.0.0.1", 2), "tcp:9606:interface=127.0.0.1")
        self.assertEqual(shift_port("tcp6:port=9604:interface=\\:\\:1", 1), "tcp6:port=9605:interface=\\:\\:1")
        self.assertEqual(shift_port("tcp6:interface=\\:\\::port=9604", 3), "tcp6:interface=\\:\\::port=9607")
        self.assertEqual(shift_port("tcp:0", 5), "tcp:0")

    def test_refused(self) -> None:
        for description in ("unix:/run/irp.sock", "tcp:65535", "tcp:interface=127.0.0.1"):
            with self.assertRaises(ValueError):
                shift_port(description, 1)

    def test_split_keeps_escapes(self) -> None:
        self.assertEqual(split_endpoint("tcp6:80:interface=\\:\\:"), ["tcp6", "80", "interface=\\:\\:"])
