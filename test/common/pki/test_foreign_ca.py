"""A trusted foreign CA must not impersonate anyone outside the one domain it was trusted for.

The attack (issue 9, item 2): Alice trusts a foreign CA for ``evil.org`` whose root says
``O=example.org``. It issues a certificate for ``bob@example.org``. Before the fix the trust
store took the root's domain from its ``O`` attribute, so the path verified as Bob's; only
the revocation check stopped it (the fetched example.org CRL is not signed by the forged
issuer), and only until a real example.org user's call had cached example.org's CRL, which
was then returned for any issuer. Everything here is real: registries and agents on
loopback sockets, TLS, certificates made by a real (foreign) CA, SQLite stores.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.python import usage
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint, format_fingerprint
from common.profile import Profile
from irp import errors as irp_errors
from irp.server.ca import CertificateAuthority, generate_key
from irp.server.service import RegistryService, RegistrySettings
from irp.tap import Options
from sixchat import errors
from sixchat.handshake import LocalCredentials
from sixchat.wire.application import ChatMessage
from test import pki
from test.helpers import (
    BareOwner,
    EnrolledUser,
    RunningRegistry,
    dial_bare,
    make_profile,
    run_module,
    start_agent,
)
from test.irp.server.cross_domain import CrossDomainTestCase

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")
#: What the caller hears when the callee refuses its certificate.
REFUSED = (errors.PeerRejected, errors.CertificateInvalid)


def foreign_ca(claims: str = "example.org") -> CertificateAuthority:
    """A real CA run by someone else, whose root states ``O=<claims>``."""
    return CertificateAuthority.create(claims, key_type="p256")


def forged(ca: CertificateAuthority, identity: Identity) -> LocalCredentials:
    """A real key and a certificate for ``identity`` issued by ``ca``."""
    key = generate_key("p256")
    certificate = ca.issue_user_certificate(identity, key.public_key())
    return LocalCredentials(identity, certificate, [ca.issuing_certificate], key)


def write_pem(path: str, certificate: x509.Certificate) -> str:
    with open(path, "wb") as handle:
        handle.write(certificate.public_bytes(Encoding.PEM))
    return path


class AgentImpersonationTests(TestCase):
    """A forged ``bob@example.org`` dials Alice, before and after a real call warms her caches."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = await RunningRegistry(self).start()
        self.alice_user = await self.registry.enrol("alice")
        self.bob_user = await self.registry.enrol("bob")
        self.rogue = foreign_ca("example.org")
        self.alice_path = make_profile(self.registry, self.alice_user, os.path.join(os.path.abspath(self.mktemp()), "alice"))
        # What `sixchat trust-domain evil.org --ca-file rogue.pem` stored before the fix
        # (the profile's form is unchanged: trusted/<domain>.pem).
        Profile(self.alice_path).trust_domain("evil.org", self.rogue.root_certificate)

    async def dial_as_forged_bob(self, alice: Any, events: Any) -> tuple[Any, bool]:
        """Mallory's own implementation calls Alice as Bob and says hello at once (the
        dialer's side of a handshake completes before the callee's verdict arrives).

        Returns how the call ended, and whether Alice's agent took the message."""
        owner = BareOwner(forged(self.rogue, BOB))
        before = set(alice.connections)
        address = next(iter(alice.advertised))
        connection = await dial_bare(owner, address.address, address.port, ALICE)
        hello = ChatMessage("send me your password")
        try:
            await connection.when_established()
        except errors.SixChatError:
            pass
        else:
            connection.send(hello)
        taken = events.wait_for(event="message", id=hello.id)
        ended = owner.first_end
        await DeferredList([taken, ended], fireOnOneCallback=True, consumeErrors=True)
        took = taken.called
        if not took:
            taken.cancel()
        connection.close()
        _connection, error = await ended
        for peer in set(alice.connections) - before:
            await peer.when_lost()
        return error, took

    async def test_forged_contact_refused_before_and_after_a_real_call(self) -> None:
        alice, alice_events = await start_agent(self, self.registry, self.alice_user, path=self.alice_path)
        assert alice.store is not None
        await alice.store.add_contact(BOB)
        # The stored profile still loads: the foreign root is bound to evil.org.
        self.assertEqual(Profile(self.alice_path).trusted_roots()["evil.org"], self.rogue.root_certificate)

        cold_error, took = await self.dial_as_forged_bob(alice, alice_events)
        self.assertFalse(took)
        self.assertIsInstance(cold_error, REFUSED)

        # The real Bob calls: Alice's agent now holds example.org's CRL.
        bob, _bob_events = await start_agent(self, self.registry, self.bob_user, listen=("::1",))
        assert bob.store is not None
        await bob.store.add_contact(ALICE)
        real = await bob.send_text(ALICE, "it is really me")
        await alice_events.wait_for(event="message", id=real.id)

        warm_error, took = await self.dial_as_forged_bob(alice, alice_events)
        self.assertFalse(took, "the forged Bob's message was stored once the CRL was cached")
        self.assertIsInstance(warm_error, REFUSED)
        self.assertEqual([m.body for m in await alice.store.history(BOB)], ["it is really me"])


    async def test_mismatched_stored_root_is_reported_at_start(self) -> None:
        """A root stored before roots were checked (it says example.org, it was trusted for
        evil.org) is named in the agent's log when it starts."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await start_agent(self, self.registry, self.alice_user, path=self.alice_path)
        warnings = [formatEvent(event) for event in events if event.get("log_namespace") in ("sixchat.agent.service", "sixchat.agent.trust")]
        self.assertTrue(
            any("evil.org" in line and "looks wrong" in line and "example.org" in line for line in warnings), warnings
        )

    async def test_own_root_stored_for_another_domain_still_starts(self) -> None:
        """A profile that trusted its own domain's root for another domain too (stored
        before roots were checked) still starts, and says so in its log: the root keeps
        certifying its own domain, and never the other."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        profile = Profile(self.alice_path)
        profile.trust_domain("other.org", profile.root())
        alice, _events = await start_agent(self, self.registry, self.alice_user, path=self.alice_path)
        assert alice.verifier is not None
        self.assertEqual(alice.verifier.trust.domain_of(profile.root()), "example.org")
        warnings = [formatEvent(event) for event in events if event.get("log_namespace") in ("sixchat.agent.service", "sixchat.agent.trust")]
        self.assertTrue(any("other.org" in line and "looks wrong" in line for line in warnings), warnings)

    async def test_root_planted_for_own_domain_ignored(self) -> None:
        """A stored ``trusted/example.org.pem`` (Alice's own domain) never replaces her
        registry's pinned root: the forged Bob is refused, the real one is not."""
        Profile(self.alice_path).trust_domain("example.org", self.rogue.root_certificate)
        self.assertEqual(Profile(self.alice_path).trusted_roots()["example.org"], self.registry.root)
        alice, alice_events = await start_agent(self, self.registry, self.alice_user, path=self.alice_path)
        assert alice.store is not None
        await alice.store.add_contact(BOB)
        error, took = await self.dial_as_forged_bob(alice, alice_events)
        self.assertFalse(took)
        self.assertIsInstance(error, REFUSED)
        bob, _bob_events = await start_agent(self, self.registry, self.bob_user, listen=("::1",))
        assert bob.store is not None
        real = await bob.send_text(ALICE, "hello")
        await alice_events.wait_for(event="message", id=real.id)


