"""The HTTP endpoint in the registry: its options, the main process only, the endpoint's
resources on a real registry over loopback HTTP, and the health check's timeout."""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from irp.server.http.publisher import HEALTH_TIMEOUT, Publisher
from irp.server.service import RegistryService, RegistrySettings
from irp.tap import Options
from test.helpers import RunningRegistry


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(["--domain", "example.org", "--data-dir", "/nonexistent/irp", *arguments])
    return options


async def http_get(running: RunningRegistry, path: str) -> tuple[int, Headers, bytes]:
    """GET ``path`` of the running registry's HTTP endpoint: (code, headers, body)."""
    response = await Agent(reactor).request(b"GET", (running.http_url + path).encode())
    return response.code, response.headers, await readBody(response)


class OptionTests(TestCase):
    """--http-listen and --http-url."""

    def test_off_by_default(self) -> None:
        """Nothing is served and no URL named unless asked."""
        options = parse()
        self.assertEqual((options["http-listen"], options["http-url"]), ([], None))

    def test_default_url(self) -> None:
        """The URL defaults to the first host name and the first endpoint's port (none for 80)."""
        options = parse("--hostname", "pki.example.org", "--http-listen", "tcp:8080")
        self.assertEqual(options["http-url"], "http://pki.example.org:8080/")
        options = parse("--hostname", "::1", "--http-listen", "tcp6:80:interface=\\:\\:")
        self.assertEqual(options["http-url"], "http://[::1]/")
        self.assertEqual(options.settings().http_listen, ["tcp6:80:interface=\\:\\:"])

    def test_given_url(self) -> None:
        """A given URL gets its trailing slash; it needs no --http-listen (another process
        or a proxy serves it)."""
        self.assertEqual(parse("--http-url", "http://pki.example.org").settings().http_url, "http://pki.example.org/")

    def test_bad(self) -> None:
        """A URL that is not http://, an endpoint that does not parse, a UNIX socket without
        a URL: refused with a reason."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--http-url", "ftp://pki.example.org/")
        self.assertIn("http://", str(caught.exception))
        with self.assertRaises(usage.UsageError):
            parse("--http-listen", "nonsense:1")
        with self.assertRaises(usage.UsageError) as caught:
            parse("--http-listen", "unix:/tmp/irp-http.sock")
        self.assertIn("--http-url is required", str(caught.exception))

    def test_main_process_only(self) -> None:
        """A worker (adopted sockets) does not serve HTTP, but names the URL."""
        settings = RegistrySettings(domain="example.org", data_dir="/nonexistent", http_listen=["tcp:8080"], http_url="http://x/")
        self.assertIsNotNone(RegistryService(settings, reactor).http)
        settings.adopted = [(3, 2)]
        self.assertIsNone(RegistryService(settings, reactor).http)


class HealthTimeoutTests(TestCase):
    """The health check's deadline."""

    def test_slow_database(self) -> None:
        """A read that does not answer within 5 seconds: unhealthy, saying so."""

        class Store:
            def security_generation(self) -> Deferred[int]:
                return Deferred()

        class Registry:
            store = Store()

        clock = Clock()
        checking = Deferred.fromCoroutine(Publisher(Registry(), clock).health())  # type: ignore[arg-type]
        clock.advance(HEALTH_TIMEOUT - 0.1)
        self.assertNoResult(checking)
        clock.advance(0.2)
        self.assertEqual(self.successResultOf(checking), "the database did not answer within 5 seconds")

    def test_unavailable(self) -> None:
        """The store's Unavailable: said so, in one line."""
        from twisted.internet.defer import fail

        from irp.errors import Unavailable

        class Store:
            def security_generation(self) -> Deferred[int]:
                return fail(Unavailable("the registry's database is unavailable; try again later"))

        class Registry:
            store = Store()

        checking = Deferred.fromCoroutine(Publisher(Registry(), Clock()).health())  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(checking), "the database is unavailable")


