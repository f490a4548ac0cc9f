"""Which addresses an agent publishes (sixchat/addresses.py)."""

from __future__ import annotations

import ipaddress
from typing import Self

from twisted.trial.unittest import TestCase

from common import addresses
from common.addresses import advertised_endpoints, primary_addresses
from irp.wire.records import Endpoint


class AdvertisedEndpointsTests(TestCase):
    def test_specific_addresses_are_published_as_bound(self) -> None:
        self.assertEqual(
            advertised_endpoints([("127.0.0.1", 4605), ("::1", 4606), ("2001:DB8:0:0::1", 4605)]),
            [Endpoint("127.0.0.1", 4605), Endpoint("::1", 4606), Endpoint("2001:db8::1", 4605)],
        )

    def test_wildcards_publish_the_primary_addresses(self) -> None:
        self.patch(addresses, "primary_addresses", lambda: ["2001:db8::7", "192.0.2.7"])
        self.assertEqual(
            advertised_endpoints([("::", 4605)]),
            [Endpoint("2001:db8::7", 4605), Endpoint("192.0.2.7", 4605)],
        )
        # An IPv4 wildcard cannot be reached over IPv6.
        self.assertEqual(advertised_endpoints([("0.0.0.0", 4605)]), [Endpoint("192.0.2.7", 4605)])

    def test_duplicates_and_zones(self) -> None:
        self.patch(addresses, "primary_addresses", lambda: ["192.0.2.7"])
        self.assertEqual(
            advertised_endpoints([("::", 4605), ("0.0.0.0", 4605), ("192.0.2.7", 4605)]),
            [Endpoint("192.0.2.7", 4605)],
        )
        self.assertEqual(advertised_endpoints([("fe80::1%lo", 4605)]), [Endpoint("fe80::1", 4605)])

    def test_no_network(self) -> None:
        self.patch(addresses, "primary_addresses", list)
        self.assertEqual(advertised_endpoints([("::", 4605)]), [])


class PrimaryAddressTests(TestCase):
    def test_only_usable_addresses(self) -> None:
        for address in primary_addresses():
            ip = ipaddress.ip_address(address)
            self.assertFalse(ip.is_loopback or ip.is_unspecified or ip.is_link_local, address)
            self.assertEqual(address, ip.compressed)

    def test_no_route_means_no_address(self) -> None:
        import socket

        class Unroutable:
            def __init__(self, *args: object) -> None:
                pass

            def __enter__(self) -> Self:
                return self

            def __exit__(self, *args: object) -> None:
                return None

            def connect(self, target: object) -> None:
                raise OSError("Network is unreachable")

        self.patch(socket, "socket", Unroutable)
        self.assertEqual(primary_addresses(), [])


class DialNameTests(TestCase):
    """dial_name: what HostnameEndpoint is given."""

    def test_addresses_as_they_are_names_in_idna(self) -> None:
        self.assertEqual(addresses.dial_name("192.0.2.1"), "192.0.2.1")
        self.assertEqual(addresses.dial_name("2001:db8::1"), "2001:db8::1")
        self.assertEqual(addresses.dial_name("example.org"), b"example.org")
        self.assertEqual(addresses.dial_name("bücher.example"), b"xn--bcher-kva.example")
