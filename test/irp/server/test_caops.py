"""CA operations with a real registry (issue 14, part B): one CA per database, issuing-CA
rotation, the offline root, the key passphrase and the renewal log line. Real TLS on
loopback, real SQLite files and real keys in the test's temporary folder."""

from __future__ import annotations

import datetime
import os
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from common.pki import keyfiles
from common.pki.certificates import issuing_crl_name
from common.pki.revocation import RevocationChecker
from irp import errors
from irp.client.directory import Directory
from irp.server.ca.ondisk import load
from irp.server.ca.rotation import protect_keys, root_key_for, rotate_issuing, take_root_offline
from irp.server.ca_host import agreed_credentials
from irp.server.credentials import DatabaseCAMismatch, load_or_create_credentials
from test.helpers import DEFAULT_PASSWORD, EnrolledUser, RunningRegistry


class CAOperationsTestCase(TestCase):
    """A registry on a SQLite file in a data folder; log lines collected."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.database = os.path.join(self.base, "registry.sqlite3")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)  # type: ignore[arg-type]

    def logged(self, text: str) -> list[str]:
        """The formatted log lines containing ``text``."""
        lines = [formatEvent(event) for event in self.events]
        return [line for line in lines if text in line]

    async def start(self, name: str = "one", **fields: Any) -> RunningRegistry:
        """Start a registry process with the data folder ``name`` on the shared database."""
        return await RunningRegistry(self, data_dir=os.path.join(self.base, name), database=self.database, **fields).start()

    async def refused(self, name: str, **fields: Any) -> Exception:
        """Start a registry that must refuse to start; its error."""
        registry = RunningRegistry(self, data_dir=os.path.join(self.base, name), database=self.database, **fields)
        try:
            await registry.start()
        except Exception as error:  # noqa: BLE001 - returned to be checked
            return error
        self.fail("the registry started")

    async def restart(self, registry: RunningRegistry, **fields: Any) -> RunningRegistry:
        """Stop ``registry`` and start it again on the same folder and database."""
        assert registry.service is not None
        await registry.service.stopService()
        return await RunningRegistry(self, data_dir=registry.data_dir, database=self.database, **fields).start()


class OneCAPerDatabaseTests(CAOperationsTestCase):
    """The database records its CA's root; other CAs (or none) are refused."""

    async def test_fingerprint_recorded(self) -> None:
        registry = await self.start()
        self.assertEqual(await registry.store.get_fact("ca_root_fingerprint"), registry.ca.root_fingerprint)
        self.assertEqual(len(self.logged("Recorded the CA root fingerprint")), 1)

    async def test_second_process_with_empty_folder_refused(self) -> None:
        """A second process with an empty data folder does not make a second CA: a
        critical line names the database's root and says to copy ca/."""
        first = await self.start()
        error = await self.refused("two")
        self.assertIsInstance(error, DatabaseCAMismatch)
        self.assertFalse(os.path.exists(os.path.join(self.base, "two", "ca")))
        lines = self.logged("The registry could not start")
        self.assertEqual(len(lines), 1)
        self.assertIn(keyfiles.format_fingerprint(first.ca.root_fingerprint), lines[0])
        self.assertIn("copy the ca/ folder", lines[0])
        # With ca/ copied, it starts and serves the same CA.
        os.makedirs(os.path.join(self.base, "three"))
        os.rename(os.path.join(self.base, "one", "ca"), os.path.join(self.base, "three", "ca"))
        os.rename(os.path.join(self.base, "one", "admin-password"), os.path.join(self.base, "three", "admin-password"))
        third = await self.start("three")
        self.assertEqual(third.ca.root_fingerprint, first.ca.root_fingerprint)

    async def test_postgresql(self) -> None:
        """The same on PostgreSQL: recorded once; a second process without ca/ refused,
        and the race's loser (its own CA, the fact recorded meanwhile) refused too."""
        from twisted.trial.unittest import SkipTest

        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise SkipTest(f"no PostgreSQL server: {error}") from None
        self.database = server.create_database()
        first = await self.start()
        self.assertEqual(await first.store.get_fact("ca_root_fingerprint"), first.ca.root_fingerprint)
        self.assertIsInstance(await self.refused("two"), DatabaseCAMismatch)
        self.assertEqual(await first.store.record_fact("ca_root_fingerprint", "0" * 64), first.ca.root_fingerprint)

    async def test_process_with_another_ca_refused(self) -> None:
        """A process whose data folder holds another CA refuses to start."""
        await self.start()
        other = load_or_create_credentials(os.path.join(self.base, "other"), "example.org", ["localhost"], key_type="p256")
        error = await self.refused("other")
        self.assertIsInstance(error, DatabaseCAMismatch)
        self.assertIn(keyfiles.format_fingerprint(other.ca.root_fingerprint), str(error))
        self.assertIn("is not the database's", str(error))

    async def test_race_loser_refused(self) -> None:
        """Two processes starting together on a new database: both read no fact and load
        their own CAs; the first to record wins, the other refuses."""
        first = await self.start()

        class Late:
            """The store as the loser saw it: no fact yet when it read."""

            def get_fact(self, name: str) -> Deferred[str | None]:
                return succeed(None)

            def record_fact(self, name: str, value: str) -> Deferred[str]:
                return first.store.record_fact(name, value)

        def load_other(expected: str | None) -> Any:
            return load_or_create_credentials(os.path.join(self.base, "two"), "example.org", ["localhost"], key_type="p256", expected_root=expected)

        with self.assertRaises(DatabaseCAMismatch) as caught:
            await agreed_credentials(Late(), load_other)  # type: ignore[arg-type]
        self.assertIn("recorded the CA with root fingerprint", str(caught.exception))
        self.assertIn(keyfiles.format_fingerprint(first.ca.root_fingerprint), str(caught.exception))
        self.assertEqual(await first.store.get_fact("ca_root_fingerprint"), first.ca.root_fingerprint)


