"""DNS SRV discovery against a real twisted.names server on loopback."""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.names import client, dns, server
from twisted.trial.unittest import TestCase

from irp import errors
from irp.client.discovery import discover, order_targets
from test.irp.client.helpers import ZoneAuthority, srv


class DiscoveryTests(TestCase):
    def start_dns(self) -> client.Resolver:
        zones = [
            ZoneAuthority(
                "example.org",
                {
                    b"example.org": [dns.Record_A("127.0.0.1", ttl=60)],
                    b"_irp._tcp.example.org": [srv(10, 0, 4604, "irp2.example.org"), srv(5, 0, 14604, "irp1.example.org")],
                },
            ),
            ZoneAuthority(
                "example.net",
                {
                    b"_irp._tcp.example.net": [srv(0, 60, 4604, "a.example.net"), srv(0, 40, 4604, "b.example.net")],
                },
            ),
            ZoneAuthority("example.com", {b"_irp._tcp.example.com": [srv(0, 0, 0, ".")]}),
            ZoneAuthority("example.edu", {b"example.edu": [dns.Record_A("127.0.0.1", ttl=60)]}),
        ]
        factory = server.DNSServerFactory(authorities=zones)
        protocol = dns.DNSDatagramProtocol(factory)
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return client.Resolver(servers=[("127.0.0.1", port.getHost().port)])

    async def test_priority_order(self) -> None:
        resolver = self.start_dns()
        self.assertEqual(
            await discover("example.org", resolver),
            [("irp1.example.org", 14604), ("irp2.example.org", 4604)],
        )

    async def test_weights_spread_choices(self) -> None:
        resolver = self.start_dns()
        firsts = []
        for seed in range(40):
            targets = await discover("example.net", resolver, random.Random(seed))
            self.assertEqual(sorted(targets), [("a.example.net", 4604), ("b.example.net", 4604)])
            firsts.append(targets[0][0])
        self.assertIn("a.example.net", firsts)
        self.assertIn("b.example.net", firsts)
        self.assertGreater(firsts.count("a.example.net"), firsts.count("b.example.net") // 2)

    async def test_no_service(self) -> None:
        resolver = self.start_dns()
        with self.assertRaises(errors.NotFound):
            await discover("example.com", resolver)

    async def test_fallback_to_domain(self) -> None:
        resolver = self.start_dns()
        self.assertEqual(await discover("example.edu", resolver), [("example.edu", 4604)])

    def test_order_targets_weight_zero_and_priorities(self) -> None:
        records = [(1, 0, "z", 1), (0, 0, "x", 2), (0, 10, "y", 3)]
        for seed in range(10):
            ordered = order_targets(records, random.Random(seed))
            self.assertEqual(ordered[-1], ("z", 1))
            self.assertEqual(sorted(ordered[:2]), [("x", 2), ("y", 3)])

