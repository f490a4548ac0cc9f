# mypy: allow-untyped-calls
"""Tests for :mod:`common.pki.trust`: verifying user certificates against trusted roots."""

from __future__ import annotations

import datetime
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from common.identity import Identity
from common.pki import trust
from common.pki.errors import CERTIFICATE_REJECTION_REASONS, CertificateInvalid
from common.pki.keyfiles import fingerprint
from common.pki.trust import TrustStore, VerifiedUser, check_anchor
from irp.errors import CertificateRejected, NotAuthenticated, from_pki
from irp.server import ca as ca_module
from irp.server.ca import CertificateAuthority, generate_key
from test import pki

#: Defects the Web PKI verifier in cryptography also judges (the others are our policy:
#: identity, required key usages, minimum RSA size).
_WEBPKI_REJECTS = frozenset(
    {
        "expired",
        "not-yet-valid",
        "self-signed",
        "other-ca",
        "forged-signature",
        "no-client-auth",
        "ca-leaf",
        "long-chain",
        "garbled-extension",
        "unknown-critical-extension",
    }
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class _VerifyMixin(unittest.TestCase):
    def assertRejected(
        self,
        store: TrustStore,
        credentials: pki.UserCredentials,
        reason: str,
        now: datetime.datetime | None = None,
        intermediates: tuple[x509.Certificate, ...] | None = None,
    ) -> CertificateInvalid:
        error: CertificateInvalid = self.assertRaises(
            CertificateInvalid,
            store.verify_user_certificate,
            credentials.certificate,
            credentials.intermediates if intermediates is None else intermediates,
            now=now or _now(),
        )
        self.assertEqual(error.reason, reason, error.message)
        return error


class GoodCertificateTests(_VerifyMixin):
    """Certificates that must verify."""

    def test_every_key_type(self) -> None:
        """User certificates from CAs of every key type verify, with any user key type."""
        for ca_key_type in ca_module.KEY_TYPES:
            authority = pki.make_ca(key_type=ca_key_type)
            store = pki.trust_store(authority)
            for user_key_type in ca_module.KEY_TYPES:
                alice = pki.issue_user(authority, key_type=user_key_type)
                verified = store.verify_user_certificate(
                    alice.certificate, alice.intermediates, now=_now()
                )
                self.assertEqual(verified.identity, Identity("alice", "example.org"))

    def test_result(self) -> None:
        """The result names the identity, the certificate, the path and the root."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        verified = pki.trust_store(authority).verify_user_certificate(
            alice.certificate, alice.intermediates, now=_now()
        )
        self.assertEqual(
            verified,
            VerifiedUser(
                identity=Identity("alice", "example.org"),
                certificate=alice.certificate,
                chain=(alice.certificate, *authority.chain),
                root_fingerprint=fingerprint(authority.root_certificate),
            ),
        )

    def test_extra_certificates_presented(self) -> None:
        """A peer sending the root, duplicates or unrelated certificates still verifies."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        other = pki.make_ca("example.net")
        presented = (
            other.issuing_certificate,
            authority.root_certificate,
            authority.issuing_certificate,
            authority.issuing_certificate,
            pki.make_ca(label="impostor").issuing_certificate,
        )
        verified = pki.trust_store(authority).verify_user_certificate(
            alice.certificate, presented, now=_now()
        )
        self.assertEqual(verified.chain, (alice.certificate, *authority.chain))

    def test_ca_issued_server_style_eku_mix(self) -> None:
        """A certificate for both client and server authentication is still a user's."""
        authority = pki.make_ca()
        identity = Identity("alice", "example.org")
        certificate, _ = pki.build_certificate(
            authority.issuing_certificate,
            authority.issuing_key,
            subject=pki.user_name(identity),
            san=[x509.UniformResourceIdentifier(identity.uri), x509.DNSName("alice.example")],
            extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        verified = pki.trust_store(authority).verify_user_certificate(
            certificate, [authority.issuing_certificate], now=_now()
        )
        self.assertEqual(verified.identity, identity)


class BadCertificateTests(_VerifyMixin):
    """The certificate matrix: each defect gives its reason."""

    def test_every_reason_is_covered(self) -> None:
        """The fixture defects produce every reason of the vocabulary."""
        self.assertEqual(set(pki.BAD_CERTIFICATES.values()), CERTIFICATE_REJECTION_REASONS)

    def test_matrix(self) -> None:
        """Every defect is rejected with its reason, whatever the CA's key type."""
        for key_type in ca_module.KEY_TYPES:
            authority = pki.make_ca(key_type=key_type)
            store = pki.trust_store(authority)
            for defect, reason in pki.BAD_CERTIFICATES.items():
                with self.subTest(key_type=key_type, defect=defect):
                    self.assertRejected(store, pki.bad_user(authority, defect), reason)

    def test_agrees_with_cryptography_verifier(self) -> None:
        """Where the Web PKI verifier judges a defect, it rejects it too; it accepts good ones.

        A cross-check of our path validation against an independent implementation.
        """
        authority = pki.make_ca(key_type="p384")
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([authority.root_certificate]))
            .time(_now())
            .max_chain_depth(2)
            .build_client_verifier()
        )
        alice = pki.issue_user(authority)
        verified = verifier.verify(alice.certificate, list(alice.intermediates))
        self.assertEqual(verified.subjects, [x509.UniformResourceIdentifier(alice.identity.uri)])
        for defect in _WEBPKI_REJECTS:
            bad = pki.bad_user(authority, defect)
            with self.subTest(defect=defect):
                self.assertRaises(
                    (verification.VerificationError, ValueError),
                    verifier.verify,
                    bad.certificate,
                    list(bad.intermediates),
                )

    def test_messages_are_readable(self) -> None:
        """Rejections are certificate-rejected errors with a sentence for people."""
        authority = pki.make_ca()
        error = from_pki(self.assertRejected(
            pki.trust_store(authority), pki.bad_user(authority, "expired"), "expired"
        ))
        self.assertIsInstance(error, CertificateRejected)
        self.assertIsInstance(error, NotAuthenticated)
        self.assertEqual(error.name, "certificate-rejected")
        self.assertEqual(error.code, 401)
        self.assertIn("expired on", error.message)
        self.assertIn("CN=alice", error.message)

    def test_unknown_reason_is_a_bug(self) -> None:
        """Reasons outside the vocabulary cannot be raised."""
        self.assertRaises(ValueError, CertificateInvalid, "revoked", "message")

    def test_missing_intermediate(self) -> None:
        """A peer not sending the issuing CA cannot be verified."""
        authority = pki.make_ca()
        self.assertRejected(
            pki.trust_store(authority), pki.issue_user(authority), "unknown-issuer",
            intermediates=(),
        )

    def test_root_as_user_certificate(self) -> None:
        """Presenting the trusted root itself identifies nobody."""
        authority = pki.make_ca()
        root = pki.UserCredentials(
            Identity("alice", "example.org"), authority.root_key, authority.root_certificate, ()
        )
        error = self.assertRaises(
            CertificateInvalid,
            pki.trust_store(authority).verify_user_certificate,
            root.certificate,
            [],
            now=_now(),
        )
        self.assertIn(error.reason, {"unknown-issuer", "wrong-usage"})

    def test_malformed_intermediate(self) -> None:
        """An intermediate with a critical extension we do not process breaks the path."""
        authority = pki.make_ca()
        identity = Identity("alice", "example.org")
        odd_ca, odd_ca_key = pki.build_certificate(
            authority.root_certificate,
            authority.root_key,
            subject=authority.issuing_certificate.subject,
            ca=True,
            path_length=0,
            key_usage=["key_cert_sign"],
            extended_key_usage=None,
            extra_extensions=[
                (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.32473.2"),
                                            b"\x05\x00"), True),
            ],
        )
        certificate, key = pki.build_certificate(
            odd_ca, odd_ca_key, subject=pki.user_name(identity),
            san=[x509.UniformResourceIdentifier(identity.uri)],
        )
        credentials = pki.UserCredentials(
            identity, key, certificate, (odd_ca, authority.root_certificate)
        )
        error = self.assertRejected(pki.trust_store(authority), credentials, "malformed")
        self.assertIn("critical extension", error.message)

    def test_too_many_intermediates_presented(self) -> None:
        """A flood of intermediates is refused before any path building."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        self.assertRejected(
            pki.trust_store(authority), alice, "chain-too-long",
            intermediates=(authority.issuing_certificate,) * 9,
        )

    def test_max_chain_depth(self) -> None:
        """A store allowing no intermediates refuses our two-level chains."""
        authority = pki.make_ca()
        self.assertRejected(
            pki.trust_store(authority, max_chain_depth=0), pki.issue_user(authority),
            "chain-too-long",
        )

    def test_naive_time_is_a_bug(self) -> None:
        """Verifying at a naive time is refused."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        self.assertRaises(
            ValueError,
            pki.trust_store(authority).verify_user_certificate,
            alice.certificate,
            alice.intermediates,
            now=datetime.datetime(2026, 1, 1),
        )

    def test_sha1_signature(self) -> None:
        """A certificate signed with SHA-1 (made by OpenSSL) is refused as a bad signature."""
        authority = pki.make_ca()
        directory = self.mktemp()
        os.mkdir(directory)
        user_key = generate_key("p256")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(pki.user_name(Identity("alice", "example.org")))
            .sign(user_key, ca_module.signature_hash(user_key))
        )
        files = {
            "csr.pem": csr.public_bytes(serialization.Encoding.PEM),
            "issuing.pem": authority.issuing_certificate.public_bytes(serialization.Encoding.PEM),
            "issuing.key": authority.issuing_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "ext.cnf": b"basicConstraints=critical,CA:FALSE\n"
            b"keyUsage=critical,digitalSignature\n"
            b"extendedKeyUsage=clientAuth\n"
            b"subjectAltName=URI:irp:alice@example.org\n"
            b"authorityKeyIdentifier=keyid\n",
        }
        for name, data in files.items():
            with open(os.path.join(directory, name), "wb") as output:
                output.write(data)
        subprocess.run(
            ["openssl", "x509", "-req", "-in", "csr.pem", "-CA", "issuing.pem", "-CAkey",
             "issuing.key", "-set_serial", "4242", "-days", "30", "-sha1", "-extfile", "ext.cnf",
             "-out", "leaf.pem"],
            cwd=directory, check=True, capture_output=True,
        )
        with open(os.path.join(directory, "leaf.pem"), "rb") as leaf:
            certificate = x509.load_pem_x509_certificate(leaf.read())
        self.assertIsInstance(certificate.signature_hash_algorithm, hashes.SHA1)
        credentials = pki.UserCredentials(
            Identity("alice", "example.org"), user_key, certificate, tuple(authority.chain)
        )
        error = self.assertRejected(pki.trust_store(authority), credentials, "bad-signature")
        self.assertIn("sha1", error.message)