class RotationTests(CAOperationsTestCase):
    """Rotation with ``rotate_issuing`` (what ``irp-ca rotate-issuing`` runs), then a
    restart: old certificates still log in until they expire (and not once revoked), new
    ones come from the new issuing CA, and the old CA's CRL is still served."""

    async def test_rotation(self) -> None:
        registry = await self.start()
        alice = await registry.enrol("alice")
        bob = await registry.enrol("bob")
        old_issuer = registry.ca.issuing_certificate
        old_server = registry.service.credentials.server_certificate  # type: ignore[union-attr]
        rotate_issuing(os.path.join(registry.data_dir, "ca"), root_key_for(os.path.join(registry.data_dir, "ca"), None, None), key_type="p256")
        registry = await self.restart(registry)
        new_issuer = registry.ca.issuing_certificate
        self.assertNotEqual(new_issuer.subject, old_issuer.subject)
        self.assertEqual([c for c, _k in registry.ca.retired_issuers], [old_issuer])
        # The server and record-signing certificates were reissued under the new CA, and said so.
        assert registry.service is not None and registry.service.credentials is not None
        credentials = registry.service.credentials
        self.assertNotEqual(credentials.server_certificate, old_server)
        credentials.server_certificate.verify_directly_issued_by(new_issuer)
        credentials.signing_certificate.verify_directly_issued_by(new_issuer)
        self.assertEqual(len(self.logged("Renewed at start: the TLS server certificate renewed (it no longer fitted")), 1)
        self.assertEqual(len(self.logged("Renewed at start: the record-signing certificate renewed")), 1)
        # Old certificates log in, with their chain or without (the server knows the retired CA).
        client = await registry.client(user=alice)
        self.assertEqual((await client.whoami()).method, "certificate")
        bare = EnrolledUser(bob.username, bob.password, bob.key, bob.certificate, bob.serial)
        client = await registry.client(user=bare)
        self.assertEqual((await client.whoami()).method, "certificate")
        # A new enrolment gets the new issuer; it logs in too.
        carol = await registry.enrol("carol")
        self.assertEqual(carol.certificate.issuer, new_issuer.subject)
        carol.certificate.verify_directly_issued_by(new_issuer)
        self.assertEqual((await (await registry.client(user=carol)).whoami()).method, "certificate")
        # Revoking an old certificate: refused, and on the retired CA's CRL.
        admin = await registry.client("alice", DEFAULT_PASSWORD)
        await admin.revoke(alice.serial, "key-compromise")
        refused = await registry.client(user=alice)
        with self.assertRaises(errors.CertificateRejected):
            await refused.whoami()
        anonymous = await registry.client()
        crl = await anonymous.get_crl_of(old_issuer)
        entry = crl.get_revoked_certificate_by_serial_number(alice.serial)
        self.assertIsNotNone(entry)
        # get-crl without an issuer: the current issuing CA's and the root's, as before.
        infos = await anonymous.get_crls()
        self.assertEqual([info.issuer for info in infos], ["issuing", "root"])
        self.assertEqual(infos[0].crl.issuer, new_issuer.subject)
        # An unknown issuing CA name: not-found.
        with self.assertRaises(errors.NotFound):
            await anonymous._single("get-crl", "crls", {"issuer": "issuing-0000000000000000"})

    async def test_daily_check_keeps_running_ca(self) -> None:
        """A process running during a rotation keeps its issuing CA, server certificate
        and chain at the daily check, and says to restart it."""
        registry = await self.start()
        assert registry.service is not None and registry.service.credentials is not None
        before = registry.service.credentials
        ca_dir = os.path.join(registry.data_dir, "ca")
        rotate_issuing(ca_dir, root_key_for(ca_dir, None, None), key_type="p256")
        await registry.service.renew_credentials()
        self.assertIs(registry.service.credentials, before)
        self.assertIs(registry.registry.ca, before.ca)
        self.assertEqual(len(self.logged("The issuing CA was rotated on disk; this process keeps using")), 1)
        alice = await registry.enrol("alice")
        alice.certificate.verify_directly_issued_by(before.ca.issuing_certificate)

    async def test_revocation_checker_follows_retired_issuer(self) -> None:
        """A client checking revocation (the agent's RevocationChecker with its
        directory) gets the retired issuing CA's CRL for an old certificate."""
        registry = await self.start()
        alice = await registry.enrol("alice")
        old_issuer = registry.ca.issuing_certificate
        directory_path = os.path.join(registry.data_dir, "ca")
        rotate_issuing(directory_path, root_key_for(directory_path, None, None), key_type="p256")
        registry = await self.restart(registry)
        from twisted.internet import reactor

        client = await registry.client()

        async def current(domain: str) -> x509.CertificateRevocationList:
            return next(info.crl for info in await client.get_crls() if info.issuer == "issuing")

        async def of_issuer(domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
            return await client.get_crl_of(issuer)  # type: ignore[no-any-return]

        checker = RevocationChecker(current, reactor, fetch_issuer=of_issuer)
        await checker.check("example.org", alice.certificate, old_issuer)
        admin = await registry.client("alice", DEFAULT_PASSWORD)
        await admin.revoke(alice.serial, "superseded")
        checker.forget("example.org")
        from common.pki.errors import CertificateRevoked

        with self.assertRaises(CertificateRevoked):
            await checker.check("example.org", alice.certificate, old_issuer)
        # Without the issuer fetcher, the current CRL does not answer for the old issuer.
        from common.pki.errors import RevocationUnknown

        with self.assertRaises(RevocationUnknown):
            await RevocationChecker(current, reactor).check("example.org", alice.certificate, old_issuer)
        self.assertTrue(hasattr(Directory, "issuer_crl"))
        self.assertTrue(issuing_crl_name(old_issuer).startswith("issuing-"))


class OfflineRootTests(CAOperationsTestCase):
    """A registry whose root key was taken offline."""

    async def test_starts_and_serves_offline_root_crl(self) -> None:
        registry = await self.start()
        await registry.enrol("alice")
        ca_dir = os.path.join(registry.data_dir, "ca")
        crl = take_root_offline(ca_dir, os.path.join(self.base, "root.key"), days=20)
        registry = await self.restart(registry)
        self.assertFalse(registry.ca.root_key_online)
        self.assertEqual(len(self.logged("The root key is offline")), 1)
        # 20 days left: the start warns it ends within 30 days.
        self.assertEqual(len(self.logged("sign a new one offline before then")), 1)
        infos = await (await registry.client()).get_crls()
        self.assertEqual(infos[1].issuer, "root")
        self.assertEqual(infos[1].crl, crl)
        # Issuing still works with the issuing key alone.
        bob = await registry.enrol("bob")
        self.assertEqual((await (await registry.client(user=bob)).whoami()).method, "certificate")

    async def test_missing_root_crl(self) -> None:
        """No root CRL with an offline root: the start warns, get-crl answers unavailable."""
        registry = await self.start()
        ca_dir = os.path.join(registry.data_dir, "ca")
        take_root_offline(ca_dir, os.path.join(self.base, "root.key"))
        os.unlink(os.path.join(ca_dir, "root.crl"))
        registry = await self.restart(registry)
        self.assertEqual(len(self.logged("get-crl fails until you sign one offline")), 1)
        with self.assertRaises(errors.Unavailable):
            await (await registry.client()).get_crls()


class PassphraseTests(CAOperationsTestCase):
    """Encrypted CA keys: right, wrong and missing passphrase."""

    async def test_right_wrong_missing(self) -> None:
        registry = await self.start()
        ca_dir = os.path.join(registry.data_dir, "ca")
        protect_keys(ca_dir, b"a long passphrase")
        assert registry.service is not None
        await registry.service.stopService()
        error = await self.refused("one")
        self.assertIn("is encrypted: give its passphrase with --key-passphrase-file", str(error))
        error = await self.refused("one", key_passphrase=b"not the passphrase")
        self.assertIn("wrong passphrase", str(error))
        self.assertEqual(len(self.logged("The registry could not start")), 2)
        registry = await self.start("one", key_passphrase=b"a long passphrase")
        self.assertTrue(registry.ca.root_key_online)


class RenewalLogTests(CAOperationsTestCase):
    """A certificate renewed at start is named in a log line."""

    async def test_renewed_at_start(self) -> None:
        registry = await self.start()
        assert registry.service is not None
        ca = load(os.path.join(registry.data_dir, "ca"))
        # A server certificate ending in 10 days, as if the registry had been down a while.
        key = keyfiles.load_private_key(os.path.join(registry.data_dir, "server", "key.pem"))
        ending = ca.issue_server_certificate(["localhost", "127.0.0.1", "::1"], key.public_key(), validity=datetime.timedelta(days=10))
        keyfiles.write_certificates(os.path.join(registry.data_dir, "server", "certificate.pem"), [ending])
        self.assertEqual(self.logged("Renewed at start"), [])
        registry = await self.restart(registry)
        lines = self.logged("Renewed at start: the TLS server certificate renewed (it ended on")
        self.assertEqual(len(lines), 1)
        self.assertEqual(self.logged("Renewed at start: the record-signing"), [])
        self.assertGreater(registry.service.credentials.server_certificate.not_valid_after_utc, ending.not_valid_after_utc)  # type: ignore[union-attr]
