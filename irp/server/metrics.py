"""The registry's Prometheus metrics (``twistd irp --metrics-listen``).

:class:`RegistryMetrics` listens to the registry's events (:mod:`irp.server.events`):
requests per operation and outcome, their latency, errors per wire code, logins by method
and outcome, certificates issued and revoked. At each scrape, :class:`RegistryCollector`
reads what the registry already counts in plain integers: connections (the admission's
counts), the caches' hits and misses, and the database totals (registered and online users,
stored certificates by state, sixid IDs) that a :class:`~twisted.internet.task.LoopingCall`
reads every :data:`TOTALS_INTERVAL` seconds in the store's threads: a scrape never reads
the database. Commit latencies come from the store's write path
(:attr:`~irp.server.store.engine.StoreEngine.commit_observer`).

Labels have bounded values: an operation label is the name of one of
:data:`~irp.server.dispatch.OPERATIONS` or ``unknown``; an outcome or code label is ``ok``
or one of the wire error codes (:class:`irp.errors.IRPError` and its subclasses), else
``other``; no label ever holds a user name or an address. Every name is listed in
docs/deployment.rst, section "Metrics".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from common.errors import subclasses_of
from common.metrics import MetricsEndpoint, new_registry
from common.version import VERSION
from irp import errors
from irp.server.dispatch import OPERATIONS
from irp.server.events import LOGIN_METHODS, OK, LoginDone, RequestDone
from irp.server.store.stats import StoreTotals

log = Logger()

#: Seconds between two reads of the database totals.
TOTALS_INTERVAL = 15.0
#: The operations whose success issues one certificate.
ISSUING_OPERATIONS = ("request-certificate", "renew", "generate-key")
#: Request latency buckets, in seconds (a cached look-up takes tens of microseconds, a
#: password login an Argon2 hash: tenths of a second).
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Commit latency buckets, in seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The label value of an operation not in OPERATIONS, and of an outcome that is no wire code.
UNKNOWN = "unknown"
OTHER = "other"


def wire_codes() -> frozenset[str]:
    """Every wire error code the registry can answer."""
    classes: list[type[errors.IRPError]] = [errors.IRPError, *subclasses_of(errors.IRPError)]
    return frozenset(cls.name for cls in classes)


class RegistryMetrics:
    """The registry's own metrics in ``registry`` (a :class:`RegistryListener`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._codes = wire_codes()
        self.requests = Counter(
            "irp_requests", "Requests answered, by operation and outcome (ok or the wire error code).",
            ["operation", "outcome"], registry=registry,
        )
        self.latency = Histogram(
            "irp_request_duration_seconds", "Seconds from a request's start to its outcome, by operation.",
            ["operation"], buckets=REQUEST_BUCKETS, registry=registry,
        )
        self.errors = Counter("irp_errors", "Requests refused, by wire error code.", ["code"], registry=registry)
        self.logins = Counter(
            "irp_logins", "Logins decided, by method (certificate, password, federated) and outcome.",
            ["method", "outcome"], registry=registry,
        )
        self.issued = Counter(
            "irp_certificates_issued", "Certificates issued by this process, by operation.", ["operation"], registry=registry
        )
        self.revoked = Counter(
            "irp_certificates_revoked",
            "Certificates revoked through this process, by operation (revoke; renew: the old one, superseded).",
            ["operation"], registry=registry,
        )
        self.commits = Histogram(
            "irp_database_commit_seconds",
            "Seconds from a write transaction's submission to its commit (a group commit is one).",
            buckets=COMMIT_BUCKETS, registry=registry,
        )
        Info("irp_build", "The registry's version.", registry=registry).info({"version": VERSION})
        #: (counter child, histogram child) by (operation, outcome): labels() looks up
        #: under a lock; the children are kept after the first request of each kind.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        for operation in ISSUING_OPERATIONS:
            self.issued.labels(operation)
        for method in LOGIN_METHODS:
            self.logins.labels(method, OK)
        for operation in ("revoke", "renew"):
            self.revoked.labels(operation)

    def _outcome(self, outcome: str) -> str:
        return outcome if outcome == OK or outcome in self._codes else OTHER

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        """Count the request (never holds its answer)."""
        key = (event.operation, event.outcome)
        children = self._children.get(key)
        if children is None:
            operation = event.operation if event.operation in OPERATIONS else UNKNOWN
            outcome = self._outcome(event.outcome)
            children = (self.requests.labels(operation, outcome), self.latency.labels(operation))
            if operation != UNKNOWN and outcome != OTHER:  # only bounded keys are kept
                self._children[key] = children
        children[0].inc()
        children[1].observe(event.seconds)
        if event.outcome != OK:
            self.errors.labels(self._outcome(event.outcome)).inc()
        elif event.operation in ISSUING_OPERATIONS:
            self.issued.labels(event.operation).inc()
            if event.operation == "renew":
                self.revoked.labels("renew").inc()
        elif event.operation == "revoke":
            self.revoked.labels("revoke").inc()
        return None

    def login_done(self, event: LoginDone) -> None:
        """Count the login."""
        method = event.method if event.method in LOGIN_METHODS else UNKNOWN
        self.logins.labels(method, self._outcome(event.outcome)).inc()

    def commit_done(self, seconds: float) -> None:
        """Observe one commit's latency (the store's commit observer)."""
        self.commits.observe(seconds)


