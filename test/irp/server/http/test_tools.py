"""The HTTP endpoint of a real registry, checked with OpenSSL's own tools: ``openssl
verify -crl_download -crl_check`` fetches the CRL the certificate names, ``openssl ocsp``
asks the responder (good, revoked with reason and time, unknown; with and without a nonce;
before and after a revocation)."""

from __future__ import annotations

import datetime
import os
import shutil
import sqlite3

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from irp.server.ca.issuance import issuing_crl_name
from test.helpers import EnrolledUser, RunningRegistry

OPENSSL = shutil.which("openssl")


class OpenSSLTests(TestCase):
    """``openssl verify`` and ``openssl ocsp`` against a running registry."""

    timeout = 60

    def setUp(self) -> None:
        if OPENSSL is None:
            raise self.skipTest("openssl is not installed")
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    async def start(self) -> RunningRegistry:
        self.running = await RunningRegistry(self, http=True).start()
        self.write("root.pem", self.running.ca.root_certificate)
        self.write("issuing.pem", self.running.ca.issuing_certificate)
        return self.running

    def write(self, name: str, certificate: x509.Certificate) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as handle:
            handle.write(certificate.public_bytes(Encoding.PEM))
        return path

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    async def openssl(self, *arguments: str) -> tuple[int, str]:
        """Run openssl (without blocking the reactor the registry runs in); (status, output)."""
        assert OPENSSL is not None
        out, err, code = await getProcessOutputAndValue(OPENSSL, arguments, env=dict(os.environ), reactor=reactor)
        return code, (out + err).decode("utf-8", "replace")

    async def verify(self, certificate: str) -> tuple[int, str]:
        return await self.openssl(
            "verify", "-crl_download", "-crl_check", "-CAfile", self.path("root.pem"),
            "-untrusted", self.path("issuing.pem"), certificate,
        )

    async def ocsp(self, *what: str, nonce: bool = True) -> tuple[int, str]:
        return await self.openssl(
            "ocsp", "-issuer", self.path("issuing.pem"), *what, "-url", self.running.http_url + "ocsp",
            "-CAfile", self.path("root.pem"), "-verify_other", self.path("issuing.pem"),
            *(() if nonce else ("-no_nonce",)),
        )

    async def enrol(self, username: str) -> tuple[EnrolledUser, str]:
        user = await self.running.enrol(username)
        return user, self.write(f"{username}.pem", user.certificate)

    async def test_certificates_name_the_endpoint(self) -> None:
        """A user certificate names the issuing CA's CRL, the responder and the CA
        certificate under --http-url; the server and record-signing certificates too."""
        running = await self.start()
        user, _ = await self.enrol("alice")
        label = issuing_crl_name(running.ca.issuing_certificate)
        credentials = running.service.credentials  # type: ignore[union-attr]
        assert credentials is not None
        for certificate in (user.certificate, credentials.server_certificate, credentials.signing_certificate):
            points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            self.assertEqual(
                [name.value for point in points for name in point.full_name or []],
                [f"{running.http_url}crl/{label}.crl"],
            )
            access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
            self.assertEqual(
                {(entry.access_method, entry.access_location.value) for entry in access},
                {
                    (AuthorityInformationAccessOID.OCSP, f"{running.http_url}ocsp"),
                    (AuthorityInformationAccessOID.CA_ISSUERS, f"{running.http_url}ca/{label}.crt"),
                },
            )

    async def test_verify_downloads_the_crl(self) -> None:
        """openssl verify -crl_download accepts a good certificate, and refuses it once it
        was revoked through IRP's revoke."""
        running = await self.start()
        user, path = await self.enrol("alice")
        code, output = await self.verify(path)
        self.assertEqual((code, output.strip()), (0, f"{path}: OK"))
        client = await running.client("alice")
        await client.revoke(user.serial, "key-compromise")
        code, output = await self.verify(path)
        self.assertNotEqual(code, 0)
        self.assertIn("certificate revoked", output)

    async def test_verify_checks_the_whole_chain(self) -> None:
        """A CA created while --http-url is set names the root's CRL in its issuing CA
        certificate, so openssl verify -crl_download -crl_check_all fetches both CRLs:
        OK, then revoked."""
        running = await self.start()
        points = running.ca.issuing_certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        self.assertEqual([name.value for point in points for name in point.full_name or []], [f"{running.http_url}crl/root.crl"])
        user, path = await self.enrol("alice")
        arguments = ("verify", "-crl_download", "-crl_check_all", "-CAfile", self.path("root.pem"), "-untrusted", self.path("issuing.pem"), path)
        code, output = await self.openssl(*arguments)
        self.assertEqual((code, output.strip()), (0, f"{path}: OK"))
        client = await running.client("alice")
        await client.revoke(user.serial, "key-compromise")
        code, output = await self.openssl(*arguments)
        self.assertNotEqual(code, 0)
        self.assertIn("certificate revoked", output)

    async def test_ocsp_good_revoked_unknown(self) -> None:
        """openssl ocsp: good; after IRP's revoke, revoked with its reason and time; a serial
        never issued, unknown; each response verified (delegated responder, nonce)."""
        running = await self.start()
        user, path = await self.enrol("alice")
        code, output = await self.ocsp("-cert", path)
        self.assertEqual(code, 0, output)
        self.assertIn("Response verify OK", output)
        self.assertIn(f"{path}: good", output)
        self.assertNotIn("WARNING", output)
        client = await running.client("alice")
        await client.revoke(user.serial, "key-compromise")
        code, output = await self.ocsp("-cert", path)
        self.assertIn("Response verify OK", output)
        self.assertIn(f"{path}: revoked", output)
        self.assertIn("Reason: keyCompromise", output)
        stored = await running.store.get_certificate(user.serial)
        assert stored is not None and stored.revoked_at is not None
        when = datetime.datetime.fromtimestamp(stored.revoked_at, datetime.UTC)
        self.assertIn(f"Revocation Time: {when.strftime('%b %e %H:%M:%S %Y GMT')}", output)
        code, output = await self.ocsp("-serial", "0x1234567")
        self.assertIn("Response verify OK", output)
        self.assertIn("0x1234567: unknown", output)

    async def test_ocsp_without_nonce_cached_until_revocation(self) -> None:
        """Without a nonce the signed response is served again (no new signature) until a
        revocation, by any process sharing the database, changes the answer."""
        running = await self.start()
        user, path = await self.enrol("alice")
        responder = running.service.http.responder  # type: ignore[union-attr]
        assert responder is not None
        code, output = await self.ocsp("-cert", path, nonce=False)
        self.assertIn(f"{path}: good", output)
        self.assertIn("Response verify OK", output)
        signed = responder.signed
        code, output = await self.ocsp("-cert", path, nonce=False)
        self.assertIn(f"{path}: good", output)
        self.assertEqual(responder.signed, signed)
        code, output = await self.ocsp("-cert", path)  # with a nonce: signed for this request
        self.assertIn(f"{path}: good", output)
        self.assertEqual(responder.signed, signed + 1)
        # Another process revokes: only the database changes.
        database = sqlite3.connect(os.path.join(running.data_dir, "registry.sqlite3"))
        with database:
            database.execute(
                "UPDATE certificates SET revoked_at = 1700000000, revocation_reason = 'superseded' WHERE serial = ?",
                (format(user.serial, "x"),),
            )
            database.execute("UPDATE counters SET value = value + 1 WHERE name = 'revocations'")
        database.close()
        code, output = await self.ocsp("-cert", path, nonce=False)
        self.assertIn(f"{path}: revoked", output)
        self.assertIn("Reason: superseded", output)
        self.assertIn("Revocation Time: Nov 14 22:13:20 2023 GMT", output)

    async def test_responder_certificate(self) -> None:
        """The delegated responder certificate: issued by the issuing CA, OCSPSigning only,
        id-pkix-ocsp-nocheck, at most 30 days, kept in ca/ocsp/ with a 0600 key."""
        running = await self.start()
        responder = running.service.http.responder  # type: ignore[union-attr]
        assert responder is not None
        certificate = responder.responders[0].certificate
        self.assertEqual(certificate.issuer, running.ca.issuing_certificate.subject)
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [ExtendedKeyUsageOID.OCSP_SIGNING])
        certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        self.assertLessEqual(lifetime.days, 30)
        folder = os.path.join(running.data_dir, "ca", "ocsp")
        self.assertEqual(os.stat(os.path.join(folder, "key.pem")).st_mode & 0o777, 0o600)
        with open(os.path.join(folder, "certificate.pem"), "rb") as handle:
            self.assertEqual(x509.load_pem_x509_certificate(handle.read()), certificate)

    async def test_several_certificates_and_signed_requests(self) -> None:
        """openssl ocsp asking about two certificates at once gets malformedRequest; a
        signed request is answered (its signature is not needed)."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        await self.start()
        alice, alice_path = await self.enrol("alice")
        _bob, bob_path = await self.enrol("bob")
        code, output = await self.ocsp("-cert", alice_path, "-cert", bob_path)
        self.assertNotEqual(code, 0)
        self.assertIn("Responder Error: malformedrequest", output)
        key_path = self.path("alice.key")
        with open(key_path, "wb") as handle:
            handle.write(alice.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        code, output = await self.ocsp("-cert", alice_path, "-signer", alice_path, "-signkey", key_path)
        self.assertEqual(code, 0, output)
        self.assertIn(f"{alice_path}: good", output)
