"""Tests for :mod:`irp.wire.elements`: the XML forms of records, both directions."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial import unittest

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import parse_document, serialize, sub_element
from irp import errors
from irp.wire.elements import (
    AccountView,
    addresses_element,
    certificate_element,
    parse_addresses,
    parse_certificate,
    parse_pkcs12,
    parse_user,
    pem_text,
    pkcs12_element,
    user_element,
)
from irp.wire.records import AddressRecord, CertificateInfo, Endpoint, Pkcs12Info, UserRecord
from test import pki

ALICE = Identity("alice", "example.org")
NOW = 1_900_000_000


def over_the_wire(element):  # type: ignore[no-untyped-def]
    """Serialise and parse again, as the peer sees it."""
    return parse_document(serialize(element))


def user() -> UserRecord:
    return UserRecord(ALICE, "Alice Liddell", "alice@example.org", (("a", "1"), ("b", "x<y")), 4, NOW, b"\x01" * 64)


def addresses() -> AddressRecord:
    return AddressRecord(ALICE, "busy", (Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 7)), NOW + 300, 9, NOW, b"\x02" * 64)


def certificate_info(**changes: object) -> CertificateInfo:
    certificate = pki.issue_user(pki.make_ca()).certificate
    info = CertificateInfo(
        serial=certificate.serial_number,
        fingerprint=fingerprint(certificate),
        username="alice",
        origin="issued",
        not_before=int(certificate.not_valid_before_utc.timestamp()),
        not_after=int(certificate.not_valid_after_utc.timestamp()),
        issued_at=NOW,
        revoked_at=None,
        revocation_reason=None,
        der=certificate.public_bytes(Encoding.DER),
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


class UserElementTests(unittest.SynchronousTestCase):
    """user_element and parse_user."""

    def test_public_round_trip(self) -> None:
        """The public entry comes back field for field, with no account view."""
        record, account = parse_user(over_the_wire(user_element(user())))
        self.assertEqual(record, user())
        self.assertIsNone(account)

    def test_account_round_trip(self) -> None:
        """The account view travels when given."""
        view = AccountView(is_admin=True, password_login=False, has_password=True, created_at=NOW - 10, updated_at=NOW)
        record, account = parse_user(over_the_wire(user_element(user(), view)))
        self.assertEqual(record, user())
        self.assertEqual(account, view)

    def test_unknown_attribute_refused(self) -> None:
        """Anything unexpected in <user> is refused."""
        element = user_element(user())
        element.set("admin", "true")
        self.assertRaises(errors.BadRequest, parse_user, element)
        element = user_element(user())
        sub_element(element, "password", None, "x")
        self.assertRaises(errors.BadRequest, parse_user, element)

    def test_two_accounts_refused(self) -> None:
        """At most one <account>."""
        view = AccountView(False, True, True, NOW, NOW)
        element = user_element(user(), view)
        element.append(user_element(user(), view)[-1])
        self.assertRaises(errors.BadRequest, parse_user, over_the_wire(element))

    def test_text_refused(self) -> None:
        """Text inside <user> or <account> (where none is defined) is refused; an
        attribute's value is its text."""
        element = user_element(user())
        element.text = "hello"
        self.assertRaises(errors.BadRequest, parse_user, element)
        view = AccountView(False, True, True, NOW, NOW)
        element = user_element(user(), view)
        element[-1].text = "hello"
        self.assertRaises(errors.BadRequest, parse_user, element)

    def test_missing_and_bad_fields(self) -> None:
        """Missing fields, bad identities, times and signatures are bad-request."""
        for name, value in (
            ("id", "alice"),
            ("seq", "-1"),
            ("seq", "\u00b2"),
            ("seq", "\u0663"),
            ("signed-at", "yesterday"),
            ("signed-at", "\u0662\u0660\u0662\u0666-11-22T03:46:51Z"),
            ("signature", "***"),
        ):
            element = user_element(user())
            element.set(name, value)
            self.assertRaises(errors.BadRequest, parse_user, element)
        element = user_element(user())
        del element.attrib["email"]
        self.assertRaises(errors.BadRequest, parse_user, element)


class AddressesElementTests(unittest.SynchronousTestCase):
    """addresses_element and parse_addresses."""

    def test_round_trip(self) -> None:
        """Every field, endpoints in order."""
        self.assertEqual(parse_addresses(over_the_wire(addresses_element(addresses()))), addresses())

    def test_no_endpoints(self) -> None:
        """An offline record has no endpoints."""
        record = dataclasses.replace(addresses(), presence="offline", endpoints=())
        self.assertEqual(parse_addresses(addresses_element(record)), record)

    def test_bad_endpoint(self) -> None:
        """A bad endpoint address or port is a bad-request (not invalid-argument) here."""
        for attributes in ({"address": "example.org", "port": "1"}, {"address": "::1", "port": "0"}, {"address": "::1"}):
            element = addresses_element(addresses())
            sub_element(element, "endpoint", attributes)
            self.assertRaises(errors.BadRequest, parse_addresses, element)

    def test_unknown_endpoint_attribute(self) -> None:
        """Endpoints hold only address and port, and no text."""
        element = addresses_element(addresses())
        element[0].set("weight", "1")
        self.assertRaises(errors.BadRequest, parse_addresses, element)
        element = addresses_element(addresses())
        element[0].text = "x"
        self.assertRaises(errors.BadRequest, parse_addresses, element)

    def test_address_text_kept(self) -> None:
        """Addresses come back exactly as written, not normalised: the signature covers
        the text, and another Python version may write an address otherwise (gh-87799)."""
        record = dataclasses.replace(
            addresses(), endpoints=(Endpoint("2001:DB8:0::1", 4605), Endpoint("::ffff:192.0.2.1", 7))
        )
        parsed = parse_addresses(over_the_wire(addresses_element(record)))
        self.assertEqual(parsed, record)
        self.assertEqual(parsed.signing_bytes(), record.signing_bytes())


