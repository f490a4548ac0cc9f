"""Certificate operations (irp.server.ops.certificates): issuing, renewal, revocation, CRLs."""

from __future__ import annotations

import base64
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from common.identity import Identity, identity_from_certificate
from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import make_element, sub_element
from irp.server.ca import DEFAULT_ROOT_CRL_LIFETIME, generate_key
from test import pki
from test.helpers import EnrolledUser
from test.irp.server.helpers import (
    DOMAIN,
    RegistryTestCase,
    csr,
    external_certificate,
)


class CertificateTests(RegistryTestCase):
    """request-certificate, generate-key, listings, downloads and uploads."""

    async def test_csr_subject_ignored(self) -> None:
        """The certificate names the logged-in user, whatever the CSR claims, and works."""
        await self.start()
        alice = await self.user("alice")
        key = generate_key("p256")
        entry = await alice.request_certificate(csr(key))
        certificate = entry.certificate
        assert certificate is not None
        self.assertEqual(identity_from_certificate(certificate), Identity("alice", DOMAIN))
        self.assertEqual(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "alice")
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        self.assertFalse(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(certificate.public_key(), key.public_key())
        certificate.verify_directly_issued_by(self.registry.ca.issuing_certificate)
        self.assertEqual((entry.status, entry.origin, str(entry.user)), ("good", "issued", "alice@example.org"))
        self.assertEqual(entry.fingerprint, fingerprint(certificate))
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, entry.serial))
        self.assertEqual((await client.whoami()).method, "certificate")

    async def test_bad_csrs(self) -> None:
        """Garbage, a CSR not signed by its own key and a weak key are refused."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.request_certificate(b"not a CSR"))
        good = x509.load_pem_x509_csr(csr(generate_key("p256")))
        forged = bytearray(good.public_bytes(serialization.Encoding.DER))
        forged[-3] ^= 0x01  # inside the signature
        forged_pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(forged)) + b"-----END CERTIFICATE REQUEST-----\n"
        await self.fails("invalid-argument", alice.request_certificate(forged_pem))
        weak = csr(pki.rsa_key(1024), extra_san=False)
        await self.fails("weak-key", alice.request_certificate(weak))
        self.assertEqual(await alice.list_certificates(), [])

    async def test_certificate_quota(self) -> None:
        """At most max_certificates_per_user certificates, however they are made."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        await alice.request_certificate(csr(generate_key("p256")))
        await alice.request_certificate(csr(generate_key("p256")))
        await self.fails("conflict", alice.request_certificate(csr(generate_key("p256"))))
        await self.fails("conflict", alice.generate_key("a long passphrase", key_type="p256"))
        self.assertEqual(len(await alice.list_certificates()), 2)
        self.assertEqual(await alice.list_pkcs12(), [])

    async def test_quota_counts_current_certificates(self) -> None:
        """Revoked certificates do not count against the quota, and a renewal at the limit
        works (its predecessor is being replaced): years of renewals never lock a user out."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        first = await alice.request_certificate(csr(generate_key("p256")))
        await alice.request_certificate(csr(generate_key("p256")))
        renewed = await alice.renew(first.serial)
        await alice.revoke(renewed.serial)
        await alice.request_certificate(csr(generate_key("p256")))
        await self.fails("conflict", alice.request_certificate(csr(generate_key("p256"))))
        self.assertEqual(len(await alice.list_certificates()), 4)

    async def test_upload_quota(self) -> None:
        """Uploaded certificates count against the quota like issued ones."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        await alice.request_certificate(csr(generate_key("p256")))
        await alice.upload_certificate(external_certificate())
        await self.fails("conflict", alice.upload_certificate(external_certificate()))
        self.assertEqual(len(await alice.list_certificates()), 2)

    async def test_pkcs12_quota_for_generated_keys(self) -> None:
        """Generated keys count against max_pkcs12_per_user."""
        await self.start(max_pkcs12_per_user=1)
        alice = await self.user("alice")
        await alice.generate_key("a long passphrase", key_type="p256")
        await self.fails("conflict", alice.generate_key("a long passphrase", key_type="p256"))
        self.assertEqual(len(await alice.list_certificates()), 1)

    async def test_generate_key(self) -> None:
        """The PKCS#12 opens with the passphrase and holds a key and a certificate naming
        the user, with the CA chain; the registry keeps a byte-identical copy."""
        await self.start()
        alice = await self.user("alice")
        info, entry = await alice.generate_key("sesame open please", key_type="p256", label="phone")
        assert info.data is not None and entry.certificate is not None
        self.assertRaises(ValueError, pkcs12.load_pkcs12, info.data, b"wrong passphrase")
        bundle = pkcs12.load_pkcs12(info.data, b"sesame open please")
        assert bundle.key is not None and bundle.cert is not None
        certificate = bundle.cert.certificate
        self.assertEqual(certificate, entry.certificate)
        self.assertEqual(identity_from_certificate(certificate), Identity("alice", DOMAIN))
        self.assertEqual(bundle.key.public_key(), certificate.public_key())
        self.assertEqual(bundle.cert.friendly_name, b"alice@example.org")
        self.assertIn(self.registry.ca.issuing_certificate, [extra.certificate for extra in bundle.additional_certs])
        self.assertEqual((info.label, info.origin, info.username, info.size), ("phone", "generated", "alice", len(info.data)))
        self.assertEqual(info.certificate_serial, format(entry.serial, "x"))
        [listed] = await alice.list_pkcs12()
        self.assertEqual((listed.id, listed.data), (info.id, None))
        self.assertEqual((await alice.get_pkcs12(info.id)).data, info.data)
        user = EnrolledUser("alice", "", bundle.key, certificate, entry.serial)  # type: ignore[arg-type]
        self.assertEqual((await (await self.registry.client(user=user)).whoami()).method, "certificate")

    async def test_generate_key_types_and_refusals(self) -> None:
        """Ed25519 keys; a short passphrase or unknown key type is refused."""
        await self.start()
        alice = await self.user("alice")
        info, _entry = await alice.generate_key("sesame open please", key_type="ed25519")
        assert info.data is not None
        bundle = pkcs12.load_pkcs12(info.data, b"sesame open please")
        self.assertIsInstance(bundle.key, ed25519.Ed25519PrivateKey)
        await self.fails("invalid-argument", alice.generate_key("short", key_type="p256"))
        await self.fails("invalid-argument", alice.generate_key("sesame open please", key_type="rsa512"))

    async def test_listings(self) -> None:
        """list-certificates shows all of one's certificates, newest first;
        user-certificates shows anyone's currently good issued ones, with PEM, verified."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        first = await alice.request_certificate(csr(generate_key("p256")))
        second = await alice.request_certificate(csr(generate_key("p256")))
        await alice.revoke(first.serial, "key-compromise")
        await alice.upload_certificate(external_certificate())
        listing = await alice.list_certificates()
        self.assertEqual(len(listing), 3)
        self.assertEqual({entry.serial for entry in listing if entry.origin == "issued"}, {first.serial, second.serial})
        self.assertTrue(all(entry.certificate is None for entry in listing))
        statuses = {entry.serial: entry.status for entry in listing}
        self.assertEqual((statuses[first.serial], statuses[second.serial]), ("revoked", "good"))
        current = await bob.user_certificates("alice")
        self.assertEqual([entry.serial for entry in current], [second.serial])
        self.assertIsNotNone(current[0].certificate)
        await self.fails("not-found", bob.user_certificates("nobody"))

    async def test_get_certificate(self) -> None:
        """Certificates are public: anyone logged in downloads one by serial."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        entry = await alice.request_certificate(csr(generate_key("p256")))
        downloaded = await bob.get_certificate(entry.serial)
        self.assertEqual(downloaded.certificate, entry.certificate)
        await self.fails("not-found", bob.get_certificate(entry.serial + 1))
        await self.fails("bad-request", bob.protocol.request(make_element("get-certificate", {"serial": "xyz"})))
        by_fingerprint = await bob.get_certificate(fingerprint=entry.fingerprint)
        self.assertEqual(by_fingerprint.certificate, entry.certificate)
        await self.fails("not-found", bob.get_certificate(fingerprint="0" * 64))
        for attributes in ({}, {"serial": format(entry.serial, "x"), "fingerprint": entry.fingerprint}, {"fingerprint": "AB" * 32}):
            await self.fails("bad-request", bob.protocol.request(make_element("get-certificate", attributes)))

    async def test_upload_certificate(self) -> None:
        """A certificate from another issuer naming the user (by irp: URI or registered
        email) is stored as external; anything else is refused."""
        await self.start()
        alice = await self.user("alice", email="alice@example.org")
        external = external_certificate()
        entry = await alice.upload_certificate(external)
        self.assertEqual((entry.origin, entry.status, entry.fingerprint), ("external", "good", fingerprint(external)))
        by_email = await alice.upload_certificate(external_certificate("Alice", email="Alice@Example.org"))
        self.assertEqual(by_email.origin, "external")
        await self.fails("conflict", alice.upload_certificate(external))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(f"bob@{DOMAIN}")))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(email="bob@example.org")))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(expired=True)))
        ours = await alice.request_certificate(csr(generate_key("p256")))
        assert ours.certificate is not None
        await self.fails("conflict", alice.upload_certificate(ours.certificate))
        status = await alice.certificate_status(certificate=external)
        self.assertEqual(status.state, "unknown")  # not ours to vouch for
        await self.fails("not-found", alice.revoke(entry.serial))  # serials name certificates issued here
        operation = make_element("upload-certificate")
        sub_element(operation, "pem", None, "garbage")
        await self.fails("invalid-argument", alice.protocol.request(operation))

    async def test_uploads_share_serials(self) -> None:
        """Serial numbers are unique per issuer only: two users upload certificates of
        different issuers with the serial of a certificate issued here; all three are
        stored, each downloads by fingerprint, and the serial names the issued one."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        ours = await alice.request_certificate(csr(generate_key("p256")))
        alices = external_certificate(serial=ours.serial)
        bobs = external_certificate(f"bob@{DOMAIN}", serial=ours.serial)
        uploaded = [await alice.upload_certificate(alices), await bob.upload_certificate(bobs)]
        self.assertEqual([entry.serial for entry in uploaded], [ours.serial, ours.serial])
        for certificate in (alices, bobs):
            downloaded = await bob.get_certificate(fingerprint=fingerprint(certificate))
            self.assertEqual(downloaded.certificate, certificate)
        by_serial = await bob.get_certificate(ours.serial)
        self.assertEqual((by_serial.fingerprint, by_serial.origin), (ours.fingerprint, "issued"))
        listed = await alice.list_certificates()
        self.assertEqual(sorted(entry.origin for entry in listed), ["external", "issued"])
        status = await bob.certificate_status(ours.serial)
        self.assertEqual(status.state, "good")

    async def test_external_certificate_cannot_log_in(self) -> None:
        """An uploaded certificate is not a login credential."""
        await self.start()
        alice = await self.user("alice")
        partner = pki.make_ca("partner.example")
        key = generate_key("p256")
        certificate, _ = pki.build_certificate(
            partner.issuing_certificate, partner.issuing_key, subject=pki.user_name(Identity("alice", DOMAIN)),
            key=key, san=[x509.UniformResourceIdentifier(f"irp:alice@{DOMAIN}")],
        )
        await alice.upload_certificate(certificate)
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, 0))
        await self.fails("certificate-rejected", client.whoami())


class RenewRevokeTests(RegistryTestCase):
    """renew, revoke, get-crl, certificate-status, ca-chain."""

    async def test_renew_same_key(self) -> None:
        """Renewal issues a successor for the same key and supersedes the old one; the
        old certificate's session ends, the new certificate logs in."""
        await self.start()
        alice, client = await self.enrolled("alice")
        renewed = await client.renew(alice.serial)
        assert renewed.certificate is not None
        self.assertNotEqual(renewed.serial, alice.serial)
        self.assertEqual(renewed.certificate.public_key(), alice.key.public_key())
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.reason), ("revoked", "superseded"))
        await self.fails("certificate-rejected", client.whoami())
        successor = EnrolledUser("alice", "", alice.key, renewed.certificate, renewed.serial)
        self.assertEqual((await (await self.registry.client(user=successor)).whoami()).method, "certificate")
        old = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", old.whoami())

    async def test_renew_new_key(self) -> None:
        """With a CSR the successor certifies the new key, for the same user."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client("alice")
        key = generate_key("p256")
        renewed = await client.renew(alice.serial, csr(key))
        assert renewed.certificate is not None
        self.assertEqual(renewed.certificate.public_key(), key.public_key())
        self.assertEqual(identity_from_certificate(renewed.certificate), Identity("alice", DOMAIN))

    async def test_renew_refusals(self) -> None:
        """Revoked and unknown certificates cannot be renewed."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client("alice")
        await client.revoke(alice.serial)
        await self.fails("invalid-argument", client.renew(alice.serial))
        await self.fails("not-found", client.renew(12345))

    async def test_renew_expired_refused(self) -> None:
        """Only a good certificate can be renewed: not an expired one."""
        await self.start()
        await self.registry.add_user("alice")
        ca = self.registry.ca
        expired, _key = pki.build_certificate(
            ca.issuing_certificate,
            ca.issuing_key,
            subject=pki.user_name(Identity("alice", DOMAIN)),
            san=[x509.UniformResourceIdentifier(f"irp:alice@{DOMAIN}")],
            not_before=datetime.timedelta(days=-30),
            not_after=datetime.timedelta(days=-1),
        )
        await self.registry.store.add_certificate("alice", expired, fingerprint(expired))
        client = await self.registry.client("alice")
        error = await self.fails("invalid-argument", client.renew(expired.serial_number))
        self.assertIn("expired", error.message)
        self.assertEqual([entry.status for entry in await client.list_certificates()], ["expired"])

    async def test_root_crl_lifetime(self) -> None:
        """The root CRL (always empty) lives DEFAULT_ROOT_CRL_LIFETIME, the issuing CA's
        CRL crl_lifetime."""
        await self.start()
        client = await self.registry.client()
        crls = {info.issuer: info.crl for info in await client.get_crls()}
        for issuer, lifetime in (("root", DEFAULT_ROOT_CRL_LIFETIME), ("issuing", datetime.timedelta(days=1))):
            crl = crls[issuer]
            assert crl.next_update_utc is not None
            remaining = crl.next_update_utc - datetime.datetime.now(datetime.UTC)
            self.assertGreater(remaining, lifetime - datetime.timedelta(minutes=5), issuer)
            self.assertLessEqual(remaining, lifetime, issuer)

    async def test_revoke(self) -> None:
        """Revocation shows in status, listings and the CRL at once; the certificate no
        longer logs in, and its open session ends."""
        await self.start()
        alice, session = await self.enrolled("alice")
        client = await self.registry.client("alice")
        crls = await client.get_crls()
        issuing_number = next(crl.number for crl in crls if crl.issuer == "issuing")
        revoked = await client.revoke(alice.serial, "key-compromise")
        self.assertEqual((revoked.status, revoked.reason), ("revoked", "key-compromise"))
        self.assertIsNotNone(revoked.revoked_at)
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.reason, status.user), ("revoked", "key-compromise", "alice@example.org"))
        by_pem = await client.certificate_status(certificate=alice.certificate)
        self.assertEqual(by_pem.state, "revoked")
        crls = await client.get_crls()
        issuing = next(crl for crl in crls if crl.issuer == "issuing")
        self.assertGreater(issuing.number, issuing_number)
        entry = issuing.crl.get_revoked_certificate_by_serial_number(alice.serial)
        assert entry is not None
        self.assertEqual(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, x509.ReasonFlags.key_compromise)
        await self.fails("certificate-rejected", session.lookup("alice"))
        await self.fails("not-authenticated", session.lookup("alice"))
        fresh = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", fresh.whoami())
        await self.fails("conflict", client.revoke(alice.serial))
        await self.fails("invalid-argument", (await self.registry.admin()).revoke(alice.serial, "because"))

    async def test_crls_verify(self) -> None:
        """Both CRLs are signed by their CA (the client checks) and name their issuer."""
        await self.start()
        client = await self.registry.client()
        crls = {crl.issuer: crl for crl in await client.get_crls()}
        self.assertEqual(set(crls), {"issuing", "root"})
        self.assertEqual(crls["issuing"].crl.issuer, self.registry.ca.issuing_certificate.subject)
        self.assertEqual(crls["root"].crl.issuer, self.registry.root.subject)
        self.assertEqual(len(list(crls["issuing"].crl)), 0)
        again = {crl.issuer: crl.number for crl in await client.get_crls()}
        self.assertEqual(again, {issuer: crl.number for issuer, crl in crls.items()})  # cached

    async def test_status(self) -> None:
        """good for a current certificate, unknown for unknown serials; the request needs
        exactly one of serial and PEM."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client()
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.user, status.reason), ("good", "alice@example.org", None))
        self.assertEqual((await client.certificate_status(certificate=alice.certificate)).state, "good")
        self.assertEqual((await client.certificate_status(alice.serial + 1)).state, "unknown")
        self.assertEqual((await client.certificate_status(certificate=pki.issue_user(pki.make_ca()).certificate)).state, "unknown")
        await self.fails("bad-request", client.protocol.request(make_element("certificate-status")))

    async def test_ca_chain(self) -> None:
        """The chain ends at the pinned root and its record-signing certificate verifies
        the registry's records."""
        await self.start()
        client = await self.registry.client()
        chain = await client.ca_chain()
        self.assertEqual(chain.root, self.registry.root)
        self.assertEqual(chain.issuing, self.registry.ca.issuing_certificate)
        self.assertEqual(chain.domain, DOMAIN)
        element = (await client._call("ca-chain")).single("ca-chain")
        self.assertEqual(element.get("root-fingerprint"), fingerprint(self.registry.root))
