"""Tests for :mod:`irp.server.store.certificates`: certificates, revocation and the certificate quota.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from common.pki.keyfiles import fingerprint
from irp import errors
from test.irp.server.store.helpers import (
    START,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
    count_current_certificates,
    revocation_generation,
    serial_in_use,
)


class CertificateTestsMixin(RegistryStoreTestsMixin):
    """Certificates, revocation and the certificate quota, on every engine."""

    async def test_add_certificate(self) -> None:
        """The stored certificate reads back by serial, fingerprint and user."""
        store = await self.store()
        await store.create_user("alice")
        certificate = self.certificate()
        info = await store.add_certificate("alice", certificate, fingerprint(certificate))
        self.assertEqual(info.serial, certificate.serial_number)
        self.assertEqual(info.fingerprint, fingerprint(certificate))
        self.assertEqual((info.username, info.origin, info.issued_at), ("alice", "issued", START))
        self.assertEqual(info.not_after, int(certificate.not_valid_after_utc.timestamp()))
        self.assertEqual(info.certificate, certificate)
        self.assertEqual(await store.get_certificate(certificate.serial_number), info)
        self.assertEqual(await store.get_certificate_by_fingerprint(fingerprint(certificate)), info)
        self.assertEqual(await store.list_certificates("alice"), [info])
        self.assertTrue(await serial_in_use(store, certificate.serial_number))
        self.assertFalse(await serial_in_use(store, certificate.serial_number + 1))
        self.assertIsNone(await store.get_certificate(certificate.serial_number + 1))
        self.assertIsNone(await store.get_certificate_by_fingerprint("00" * 32))

    async def test_certificate_conflicts(self) -> None:
        """The same certificate twice, or for an unknown user, is refused."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        certificate = await self.add_certificate(store, "alice")
        await self.assertFailsWith(errors.Conflict, store.add_certificate("bob", certificate, fingerprint(certificate)))
        await self.assertFailsWith(errors.Conflict, store.add_certificate("alice", certificate, fingerprint(certificate), "external"))
        await self.assertFailsWith(errors.NotFound, store.add_certificate("nobody", self.certificate(), "ab" * 32))
        self.assertEqual(await store.list_certificates("bob"), [])
        self.assertEqual(len(await store.list_certificates("alice")), 1)

    async def test_list_certificates_newest_first(self) -> None:
        """Listings are newest first and per user."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        serials = []
        for _ in range(3):
            serials.append((await self.add_certificate(store, "alice")).serial_number)
            self.clock.advance(1)
        await self.add_certificate(store, "bob")
        self.assertEqual([info.serial for info in await store.list_certificates("alice")], serials[::-1])

    async def test_revoke(self) -> None:
        """Revocation records the time and reason, once; it bumps the generation."""
        store = await self.store()
        await store.create_user("alice")
        certificate = await self.add_certificate(store, "alice")
        self.clock.advance(9)
        info = await store.revoke_certificate(certificate.serial_number, "key-compromise")
        self.assertEqual((info.revoked_at, info.revocation_reason), (START + 9, "key-compromise"))
        self.assertEqual(info.status(self.clock.seconds()), "revoked")
        self.assertEqual(await store.get_certificate(certificate.serial_number), info)
        self.assertEqual(await revocation_generation(store), 1)
        await self.assertFailsWith(errors.Conflict, store.revoke_certificate(certificate.serial_number, "unspecified"))
        again = await store.get_certificate(certificate.serial_number)
        assert again is not None
        self.assertEqual(again.revocation_reason, "key-compromise")
        self.assertEqual(await revocation_generation(store), 1)

    async def test_revoke_unknown_and_external(self) -> None:
        """Unknown serials are not-found, and so are uploaded certificates: a serial names
        a certificate this registry's CA issued, and only those are revoked here."""
        store = await self.store()
        await store.create_user("alice")
        await self.assertFailsWith(errors.NotFound, store.revoke_certificate(12345, "unspecified"))
        external = await self.add_certificate(store, "alice", origin="external")
        await self.assertFailsWith(errors.NotFound, store.revoke_certificate(external.serial_number, "unspecified"))
        self.assertEqual(await revocation_generation(store), 0)

    async def test_serials_are_unique_per_issuer(self) -> None:
        """Uploaded certificates of other issuers may share a serial with each other and
        with a certificate issued here; a serial look-up, a revocation and the quota
        concern the issued one only. Two issued certificates never share a serial."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        ours = self.certificate_with_serial("alice", 7)
        theirs = self.certificate_with_serial("alice", 7, "partner.example")
        bobs = self.certificate_with_serial("bob", 7, "other.example")
        await store.add_certificate("alice", ours, fingerprint(ours))
        await store.add_certificate("alice", theirs, fingerprint(theirs), "external")
        await store.add_certificate("bob", bobs, fingerprint(bobs), "external")
        again = self.certificate_with_serial("bob", 7)
        await self.assertFailsWith(errors.Conflict, store.add_certificate("bob", again, fingerprint(again)))
        self.assertTrue(await serial_in_use(store, 7))
        found = await store.get_certificate(7)
        assert found is not None
        self.assertEqual((found.fingerprint, found.origin), (fingerprint(ours), "issued"))
        listed = await store.list_certificates("alice")
        self.assertEqual(sorted((i.serial, i.origin) for i in listed), [(7, "external"), (7, "issued")])
        valid_now = ours.not_valid_before_utc.timestamp() + 60
        self.assertEqual(await count_current_certificates(store, "alice", valid_now), 2)
        self.assertEqual(await count_current_certificates(store, "alice", valid_now, excluding=7), 1)
        revoked = await store.revoke_certificate(7, "key-compromise")
        self.assertEqual(revoked.fingerprint, fingerprint(ours))
        for other in (theirs, bobs):
            info = await store.get_certificate_by_fingerprint(fingerprint(other))
            assert info is not None
            self.assertIsNone(info.revoked_at)

    async def test_count_current_certificates(self) -> None:
        """Revoked and expired certificates do not count, nor the one left out."""
        store = await self.store()
        await store.create_user("alice")
        first = await self.add_certificate(store)
        second = await self.add_certificate(store)
        now = first.not_valid_before_utc.timestamp() + 3600  # the certificates' own time
        self.assertEqual(await count_current_certificates(store, "alice", now), 2)
        self.assertEqual(await count_current_certificates(store, "alice", now, excluding=first.serial_number), 1)
        await store.revoke_certificate(second.serial_number, "superseded")
        self.assertEqual(await count_current_certificates(store, "alice", now), 1)
        later = first.not_valid_after_utc.timestamp() + 1
        self.assertEqual(await count_current_certificates(store, "alice", later), 0)

    async def test_concurrent_certificate_quota(self) -> None:
        """Certificates added at once against a quota: exactly the quota is stored. A
        revoked one does not count, nor the one a renewal replaces."""
        self.use_certificate_time()
        store = await self.store()
        await store.create_user("alice")
        certificates = [self.certificate() for _ in range(12)]
        adds = [
            store.add_certificate("alice", certificate, fingerprint(certificate), most=5)
            for certificate in certificates
        ]
        outcomes = await defer.DeferredList(adds, consumeErrors=True)
        self.assertEqual(sum(1 for ok, _ in outcomes if ok), 5)
        for ok, result in outcomes:
            if not ok:
                result.trap(errors.QuotaExceeded)
        stored = await store.list_certificates("alice")
        self.assertEqual(len(stored), 5)
        extra = self.certificate()
        await self.assertFailsWith(errors.QuotaExceeded, store.add_certificate("alice", extra, fingerprint(extra), most=5))
        await store.add_certificate("alice", extra, fingerprint(extra), most=5, replacing=stored[0].serial)
        await store.revoke_certificate(stored[1].serial, "superseded")
        another = self.certificate()
        await store.add_certificate("alice", another, fingerprint(another), "external", most=6)


class SQLiteCertificateTests(CertificateTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLCertificateTests(CertificateTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