class CertificateElementTests(unittest.SynchronousTestCase):
    """certificate_element and parse_certificate."""

    def test_round_trip_with_pem(self) -> None:
        """Metadata and the certificate itself."""
        info = certificate_info()
        entry = parse_certificate(over_the_wire(certificate_element(info, "example.org", info.not_before + 10, with_pem=True)))
        self.assertEqual(entry.serial, info.serial)
        self.assertEqual(entry.fingerprint, info.fingerprint)
        self.assertEqual(entry.user, ALICE)
        self.assertEqual((entry.origin, entry.status), ("issued", "good"))
        self.assertEqual((entry.not_before, entry.not_after, entry.issued_at), (info.not_before, info.not_after, NOW))
        self.assertIsNone(entry.revoked_at)
        self.assertIsNone(entry.reason)
        self.assertEqual(entry.certificate, info.certificate)

    def test_without_pem(self) -> None:
        """Listings carry no PEM."""
        element = certificate_element(certificate_info(), "example.org", NOW, with_pem=False)
        self.assertIsNone(element.find("pem"))
        self.assertIsNone(parse_certificate(element).certificate)

    def test_revoked(self) -> None:
        """A revoked certificate shows when and why."""
        info = certificate_info(revoked_at=NOW + 5, revocation_reason="key-compromise")
        entry = parse_certificate(certificate_element(info, "example.org", NOW + 10, with_pem=False))
        self.assertEqual((entry.status, entry.revoked_at, entry.reason), ("revoked", NOW + 5, "key-compromise"))

    def test_status_uses_now(self) -> None:
        """The status is computed at the time given."""
        info = certificate_info()
        entry = parse_certificate(certificate_element(info, "example.org", info.not_after + 1, with_pem=False))
        self.assertEqual(entry.status, "expired")

    def test_bad_pem(self) -> None:
        """A <pem> that is not a certificate is bad-request, also when not ASCII."""
        for text in ("garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "caf\u00e9"):
            element = certificate_element(certificate_info(), "example.org", NOW, with_pem=False)
            sub_element(element, "pem", None, text)
            self.assertRaises(errors.BadRequest, parse_certificate, element)

    def test_unknown_attribute(self) -> None:
        """Unknown attributes are refused, on <pem> too, and text in <certificate>."""
        element = certificate_element(certificate_info(), "example.org", NOW, with_pem=False)
        element.set("trusted", "yes")
        self.assertRaises(errors.BadRequest, parse_certificate, element)
        element = certificate_element(certificate_info(), "example.org", NOW, with_pem=True)
        element[0].set("format", "pem")
        self.assertRaises(errors.BadRequest, parse_certificate, element)
        element = certificate_element(certificate_info(), "example.org", NOW, with_pem=False)
        element.text = "trust me"
        self.assertRaises(errors.BadRequest, parse_certificate, element)

    def test_pem_text(self) -> None:
        """pem_text is the PEM of the certificate."""
        certificate = certificate_info().certificate
        self.assertEqual(pem_text(certificate).encode("ascii"), certificate.public_bytes(Encoding.PEM))


class Pkcs12ElementTests(unittest.SynchronousTestCase):
    """pkcs12_element and parse_pkcs12."""

    def test_round_trip_with_data(self) -> None:
        """All fields and the bytes."""
        info = Pkcs12Info(7, "alice", "laptop", "generated", "1f", NOW, 5, b"\x30\x03\x02\x01\x03")
        element = over_the_wire(pkcs12_element(info, "example.org"))
        self.assertEqual(element.get("user"), "alice@example.org")
        self.assertEqual(parse_pkcs12(element), info)

    def test_listing_without_data(self) -> None:
        """Listings carry no data and no certificate serial when there is none."""
        info = Pkcs12Info(8, "alice", "escrow", "uploaded", None, NOW, 1234)
        element = pkcs12_element(info, "example.org")
        self.assertIsNone(element.find("data"))
        self.assertIsNone(element.get("certificate-serial"))
        self.assertEqual(parse_pkcs12(element), info)

    def test_bad_data(self) -> None:
        """Data that is not base64, or <data> with attributes, is refused."""
        element = pkcs12_element(Pkcs12Info(8, "alice", "x", "uploaded", None, NOW, 1), "example.org")
        sub_element(element, "data", None, "not base64!")
        self.assertRaises(errors.BadRequest, parse_pkcs12, element)
        element = pkcs12_element(Pkcs12Info(8, "alice", "x", "uploaded", None, NOW, 1, b"\x30\x03\x02\x01\x03"), "example.org")
        element[0].set("encoding", "base64")
        self.assertRaises(errors.BadRequest, parse_pkcs12, element)
