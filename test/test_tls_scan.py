"""A real TLS scanner (Debian's sslscan) against a running registry.

It must find only TLS 1.2 and 1.3, only forward-secret AES-256-GCM/SHA-384 suites, no
insecure renegotiation, strong key exchange groups, and the domain CA's chain. The scan is
skipped, saying so, where sslscan is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil

from lxml import etree
from OpenSSL import SSL
from twisted.internet import utils
from twisted.trial.unittest import SkipTest, TestCase

from irp import tls
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
        from irp.ca import generate_key

        key = generate_key("p256")
        certificate = ca.issue_server_certificate(["localhost"], key.public_key())
        context = tls.make_server_context(key, certificate, [ca.issuing_certificate])
        options = context.set_options(0)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        self.assertTrue(options & SSL.OP_NO_RENEGOTIATION)
        self.assertTrue(options & SSL.OP_NO_TICKET)



