"""Tests for :mod:`irp.client.api`: what the client library checks before it believes the
registry, and how it copes with timeouts and connection-level errors.

Most tests drive :class:`RegistryClientProtocol` over a :class:`StringTransport` with a fake
clock, answering its requests by hand (:class:`ScriptedRegistry`) so that answers can be
wrong in exactly one way. A few use a real registry over TLS for what only real TLS shows:
the pinned root and the server's name.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.framing import FrameDecoder, encode_frame
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.client.api import (
    CAChain,
    RegistryClient,
    RegistryClientProtocol,
    _await_handshake,
    connect,
    connect_domain,
    split_server,
    verify_ca_chain,
)
from irp.server.ca import CertificateAuthority, RevokedEntry
from irp.wire.elements import addresses_element, certificate_element, pem_text, user_element
from irp.wire.messages import error_response, ok_response, parse_request
from irp.wire.records import (
    AddressRecord,
    CertificateInfo,
    Endpoint,
    RecordSigner,
    UserRecord,
)
from test import pki
from test.helpers import RunningRegistry, closed_port

DOMAIN = "example.org"
NOW = datetime.datetime.now(datetime.UTC)

Answer = Callable[[Element], "list[Element] | errors.IRPError"]


class Registry:
    """What a registry signs with: its CA and an Ed25519 record-signing key."""

    def __init__(self, ca: CertificateAuthority | None = None) -> None:
        self.ca = ca or pki.make_ca(DOMAIN)
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.signing_certificate = self.ca.issue_signing_certificate(self.key.public_key())
        self.signer = RecordSigner(self.key, self.signing_certificate)

    def chain(
        self,
        *,
        domain: str = DOMAIN,
        root: x509.Certificate | None = None,
        issuing: x509.Certificate | None = None,
        signing: x509.Certificate | None = None,
    ) -> Element:
        """A <ca-chain> answer, optionally with one part replaced."""
        root = root or self.ca.root_certificate
        element = make_element("ca-chain", {"domain": domain, "root-fingerprint": fingerprint(root)})
        for role, certificate in (
            ("root", root),
            ("issuing", issuing or self.ca.issuing_certificate),
            ("record-signing", signing or self.signing_certificate),
        ):
            sub_element(element, "ca", {"role": role}, pem_text(certificate))
        return element

    def addresses(self, user: str = "bob", **changes: Any) -> AddressRecord:
        record = AddressRecord(
            Identity(user, DOMAIN), "online", (Endpoint("2001:db8::2", 4605),), 2_000_000_000, 5, 1_900_000_000
        )
        return self.signer.sign(dataclasses.replace(record, **changes))

    def user(self, user: str = "bob") -> UserRecord:
        return self.signer.sign(UserRecord(Identity(user, DOMAIN), "Bob", "bob@example.org", (), 2, 1_900_000_000))


class ScriptedRegistry:
    """Answers the client's requests from a table of answers, as a server would."""

    def __init__(self, protocol: RegistryClientProtocol, transport: StringTransport, answers: dict[str, Answer]) -> None:
        self.protocol = protocol
        self.transport = transport
        self.answers = answers
        self.decoder = FrameDecoder(1 << 24)
        self.seen: list[str] = []

    def pump(self) -> None:
        """Answer every request written so far, and those the answers lead to."""
        while True:
            data = self.transport.value()
            self.transport.clear()
            frames = self.decoder.feed(data)
            if not frames:
                return
            for frame in frames:
                request = parse_request(frame)
                self.seen.append(request.operation)
                answer = self.answers[request.operation](request.element)
                if isinstance(answer, errors.IRPError):
                    payload = error_response(request.id, answer)
                else:
                    payload = ok_response(request.id, answer)
                self.protocol.dataReceived(encode_frame(payload))


