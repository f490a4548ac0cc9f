"""Deciding whether an authenticated peer may talk to us (sixchat/verification.py): real
certificates from test CAs, real CRLs, a real agent store (SQLite file), a fake clock."""

from __future__ import annotations

import datetime
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki import errors as pki_errors
from common.pki import revocation
from common.pki.keyfiles import fingerprint
from irp import errors as irp_errors
from irp.server.ca import CertificateAuthority, RevokedEntry
from sixchat import errors
from sixchat.agent.store import AgentStore
from sixchat.peer.verification import PeerVerifier, RevocationChecker
from test import pki
from test.helpers import fake_clock_now

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")


def crl_of(ca: CertificateAuthority, *serials: int, number: int = 1, lifetime: datetime.timedelta = datetime.timedelta(days=1)) -> x509.CertificateRevocationList:
    now = datetime.datetime.now(datetime.UTC)
    return ca.build_crl([RevokedEntry(serial, now) for serial in serials], number, next_update_after=lifetime)


def _same_name_and_key(certificate: x509.Certificate) -> x509.Certificate:
    """Another certificate (other bytes) with ``certificate``'s subject, key and key
    identifier, signed by a throwaway key."""
    signer = ec.generate_private_key(ec.SECP256R1())
    identifier = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(certificate.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
        .add_extension(identifier, critical=False)
        .sign(signer, hashes.SHA256())
    )


class CRLSource:
    """Serves CRLs per domain, counts fetches, fails when told to."""

    def __init__(self, **crls: x509.CertificateRevocationList) -> None:
        self.crls = {domain.replace("_", "."): crl for domain, crl in crls.items()}
        self.fetches: list[str] = []
        self.down = False

    def __call__(self, domain: str) -> Any:
        self.fetches.append(domain)
        if self.down:
            return fail(irp_errors.ConnectionLost("the registry is unreachable"))
        return succeed(self.crls[domain])


