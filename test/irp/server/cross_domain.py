"""Shared fixture of the federation tests: two domains, each with its own registry and CA, found by DNS SRV."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.names import client, dns, server
from twisted.trial.unittest import TestCase

from common.profile import Profile
from irp.server.credentials import load_or_create_credentials
from test.helpers import EnrolledUser, RunningRegistry, make_profile
from test.irp.client.helpers import ZoneAuthority

HOSTNAMES = ("localhost", "127.0.0.1", "::1")


class CrossDomainTestCase(TestCase):
    """Starts the DNS server and both registries."""

    async def start_domains(self) -> None:
        self.zones = {
            "example.org": ZoneAuthority("example.org", {}),
            "example.net": ZoneAuthority("example.net", {}),
        }
        factory = server.DNSServerFactory(authorities=list(self.zones.values()))
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)])
        # Each operator trusts the other domain's root: make both CAs first.
        directories = {domain: os.path.abspath(self.mktemp()) for domain in self.zones}
        roots = {
            domain: load_or_create_credentials(path, domain, HOSTNAMES, key_type="p256").ca.root_certificate
            for domain, path in directories.items()
        }
        self.registries: dict[str, RunningRegistry] = {}
        for domain, other in (("example.org", "example.net"), ("example.net", "example.org")):
            registry = RunningRegistry(
                self, domain=domain, data_dir=directories[domain], federated_roots=(roots[other],), resolver=self.resolver
            )
            self.registries[domain] = await registry.start()
            self.publish(domain, registry.port)

    def publish(self, domain: str, port: int) -> None:
        """The domain's SRV record: its registry is ``localhost`` on ``port``."""
        self.zones[domain].records[f"_irp._tcp.{domain}".encode()] = [dns.Record_SRV(0, 0, port, b"localhost", ttl=60)]

    def profile_of(self, user: EnrolledUser, domain: str, other: str) -> str:
        """A profile for ``user`` of ``domain`` that trusts ``other`` explicitly (no
        registry configured for it: DNS SRV finds it)."""
        path = os.path.join(os.path.abspath(self.mktemp()), user.username)
        make_profile(self.registries[domain], user, path)
        Profile(path).trust_domain(other, self.registries[other].root)
        return path
