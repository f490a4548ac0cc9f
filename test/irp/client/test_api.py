"""Tests for :mod:`irp.client.api` and :mod:`irp.client.results`: what the client library
checks before it believes the registry.

The tests drive the client over a :class:`StringTransport` with a fake clock, answering its
requests by hand (:mod:`test.irp.client.scripted`) so that answers can be wrong in exactly one
way.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.client import CAChain, RegistryClient
from irp.client.results import verify_ca_chain
from irp.server.ca import RevokedEntry
from irp.wire.elements import addresses_element, certificate_element, user_element
from irp.wire.records import (
    CertificateInfo,
    Endpoint,
)
from test import pki
from test.irp.client.scripted import DOMAIN, NOW, Answer, ClientTestCase, Registry


class RecordVerificationTests(ClientTestCase):
    """Signed records and the CA chain that vouches for the signing key."""

    def test_good_lookup(self) -> None:
        """A correctly signed record for the user asked about is returned."""
        record = self.registry.addresses()
        scripted = self.script(lookup=lambda element: [addresses_element(record)])
        self.assertEqual(self.outcome(self.client.lookup("bob"), scripted), record)
        self.assertEqual(scripted.seen, ["lookup", "ca-chain"])
        self.outcome(self.client.lookup("bob@example.org"), scripted)
        self.assertEqual(scripted.seen.count("ca-chain"), 1)  # the chain is fetched once

    def test_address_text_kept_for_verification(self) -> None:
        """A record whose addresses are not in the form this Python would write (another
        version's IPv4-mapped form, upper case) verifies: the text is kept as signed."""
        record = self.registry.addresses(endpoints=(Endpoint("::ffff:192.0.2.1", 4605), Endpoint("2001:DB8::2", 1)))
        found = self.outcome(self.client.lookup("bob"), self.script(lookup=lambda element: [addresses_element(record)]))
        self.assertEqual(found.endpoints, record.endpoints)

    def test_tampered_record(self) -> None:
        """A field changed after signing fails verification."""
        record = dataclasses.replace(self.registry.addresses(), endpoints=(Endpoint("203.0.113.9", 4605),))
        error = self.assertVerificationFails(self.client.lookup("bob"), self.script(lookup=lambda element: [addresses_element(record)]))
        self.assertIn("signature", error.message)

    def test_signed_by_another_key(self) -> None:
        """A record signed by a key the CA did not certify for record signing fails."""
        impostor = Registry(self.registry.ca)  # same CA, but we are shown the genuine signing certificate
        record = impostor.addresses()
        self.assertVerificationFails(self.client.lookup("bob"), self.script(lookup=lambda element: [addresses_element(record)]))

    def test_record_for_someone_else(self) -> None:
        """A valid record for another user than the one asked about is refused."""
        record = self.registry.addresses("carol")
        error = self.assertVerificationFails(self.client.lookup("bob"), self.script(lookup=lambda element: [addresses_element(record)]))
        self.assertIn("carol", error.message)

    def test_tampered_user_entry(self) -> None:
        """Directory entries are verified like addresses."""
        record = dataclasses.replace(self.registry.user(), email="mallory@evil.example")
        self.assertVerificationFails(self.client.get_user("bob"), self.script(get_user=lambda element: [user_element(record)]))

    def test_one_bad_entry_in_a_listing(self) -> None:
        """One bad entry spoils a listing."""
        good = self.registry.user("alice")
        bad = dataclasses.replace(self.registry.user("bob"), display_name="Not Bob")

        def listing(element: Element) -> list[Element]:
            users = make_element("users", {"total": "2", "offset": "0"})
            users.append(user_element(good))
            users.append(user_element(bad))
            return [users]

        self.assertVerificationFails(self.client.list_users(), self.script(list_users=listing))

    def test_unpinned_root(self) -> None:
        """A chain ending at another root than the pinned one is refused."""
        other = Registry(pki.make_ca(DOMAIN, label="other"))
        scripted = self.script(lookup=lambda element: [addresses_element(other.addresses())])
        scripted.answers["ca-chain"] = lambda element: [other.chain()]
        error = self.assertVerificationFails(self.client.lookup("bob"), scripted)
        self.assertIn("root CA", error.message)

    def test_other_domain(self) -> None:
        """A registry for another domain is refused."""
        scripted = self.script()
        scripted.answers["ca-chain"] = lambda element: [self.registry.chain(domain="example.net")]
        self.assertVerificationFails(self.client.ca_chain(), scripted)

    def test_signing_certificate_without_record_signing_usage(self) -> None:
        """The record-signing certificate must carry the record-signing usage."""
        ca = self.registry.ca
        certificate, _ = pki.build_certificate(
            ca.issuing_certificate, ca.issuing_key,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "records")]),
            key=self.registry.key,  # type: ignore[arg-type]
            extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        scripted = self.script()
        scripted.answers["ca-chain"] = lambda element: [self.registry.chain(signing=certificate)]
        error = self.assertVerificationFails(self.client.ca_chain(), scripted)
        self.assertIn("not for signing records", error.message)

    def test_signing_certificate_from_elsewhere(self) -> None:
        """A record-signing certificate not issued by the issuing CA is refused."""
        stranger = Registry(pki.make_ca(DOMAIN, label="stranger"))
        scripted = self.script()
        scripted.answers["ca-chain"] = lambda element: [self.registry.chain(signing=stranger.signing_certificate)]
        self.assertVerificationFails(self.client.ca_chain(), scripted)

    def test_incomplete_chain(self) -> None:
        """A chain without its record-signing certificate is a bad answer."""
        def partial(element: Element) -> list[Element]:
            chain = self.registry.chain()
            chain.remove(chain[-1])
            return [chain]

        scripted = self.script()
        scripted.answers["ca-chain"] = partial
        self.assertRaises(errors.BadRequest, self.outcome, self.client.ca_chain(), scripted)

    def test_expired_chain(self) -> None:
        """verify_ca_chain refuses a chain that is not valid now."""
        ca = self.registry.ca
        chain = CAChain(DOMAIN, ca.root_certificate, ca.issuing_certificate, self.registry.signing_certificate)
        verify_ca_chain(chain, [ca.root_certificate], NOW)
        error = self.assertRaises(
            errors.ServerVerificationFailed, verify_ca_chain, chain, [ca.root_certificate], NOW + datetime.timedelta(days=365 * 30)
        )
        self.assertIn("expired", error.message)