def _outliving_its_issuer(authority: CertificateAuthority) -> pki.UserCredentials:
    """Alice's credentials with a certificate valid until 30 days after its issuing CA."""
    alice = pki.issue_user(authority)
    late = pki.build_certificate(
        authority.issuing_certificate,
        authority.issuing_key,
        subject=pki.user_name(alice.identity),
        san=[x509.UniformResourceIdentifier(alice.identity.uri)],
        not_after=authority.issuing_certificate.not_valid_after_utc - _now() + datetime.timedelta(days=30),
    )[0]
    return pki.UserCredentials(alice.identity, alice.key, late, alice.chain)


class TimeTests(_VerifyMixin):
    """Validity periods, of the user certificate and of its CAs."""

    def test_boundaries(self) -> None:
        """Valid from notBefore to notAfter inclusive; not a second outside."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        start = alice.certificate.not_valid_before_utc
        end = alice.certificate.not_valid_after_utc
        second = datetime.timedelta(seconds=1)
        for moment in (start, end):
            store.verify_user_certificate(alice.certificate, alice.intermediates, now=moment)
        self.assertRejected(store, alice, "not-yet-valid", now=start - second)
        self.assertRejected(store, alice, "expired", now=end + second)

    def test_expired_intermediate(self) -> None:
        """A user certificate under an expired issuing CA is refused."""
        authority = pki.make_ca()
        after_issuing_ca = authority.issuing_certificate.not_valid_after_utc + datetime.timedelta(
            days=1
        )
        # A user certificate still valid at a time when the issuing CA is not.
        late_credentials = _outliving_its_issuer(authority)
        error = self.assertRejected(
            pki.trust_store(authority), late_credentials, "expired", now=after_issuing_ca
        )
        self.assertIn("Issuing CA", error.message)


class VerifiedPathCacheTests(_VerifyMixin):
    """A verified path is remembered only for the time every certificate on it is valid."""

    def test_hit_within_the_window_of_the_whole_path(self) -> None:
        authority = pki.make_ca()
        store = pki.trust_store(authority)
        issuing_end = authority.issuing_certificate.not_valid_after_utc
        # A user certificate that outlives its issuing CA: verified (and remembered) while
        # both are valid, refused once the issuing CA has expired.
        credentials = _outliving_its_issuer(authority)
        late = credentials.certificate
        first = store.verify_user_certificate(late, credentials.intermediates, now=_now())
        again = store.verify_user_certificate(late, credentials.intermediates, now=_now())
        self.assertIs(again, first)
        self.assertRejected(store, credentials, "expired", now=issuing_end + datetime.timedelta(seconds=1))

    def test_other_intermediates_are_another_entry(self) -> None:
        """The same leaf presented without its issuing CA is judged afresh."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
        self.assertRejected(store, alice, "unknown-issuer", intermediates=())

    def test_new_root_forgets_paths(self) -> None:
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        first = store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
        store.add_root(pki.make_ca("other.example").root_certificate)
        again = store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
        self.assertIsNot(again, first)
        self.assertEqual(again, first)


