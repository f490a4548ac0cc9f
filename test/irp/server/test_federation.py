"""Two domains, each with its own registry and CA, found by DNS SRV, trusting each other.

A real twisted.names DNS server on loopback serves ``_irp._tcp`` records for both domains.
Users of one domain look users of the other up (their registry accepts their certificate
because its operator trusts the other domain's root) and chat with them, each agent
trusting the other domain's CA explicitly by fingerprint.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from irp import errors
from test import pki
from test.helpers import EnrolledUser, make_profile, start_agent
from test.irp.server.cross_domain import CrossDomainTestCase

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.net")


class FederatedLookupTests(CrossDomainTestCase):
    async def test_look_up_a_user_of_the_other_domain(self) -> None:
        from irp.client import connect_domain

        await self.start_domains()
        alice = await self.registries["example.org"].enrol("alice")
        bob = await self.registries["example.net"].enrol("bob")
        bob_client = await self.registries["example.net"].client(user=bob)
        from irp.wire.records import Endpoint

        await bob_client.register_addresses([Endpoint.parse("192.0.2.9", 4605)], "online", 300)
        # Alice's client finds example.net's registry by SRV and presents her certificate.
        remote = await connect_domain(
            reactor,
            "example.net",
            resolver=self.resolver,
            trust_roots=[self.registries["example.net"].root],
            client_key=alice.key,
            client_certificate=alice.certificate,
            client_chain=alice.chain,
            timeout=10,
        )
        self.addCleanup(remote.close)
        session = await remote.whoami()
        self.assertEqual((session.user, session.method, session.is_admin), (ALICE, "certificate", False))
        record = await remote.lookup("bob@example.net")
        self.assertEqual([(e.address, e.port) for e in record.endpoints], [("192.0.2.9", 4605)])
        (entry,) = await remote.user_certificates("bob@example.net")
        self.assertEqual(entry.fingerprint, fingerprint(bob.certificate))
        # Read-only: nothing of example.net's own may be done by a visitor.
        for attempt in (remote.list_users(), remote.register_addresses([Endpoint.parse("192.0.2.1", 1)]), remote.list_certificates()):
            with self.assertRaises(errors.Forbidden):
                await attempt
        user, account = await remote.get_user("bob@example.net")
        self.assertIsNone(account)  # no private account settings for visitors

    async def test_untrusted_domain_refused(self) -> None:
        await self.start_domains()
        outsider = pki.issue_user(pki.make_ca("example.com"), "eve")
        visitor = await self.registries["example.net"].client(
            user=EnrolledUser("eve", "", outsider.key, outsider.certificate, 0, tuple(outsider.intermediates))
        )
        with self.assertRaises(errors.CertificateRejected):
            await visitor.lookup("bob@example.net")

    async def test_revoked_visitor_refused(self) -> None:
        await self.start_domains()
        alice = await self.registries["example.org"].enrol("alice")
        admin = await self.registries["example.org"].admin()
        await admin.revoke(alice.serial, "key-compromise")
        # The visited registry checks example.org's CRL (fetched by SRV) when Alice connects.
        visit = await self.registries["example.net"].client(user=alice)
        with self.assertRaises(errors.CertificateRejected) as caught:
            await visit.lookup("bob@example.net")
        self.assertIn("revoked", caught.exception.message)


class CrossDomainChatTests(CrossDomainTestCase):
    async def test_chat_across_domains(self) -> None:
        await self.start_domains()
        alice_user = await self.registries["example.org"].enrol("alice")
        bob_user = await self.registries["example.net"].enrol("bob")
        alice_path = self.profile_of(alice_user, "example.org", "example.net")
        bob_path = self.profile_of(bob_user, "example.net", "example.org")
        options: dict[str, Any] = {"resolver": self.resolver}
        alice, alice_events = await start_agent(self, self.registries["example.org"], alice_user, path=alice_path, **options)
        bob, bob_events = await start_agent(self, self.registries["example.net"], bob_user, listen=("::1",), path=bob_path, **options)
        assert alice.store is not None and bob.store is not None
        await alice.store.add_contact(BOB)
        await bob.store.add_contact(ALICE)

        hello = await alice.send_text(BOB, "hello from example.org")
        received = await bob_events.wait_for(event="message", id=hello.id)
        self.assertEqual((received["from"], received["text"]), ("alice@example.org", "hello from example.org"))
        await alice_events.wait_for(event="receipt", id=hello.id)
        reply = await bob.send_text(ALICE, "hello from example.net")
        await alice_events.wait_for(event="message", id=reply.id)
        await bob_events.wait_for(event="receipt", id=reply.id)
        self.assertEqual(alice.sessions[BOB].peer, BOB)

    async def test_other_domain_not_trusted_by_the_agent(self) -> None:
        """Without trusting example.net's CA, Alice cannot reach Bob: a clear error."""
        await self.start_domains()
        alice_user = await self.registries["example.org"].enrol("alice")
        await self.registries["example.net"].enrol("bob")
        path = os.path.join(os.path.abspath(self.mktemp()), "alice")
        make_profile(self.registries["example.org"], alice_user, path)
        alice, alice_events = await start_agent(self, self.registries["example.org"], alice_user, path=path, resolver=self.resolver)
        message = await alice.send_text(BOB, "hello?")
        with self.assertRaises(errors.ClientError) as caught:
            await alice.connect(BOB)
        self.assertIn("not a trusted domain", caught.exception.message)
        assert alice.store is not None
        stored = await alice.store.get_message(message.id)
        assert stored is not None
        self.assertEqual(stored.state, "queued")