class VerifierTestCase(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.ca = pki.make_ca("example.org")
        self.clock = fake_clock_now()
        self.store = await AgentStore.open(os.path.join(os.path.abspath(self.mktemp()), "agent.sqlite3"), reactor, now=self.clock.seconds)
        self.addCleanup(self.store.close)
        self.crls = CRLSource(example_org=crl_of(self.ca))
        self.bob = pki.issue_user(self.ca, "bob")

    def verifier(self, policy: str = "contacts", *, revocation: RevocationChecker | None = None, cas: tuple[CertificateAuthority, ...] = ()) -> PeerVerifier:
        return PeerVerifier(
            pki.trust_store(self.ca, *cas),
            revocation or RevocationChecker(self.crls, self.clock),
            self.store,
            self.clock,
            policy=policy,
            home_domain="example.org",
            known_intermediates=[self.ca.issuing_certificate],
        )

    def chain(self, credentials: pki.UserCredentials) -> list[x509.Certificate]:
        return [credentials.certificate, *credentials.intermediates]


class ChainTests(VerifierTestCase):
    async def test_good_contact(self) -> None:
        await self.store.add_contact(BOB)
        await self.verifier().verify(BOB, self.chain(self.bob))

    async def test_leaf_alone_with_known_intermediates(self) -> None:
        await self.store.add_contact(BOB)
        await self.verifier().verify(BOB, [self.bob.certificate])

    async def test_every_bad_certificate(self) -> None:
        """Each defect of test.pki is refused, with the error class the alert will carry."""
        verifier = self.verifier("anyone")
        for defect, reason in pki.BAD_CERTIFICATES.items():
            bad = pki.bad_user(self.ca, defect, username="bob")
            with self.subTest(defect=defect):
                try:
                    await verifier.verify(BOB, self.chain(bad))
                except errors.PeerRejected as error:
                    self.assertIn(reason, ("unknown-issuer", "expired"), defect)
                    self.assertEqual(error.reason, "untrusted-ca" if reason == "unknown-issuer" else "expired", defect)
                except errors.CertificateInvalid as error:
                    self.assertNotIn(reason, ("unknown-issuer", "expired"), defect)
                    self.assertIn(reason, error.message, defect)
                else:
                    self.fail(f"{defect} was accepted")

    async def test_validity_follows_the_clock(self) -> None:
        """The agent's clock decides: a certificate is refused once it has expired."""
        short = pki.issue_user(self.ca, "bob", validity=datetime.timedelta(hours=2))
        verifier = self.verifier("anyone")
        await verifier.verify(BOB, self.chain(short))
        self.clock.advance(3 * 3600)
        with self.assertRaises(errors.PeerRejected) as caught:
            await verifier.verify(BOB, self.chain(short))
        self.assertEqual(caught.exception.reason, "expired")

    async def test_identity_must_match_the_certificate(self) -> None:
        with self.assertRaises(errors.IdentityMismatch):
            await self.verifier("anyone").verify(ALICE, self.chain(self.bob))

    async def test_other_trusted_domain(self) -> None:
        other = pki.make_ca("other.example")
        dave = pki.issue_user(other, "dave")
        dave_id = Identity.parse("dave@other.example")
        self.crls.crls["other.example"] = crl_of(other)
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("anyone").verify(dave_id, self.chain(dave))
        self.assertEqual(caught.exception.reason, "untrusted-ca")
        await self.verifier("anyone", cas=(other,)).verify(dave_id, self.chain(dave))
        self.assertEqual(self.crls.fetches[-1], "other.example")


class RevocationTests(VerifierTestCase):
    async def test_revoked(self) -> None:
        self.crls.crls["example.org"] = crl_of(self.ca, self.bob.certificate.serial_number)
        await self.store.add_contact(BOB)
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier().verify(BOB, self.chain(self.bob))
        self.assertEqual(caught.exception.reason, "revoked")

    async def test_no_crl_no_entry(self) -> None:
        self.crls.down = True
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("anyone").verify(BOB, self.chain(self.bob))
        self.assertEqual(caught.exception.reason, "untrusted-ca")
        self.assertIn("cannot check revocation", caught.exception.message)

    async def test_crl_from_another_ca_is_refused(self) -> None:
        impostor = pki.make_ca("example.org", label="impostor")
        self.crls.crls["example.org"] = crl_of(impostor)
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("anyone").verify(BOB, self.chain(self.bob))
        self.assertIn("does not verify", caught.exception.message)

    async def test_cache_and_max_age(self) -> None:
        checker = RevocationChecker(self.crls, self.clock, max_age=datetime.timedelta(minutes=5))
        verifier = self.verifier("anyone", revocation=checker)
        await verifier.verify(BOB, self.chain(self.bob))
        await verifier.verify(BOB, self.chain(self.bob))
        self.assertEqual(self.crls.fetches, ["example.org"])
        # Bob is revoked; the registry publishes a new CRL at once.
        self.crls.crls["example.org"] = crl_of(self.ca, self.bob.certificate.serial_number, number=2)
        self.clock.advance(299)
        await verifier.verify(BOB, self.chain(self.bob))
        self.clock.advance(1)
        with self.assertRaises(errors.PeerRejected) as caught:
            await verifier.verify(BOB, self.chain(self.bob))
        self.assertEqual(caught.exception.reason, "revoked")
        self.assertEqual(self.crls.fetches, ["example.org", "example.org"])

    async def test_without_max_age_until_next_update(self) -> None:
        self.crls.crls["example.org"] = crl_of(self.ca, lifetime=datetime.timedelta(hours=1))
        checker = RevocationChecker(self.crls, self.clock, max_age=None)
        verifier = self.verifier("anyone", revocation=checker)
        await verifier.verify(BOB, self.chain(self.bob))
        self.clock.advance(3599)
        await verifier.verify(BOB, self.chain(self.bob))
        self.assertEqual(len(self.crls.fetches), 1)
        self.clock.advance(2)
        await verifier.verify(BOB, self.chain(self.bob))
        self.assertEqual(len(self.crls.fetches), 2)

    async def test_stale_crl_during_an_outage(self) -> None:
        self.crls.crls["example.org"] = crl_of(self.ca, lifetime=datetime.timedelta(hours=1))
        checker = RevocationChecker(self.crls, self.clock, stale_grace=datetime.timedelta(days=3))
        verifier = self.verifier("anyone", revocation=checker)
        await verifier.verify(BOB, self.chain(self.bob))
        self.crls.down = True
        self.clock.advance(2 * 3600)
        with capturedLogs() as logs:
            await verifier.verify(BOB, self.chain(self.bob))
        self.assertTrue(any("stale CRL" in formatEvent(event) for event in logs))
        self.clock.advance(3 * 86400)
        with self.assertRaises(errors.PeerRejected) as caught:
            await verifier.verify(BOB, self.chain(self.bob))
        self.assertEqual(caught.exception.reason, "untrusted-ca")

    async def test_cached_crl_never_answers_for_another_issuer(self) -> None:
        """Once example.org's CRL is cached, a certificate from another issuer (a foreign
        CA naming itself after example.org) is still checked against its own issuer: the
        cached CRL does not answer for it (issue 9 item 2)."""
        checker = RevocationChecker(self.crls, self.clock)
        await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)
        foreign = pki.make_ca("example.org", label="foreign")
        forged = pki.issue_user(foreign, "bob")
        with self.assertRaises(pki_errors.RevocationUnknown) as caught:
            await checker.check("example.org", forged.certificate, foreign.issuing_certificate)
        self.assertIn("does not verify", caught.exception.message)
        # It was fetched again (nothing cached for that issuer) and refused again.
        self.assertEqual(self.crls.fetches, ["example.org", "example.org"])
        with self.assertRaises(pki_errors.RevocationUnknown):
            await checker.check("example.org", forged.certificate, foreign.issuing_certificate)
        # The real issuer's entry is untouched.
        await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)
        self.assertEqual(len(self.crls.fetches), 3)

    async def test_stale_crl_only_for_its_issuer(self) -> None:
        """During an outage the stale cached CRL still answers only for its own issuer."""
        checker = RevocationChecker(self.crls, self.clock)
        await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)
        self.crls.down = True
        foreign = pki.make_ca("example.org", label="foreign")
        forged = pki.issue_user(foreign, "bob")
        with self.assertRaises(pki_errors.RevocationUnknown):
            await checker.check("example.org", forged.certificate, foreign.issuing_certificate)

    async def test_issuer_with_same_name_other_key(self) -> None:
        """A CRL with the right issuer name but another key's signature is refused."""
        foreign = pki.make_ca("example.org", label="foreign")
        self.assertEqual(foreign.issuing_certificate.subject, self.ca.issuing_certificate.subject)
        self.crls.crls["example.org"] = crl_of(foreign)
        checker = RevocationChecker(self.crls, self.clock)
        with self.assertRaises(pki_errors.RevocationUnknown):
            await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)

    async def test_cached_crl_verified_once_per_issuer_certificate(self) -> None:
        """The cached CRL's signature is checked against an issuer certificate once, not on
        every check (one signature verification per handshake); an issuer certificate of
        other bytes (same name and key) is checked again before the cached CRL answers."""
        checked: list[x509.Certificate] = []
        real_check = revocation.crl_signed_by

        def counting(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
            checked.append(issuer)
            return real_check(crl, issuer)

        self.patch(revocation, "crl_signed_by", counting)
        checker = RevocationChecker(self.crls, self.clock)
        issuing = self.ca.issuing_certificate
        await checker.check("example.org", self.bob.certificate, issuing)
        same_bytes = x509.load_der_x509_certificate(issuing.public_bytes(serialization.Encoding.DER))
        for issuer in (issuing, issuing, same_bytes):
            await checker.check("example.org", self.bob.certificate, issuer)
        self.assertEqual(checked, [issuing])
        twin = _same_name_and_key(issuing)
        await checker.check("example.org", self.bob.certificate, twin)
        self.assertEqual(checked, [issuing, twin])
        self.assertEqual(self.crls.fetches, ["example.org"])
        # Still answers revocations from the cache for that issuer.
        self.crls.crls["example.org"] = crl_of(self.ca, self.bob.certificate.serial_number, number=2)
        checker.forget("example.org")
        with self.assertRaises(pki_errors.CertificateRevoked):
            await checker.check("example.org", self.bob.certificate, issuing)
        with self.assertRaises(pki_errors.CertificateRevoked):
            await checker.check("example.org", self.bob.certificate, issuing)

    async def test_forget(self) -> None:
        checker = RevocationChecker(self.crls, self.clock)
        await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)
        checker.forget("example.org")
        await checker.check("example.org", self.bob.certificate, self.ca.issuing_certificate)
        self.assertEqual(len(self.crls.fetches), 2)