class FirstContactWorkTests(_VerifyMixin):
    """Verifying a chain never seen before reads each certificate's extensions once and
    takes no fingerprint but the ones already known (the root's, from when it was trusted)."""

    def test_extensions_read_once_per_certificate(self) -> None:
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        read: list[bytes] = []
        real = trust._processed_extensions

        def counting(certificate: x509.Certificate) -> x509.Extensions:
            read.append(certificate.public_bytes(serialization.Encoding.DER))
            return real(certificate)

        self.patch(trust, "_processed_extensions", counting)
        verified = store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
        self.assertEqual(len(verified.chain), 3)
        self.assertEqual(sorted(read), sorted({*read}))
        self.assertEqual(len(read), 3)

    def test_root_fingerprint_taken_when_trusted(self) -> None:
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        taken: list[x509.Certificate] = []

        def counting(certificate: x509.Certificate) -> str:
            taken.append(certificate)
            return ""

        self.patch(trust, "fingerprint", counting)
        verified = store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
        self.assertEqual(taken, [])
        self.assertEqual(verified.root_fingerprint, fingerprint(authority.root_certificate))

    def test_unknown_critical_extension_refused_on_every_path(self) -> None:
        """A candidate issuer with an unknown critical extension is refused each time it is
        asked about, as before (the first answer is not remembered as a success)."""
        authority = pki.make_ca()
        alice = pki.issue_user(authority)
        store = pki.trust_store(authority)
        self.patch(trust, "_PROCESSED_CRITICAL_EXTENSIONS", frozenset())
        error = self.assertRejected(store, alice, "malformed")
        self.assertIn("critical extension", error.message)