class RegistryCollector(Collector):
    """Read at each scrape: connections, caches, the last database totals."""

    def __init__(self, service: Any) -> None:
        #: The RegistryService (its factory, registry and store once started).
        self.service = service
        self.totals: StoreTotals | None = None
        #: The reactor's time of the last successful read of the totals.
        self.totals_at: float | None = None

    def collect(self) -> Iterator[Any]:
        """The metric families (see docs/deployment.rst, "Metrics")."""
        factory = self.service.factory
        if factory is not None:
            admission = factory.admission
            yield GaugeMetricFamily("irp_connections_open", "IRP connections open now.", value=admission.open)
            yield CounterMetricFamily(
                "irp_connections_accepted", "IRP connections accepted (within their address's limit).", value=admission.accepted
            )
            refused = CounterMetricFamily(
                "irp_connections_refused",
                "IRP connections refused over their address's limit: answered too-many-connections"
                " (stage tls) or closed before TLS (stage before-tls).",
                labels=["stage"],
            )
            refused.add_metric(["tls"], admission.refused)
            refused.add_metric(["before-tls"], admission.dropped)
            yield refused
        registry = self.service.registry
        if registry is not None:
            hits = CounterMetricFamily("irp_cache_hits", "Cache look-ups answered from the cache.", labels=["cache"])
            misses = CounterMetricFamily(
                "irp_cache_misses", "Cache look-ups that went to the database (answers: answers read).", labels=["cache"]
            )
            for name, stats in sorted(registry.caches.stats().items()):
                hits.add_metric([name], stats.get("hits", 0))
                misses.add_metric([name], stats.get("reads", stats.get("misses", 0)))
            yield hits
            yield misses
        yield from self._totals()

    def _totals(self) -> Iterator[Any]:
        totals = self.totals
        if totals is None:
            return
        yield GaugeMetricFamily("irp_users_registered", "Users registered in the database.", value=totals.users)
        online = GaugeMetricFamily(
            "irp_users_online", "Users with a current address record, by presence.", labels=["presence"]
        )
        for presence in ("online", "away", "busy"):
            online.add_metric([presence], totals.online.get(presence, 0))
        yield online
        certificates = GaugeMetricFamily(
            "irp_certificates_stored", "Certificates in the database, by state (revoked, not-revoked).", labels=["state"]
        )
        for state, count in sorted(totals.certificates.items()):
            certificates.add_metric([state], count)
        yield certificates
        yield GaugeMetricFamily("irp_sixid_ids", "sixid device IDs held in the database.", value=totals.sixid_ids)
        if self.totals_at is not None:
            yield GaugeMetricFamily(
                "irp_database_totals_timestamp_seconds",
                "When the database totals were last read (Unix time).",
                value=self.totals_at,
            )


class RegistryMetricsHost:
    """The metrics of one registry process, served on ``listen`` (nothing when empty)."""

    def __init__(self, reactor: Any, listen: list[str], interval: float = TOTALS_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.registry = new_registry()
        self.endpoint = MetricsEndpoint(reactor, listen, self.registry, "IRP registry")
        self.metrics: RegistryMetrics | None = None
        self.collector: RegistryCollector | None = None
        self._loop: LoopingCall | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether metrics are served at all."""
        return bool(self.endpoint.descriptions)

    def bind(self) -> None:
        """Bind the metrics ports (before the reactor runs)."""
        if self.enabled:
            self.endpoint.bind()

    async def listen(self) -> None:
        """Serve the metrics endpoint (the process's own metrics until :meth:`watch`);
        raises CannotListenError when a port cannot be bound. Nothing without a listen
        endpoint."""
        if self.enabled:
            await self.endpoint.start()

    def watch(self, service: Any) -> None:
        """Count ``service``'s requests, logins, commits, connections, caches and database
        totals from now on (nothing without a listen endpoint)."""
        if not self.enabled:
            return
        self.metrics = RegistryMetrics(self.registry)
        self.collector = RegistryCollector(service)
        self.registry.register(self.collector)
        service.registry.events.add(self.metrics)
        service.store.commit_observer = self.metrics.commit_done
        loop = self._loop = LoopingCall(self.read_totals, service.store)
        loop.clock = self.reactor
        loop.start(self.interval, now=True).addErrback(lambda failure: log.failure("Reading the metrics totals failed", failure))

    async def read_totals(self, store: Any) -> None:
        """Read the database totals (a failure is logged once, the last ones kept)."""
        assert self.collector is not None
        try:
            totals = await store.totals()
        except Exception as error:  # noqa: BLE001 - the database may be down: try again later
            if not self._failing:
                log.warn("Metrics: cannot read the database totals: {error}", error=str(error))
            self._failing = True
            return
        if self._failing:
            log.info("Metrics: reading the database totals again")
        self._failing = False
        self.collector.totals = totals
        self.collector.totals_at = self.reactor.seconds()

    def stop(self) -> Deferred[Any]:
        """Stop reading and serving."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self.endpoint.stop()