class EndpointTests(TestCase):
    """A real registry's endpoint over loopback HTTP."""

    timeout = 30

    async def test_resources(self) -> None:
        """The CA certificates by name and label, the CRLs IRP's get-crl serves (the same
        bytes), and /health."""
        from irp.server.ca.issuance import issuing_crl_name

        running = await RunningRegistry(self, http=True).start()
        ca = running.ca
        label = issuing_crl_name(ca.issuing_certificate)
        code, headers, body = await http_get(running, "ca/root.crt")
        self.assertEqual((code, body), (200, ca.root_certificate.public_bytes(Encoding.DER)))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/pkix-cert"])
        for name in ("issuing", label):
            code, _, body = await http_get(running, f"ca/{name}.crt")
            self.assertEqual((code, body), (200, ca.issuing_certificate.public_bytes(Encoding.DER)))
        client = await running.client()
        crls = {info.issuer: info.crl for info in await client.get_crls()}
        for name, issuer in (("issuing", "issuing"), (label, "issuing"), ("root", "root")):
            code, headers, body = await http_get(running, f"crl/{name}.crl")
            self.assertEqual(code, 200)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/pkix-crl"])
            self.assertEqual(x509.load_der_x509_crl(body), crls[issuer])
        code, _, body = await http_get(running, "crl/issuing-0123456789abcdef.crl")
        self.assertEqual(code, 404)
        self.assertEqual(await http_get(running, "health"), (200, await self._headers(running), b"ok\n"))

    async def _headers(self, running: RunningRegistry) -> Headers:
        return (await http_get(running, "health"))[1]

    async def test_revocation_reaches_the_crl(self) -> None:
        """After a revocation the served CRL lists the certificate."""
        running = await RunningRegistry(self, http=True).start()
        user = await running.enrol("alice")
        _, _, before = await http_get(running, "crl/issuing.crl")
        self.assertIsNone(x509.load_der_x509_crl(before).get_revoked_certificate_by_serial_number(user.serial))
        await running.store.revoke_certificate(user.serial, "superseded")
        _, _, after = await http_get(running, "crl/issuing.crl")
        entry = x509.load_der_x509_crl(after).get_revoked_certificate_by_serial_number(user.serial)
        assert entry is not None
        self.assertEqual(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, x509.ReasonFlags.superseded)

    async def test_stops(self) -> None:
        """Stopping the endpoint (as the registry's stopService does) closes its port."""
        running = await RunningRegistry(self, http=True).start()
        assert running.service is not None and running.service.http is not None
        port = running.service.http.ports[0]
        await running.service.http.stop()
        self.assertFalse(port.connected)  # type: ignore[attr-defined]
        self.assertEqual(running.service.http.ports, [])


class RetiredIssuerTests(TestCase):
    """An issuing CA replaced by a rotation (``ca.retired_issuers``) keeps its CRL, its
    certificate and its OCSP answers under its label."""

    timeout = 30

    async def test_retired_issuer(self) -> None:
        """Its certificate and CRL (signed by its key) by label; its own responder answers
        for the certificates it issued, from ca/ocsp/<label>/."""
        import datetime

        from cryptography.hazmat.primitives import hashes
        from cryptography.x509 import ocsp

        from common.identity import Identity
        from common.pki.keyfiles import fingerprint
        from irp.server.ca import CertificateAuthority, generate_key
        from irp.server.ca.issuance import ca_certificates, issuing_crl_name

        running = await RunningRegistry(self, http=True).start()
        ca = running.ca
        old_key = generate_key("p256")
        _, old_issuer = ca_certificates(ca.domain, ca.root_key, old_key, ca.now() - datetime.timedelta(days=400))
        old_ca = CertificateAuthority(ca.domain, ca.root_certificate, ca.root_key, old_issuer, old_key)
        ca._retired = [(old_issuer, old_key)]  # as a rotation leaves it (irp.server.ca.rotation)
        label = issuing_crl_name(old_issuer)
        self.assertNotEqual(label, issuing_crl_name(ca.issuing_certificate))
        code, _, body = await http_get(running, f"ca/{label}.crt")
        self.assertEqual((code, body), (200, old_issuer.public_bytes(Encoding.DER)))
        await running.add_user("alice")
        old = old_ca.issue_user_certificate(Identity("alice", ca.domain), generate_key("p256").public_key())
        await running.store.add_certificate("alice", old, fingerprint(old))
        await running.store.revoke_certificate(old.serial_number, "superseded")
        code, _, body = await http_get(running, f"crl/{label}.crl")
        crl = x509.load_der_x509_crl(body)
        self.assertEqual(crl.issuer, old_issuer.subject)
        self.assertTrue(crl.is_signature_valid(old_key.public_key()))  # type: ignore[arg-type]
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(old.serial_number))

        host = running.service.http  # type: ignore[union-attr]
        assert host is not None and host.responder is not None
        await host._renew()  # the daily check takes the retired issuer in
        self.assertTrue(os.path.isfile(os.path.join(running.data_dir, "ca", "ocsp", label, "key.pem")))
        request = ocsp.OCSPRequestBuilder().add_certificate(old, old_issuer, hashes.SHA1()).build()
        answer = await host.responder.answer(request.public_bytes(Encoding.DER))
        response = ocsp.load_der_ocsp_response(answer.body)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        (signer,) = response.certificates
        signer.verify_directly_issued_by(old_issuer)


