# mypy: allow-untyped-calls
"""Tests for :mod:`irp.server.ca.crl`: CRLs, checked against OpenSSL too."""

from __future__ import annotations

import datetime

from cryptography import x509

from irp.errors import InvalidArgument
from irp.server.ca import (
    REVOCATION_REASON_NAMES,
    REVOCATION_REASONS,
    CertificateAuthority,
    RevokedEntry,
    revocation_reason,
)
from test import pki
from test.irp.server.ca.support import START, FakeClock, _extension_value, _OpenSSLMixin


class CRLTests(_OpenSSLMixin):
    """Revocation lists, checked by OpenSSL."""

    def setUp(self) -> None:
        self.authority = pki.make_ca()
        self.good = pki.issue_user(self.authority, "alice").certificate
        self.revoked = pki.issue_user(self.authority, "bob").certificate
        now = datetime.datetime.now(datetime.UTC)
        self.crl = self.authority.build_crl(
            [RevokedEntry(self.revoked.serial_number, now, x509.ReasonFlags.key_compromise)], 7
        )
        self.root_crl = self.authority.build_root_crl(3)

    def test_openssl_crl_check(self) -> None:
        """With -crl_check a revoked certificate fails and a good one passes."""
        crls = [self.crl, self.root_crl]
        self.assertOpenSSLAccepts(self.authority, self.good, "-crl_check", crls=crls)
        self.assertOpenSSLRejects(self.authority, self.revoked, "-crl_check", crls=crls,
                                  expected="certificate revoked")

    def test_openssl_crl_check_all(self) -> None:
        """With -crl_check_all the root's CRL makes the whole chain checkable."""
        crls = [self.crl, self.root_crl]
        self.assertOpenSSLAccepts(self.authority, self.good, "-crl_check_all", crls=crls)
        self.assertOpenSSLRejects(self.authority, self.revoked, "-crl_check_all", crls=crls,
                                  expected="certificate revoked")
        # Without the root's CRL the chain cannot be fully checked: the root CRL matters.
        self.assertOpenSSLRejects(self.authority, self.good, "-crl_check_all",
                                  crls=[self.crl], expected="unable to get certificate CRL")

    def test_contents(self) -> None:
        """CRL number, AKI, signature, timing and per-entry reasons are as specified."""
        clock = FakeClock()
        authority = CertificateAuthority(
            "example.org", self.authority.root_certificate, self.authority.root_key,
            self.authority.issuing_certificate, self.authority.issuing_key, now=clock,
        )
        entries = [
            RevokedEntry(11, START, x509.ReasonFlags.superseded),
            RevokedEntry(12, START, x509.ReasonFlags.unspecified),
            RevokedEntry(13, START, None),
        ]
        crl = authority.build_crl(entries, 42, next_update_after=datetime.timedelta(hours=6))
        self.assertEqual(crl.issuer, authority.issuing_certificate.subject)
        issuing_key = authority.issuing_key.public_key()
        self.assertTrue(crl.is_signature_valid(issuing_key))
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
                         42)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(
            aki.key_identifier,
            _extension_value(authority.issuing_certificate, x509.SubjectKeyIdentifier).digest,
        )
        self.assertEqual(crl.last_update_utc, START - datetime.timedelta(minutes=5))
        self.assertEqual(crl.next_update_utc, START + datetime.timedelta(hours=6))
        reasons: dict[int, x509.ReasonFlags | None] = {}
        for revoked in crl:
            try:
                reasons[revoked.serial_number] = revoked.extensions.get_extension_for_class(
                    x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reasons[revoked.serial_number] = None
        self.assertEqual(reasons, {11: x509.ReasonFlags.superseded, 12: None, 13: None})
        root_crl = authority.build_root_crl(1)
        self.assertEqual(root_crl.issuer, authority.root_certificate.subject)
        self.assertEqual(len(root_crl), 0)
        self.assertTrue(root_crl.is_signature_valid(authority.root_key.public_key()))

    def test_bad_entries(self) -> None:
        """Duplicate serials, naive times and removeFromCRL are refused."""
        now = datetime.datetime.now(datetime.UTC)
        for entries in (
            [RevokedEntry(5, now), RevokedEntry(5, now)],
            [RevokedEntry(5, datetime.datetime(2026, 1, 1))],
            [RevokedEntry(5, now, x509.ReasonFlags.remove_from_crl)],
        ):
            self.assertRaises(ValueError, self.authority.build_crl, entries, 1)
        self.assertRaises(ValueError, self.authority.build_crl, [], -1)

    def test_revocation_reasons_map_both_ways(self) -> None:
        """Wire names and reason flags correspond one to one."""
        self.assertEqual(REVOCATION_REASONS["key-compromise"], x509.ReasonFlags.key_compromise)
        self.assertEqual(REVOCATION_REASONS["cessation-of-operation"],
                         x509.ReasonFlags.cessation_of_operation)
        for name, flag in REVOCATION_REASONS.items():
            self.assertEqual(REVOCATION_REASON_NAMES[flag], name)
            self.assertEqual(revocation_reason(name), flag)
        self.assertEqual(len(REVOCATION_REASON_NAMES), len(REVOCATION_REASONS))
        self.assertEqual(
            set(REVOCATION_REASONS),
            {"unspecified", "key-compromise", "affiliation-changed", "superseded",
             "cessation-of-operation", "privilege-withdrawn"},
        )
        error = self.assertRaises(InvalidArgument, revocation_reason, "certificate-hold")
        self.assertIn("key-compromise", error.message)