class CertificateVerificationTests(ClientTestCase):
    """user-certificates and CRLs are checked against the CA."""

    def entry(self, credentials: pki.UserCredentials, listed_as: str = "alice", **changes: Any) -> Element:
        certificate = credentials.certificate
        info = CertificateInfo(
            serial=certificate.serial_number,
            fingerprint=fingerprint(certificate),
            username=listed_as,
            origin="issued",
            not_before=int(certificate.not_valid_before_utc.timestamp()),
            not_after=int(certificate.not_valid_after_utc.timestamp()),
            issued_at=int(NOW.timestamp()),
            revoked_at=None,
            revocation_reason=None,
            der=certificate.public_bytes(Encoding.DER),
        )
        return certificate_element(dataclasses.replace(info, **changes), DOMAIN, NOW.timestamp(), with_pem=True)

    def listing(self, *entries: Element) -> Answer:
        def answer(element: Element) -> list[Element]:
            result = make_element("certificates", {"user": f"alice@{DOMAIN}"})
            for entry in entries:
                result.append(entry)
            return [result]

        return answer

    def test_good(self) -> None:
        """Certificates issued by the CA to the user asked about are returned."""
        alice = pki.issue_user(self.registry.ca, "alice")
        [entry] = self.outcome(self.client.user_certificates("alice"), self.script(user_certificates=self.listing(self.entry(alice))))
        self.assertEqual(entry.certificate, alice.certificate)

    def test_other_issuer(self) -> None:
        """A certificate from another CA is refused."""
        stranger = pki.issue_user(pki.make_ca(DOMAIN, label="stranger"), "alice")
        self.assertVerificationFails(self.client.user_certificates("alice"), self.script(user_certificates=self.listing(self.entry(stranger))))

    def test_wrong_fingerprint(self) -> None:
        """The fingerprint must be the certificate's."""
        alice = pki.issue_user(self.registry.ca, "alice")
        entry = self.entry(alice, fingerprint="00" * 32)
        self.assertVerificationFails(self.client.user_certificates("alice"), self.script(user_certificates=self.listing(entry)))

    def test_certificate_of_another_user(self) -> None:
        """A genuine certificate of bob, listed as alice's, is refused: the certificate
        names its holder."""
        bob = pki.issue_user(self.registry.ca, "bob")
        error = self.assertVerificationFails(
            self.client.user_certificates("alice"), self.script(user_certificates=self.listing(self.entry(bob, listed_as="alice")))
        )
        self.assertIn("does not name", error.message)

    def test_listed_for_another_user(self) -> None:
        """A listing for someone else than asked is refused."""
        bob = pki.issue_user(self.registry.ca, "bob")
        self.assertVerificationFails(
            self.client.user_certificates("alice"), self.script(user_certificates=self.listing(self.entry(bob, listed_as="bob")))
        )

    def crls(self, issuing_signer: Any = None) -> Answer:
        ca = self.registry.ca

        def answer(element: Element) -> list[Element]:
            issuing = ca.build_crl([RevokedEntry(5, NOW)], 1)
            root = ca.build_root_crl(2)
            if issuing_signer is not None:
                other = issuing_signer.build_crl([], 1)
                issuing = other
            result = make_element("crls")
            for issuer, number, crl in (("issuing", 1, issuing), ("root", 2, root)):
                child = sub_element(result, "crl", {"issuer": issuer, "number": str(number), "next-update": "2100-01-01T00:00:00Z"})
                sub_element(child, "pem", None, crl.public_bytes(Encoding.PEM).decode("ascii"))
            return [result]

        return answer

    def test_crls_verified(self) -> None:
        """CRLs signed by the CA are returned."""
        crls = self.outcome(self.client.get_crls(), self.script(get_crl=self.crls()))
        self.assertEqual([(crl.issuer, crl.number) for crl in crls], [("issuing", 1), ("root", 2)])
        self.assertIsNotNone(crls[0].crl.get_revoked_certificate_by_serial_number(5))

    def test_crl_signed_by_another_ca(self) -> None:
        """A CRL signed by another CA is refused."""
        error = self.assertVerificationFails(self.client.get_crls(), self.script(get_crl=self.crls(pki.make_ca(DOMAIN, label="x"))))
        self.assertIn("CRL", error.message)


