"""Endpoints (moved from the IRP records) and ``host[:port]`` text."""

from __future__ import annotations

from twisted.trial import unittest

from common.endpoint import Endpoint, InvalidEndpoint, split_host_port


class EndpointTests(unittest.SynchronousTestCase):
    """Endpoint.parse."""

    def test_normalised(self) -> None:
        """IPv6 addresses are compressed and lower-cased; ports become integers."""
        self.assertEqual(Endpoint.parse("2001:DB8:0:0::1", "4605"), Endpoint("2001:db8::1", 4605))
        self.assertEqual(Endpoint.parse("192.0.2.1", 1), Endpoint("192.0.2.1", 1))
        self.assertEqual(Endpoint.parse("::1", 65535).port, 65535)

    def test_family(self) -> None:
        """family tells IPv6 from IPv4."""
        self.assertEqual(Endpoint.parse("2001:db8::1", 1).family, "ipv6")
        self.assertEqual(Endpoint.parse("192.0.2.1", 1).family, "ipv4")

    def test_bad_addresses(self) -> None:
        """Names, multicast and unspecified addresses are refused."""
        for address in ("example.org", "", "1.2.3", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "1.2.3.4/24"):
            self.assertRaises(InvalidEndpoint, Endpoint.parse, address, 4605)

    def test_zone_refused(self) -> None:
        """An IPv6 zone is refused: it is meaningless elsewhere and is free text (which
        could carry control characters to the terminals of users who look it up)."""
        for address in ("fe80::1%eth0", "fe80::1%\n\x1b[31m", "fe80::1%" + "x" * 1000):
            self.assertRaises(InvalidEndpoint, Endpoint.parse, address, 4605)

    def test_bad_ports(self) -> None:
        """Ports are decimal 1-65535 and nothing else."""
        for port in (0, 65536, -1, "0", "65536", "abc", "", "+80", "8_0", " 80", "80 ", "0x50", "٨٠"):
            self.assertRaises(InvalidEndpoint, Endpoint.parse, "192.0.2.1", port)

    def test_ipv4_in_ipv6_refused(self) -> None:
        """IPv4-mapped and IPv4-compatible IPv6 addresses are refused (Python versions
        write them differently, so their text would not survive a signature check): the
        error names the IPv4 address to register instead. ::1 is not one of them."""
        for address in ("::ffff:192.0.2.1", "::FFFF:c000:201", "0:0:0:0:0:ffff:192.0.2.1", "::192.0.2.1", "::c000:201"):
            error = self.assertRaises(InvalidEndpoint, Endpoint.parse, address, 4605)
            self.assertIn("192.0.2.1", error.message)
        self.assertEqual(Endpoint.parse("::1", 1).address, "::1")
        self.assertEqual(Endpoint.parse("::1:0:0:0", 1).address, "::1:0:0:0")

    def test_received_keeps_the_text(self) -> None:
        """An endpoint of a received record keeps its address text as sent (the signature
        covers it), still validated."""
        for address in ("2001:DB8:0:0::1", "::ffff:192.0.2.1", "::ffff:c000:201", "192.0.2.1"):
            self.assertEqual(Endpoint.received(address, "4605"), Endpoint(address, 4605))
        for address, port in (("example.org", "1"), ("fe80::1%eth0", "1"), ("::1", "0"), ("::1", "\u0668\u0660"), ("ff02::1", "1")):
            self.assertRaises(InvalidEndpoint, Endpoint.received, address, port)

    def test_ordering(self) -> None:
        """Endpoints are hashable and ordered (duplicates are detectable)."""
        a, b = Endpoint.parse("192.0.2.1", 1), Endpoint.parse("192.0.2.1", "1")
        self.assertEqual(len({a, b}), 1)
        self.assertLess(Endpoint("192.0.2.1", 1), Endpoint("192.0.2.1", 2))

    def test_same_class_for_irp(self) -> None:
        """IRP's records use this very class (``irp.wire.records.Endpoint`` is it)."""
        from irp.wire import records

        self.assertIs(records.Endpoint, Endpoint)


class SplitHostPortTests(unittest.SynchronousTestCase):
    """:func:`split_host_port`: ``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address."""

    def test_forms(self) -> None:
        """Each form splits; a missing port is the default."""
        self.assertEqual(split_host_port("example.org", 7), ("example.org", 7))
        self.assertEqual(split_host_port(" example.org:4604 ", 7), ("example.org", 4604))
        self.assertEqual(split_host_port("[2001:db8::1]:80", 7), ("2001:db8::1", 80))
        self.assertEqual(split_host_port("[2001:db8::1]", 7), ("2001:db8::1", 7))
        self.assertEqual(split_host_port("2001:db8::1", 7), ("2001:db8::1", 7))

    def test_bad(self) -> None:
        """No host, or a port that is not 1-65535 in plain decimal, is a ValueError."""
        for text in ("", ":80", "[]:80", "host:0", "host:65536", "host:08", "host:x", "host:+1"):
            self.assertRaises(ValueError, split_host_port, text, 7)