class CrossDomainTests(_VerifyMixin):
    """A store may hold several domains' roots; each only certifies its own users."""

    def setUp(self) -> None:
        self.domain_a = pki.make_ca("a.example")
        self.domain_b = pki.make_ca("b.example")

    def test_root_of_b_does_not_validate_a(self) -> None:
        """With only B's root, A's users are unknown."""
        self.assertRejected(
            pki.trust_store(self.domain_b), pki.issue_user(self.domain_a), "unknown-issuer"
        )

    def test_b_cannot_certify_users_of_a(self) -> None:
        """A certificate from B's CA naming a user of A is refused, even trusting both."""
        identity = Identity("alice", "a.example")
        certificate, key = pki.build_certificate(
            self.domain_b.issuing_certificate,
            self.domain_b.issuing_key,
            subject=pki.user_name(identity),
            san=[x509.UniformResourceIdentifier(identity.uri)],
        )
        forged = pki.UserCredentials(identity, key, certificate, tuple(self.domain_b.chain))
        for store in (
            pki.trust_store(self.domain_b),
            pki.trust_store(self.domain_a, self.domain_b),
        ):
            error = self.assertRejected(store, forged, "bad-identity")
            self.assertIn("certifies users of b.example only", error.message)

    def test_both_domains(self) -> None:
        """Trusting both roots, each domain's users verify with their own root."""
        store = pki.trust_store(self.domain_a, self.domain_b)
        self.assertEqual(store.domains, frozenset({"a.example", "b.example"}))
        for authority in (self.domain_a, self.domain_b):
            user = pki.issue_user(authority, "carol")
            verified = store.verify_user_certificate(
                user.certificate, user.intermediates, now=_now()
            )
            self.assertEqual(verified.identity, Identity("carol", authority.domain))
            self.assertEqual(verified.root_fingerprint, authority.root_fingerprint)