class StrictAnswerTests(ClientTestCase):
    """Every answer is parsed strictly: unknown fields are refused, as in records; answers
    about oneself must name oneself."""

    def session(self, **attributes: str) -> Answer:
        fields = {"user": "alice@example.org", "method": "password", "admin": "false", **attributes}
        return lambda element: [make_element("session", {k: v for k, v in fields.items() if v != "-"})]

    def test_session(self) -> None:
        """<session> with unknown or inconsistent fields is refused."""
        self.assertEqual(self.outcome(self.client.whoami(), self.script(whoami=self.session())).method, "password")
        for bad in ({"colour": "red"}, {"admin": "yes"}, {"method": "kerberos"}, {"user": "-"}, {"method": "none"}, {"admin": "-"}):
            self.assertRaises(errors.BadRequest, self.outcome, self.client.whoami(), self.script(whoami=self.session(**bad)))
        with_child = self.session()
        self.assertRaises(
            errors.BadRequest,
            self.outcome,
            self.client.whoami(),
            self.script(whoami=lambda element: [self.with_child(with_child(element)[0])]),
        )

    @staticmethod
    def with_child(element: Element) -> Element:
        sub_element(element, "extra")
        return element

    def test_ca_chain(self) -> None:
        """<ca-chain> with an unknown attribute or element, a repeated or unknown role, or
        a root-fingerprint that is not its root's is refused."""
        def changed(change: Callable[[Element], None]) -> Answer:
            def answer(element: Element) -> list[Element]:
                chain = self.registry.chain()
                change(chain)
                return [chain]

            return answer

        for change in (
            lambda chain: chain.set("trusted", "yes"),
            lambda chain: chain[0].set("usage", "all"),
            lambda chain: chain[1].set("role", "root"),
            lambda chain: chain[2].set("role", "signing"),
            lambda chain: chain.set("root-fingerprint", "00" * 32),
            lambda chain: sub_element(chain, "note", None, "x"),
        ):
            scripted = self.script()
            scripted.answers["ca-chain"] = changed(change)
            self.assertRaises(errors.BadRequest, self.outcome, RegistryClient(self.protocol, DOMAIN, [self.registry.ca.root_certificate], self.clock).ca_chain(), scripted)

    def test_crls(self) -> None:
        """<crls> must hold the issuing CA's CRL then the root's, with known fields."""
        good = CertificateVerificationTests.crls(self)  # type: ignore[arg-type]

        def changed(change: Callable[[Element], None]) -> Answer:
            def answer(element: Element) -> list[Element]:
                [crls] = good(element)  # type: ignore[misc]
                change(crls)
                return [crls]

            return answer

        for change in (
            lambda crls: crls.set("x", "1"),
            lambda crls: crls[0].set("signed-by", "me"),
            lambda crls: crls[1][0].set("x", "1"),
            lambda crls: crls.remove(crls[1]),
            lambda crls: crls.append(crls[0]),
            lambda crls: crls[0].set("number", "\u0663"),
            lambda crls: crls[0].set("next-update", "soon"),
        ):
            self.assertRaises(errors.BadRequest, self.outcome, self.client.get_crls(), self.script(get_crl=changed(change)))

    def test_certificate_status(self) -> None:
        """<status> must be about the serial asked, with consistent known fields."""
        def status(**attributes: str) -> Answer:
            fields = {"serial": "1f", "state": "good", "user": "alice@example.org", "not-after": "2100-01-01T00:00:00Z", **attributes}
            return lambda element: [make_element("status", {k: v for k, v in fields.items() if v != "-"})]

        found = self.outcome(self.client.certificate_status(0x1F), self.script(certificate_status=status()))
        self.assertEqual((found.serial, found.state, found.user), (0x1F, "good", "alice@example.org"))
        error = self.assertRaises(
            errors.ServerVerificationFailed, self.outcome, self.client.certificate_status(0x20), self.script(certificate_status=status())
        )
        self.assertIn("20", error.message)
        for bad in (
            {"colour": "red"},
            {"state": "fine"},
            {"user": "-"},
            {"state": "revoked"},
            {"reason": "superseded"},
            {"state": "unknown"},
            {"user": "not an identity"},
            {"not-after": "2100-01-01"},
        ):
            self.assertRaises(
                errors.BadRequest, self.outcome, self.client.certificate_status(0x1F), self.script(certificate_status=status(**bad))
            )

    def test_list_users(self) -> None:
        """<users> with unknown fields, another page, or entries with account settings is
        refused."""
        def listing(change: Callable[[Element], None]) -> Answer:
            def answer(element: Element) -> list[Element]:
                users = make_element("users", {"total": "1", "offset": "0"})
                users.append(user_element(self.registry.user("alice")))
                change(users)
                return [users]

            return answer

        total, records = self.outcome(self.client.list_users(), self.script(list_users=listing(lambda users: None)))
        self.assertEqual((total, [str(record.identity) for record in records]), (1, ["alice@example.org"]))
        for change in (
            lambda users: users.set("more", "yes"),
            lambda users: users.set("offset", "5"),
            lambda users: users.set("total", "\u00b2"),
            lambda users: sub_element(users, "cursor"),
            lambda users: sub_element(users[0], "account", {"admin": "true", "password-login": "true", "has-password": "true", "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"}),
        ):
            self.assertRaises(errors.BadRequest, self.outcome, self.client.list_users(), self.script(list_users=listing(change)))

    def test_answers_about_oneself_name_oneself(self) -> None:
        """update-user and register-address answers must be about the caller (or the user
        named): a valid record of someone else is refused."""
        scripted = self.script(
            login=self.session(),
            update_user=lambda element: [user_element(self.registry.user("bob"))],
            register_address=lambda element: [addresses_element(self.registry.addresses("bob"))],
        )
        self.outcome(self.client.login("alice", "password"), scripted)
        error = self.assertRaises(errors.ServerVerificationFailed, self.outcome, self.client.update_user(display_name="A"), scripted)
        self.assertIn("bob", error.message)
        self.assertRaises(errors.ServerVerificationFailed, self.outcome, self.client.register_addresses([]), scripted)
        self.assertRaises(errors.ServerVerificationFailed, self.outcome, self.client.update_user("carol", display_name="C"), scripted)
        scripted.answers["update-user"] = lambda element: [user_element(self.registry.user("alice"))]
        self.assertEqual(str(self.outcome(self.client.update_user(display_name="A"), scripted).identity), "alice@example.org")

    def test_own_identity_asked_when_unknown(self) -> None:
        """Without a login answer to go by, the client asks whoami before believing an
        answer about itself."""
        scripted = self.script(whoami=self.session(), register_address=lambda element: [addresses_element(self.registry.addresses("alice"))])
        record = self.outcome(self.client.register_addresses([]), scripted)
        self.assertEqual(str(record.identity), "alice@example.org")
        self.assertIn("whoami", scripted.seen)