class TrustDomainCommandTests(TestCase):
    """``sixchat trust-domain D --ca-file F`` refuses a root that is not D's."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.registry = await RunningRegistry(self).start()
        user = await self.registry.enrol("alice")
        self.profile = make_profile(self.registry, user, os.path.join(self.home, "alice"))

    async def sixchat(self, *args: str) -> Any:
        result = await run_module("sixchat.cli", ["--profile", self.profile, *args], home=self.home)
        self.assertNotIn("Traceback", result.err, result)
        return result

    async def trust_rogue_root(self, domain: str) -> Any:
        """``sixchat trust-domain DOMAIN`` with a root that says example.org, its
        fingerprint confirmed (and a registry that cannot be reached)."""
        rogue = foreign_ca("example.org")
        path = write_pem(os.path.join(self.home, "rogue.pem"), rogue.root_certificate)
        digest = format_fingerprint(fingerprint(rogue.root_certificate))
        return await self.sixchat("trust-domain", domain, "--registry", "127.0.0.1:1", "--ca-file", path, "--ca-fingerprint", digest)

    async def test_root_stating_another_domain_refused(self) -> None:
        result = await self.trust_rogue_root("evil.org")
        self.assertNotEqual(result.code, 0, result)
        self.assertIn("not evil.org's", result.err)
        self.assertIn("example.org", result.err)
        self.assertNotIn("evil.org", Profile(self.profile).trusted_roots())

    async def test_own_domain_refused(self) -> None:
        result = await self.trust_rogue_root("example.org")
        self.assertNotEqual(result.code, 0, result)
        self.assertIn("your own domain", result.err)
        self.assertFalse(os.path.exists(os.path.join(self.profile, "trusted", "example.org.pem")))
        self.assertEqual(Profile(self.profile).trusted_roots()["example.org"], self.registry.root)

    async def test_unconfirmed_file_compared_with_the_registry(self) -> None:
        other = await RunningRegistry(self, domain="other.example").start()
        good = write_pem(os.path.join(self.home, "good.pem"), other.root)
        impostor = write_pem(os.path.join(self.home, "impostor.pem"), foreign_ca("other.example").root_certificate)
        server = f"127.0.0.1:{other.port}"
        refused = await self.sixchat("trust-domain", "other.example", "--registry", server, "--ca-file", impostor)
        self.assertNotEqual(refused.code, 0, refused)
        self.assertIn("fingerprint", refused.err)
        self.assertNotIn("other.example", Profile(self.profile).trusted_roots())
        accepted = await self.sixchat("trust-domain", "other.example", "--registry", server, "--ca-file", good)
        self.assertEqual(accepted.code, 0, accepted)
        self.assertIn("the registry of other.example serves this root", accepted.out)
        self.assertEqual(Profile(self.profile).trusted_roots()["other.example"], other.root)


class RegistryFederationTests(CrossDomainTestCase):
    """The registry's own ``--trust-domain`` federation."""

    async def test_federated_ca_claiming_our_domain_cannot_log_in(self) -> None:
        """example.net's real, trusted CA issues ``alice@example.org``: example.org's
        registry refuses that login (only its own root certifies its users)."""
        await self.start_domains()
        await self.registries["example.org"].enrol("alice")
        net = self.registries["example.net"]
        # What example.net's CA (real, trusted by example.org for example.net) could sign.
        certificate, key = pki.build_certificate(
            net.ca.issuing_certificate, net.ca.issuing_key, subject=pki.user_name(ALICE),
            san=[x509.UniformResourceIdentifier(ALICE.uri)],
        )
        user = EnrolledUser("alice", "", key, certificate, 0, (net.ca.issuing_certificate,))
        client = await self.registries["example.org"].client(user=user)
        with self.assertRaises(irp_errors.CertificateRejected):
            await client.lookup("alice@example.org")
        # A real user of example.net still gets in (the federation itself works).
        visitor = await net.enrol("bob")
        client = await self.registries["example.org"].client(user=visitor)
        session = await client.whoami()
        self.assertEqual(session.user, Identity.parse("bob@example.net"))

    async def test_foreign_root_bound_to_the_domain_it_was_trusted_for(self) -> None:
        """A root trusted as example.net's (``--trust-domain example.net=F``) whose
        certificate says ``O=example.org`` is refused; a login through a foreign CA
        claiming example.org fails."""
        rogue = foreign_ca("example.org")
        path = write_pem(os.path.join(os.path.abspath(self.mktemp()) + ".pem"), rogue.root_certificate)
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--domain", "example.org", "--trust-domain", f"example.net={path}"])
        self.assertIn("O attribute says example.org", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--domain", "example.org", "--trust-domain", f"example.org={path}"])
        self.assertIn("own domain", str(caught.exception))
        for entry in (("example.net", rogue.root_certificate), rogue.root_certificate):
            service = RegistryService(RegistrySettings(domain="example.org", data_dir=self.mktemp(), federated_roots=[entry]), reactor)
            with self.assertRaises(irp_errors.InvalidArgument):
                service.federated_roots  # noqa: B018

    async def test_federation_by_domain_and_file(self) -> None:
        """``--trust-domain DOMAIN=FILE`` (the root states DOMAIN) federates as before."""
        other = foreign_ca("example.net")
        path = write_pem(os.path.join(os.path.abspath(self.mktemp()) + ".pem"), other.root_certificate)
        options = Options()
        options.parseOptions(["--domain", "example.org", "--trust-domain", f"example.net={path}"])
        self.assertEqual(options["federated-roots"], [("example.net", other.root_certificate)])
        service = RegistryService(RegistrySettings(domain="example.org", data_dir=self.mktemp(), federated_roots=options["federated-roots"]), reactor)
        self.assertEqual(service.federated_roots, {"example.net": other.root_certificate})