class DialledPeerTests(VerifierTestCase):
    async def test_dialled_peer_needs_no_contact(self) -> None:
        await self.verifier("contacts").verify(BOB, self.chain(self.bob), dialled=BOB, expected_fingerprints={fingerprint(self.bob.certificate)})

    async def test_someone_else_answered(self) -> None:
        with self.assertRaises(errors.IdentityMismatch):
            await self.verifier().verify(BOB, self.chain(self.bob), dialled=ALICE)

    async def test_certificate_the_registry_does_not_hold(self) -> None:
        with self.assertRaises(errors.IdentityMismatch) as caught:
            await self.verifier().verify(BOB, self.chain(self.bob), dialled=BOB, expected_fingerprints={"00" * 32})
        self.assertIn("registry does not hold", caught.exception.message)

    async def test_pins_apply_to_dialled_peers_too(self) -> None:
        await self.store.add_contact(BOB, "Bob", ["11" * 32])
        digest = fingerprint(self.bob.certificate)
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier().verify(BOB, self.chain(self.bob), dialled=BOB, expected_fingerprints={digest})
        self.assertEqual(caught.exception.reason, "policy")
        await self.store.add_contact(BOB, "Bob", [digest])
        await self.verifier().verify(BOB, self.chain(self.bob), dialled=BOB, expected_fingerprints={digest})