async def ocsp_post(running: RunningRegistry, der: bytes) -> ocsp.OCSPResponse:
    """POST an OCSP request to the running registry's responder; the parsed response."""
    from io import BytesIO

    from twisted.web.client import FileBodyProducer

    response = await Agent(reactor).request(
        b"POST",
        (running.http_url + "ocsp").encode(),
        Headers({b"Content-Type": [b"application/ocsp-request"]}),
        FileBodyProducer(BytesIO(der)),
    )
    return ocsp.load_der_ocsp_response(await readBody(response))


class SharedDatabaseTests(TestCase):
    """A revocation through another registry process sharing the database reaches this
    one's responder (its cache) and CRL at once."""

    timeout = 60

    async def check(self, database: str | None) -> None:
        from cryptography.hazmat.primitives import hashes

        data_dir = os.path.abspath(self.mktemp())
        serving = await RunningRegistry(self, database=database, data_dir=data_dir, http=True).start()
        other = await RunningRegistry(self, database=database, data_dir=data_dir).start()
        alice = await other.enrol("alice")
        request = ocsp.OCSPRequestBuilder().add_certificate(alice.certificate, serving.ca.issuing_certificate, hashes.SHA1()).build()
        der = request.public_bytes(Encoding.DER)
        self.assertEqual((await ocsp_post(serving, der)).certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual((await ocsp_post(serving, der)).certificate_status, ocsp.OCSPCertStatus.GOOD)
        await other.store.revoke_certificate(alice.serial, "cessation-of-operation")
        answer = await ocsp_post(serving, der)
        self.assertEqual(answer.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        self.assertEqual(answer.revocation_reason, x509.ReasonFlags.cessation_of_operation)
        _, _, body = await http_get(serving, "crl/issuing.crl")
        self.assertIsNotNone(x509.load_der_x509_crl(body).get_revoked_certificate_by_serial_number(alice.serial))

    async def test_sqlite(self) -> None:
        """Two processes on one SQLite file."""
        await self.check(None)

    async def test_postgresql(self) -> None:
        """Two processes on one PostgreSQL database."""
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise SkipTest(f"no PostgreSQL server: {error}") from None
        await self.check(server.create_database())


class ResponderLogTests(TestCase):
    """The start log tells when an OCSP responder certificate was issued or renewed."""

    timeout = 30

    async def test_issued_once(self) -> None:
        """The first start issues it (one line); the next start loads it (no line)."""
        from typing import cast

        from twisted.logger import ILogObserver, globalLogPublisher

        events: list[dict[str, object]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        def issued() -> int:
            return len([event for event in events if "Issued the OCSP responder" in str(event.get("log_format"))])

        data_dir = os.path.abspath(self.mktemp())
        await RunningRegistry(self, data_dir=data_dir, http=True).start()
        self.assertEqual(issued(), 1)
        await RunningRegistry(self, data_dir=data_dir, http=True).start()
        self.assertEqual(issued(), 1)
