"""common.pki.certificates: untrusted certificates and CSRs load completely or not at all."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from common.pki import certificates
from common.pki.certificates import UnusableCertificate, load_certificate, load_csr
from irp.cli import make_csr
from irp.server.ca import generate_key
from test import pki
from test.irp.fuzzing import crafted_pem


class LoadCertificateTests(SynchronousTestCase):
    def test_good_certificate_pem_and_der(self) -> None:
        certificate = pki.issue_user(pki.make_ca(), "alice").certificate
        self.assertEqual(load_certificate(certificate.public_bytes(serialization.Encoding.PEM)), certificate)
        self.assertEqual(load_certificate(certificate.public_bytes(serialization.Encoding.DER)), certificate)

    def test_every_defect_is_one_error(self) -> None:
        """Defects that cryptography reports with various exception types, early or only
        when a field is read, all become UnusableCertificate."""
        for defect in ("bad-version", "unknown-key", "unknown-curve", "duplicate-san", "garbage-san", "long-serial", "negative-serial"):
            pem = crafted_pem(defect, external=True).encode("ascii")
            with self.subTest(defect):
                self.assertRaises(UnusableCertificate, load_certificate, pem)

    def test_not_a_certificate(self) -> None:
        for data in (b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"\x30\x03\x02\x01\x01"):
            self.assertRaises(UnusableCertificate, load_certificate, data)


    def test_recent_certificates_are_kept(self) -> None:
        """The same bytes give the same checked object; failures and big inputs are not kept."""
        der = pki.issue_user(pki.make_ca(), "carol").certificate.public_bytes(serialization.Encoding.DER)
        first = load_certificate(der)
        self.assertIs(load_certificate(bytes(bytearray(der))), first)
        bad = crafted_pem("duplicate-san", external=True).encode("ascii")
        for _ in range(2):
            self.assertRaises(UnusableCertificate, load_certificate, bad)
        # Over the size kept: loaded and checked every time.
        big = b"\n" * certificates._CACHED_CERTIFICATE_BYTES + first.public_bytes(serialization.Encoding.PEM)
        self.assertEqual(load_certificate(big), first)
        self.assertIsNot(load_certificate(big), load_certificate(big))

    def test_cache_is_bounded(self) -> None:
        info = certificates._load_certificate_cached.cache_info()
        self.assertEqual(info.maxsize, certificates.LOADED_CERTIFICATES_CACHED)


class LoadCsrTests(SynchronousTestCase):
    def test_good_csr(self) -> None:
        csr = load_csr(make_csr(generate_key("p256")))
        self.assertTrue(csr.is_signature_valid)

    def test_bad_version_and_garbage(self) -> None:
        good = make_csr(generate_key("p256"))
        from cryptography import x509

        der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
        # CertificationRequestInfo starts with version INTEGER 0: make it 1.
        position = der.find(b"\x02\x01\x00")
        der[position + 2] = 1
        self.assertRaises(UnusableCertificate, load_csr, bytes(der))
        self.assertRaises(UnusableCertificate, load_csr, b"not a csr")