class PolicyTests(VerifierTestCase):
    async def test_contacts(self) -> None:
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("contacts").verify(BOB, self.chain(self.bob))
        self.assertEqual((caught.exception.reason, caught.exception.wire_reason), ("not-a-contact", "policy"))
        await self.store.add_contact(BOB)
        await self.verifier("contacts").verify(BOB, self.chain(self.bob))

    async def test_blocked_under_every_policy(self) -> None:
        await self.store.set_blocked(BOB, True)
        for policy in ("contacts", "domain", "anyone"):
            with self.assertRaises(errors.PeerRejected) as caught:
                await self.verifier(policy).verify(BOB, self.chain(self.bob))
            self.assertEqual((caught.exception.reason, caught.exception.wire_reason), ("denied", "policy"))

    async def test_domain(self) -> None:
        await self.verifier("domain").verify(BOB, self.chain(self.bob))
        other = pki.make_ca("other.example")
        dave = pki.issue_user(other, "dave")
        dave_id = Identity.parse("dave@other.example")
        self.crls.crls["other.example"] = crl_of(other)
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("domain", cas=(other,)).verify(dave_id, self.chain(dave))
        self.assertEqual(caught.exception.reason, "not-a-contact")
        await self.store.add_contact(dave_id)
        await self.verifier("domain", cas=(other,)).verify(dave_id, self.chain(dave))

    async def test_anyone(self) -> None:
        await self.verifier("anyone").verify(BOB, self.chain(self.bob))

    async def test_pinned_for_incoming(self) -> None:
        await self.store.add_contact(BOB, "Bob", ["22" * 32])
        with self.assertRaises(errors.PeerRejected) as caught:
            await self.verifier("anyone").verify(BOB, self.chain(self.bob))
        self.assertIn("not one you pinned", caught.exception.message)

    def test_unknown_policy(self) -> None:
        with self.assertRaises(ValueError):
            self.verifier("everyone")
