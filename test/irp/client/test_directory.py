"""The agent's view of IRP (sixchat/directory.py) against real registries on loopback."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.names.error import DNSNameError
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.profile import Profile
from irp import errors as irp_errors
from irp.client import Directory
from irp.wire.records import Endpoint
from test.helpers import EnrolledUser, RunningRegistry, closed_port, make_profile

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")


class NoSuchDomainResolver:
    """A resolver for which no domain exists (as DNS answers NXDOMAIN)."""

    def lookupService(self, name: str) -> Deferred[Any]:
        return fail(DNSNameError(name))


class DirectoryTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = await RunningRegistry(self).start()
        self.alice = await self.registry.enrol("alice")
        self.path = make_profile(self.registry, self.alice, os.path.join(os.path.abspath(self.mktemp()), "alice"))

    def directory(self, user: EnrolledUser | None = None, resolver: Any = None) -> Directory:
        user = user or self.alice
        directory = Directory(
            reactor, Profile(self.path), user.key, user.certificate, [self.registry.ca.issuing_certificate], resolver=resolver
        )
        self.addCleanup(directory.close)
        return directory

    async def test_register_and_look_up(self) -> None:
        directory = self.directory()
        endpoints = [Endpoint.parse("2001:db8::1", 4605), Endpoint.parse("192.0.2.7", 4605)]
        record = await directory.register(endpoints, "busy", 120)
        self.assertEqual((record.identity, record.presence, record.endpoints), (ALICE, "busy", tuple(endpoints)))
        found = await directory.lookup(ALICE)
        self.assertEqual((found.presence, found.endpoints, found.seq), ("busy", tuple(endpoints), record.seq))

    async def test_certificate_fingerprints(self) -> None:
        bob = await self.registry.enrol("bob")
        directory = self.directory()
        self.assertEqual(await directory.certificate_fingerprints(BOB), {fingerprint(bob.certificate)})
        client = await self.registry.client(user=bob)
        await client.revoke(bob.serial, "key-compromise")
        self.assertEqual(await directory.certificate_fingerprints(BOB), set())
        self.assertEqual(directory.own_fingerprint, fingerprint(self.alice.certificate))

    async def test_issuing_crl(self) -> None:
        bob = await self.registry.enrol("bob")
        client = await self.registry.client(user=bob)
        await client.revoke(bob.serial, "key-compromise")
        crl = await self.directory().issuing_crl("example.org")
        self.assertEqual(crl.issuer, self.registry.ca.issuing_certificate.subject)
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(bob.serial))

    async def test_unknown_user(self) -> None:
        with self.assertRaises(irp_errors.NotFound):
            await self.directory().lookup(Identity.parse("nobody@example.org"))

    async def test_untrusted_or_unconfigured_domain(self) -> None:
        directory = self.directory()
        with self.assertRaises(irp_errors.ClientError) as caught:
            await directory.lookup(Identity.parse("dave@other.example"))
        self.assertIn("not a trusted domain", caught.exception.message)
        profile = Profile(self.path)
        profile.trust_domain("other.example", self.registry.root)
        # Trusted but not configured: found by DNS SRV (here: no such domain).
        with self.assertRaises(irp_errors.ConnectionLost) as caught:
            await self.directory(resolver=NoSuchDomainResolver()).lookup(Identity.parse("dave@other.example"))
        self.assertIn("no registry of other.example could be reached", caught.exception.message)

    async def test_one_connection_for_concurrent_callers(self) -> None:
        directory = self.directory()
        first, second, third = directory.client("example.org"), directory.client("example.org"), directory.client("example.org")
        clients = [await first, await second, await third]
        self.assertIsNotNone(clients[0])
        self.assertEqual(len({id(client) for client in clients}), 1)

    async def test_concurrent_failure_reaches_everyone(self) -> None:
        profile = Profile(self.path)
        config = profile.load_config()
        config.port = await closed_port()
        profile.save_config(config)
        directory = self.directory()
        waiting = [directory.client("example.org") for _ in range(2)]
        for attempt in waiting:
            with self.assertRaises(irp_errors.IRPError):
                await attempt

    async def test_reconnects_after_the_connection_drops(self) -> None:
        directory = self.directory()
        client = await directory.client("example.org")
        await client.close()
        again = await directory.client("example.org")
        self.assertIsNot(again, client)
        await directory.lookup(ALICE)

    async def test_other_domains_are_asked_anonymously(self) -> None:
        """Another domain's registry did not issue our certificate and would refuse every
        request made with it; its CRL and CA chain are public."""
        other = await RunningRegistry(self, domain="other.example").start()
        dave = await other.enrol("dave")
        client = await other.client(user=dave)
        await client.revoke(dave.serial, "superseded")
        profile = Profile(self.path)
        profile.trust_domain("other.example", other.root)
        config = profile.load_config()
        config.registries["other.example"] = f"127.0.0.1:{other.port}"
        profile.save_config(config)
        directory = self.directory()
        crl = await directory.issuing_crl("other.example")
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(dave.serial))
        # Our own registry still knows us.
        await directory.register([], "away", 60)

    async def test_registry_lost_refused_and_back(self) -> None:
        """The log says when the registry is reached, lost, refused and back (once each),
        in words, without Twisted's "Starting factory" noise."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def text() -> list[str]:
            return [formatEvent(event) for event in events]

        directory = self.directory()
        await directory.lookup(ALICE)
        real = directory.servers["example.org"]
        self.assertIn(f"Connected to the registry of example.org at {real[0]} port {real[1]}", text())
        # The registry goes away: the open connection ends, and it refuses new ones.
        client = directory._clients["example.org"]
        directory.servers["example.org"] = ("127.0.0.1", await closed_port())
        client.protocol.transport.loseConnection()  # type: ignore[union-attr]
        await client.protocol.disconnected
        for _ in range(2):
            with self.assertRaises(irp_errors.ConnectionLost):
                await directory.lookup(ALICE)
        lines = text()
        self.assertEqual(len([line for line in lines if line.startswith("Lost the connection to the registry of example.org")]), 1, lines)
        self.assertEqual(len([line for line in lines if line.startswith("Cannot reach the registry of example.org")]), 1, lines)
        # It comes back.
        directory.servers["example.org"] = real
        await directory.lookup(ALICE)
        self.assertIn(f"Reconnected to the registry of example.org at {real[0]} port {real[1]}", text())
        self.assertEqual([line for line in text() if line.startswith(("Starting factory", "Stopping factory"))], [])
