"""A real TLS scanner (Debian's sslscan) against a running registry.

It must find only TLS 1.2 and 1.3, only forward-secret AES-256-GCM/SHA-384 suites, no
insecure renegotiation, strong key exchange groups, and the domain CA's chain. The scan is
skipped, saying so, where sslscan is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import ssl

from lxml import etree
from OpenSSL import SSL
from twisted.internet import threads, utils
from twisted.trial.unittest import SkipTest, TestCase

from common import tls
from common.wire.framing import encode_frame
from test.helpers import RunningRegistry

FORWARD_SECRET_AEAD = {"TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES256-GCM-SHA384"}


class ScannerTests(TestCase):
    async def scan(self) -> tuple[RunningRegistry, etree._Element]:
        scanner = shutil.which("sslscan")
        if scanner is None:
            raise SkipTest("sslscan is not installed (apt-get install sslscan); .ci/run installs it")
        registry = await RunningRegistry(self).start()
        output = await utils.getProcessOutput(
            scanner, ["--no-colour", "--xml=-", "--show-certificate", f"127.0.0.1:{registry.port}"], errortoo=False
        )
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        return registry, etree.fromstring(output, parser)

    async def test_only_tls12_and_tls13(self) -> None:
        _registry, report = await self.scan()
        enabled = {(node.get("type"), node.get("version")) for node in report.iter("protocol") if node.get("enabled") == "1"}
        self.assertEqual(enabled, {("tls", "1.2"), ("tls", "1.3")})

    async def test_only_forward_secret_aes256_gcm_suites(self) -> None:
        _registry, report = await self.scan()
        suites = {node.get("cipher") for node in report.iter("cipher")}
        self.assertTrue(suites)
        self.assertLessEqual(suites, FORWARD_SECRET_AEAD)
        self.assertIn("TLS_AES_256_GCM_SHA384", suites)

    async def test_no_insecure_renegotiation_or_heartbleed(self) -> None:
        _registry, report = await self.scan()
        renegotiation = report.find(".//renegotiation")
        assert renegotiation is not None
        self.assertTrue(renegotiation.get("supported") == "0" or renegotiation.get("secure") == "1")
        self.assertEqual({node.get("vulnerable") for node in report.iter("heartbleed")}, {"0"})

    async def test_strong_groups_only(self) -> None:
        _registry, report = await self.scan()
        bits = [int(node.get("bits", "0")) for node in report.iter("group")]
        self.assertTrue(bits)
        self.assertGreaterEqual(min(bits), 128)
        names = " ".join(node.get("name", "") for node in report.iter("group"))
        self.assertNotIn("ffdhe2048", names)

    async def test_chain_is_the_domain_ca(self) -> None:
        _registry, report = await self.scan()
        issuers = [node.text for node in report.iter("issuer")]
        self.assertIn("example.org IRP Issuing CA", issuers)
        self.assertEqual({node.text for node in report.iter("self-signed")}, {"false"})

    def test_context_refuses_compression_and_renegotiation(self) -> None:
        """sslscan's OpenSSL cannot probe compression; the context's options must forbid it."""
        from test import pki
        ca = pki.make_ca()
        from irp.server.ca import generate_key

        key = generate_key("p256")
        certificate = ca.issue_server_certificate(["localhost"], key.public_key())
        context = tls.make_server_context(key, certificate, [ca.issuing_certificate])
        options = context.set_options(0)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        self.assertTrue(options & SSL.OP_NO_RENEGOTIATION)
        self.assertTrue(options & SSL.OP_NO_TICKET)





def _tickets_received(port: int) -> tuple[str | None, int, bool]:
    """Connect with the standard library's TLS 1.3 client, send a request, read its answer
    and return (TLS version, NewSessionTicket messages received, whether the session holds
    a ticket). TLS 1.3 tickets arrive after the handshake, before the first answer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only the tickets matter here
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    tickets: list[bytes] = []

    def watch(connection: object, direction: str, version: object, content_type: object, message_type: object, data: bytes) -> None:
        if direction == "read" and message_type == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets.append(data)

    context._msg_callback = watch  # type: ignore[attr-defined]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        connection.sendall(encode_frame(b'<request v="1" id="1"><capabilities/></request>'))
        header = connection.recv(4)
        assert len(header) == 4, header
        session = connection.session
        return connection.version(), len(tickets), bool(session is not None and session.has_ticket)


class SessionTicketTests(TestCase):
    """docs/irp.rst (TCP and TLS): the server issues no session tickets (issue 9, item 22)."""

    async def test_no_tls13_session_tickets(self) -> None:
        registry = await RunningRegistry(self).start()
        version, tickets, has_ticket = await threads.deferToThread(_tickets_received, registry.port)
        self.assertEqual(version, "TLSv1.3")
        self.assertEqual((tickets, has_ticket), (0, False))

    def test_context_issues_no_tickets(self) -> None:
        """The server context's ticket count is 0 (OpenSSL's default is 2)."""
        from irp.server.ca import generate_key
        from test import pki
        ca = pki.make_ca()
        key = generate_key("p256")
        certificate = ca.issue_server_certificate(["localhost"], key.public_key())
        context = tls.make_server_context(key, certificate, [ca.issuing_certificate])
        self.assertEqual(tls.session_tickets(context), 0)
