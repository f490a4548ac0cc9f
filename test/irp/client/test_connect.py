"""Tests for :mod:`irp.client.connect`: a real registry over TLS for what only real TLS shows
(the pinned root, the server's name), finding a registry by DNS SRV, and ``host[:port]``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.trial import unittest

from irp import errors
from irp.client import connect, connect_domain, split_server
from test import pki
from test.helpers import RunningRegistry, closed_port
from test.irp.client.scripted import DOMAIN


class RealTLSTests(unittest.TestCase):
    """What only a real TLS connection shows."""

    async def test_wrong_pinned_root(self) -> None:
        """A registry whose chain does not end at the pinned root is refused in TLS."""
        registry = await RunningRegistry(self).start()
        other_root = pki.make_ca(DOMAIN, label="pinned elsewhere").root_certificate
        try:
            client = await connect(global_reactor, "127.0.0.1", registry.port, domain=DOMAIN, trust_roots=[other_root], timeout=10)
        except errors.ServerVerificationFailed:
            pass
        else:
            self.addCleanup(client.close)
            self.fail("connected to a registry with an unpinned root")

    async def test_server_name_mismatch(self) -> None:
        """A registry whose certificate does not name the host dialled is refused."""
        registry = await RunningRegistry(self, listen_host="127.0.0.2").start()
        try:
            client = await connect(global_reactor, "127.0.0.2", registry.port, domain=DOMAIN, trust_roots=[registry.root], timeout=10)
        except errors.ServerVerificationFailed:
            pass
        else:
            self.addCleanup(client.close)
            self.fail("connected although the certificate does not name 127.0.0.2")

    async def test_host_name_accepted(self) -> None:
        """Dialling a name the certificate carries works."""
        registry = await RunningRegistry(self).start()
        client = await connect(global_reactor, "localhost", registry.port, domain=DOMAIN, trust_roots=[registry.root], timeout=10)
        self.addCleanup(client.close)
        self.assertEqual((await client.ca_chain()).root, registry.root)

    async def test_unreachable(self) -> None:
        """Nobody listening: connection-lost, naming the address."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            await connect(global_reactor, "127.0.0.1", port, domain=DOMAIN, trust_roots=[pki.make_ca().root_certificate], timeout=10)
        except errors.ConnectionLost as error:
            self.assertIn(f"port {port}", error.message)
        else:
            self.fail("connected to nothing")


class DiscoveryTests(unittest.TestCase):
    """connect_domain: a registry found by DNS SRV, trying targets in order."""

    def resolver(self, records: list[tuple[int, int, int, str]]) -> Any:
        """A DNS server on loopback publishing ``_irp._tcp.example.org`` SRV records
        (priority, weight, port, target); a resolver asking it."""
        from twisted.names import client, dns, server

        from test.irp.client.helpers import ZoneAuthority, srv

        zone = ZoneAuthority(DOMAIN, {b"_irp._tcp.example.org": [srv(*record) for record in records]})
        protocol = dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[zone]))
        port = global_reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return client.Resolver(servers=[("127.0.0.1", port.getHost().port)])

    async def test_falls_back_in_order(self) -> None:
        """A target that does not answer is skipped; the client says which one answered."""
        registry = await RunningRegistry(self).start()
        dead = await closed_port()
        resolver = self.resolver([(0, 0, dead, "localhost"), (10, 0, registry.port, "localhost")])
        client = await connect_domain(global_reactor, DOMAIN, trust_roots=[registry.root], timeout=10, resolver=resolver)
        self.addCleanup(client.close)
        self.assertEqual((client.host, client.port), ("localhost", registry.port))
        self.assertEqual((await client.ca_chain()).root, registry.root)

    async def test_nothing_answers(self) -> None:
        """When no target answers, the error lists every one tried."""
        dead = await closed_port()
        resolver = self.resolver([(0, 0, dead, "localhost"), (5, 0, dead, "irp.invalid")])
        try:
            await connect_domain(global_reactor, DOMAIN, trust_roots=[pki.make_ca().root_certificate], timeout=5, resolver=resolver)
        except errors.ConnectionLost as error:
            self.assertIn("localhost", error.message)
            self.assertIn("irp.invalid", error.message)
        else:
            self.fail("connected to nothing")

    async def test_server_that_fails_verification_is_skipped(self) -> None:
        """A target whose certificate does not chain to the pinned root is not the
        registry: the next one is tried."""
        impostor = await RunningRegistry(self, domain=DOMAIN).start()
        genuine = await RunningRegistry(self, domain=DOMAIN).start()
        resolver = self.resolver([(0, 0, impostor.port, "localhost"), (1, 0, genuine.port, "localhost")])
        client = await connect_domain(global_reactor, DOMAIN, trust_roots=[genuine.root], timeout=10, resolver=resolver)
        self.addCleanup(client.close)
        self.assertEqual(client.port, genuine.port)


class SplitServerTests(unittest.SynchronousTestCase):
    """split_server."""

    def test_forms(self) -> None:
        """host, host:port, [v6]:port and bare IPv6."""
        self.assertEqual(split_server("irp.example.org"), ("irp.example.org", 4604))
        self.assertEqual(split_server("irp.example.org:14604"), ("irp.example.org", 14604))
        self.assertEqual(split_server("[2001:db8::1]:5000"), ("2001:db8::1", 5000))
        self.assertEqual(split_server("[2001:db8::1]"), ("2001:db8::1", 4604))
        self.assertEqual(split_server("2001:db8::1"), ("2001:db8::1", 4604))
        self.assertEqual(split_server(" 192.0.2.1:7 "), ("192.0.2.1", 7))

    def test_bad(self) -> None:
        """Bad ports and empty hosts are refused."""
        for text in ("", ":4604", "host:0", "host:65536", "host:abc", "[::1]:x", "host:\u00b2", "host:\u0664\u0666\u0660\u0664"):
            self.assertRaises(ValueError, split_server, text)
