"""A Prometheus metrics endpoint: ``GET /metrics`` over plain HTTP (twisted.web).

Shared by the registry (``twistd irp --metrics-listen``) and the SixChat agent
(``twistd sixchat --metrics-listen``). Each service keeps its metrics in a
:class:`~prometheus_client.CollectorRegistry` of its own (never the library's global one,
so that several services can run in one process, as in the tests); the exposition text is
the client library's (:func:`prometheus_client.generate_latest`), never written here.

The endpoint serves exactly one resource:

* ``GET /metrics`` (and ``HEAD``): 200 with the text exposition format
  (:data:`prometheus_client.CONTENT_TYPE_LATEST`);
* any other path: 404; another method on ``/metrics``: 405 with ``Allow: GET, HEAD``;
* a request body over :data:`MAX_BODY` bytes: the connection is closed (logged once per
  connection); a connection idle for :data:`IDLE_TIMEOUT` seconds is closed.

Nothing is logged per scrape. The endpoint is plain HTTP without authentication: bind it to
loopback or a monitoring network (see docs/deployment.rst, "Metrics").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from common.startup import EarlyPorts, describe_port

log = Logger()

#: The one path served.
METRICS_PATH = b"/metrics"
#: The largest request body accepted (a scrape has none).
MAX_BODY = 4096
#: Seconds an idle HTTP connection is kept.
IDLE_TIMEOUT = 30.0


def new_registry() -> CollectorRegistry:
    """A collector registry of one service's own, with the process's standard metrics
    (``process_*``: CPU, memory, open files; ``python_info``; ``python_gc_*``)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """Serves ``registry``'s metrics at ``/metrics`` (see the module)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Any) -> bytes:
        """404 off ``/metrics``; else GET/HEAD, or 405 for another method."""
        if request.path != METRICS_PATH:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found: the metrics are at /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Method not allowed: GET /metrics\n"
        output = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return output


class _CappedRequest(Request):
    """A request whose body may not exceed :data:`MAX_BODY` bytes: past it, the connection
    is aborted and the request is neither read further nor answered."""

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        """Refuse a declared body over the cap before reading it."""
        super().gotLength(None if length is not None and length > MAX_BODY else length)
        if length is not None and length > MAX_BODY:
            self._refuse(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body (a chunked one declares no length)."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(self._received)
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        """Answer, unless the request was refused."""
        if not self._refused:
            super().process()

    def _refuse(self, size: int) -> None:
        self._refused = True
        log.info(
            "Metrics endpoint: closed a connection from {host} sending a {size}-byte body (at most {cap})",
            host=getattr(self.getClientAddress(), "host", "?"),
            size=size,
            cap=MAX_BODY,
        )
        transport: Any = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.abortConnection()


class MetricsSite(Site):
    """The HTTP factory of the endpoint: no access log (a scrape every few seconds would
    fill it), an idle timeout, capped bodies."""

    noisy = False
    requestFactory = _CappedRequest

    def __init__(self, registry: CollectorRegistry, reactor: Any) -> None:
        super().__init__(MetricsResource(registry), timeout=IDLE_TIMEOUT, reactor=reactor)

    def startFactory(self) -> None:
        """Nothing to open: there is no access log."""

    def stopFactory(self) -> None:
        """Nothing to close."""

    def log(self, request: Any) -> None:
        """No access log."""


class MetricsEndpoint(service.Service):
    """A service's metrics endpoint on one or more listening endpoints.

    :meth:`bind` (before the reactor runs, from ``privilegedStartService``) binds the ports
    through a gate, so a port in use is found early; :meth:`start` serves once the service
    is ready; :meth:`stop` lets the ports go. With no descriptions, nothing listens.

    The service that owns it drives it. It is also a service of its own, to be added beside
    its owner under a :class:`~common.startup.ReportingParent`: a daemonizing ``twistd``
    then hears of a metrics port that cannot be bound (:attr:`early_ports`), as of the
    owner's own ports.
    """

    def __init__(self, reactor: Any, descriptions: Sequence[str], registry: CollectorRegistry, name: str) -> None:
        self.reactor = reactor
        self.descriptions = list(descriptions)
        self.registry = registry
        self.name = name
        self.ports: list[IListeningPort] = []
        self._early: EarlyPorts | None = None

    @property
    def early_ports(self) -> EarlyPorts | None:
        """The ports bound and not served yet (for :class:`~common.startup.ReportingParent`)."""
        return self._early

    def privilegedStartService(self) -> None:
        """Bind the ports (before the reactor runs; see :meth:`bind`)."""
        super().privilegedStartService()
        self.bind()

    def stopService(self) -> Deferred[Any]:
        """Stop listening (see :meth:`stop`)."""
        super().stopService()
        return self.stop()

    def bind(self) -> None:
        """Bind the ports now (connections wait until :meth:`start`)."""
        if self.descriptions and self._early is None and not self.ports:
            self._early = EarlyPorts(self.reactor, self.descriptions, f"{self.name} metrics")

    async def start(self) -> list[IListeningPort]:
        """Serve the metrics (binding first if :meth:`bind` was not called); raises the
        binding error (CannotListenError) when a port cannot be bound."""
        self.bind()
        early, self._early = self._early, None
        if early is None:
            return self.ports
        self.ports.extend(await early.ports())
        early.gate.open(MetricsSite(self.registry, self.reactor))
        for port in self.ports:
            log.info("{name} metrics at http://{where}/metrics", name=self.name, where=describe_port(port))
        return self.ports

    def stop(self) -> Deferred[Any]:
        """Stop listening (ports bound but never served are let go too)."""
        if self._early is not None:
            self._early.release()
            self._early = None
        stopping = [port.stopListening() for port in self.ports]
        self.ports.clear()
        return DeferredList([d for d in stopping if isinstance(d, Deferred)], consumeErrors=True)


def split_endpoint(description: str) -> list[str]:
    """The ``:``-separated parts of a Twisted endpoint description, escapes kept (``\\:``
    stays in its part)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def shift_port(description: str, offset: int) -> str:
    """``description`` (a ``tcp`` or ``tcp6`` server endpoint) with its port plus
    ``offset`` (port 0, any free port, stays 0): the metrics endpoint of registry worker
    ``n`` listens on the given port plus ``n - 1``. ValueError for another kind of
    endpoint, or a port past 65535."""
    parts = split_endpoint(description)
    if parts[0] not in ("tcp", "tcp6"):
        raise ValueError(f"{description!r} is not a tcp or tcp6 endpoint: each worker's metrics need a port of their own")
    for index, part in enumerate(parts[1:], start=1):
        key, equals, value = part.partition("=")
        if equals and key != "port":
            continue
        number = value if equals else part
        if not number.isdigit():
            raise ValueError(f"{description!r} has no port number")
        port = int(number)
        shifted = 0 if port == 0 else port + offset
        if shifted > 65535:
            raise ValueError(f"{description!r}: port {port} + {offset} is past 65535")
        parts[index] = f"port={shifted}" if equals else str(shifted)
        return ":".join(parts)
    raise ValueError(f"{description!r} has no port number")