class ClientTestCase(unittest.TestCase):
    """A client over a StringTransport with a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.registry = Registry()
        self.protocol = RegistryClientProtocol(self.clock, timeout=10.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.handshakeCompleted()
        self.client = RegistryClient(self.protocol, DOMAIN, [self.registry.ca.root_certificate], self.clock)

    def script(self, **answers: Answer) -> ScriptedRegistry:
        table: dict[str, Answer] = {"ca-chain": lambda element: [self.registry.chain()]}
        table.update({name.replace("_", "-"): answer for name, answer in answers.items()})
        return ScriptedRegistry(self.protocol, self.transport, table)

    def outcome(self, deferred: Deferred[Any], scripted: ScriptedRegistry) -> Any:
        """Answer the requests and return the result (or raise the failure)."""
        scripted.pump()
        results: list[Any] = []
        deferred.addBoth(results.append)
        self.assertEqual(len(results), 1, "the call did not finish")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def assertVerificationFails(self, deferred: Deferred[Any], scripted: ScriptedRegistry) -> errors.IRPError:
        error = self.assertRaises(errors.ServerVerificationFailed, self.outcome, deferred, scripted)
        return error  # type: ignore[no-any-return]


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


class RequestTests(ClientTestCase):
    """Requests, responses, timeouts and connection-level errors on the fake clock."""

    def sent_ids(self) -> list[int]:
        return [parse_request(frame).id for frame in FrameDecoder(1 << 20).feed(self.transport.value())]

    def answer(self, request_id: int, results: list[Element] | None = None) -> None:
        self.protocol.dataReceived(encode_frame(ok_response(request_id, results or [make_element("session", {"method": "none", "admin": "false"})])))

    def test_responses_matched_by_id(self) -> None:
        """Pipelined requests get their own answers, whatever the order."""
        first = self.client.whoami()
        second = self.client.capabilities()
        self.assertEqual(self.sent_ids(), [1, 2])
        self.answer(2, [make_element("capabilities", {"domain": DOMAIN})])
        self.answer(1)
        self.assertEqual(self.successResultOf(second).get("domain"), DOMAIN)
        self.assertEqual(self.successResultOf(first).method, "none")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timers are gone

    def test_unexpected_id_ignored(self) -> None:
        """An answer to nothing we asked is ignored."""
        waiting = self.client.whoami()
        self.answer(77)
        self.assertNoResult(waiting)
        self.answer(1)
        self.successResultOf(waiting)

    def test_error_response(self) -> None:
        """An error answer fails that request only, with the matching error class."""
        first = self.client.lookup("nobody")
        second = self.client.whoami()
        self.protocol.dataReceived(encode_frame(error_response(1, errors.NotFound("no user nobody@example.org"))))
        failure = self.failureResultOf(first, errors.NotFound)
        self.assertEqual(failure.value.message, "no user nobody@example.org")
        self.assertNoResult(second)

    def test_request_timeout(self) -> None:
        """A request unanswered within the timeout fails with timeout; the connection is
        aborted, and the other waiting requests fail when it goes."""
        first = self.client.whoami()
        self.clock.advance(5)
        second = self.client.whoami()
        self.clock.advance(5)
        self.failureResultOf(first, errors.Timeout)
        self.assertTrue(self.transport.disconnected)
        self.assertNoResult(second)
        self.protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.failureResultOf(second, errors.Timeout)
        self.assertRaises(errors.Timeout, self.protocol.request, make_element("whoami"))

    def test_connection_level_error(self) -> None:
        """An error with id 0 (the registry is closing the connection) fails every waiting
        request with it, and every later one."""
        first = self.client.whoami()
        second = self.client.lookup("bob")
        self.protocol.dataReceived(encode_frame(error_response(0, errors.TooManyConnections())))
        self.failureResultOf(first, errors.TooManyConnections)
        self.failureResultOf(second, errors.TooManyConnections)
        self.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertRaises(errors.TooManyConnections, self.protocol.request, make_element("whoami"))

    def test_connection_lost(self) -> None:
        """A lost connection fails the waiting requests with connection-lost."""
        waiting = self.client.whoami()
        self.protocol.connectionLost(Failure(ConnectionError("reset by peer")))
        failure = self.failureResultOf(waiting, errors.ConnectionLost)
        self.assertIn("reset by peer", failure.value.message)
        self.successResultOf(self.protocol.disconnected)
        self.assertRaises(errors.ConnectionLost, self.protocol.request, make_element("whoami"))

    def test_broken_framing(self) -> None:
        """A registry that breaks the framing fails everything and is cut off."""
        waiting = self.client.whoami()
        self.protocol.dataReceived(b"\x00\x00\x00\x00")
        self.failureResultOf(waiting, errors.MalformedMessage)
        self.assertTrue(self.transport.disconnected)

    def test_response_with_many_elements(self) -> None:
        """A response with more elements than a request may hold (a full list-users page)
        is accepted; it does not fail the connection."""
        waiting = self.client.capabilities()
        element = make_element("capabilities", {"domain": DOMAIN})
        for _ in range(7000):
            sub_element(element, "operation", {"name": "x"})
        self.answer(1, [element])
        self.assertEqual(len(self.successResultOf(waiting)), 7000)
        self.assertFalse(self.protocol.closed)

    def test_unparseable_response(self) -> None:
        """A response that is not XML is a connection-level failure."""
        waiting = self.client.whoami()
        self.protocol.dataReceived(encode_frame(b"<response"))
        self.failureResultOf(waiting, errors.MalformedMessage)

    def test_close(self) -> None:
        """close() closes the connection and fires once it is gone."""
        closed = self.client.close()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.protocol.connectionLost(Failure(ConnectionError("done")))
        self.successResultOf(closed)


@implementer(ITCPTransport)
class FakeTCPTransport(StringTransport):
    """A TCP transport recording TCP_NODELAY."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class HandshakeTests(unittest.TestCase):
    """The connection up to the end of the TLS handshake."""

    def test_no_nagle_delay(self) -> None:
        """Requests go out at once (TCP_NODELAY), from the start of the connection."""
        transport = StringTransport()
        transport.transport = FakeTCPTransport()  # type: ignore[attr-defined]
        RegistryClientProtocol(Clock()).makeConnection(transport)
        self.assertTrue(transport.transport.no_delay)  # type: ignore[attr-defined]

    def test_handshake_timeout_aborts(self) -> None:
        """A handshake that does not finish in time fails with timeout and the connection
        is aborted (not left open)."""
        clock = Clock()
        protocol = RegistryClientProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        waiting = Deferred.fromCoroutine(_await_handshake(clock, protocol, 5))
        clock.advance(4.9)
        self.assertNoResult(waiting)
        clock.advance(0.1)
        self.failureResultOf(waiting, errors.Timeout)
        self.assertTrue(transport.disconnected)

    def test_handshake_in_time(self) -> None:
        """A handshake in time leaves no timer."""
        clock = Clock()
        protocol = RegistryClientProtocol(clock)
        protocol.makeConnection(StringTransport())
        waiting = Deferred.fromCoroutine(_await_handshake(clock, protocol, 5))
        protocol.handshakeCompleted()
        self.successResultOf(waiting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lost_before_handshake(self) -> None:
        """A connection lost during the handshake reads as a verification failure."""
        protocol = RegistryClientProtocol(Clock())
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionError("certificate verify failed")))
        failure = self.failureResultOf(protocol.ready, errors.ServerVerificationFailed)
        self.assertIn("certificate verify failed", failure.value.message)


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

        from test.irp.client.test_discovery import ZoneAuthority, srv

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
