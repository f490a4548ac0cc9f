"""The registry's metrics (irp.server.metrics): a real registry with its metrics endpoint
on loopback, real TLS clients, scrapes over real HTTP parsed with the Prometheus client's
parser; every count asserted to move by the exact amount."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from common.wire.xmlcodec import make_element
from irp import errors
from irp.cli import make_csr
from irp.server.ca import generate_key
from irp.server.dispatch import OPERATIONS
from irp.server.events import LoginDone, RequestDone
from irp.server.metrics import RegistryMetrics, wire_codes
from irp.server.session import Session
from irp.wire.records import Endpoint
from test.helpers import DEFAULT_PASSWORD, RunningRegistry, sample, scrape

METRICS = "tcp:0:interface=127.0.0.1"


class RegistryMetricsTests(TestCase):
    """Requests, logins, certificates, connections, caches, commits and totals."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.running = await RunningRegistry(self, metrics_listen=(METRICS,)).start()
        assert self.running.service is not None
        self.host = self.running.service.metrics
        self.port = self.host.endpoint.ports[0].getHost().port  # type: ignore[attr-defined]

    async def test_requests_and_logins(self) -> None:
        before = await scrape(self.port)
        admin = await self.running.admin()  # a password login
        await admin.create_user("bob", password=DEFAULT_PASSWORD)
        with self.assertRaises(errors.LoginFailed):
            await self.running.client("bob", "not the password")
        with self.assertRaises(errors.UnknownOperation):
            await admin._call("no-such-operation")
        after = await scrape(self.port)

        def moved(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        self.assertEqual(moved("irp_logins_total", method="password", outcome="ok"), 1)
        self.assertEqual(moved("irp_logins_total", method="password", outcome="login-failed"), 1)
        self.assertEqual(moved("irp_requests_total", operation="login", outcome="ok"), 1)
        self.assertEqual(moved("irp_requests_total", operation="login", outcome="login-failed"), 1)
        self.assertEqual(moved("irp_requests_total", operation="create-user", outcome="ok"), 1)
        self.assertEqual(moved("irp_requests_total", operation="unknown", outcome="unknown-operation"), 1)
        self.assertEqual(moved("irp_errors_total", code="login-failed"), 1)
        self.assertEqual(moved("irp_errors_total", code="unknown-operation"), 1)
        self.assertEqual(moved("irp_request_duration_seconds_count", operation="create-user"), 1)
        self.assertGreater(moved("irp_request_duration_seconds_sum", operation="create-user"), 0)
        # Creating a user is a database write: at least one commit was timed.
        self.assertGreaterEqual(moved("irp_database_commit_seconds_count"), 1)
        # A name that is no operation is never a label.
        self.assertFalse([key for key in after if ("operation", "no-such-operation") in key[1]])

    async def test_certificates(self) -> None:
        await self.running.create_user("carol")
        client = await self.running.client("carol", DEFAULT_PASSWORD)
        before = await scrape(self.port)
        first = await client.request_certificate(make_csr(generate_key("p256")))
        second = await client.request_certificate(make_csr(generate_key("p256")))
        await client.renew(first.serial, make_csr(generate_key("p256")))  # the first one superseded
        await client.revoke(second.serial)
        with self.assertRaises(errors.Conflict):
            await client.revoke(second.serial)  # already revoked
        await self.host.read_totals(self.running.store)
        after = await scrape(self.port)

        def moved(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        self.assertEqual(moved("irp_certificates_issued_total", operation="request-certificate"), 2)
        self.assertEqual(moved("irp_certificates_issued_total", operation="renew"), 1)
        self.assertEqual(moved("irp_certificates_issued_total", operation="generate-key"), 0)
        self.assertEqual(moved("irp_certificates_revoked_total", operation="revoke"), 1)
        self.assertEqual(moved("irp_certificates_revoked_total", operation="renew"), 1)
        self.assertEqual(moved("irp_requests_total", operation="revoke", outcome="ok"), 1)
        self.assertEqual(moved("irp_requests_total", operation="revoke", outcome="conflict"), 1)
        self.assertEqual(moved("irp_errors_total", code="conflict"), 1)
        self.assertEqual(moved("irp_logins_total", method="certificate", outcome="ok"), 0)
        # The database's totals: the renewed one not revoked; the first (superseded) and
        # the second revoked.
        self.assertEqual(sample(after, "irp_certificates_stored", state="not-revoked"), 1)
        self.assertEqual(sample(after, "irp_certificates_stored", state="revoked"), 2)

    async def test_certificate_login(self) -> None:
        user = await self.running.enrol("frank")
        before = await scrape(self.port)
        client = await self.running.client(user=user)
        await client.whoami()
        after = await scrape(self.port)
        self.assertEqual(
            sample(after, "irp_logins_total", method="certificate", outcome="ok")
            - sample(before, "irp_logins_total", method="certificate", outcome="ok"),
            1,
        )
        self.assertEqual(sample(after, "irp_logins_total", method="password", outcome="ok") - sample(before, "irp_logins_total", method="password", outcome="ok"), 0)

    async def test_users_online_and_cache(self) -> None:
        await self.running.create_user("dave")
        await self.running.create_user("erin")
        dave = await self.running.client("dave", DEFAULT_PASSWORD)
        await dave.register_addresses([Endpoint.parse("192.0.2.7", 4605)], "online", 300)
        await self.host.read_totals(self.running.store)
        before = await scrape(self.port)
        self.assertEqual(sample(before, "irp_users_registered"), 3)  # admin, dave, erin
        self.assertEqual(sample(before, "irp_users_online", presence="online"), 1)
        self.assertEqual(sample(before, "irp_users_online", presence="away"), 0)
        self.assertGreater(sample(before, "irp_database_totals_timestamp_seconds"), 0)
        self.assertIn(("irp_sixid_ids", ()), before)
        self.assertEqual(sample(before, "irp_sixid_ids"), 0)
        erin = await self.running.client("erin", DEFAULT_PASSWORD)
        for _ in range(3):
            await erin.lookup("dave")
        for _ in range(3):
            await dave.lookup("erin")
        after = await scrape(self.port)

        def moved(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        # Dave's registration left his answer in the cache: his three look-ups are hits.
        # Erin never registered: her first look-up reads the database, the others are hits.
        self.assertEqual(moved("irp_cache_misses_total", cache="answers"), 1)
        self.assertEqual(moved("irp_cache_hits_total", cache="answers"), 5)
        self.assertEqual(moved("irp_requests_total", operation="lookup", outcome="ok"), 6)

    async def test_connections(self) -> None:
        before = await scrape(self.port)
        first = await self.running.client()
        second = await self.running.client()
        during = await scrape(self.port)
        self.assertEqual(sample(during, "irp_connections_open") - sample(before, "irp_connections_open"), 2)
        self.assertEqual(sample(during, "irp_connections_accepted_total") - sample(before, "irp_connections_accepted_total"), 2)
        await first.close()
        await second.close()
        # The server sees each close a moment after the client (its TLS shutdown): wait for
        # it, at most 10 s.
        from twisted.internet.task import deferLater

        for _ in range(1000):
            if not self.running.service.factory.admission.open:  # type: ignore[union-attr]
                break
            await deferLater(reactor, 0.01, lambda: None)
        after = await scrape(self.port)
        self.assertEqual(sample(after, "irp_connections_open"), sample(before, "irp_connections_open"))

    async def test_build_info(self) -> None:
        from common.version import VERSION

        samples = await scrape(self.port)
        self.assertEqual(sample(samples, "irp_build_info", version=VERSION), 1)


class LabelTests(TestCase):
    """Labels stay bounded whatever the requests are."""

    def test_codes_are_the_wire_codes(self) -> None:
        codes = wire_codes()
        self.assertIn("login-failed", codes)
        self.assertIn("internal-error", codes)
        self.assertNotIn("ok", codes)

    def test_unknown_outcome_is_other(self) -> None:
        registry = CollectorRegistry()
        metrics = RegistryMetrics(registry)
        metrics.login_done(LoginDone("carrier-pigeon", "x@example.org", "made-up-code", "192.0.2.1"))
        self.assertEqual(registry.get_sample_value("irp_logins_total", {"method": "unknown", "outcome": "other"}), 1)

    def test_unknown_operations_are_one_label(self) -> None:
        """Names that are no operation all count as ``unknown`` (and are not remembered)."""
        registry = CollectorRegistry()
        metrics = RegistryMetrics(registry)
        session = Session(peer_host="192.0.2.1")
        for name in ("a", "b", "c"):
            metrics.request_done(RequestDone(name, session, make_element(name, {}), "unknown-operation", 0.001, ()))
        self.assertEqual(
            registry.get_sample_value("irp_requests_total", {"operation": "unknown", "outcome": "unknown-operation"}), 3
        )
        self.assertEqual(metrics._children, {})
        self.assertNotIn("unknown", OPERATIONS)


class TotalsTests(TestCase):
    """The database totals: read periodically; a failure logged once, the last kept."""

    async def test_database_down(self) -> None:
        from twisted.internet.defer import fail, succeed
        from twisted.internet.task import Clock
        from twisted.logger import capturedLogs

        from irp.server.metrics import RegistryCollector, RegistryMetricsHost
        from irp.server.store.stats import StoreTotals

        class Store:
            totals_answer: object = StoreTotals(users=7)

            def totals(self) -> object:
                answer = self.totals_answer
                return fail(answer) if isinstance(answer, Exception) else succeed(answer)

        clock = Clock()
        clock.advance(1000)
        host = RegistryMetricsHost(clock, ["tcp:0:interface=127.0.0.1"])
        host.collector = RegistryCollector(type("Service", (), {"factory": None, "registry": None})())
        host.registry.register(host.collector)
        store = Store()
        await host.read_totals(store)
        self.assertEqual(host.registry.get_sample_value("irp_users_registered"), 7)
        store.totals_answer = errors.Unavailable("the registry's database is unavailable; try again later")
        with capturedLogs() as logs:
            clock.advance(15)
            await host.read_totals(store)
            await host.read_totals(store)
        self.assertEqual([event["log_format"] for event in logs], ["Metrics: cannot read the database totals: {error}"])
        self.assertEqual(host.registry.get_sample_value("irp_users_registered"), 7)
        self.assertEqual(host.registry.get_sample_value("irp_database_totals_timestamp_seconds"), 1000)
        store.totals_answer = StoreTotals(users=8)
        with capturedLogs() as logs:
            await host.read_totals(store)
        self.assertEqual([event["log_format"] for event in logs], ["Metrics: reading the database totals again"])
        self.assertEqual(host.registry.get_sample_value("irp_users_registered"), 8)
        self.assertEqual(host.registry.get_sample_value("irp_database_totals_timestamp_seconds"), 1015)


class OffByDefaultTests(TestCase):
    """Without --metrics-listen nothing listens and nobody listens to the registry."""

    async def test_off(self) -> None:
        running = await RunningRegistry(self).start()
        assert running.service is not None
        self.assertEqual(running.service.metrics.endpoint.ports, [])
        from irp.server.metrics import RegistryMetrics

        self.assertFalse([listener for listener in running.registry.events.listeners if isinstance(listener, RegistryMetrics)])
        self.assertIsNone(running.store.commit_observer)

    async def test_port_in_use_fails_the_start(self) -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        running = RunningRegistry(self, metrics_listen=(f"tcp:{port}:interface=127.0.0.1",))
        from twisted.internet.error import CannotListenError

        with self.assertRaises(CannotListenError):
            await running.start()
        self.flushLoggedErrors(CannotListenError)