class AnchorBindingTests(_VerifyMixin):
    """A root certifies exactly the domain it was trusted for, whatever its O attribute
    says (issue 9 item 2: a foreign root saying ``O=example.org`` certified example.org's
    users)."""

    def setUp(self) -> None:
        self.home = pki.make_ca("example.org")
        #: A real CA of someone else whose root states example.org.
        self.foreign = pki.make_ca("example.org", label="foreign")
        self.store = TrustStore(
            anchors=[("example.org", self.home.root_certificate), ("evil.example", self.foreign.root_certificate)]
        )

    def test_foreign_root_cannot_certify_the_domain_it_states(self) -> None:
        forged = pki.issue_user(self.foreign, "bob")
        error = self.assertRejected(self.store, forged, "bad-identity")
        self.assertIn("bob@example.org", error.message)
        self.assertIn("evil.example", error.message)

    def test_own_root_still_certifies_its_users(self) -> None:
        bob = pki.issue_user(self.home, "bob")
        verified = self.store.verify_user_certificate(bob.certificate, bob.intermediates, now=_now())
        self.assertEqual(verified.identity, Identity("bob", "example.org"))
        self.assertEqual(self.store.domains, frozenset({"example.org", "evil.example"}))
        self.assertEqual(self.store.domain_of(self.foreign.root_certificate), "evil.example")

    def test_bound_root_certifies_its_bound_domain(self) -> None:
        """Bound to evil.example, the foreign root certifies evil.example's users (the
        binding, not the O attribute, decides)."""
        identity = Identity("mallory", "evil.example")
        certificate, key = pki.build_certificate(
            self.foreign.issuing_certificate, self.foreign.issuing_key,
            subject=pki.user_name(identity), san=[x509.UniformResourceIdentifier(identity.uri)],
        )
        user = pki.UserCredentials(identity, key, certificate, tuple(self.foreign.chain))
        verified = self.store.verify_user_certificate(user.certificate, user.intermediates, now=_now())
        self.assertEqual(verified.identity, identity)

    def test_one_root_one_domain(self) -> None:
        with self.assertRaises(ValueError) as caught:
            self.store.add_root(self.foreign.root_certificate, "example.org")
        self.assertIn("evil.example", str(caught.exception))
        self.assertRaises(ValueError, self.store.add_root, self.home.root_certificate, "not a domain")

    def test_check_anchor(self) -> None:
        """Trusting a root for a domain requires the root to state that domain."""
        self.assertEqual(check_anchor(self.home.root_certificate, "Example.ORG"), "example.org")
        with self.assertRaises(ValueError) as caught:
            check_anchor(self.foreign.root_certificate, "evil.example")
        self.assertIn("O attribute says example.org", str(caught.exception))
        self.assertRaises(ValueError, check_anchor, self.home.issuing_certificate, "example.org")


class TrustStoreTests(unittest.TestCase):
    """Building trust stores."""

    def test_from_pem(self) -> None:
        """A PEM bundle of roots gives a store trusting each, in order."""
        roots = [pki.make_ca("a.example").root_certificate, pki.make_ca().root_certificate]
        data = b"".join(root.public_bytes(serialization.Encoding.PEM) for root in roots)
        store = TrustStore.from_pem(data, max_chain_depth=3)
        self.assertEqual(store.roots, tuple(roots))
        self.assertEqual(store.max_chain_depth, 3)
        self.assertEqual(store.domains, frozenset({"a.example", "example.org"}))

    def test_add_root(self) -> None:
        """Roots can be added later; adding one twice keeps one."""
        store = TrustStore([])
        self.assertEqual(store.domains, frozenset())
        root = pki.make_ca().root_certificate
        store.add_root(root)
        store.add_root(root)
        self.assertEqual(store.roots, (root,))

    def test_refused_roots(self) -> None:
        """Intermediates, user certificates and roots naming no domain are not roots."""
        authority = pki.make_ca()
        no_domain, _ = pki.build_certificate(
            None, None,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Root")]),
            ca=True, key_usage=["key_cert_sign"], extended_key_usage=None,
        )
        not_a_ca, _ = pki.build_certificate(
            None, None,
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org")]),
            extended_key_usage=None,
        )
        bad_domain, _ = pki.build_certificate(
            None, None,
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Inc.")]),
            ca=True, key_usage=["key_cert_sign"], extended_key_usage=None,
        )
        for certificate in (
            authority.issuing_certificate,
            pki.issue_user(authority).certificate,
            no_domain,
            not_a_ca,
            bad_domain,
        ):
            self.assertRaises(ValueError, TrustStore, [certificate])

    def test_negative_depth(self) -> None:
        """A negative chain depth is a bug."""
        self.assertRaises(ValueError, TrustStore, [], max_chain_depth=-1)

    def test_loaded_ca_root(self) -> None:
        """A CA written to disk and loaded back is trusted by the same store."""
        directory = self.mktemp()
        authority = CertificateAuthority.load_or_create(directory, "example.org",
                                                        key_type="p256")
        store = TrustStore([authority.root_certificate])
        reloaded = CertificateAuthority.load_or_create(directory, "example.org")
        alice = pki.issue_user(reloaded)
        store.verify_user_certificate(alice.certificate, alice.intermediates, now=_now())
