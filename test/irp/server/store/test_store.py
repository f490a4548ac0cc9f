"""Tests for :mod:`irp.server.store`: the registry's persistent store.

The tests are a mixin, :class:`RegistryStoreTestsMixin`, so that every database engine runs
the same ones: a concrete test case supplies :meth:`~RegistryStoreTestsMixin.make_store`
(a store on a fresh, empty database whose schema is not yet created). The SQLite case uses
a real file in the test's temporary folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from common.db.dialect import SQLITE
from common.db.migrations import upgrade_schema
from common.db.pools import sqlite_pool
from common.identity import Identity
from common.pki.keyfiles import fingerprint
from irp import errors
from irp.server.store import RegistryStore, open_store
from irp.server.store.schema import LATEST_VERSION, MIGRATIONS
from irp.wire.records import Endpoint, RecordSigner, RecordVerifier
from test import pki
from test.irp.server.store.helpers import (
    check_integrity,
    count_current_certificates,
    revocation_generation,
    serial_in_use,
)

DOMAIN = "example.org"
START = 1_900_000_000


def make_signer() -> RecordSigner:
    key = ed25519.Ed25519PrivateKey.generate()
    return RecordSigner(key, pki.make_ca(DOMAIN).issue_signing_certificate(key.public_key()))


if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object


class RegistryStoreTestsMixin(_MixinBase):
    """Behaviour every RegistryStore must have, whatever the database engine.

    Subclasses are TestCases that implement :meth:`make_store`.
    """

    clock: Clock
    signer: RecordSigner

    # -- to be supplied by the engine's test case -------------------------------------

    async def make_store(self, name: str = "registry") -> RegistryStore:
        """A store on the database ``name``: empty (no schema) the first time it is asked
        for in a test, the same database when asked for again. Closed at the test's end."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------

    async def store(self, name: str = "registry") -> RegistryStore:
        store = await self.make_store(name)
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        return store

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.signer = make_signer()
        self.verifier = RecordVerifier(self.signer.certificate)

    def certificate(self, username: str = "alice") -> x509.Certificate:
        return pki.issue_user(pki.make_ca(DOMAIN), username).certificate

    async def add_certificate(self, store: RegistryStore, username: str = "alice", origin: str = "issued") -> x509.Certificate:
        certificate = self.certificate(username)
        await store.add_certificate(username, certificate, fingerprint(certificate), origin)
        return certificate

    def use_certificate_time(self) -> None:
        """Run the store's clock at the time the test certificates are valid (they are
        made now, START is later): current certificates count against quotas."""
        self.clock = Clock()
        self.clock.advance(self.certificate().not_valid_before_utc.timestamp() + 3600)

    async def assertFailsWith(self, error_type: type[Exception], deferred: Any) -> Exception:
        try:
            await deferred
        except error_type as error:
            return error
        self.fail(f"{error_type.__name__} not raised")
        raise AssertionError  # not reached

    # -- schema -----------------------------------------------------------------------

    async def test_upgrade_from_empty(self) -> None:
        """An empty database gets the latest schema, usable at once."""
        store = await self.make_store()
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        self.assertIsNone(await store.get_account("alice"))
        self.assertEqual(await revocation_generation(store), 0)

    async def test_upgrade_idempotent(self) -> None:
        """Upgrading again (also from a second process) changes nothing and loses nothing."""
        store = await self.store()
        await store.create_user("alice", email="alice@example.org")
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        again = await self.store()
        account = await again.get_account("alice")
        assert account is not None
        self.assertEqual(account.record.email, "alice@example.org")
        self.assertEqual(await again.upgrade(), LATEST_VERSION)

    async def test_newer_schema_refused(self) -> None:
        """A database from newer software is refused, not damaged."""
        store = await self.store()
        await store.pool.runOperation(store.dialect.sql("UPDATE schema_version SET version = ?"), (LATEST_VERSION + 1,))
        error = await self.assertFailsWith(RuntimeError, store.upgrade())
        self.assertIn("newer", str(error))

    async def test_upgrade_from_version_1(self) -> None:
        """A database of the first schema gets the security-event counter (at 0) and its
        users a password version, and keeps its data."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:1])
        await store.pool.runOperation(
            store.dialect.sql(
                "INSERT INTO users (username, display_name, email, attributes, is_admin, password_hash,"
                " password_login, created_at, updated_at, record_seq, record_signed_at, record_signature)"
                " VALUES (?, '', '', '[]', 0, 'hash', 1, 1, 1, 1, 1, ?)"
            ),
            ("alice", b"\x00" * 64),
        )
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        self.assertEqual(await store.security_generation(), 0)
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual((account.password_hash, account.password_version), ("hash", 0))

    async def test_integrity_check(self) -> None:
        """A fresh database passes the engine's integrity check."""
        store = await self.store()
        self.assertEqual(await check_integrity(store), "ok")

    # -- users ------------------------------------------------------------------------

    async def test_create_user(self) -> None:
        """A new user has a signed entry, an offline address record and its settings."""
        store = await self.store()
        account = await store.create_user(
            "alice",
            display_name="Alice",
            email="alice@example.org",
            attributes=(("team", "red"),),
            is_admin=True,
            password_hash="$argon2id$x",
            password_login=False,
        )
        stored = await store.get_account("alice")
        self.assertEqual(stored, account)
        assert stored is not None
        self.assertEqual(str(stored.record.identity), "alice@example.org")
        self.assertEqual((stored.record.display_name, stored.record.email), ("Alice", "alice@example.org"))
        self.assertEqual(stored.record.attributes, (("team", "red"),))
        self.assertEqual((stored.is_admin, stored.password_hash, stored.password_login), (True, "$argon2id$x", False))
        self.assertEqual((stored.created_at, stored.updated_at, stored.record.seq, stored.record.signed_at), (START, START, 1, START))
        self.assertEqual(stored.username, "alice")
        self.verifier.verify(stored.record)
        addresses = await store.get_addresses("alice")
        assert addresses is not None
        self.verifier.verify(addresses)
        self.assertEqual((addresses.presence, addresses.endpoints, addresses.seq), ("offline", (), 1))

    async def test_create_duplicate(self) -> None:
        """A second user of the same name is a conflict; the first is untouched."""
        store = await self.store()
        await store.create_user("alice", email="first@example.org")
        await self.assertFailsWith(errors.Conflict, store.create_user("alice", email="second@example.org"))
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual(account.record.email, "first@example.org")

    async def test_concurrent_creates(self) -> None:
        """Of many simultaneous creations of one name exactly one wins."""
        store = await self.store()
        results = await defer.DeferredList(
            [store.create_user("alice", email=f"{i}@example.org") for i in range(8)], consumeErrors=True
        )
        self.assertEqual(sum(1 for ok, _ in results if ok), 1)
        for ok, value in results:
            if not ok:
                self.assertIsInstance(value, Failure)
                assert isinstance(value, Failure)
                self.assertTrue(value.check(errors.Conflict))
        total, _ = await store.list_users(0, 10)
        self.assertEqual(total, 1)

    async def test_get_unknown(self) -> None:
        """Unknown users are None."""
        store = await self.store()
        self.assertIsNone(await store.get_account("nobody"))
        self.assertIsNone(await store.get_addresses("nobody"))

    async def test_update_user(self) -> None:
        """Updates re-sign the entry with the next seq; None leaves a field alone."""
        store = await self.store()
        await store.create_user("alice", display_name="Alice", email="a@example.org", attributes=(("x", "1"),))
        self.clock.advance(10)
        account = await store.update_user("alice", display_name="Alice L.")
        self.assertEqual((account.record.display_name, account.record.email, account.record.attributes), ("Alice L.", "a@example.org", (("x", "1"),)))
        self.assertEqual((account.record.seq, account.record.signed_at, account.updated_at, account.created_at), (2, START + 10, START + 10, START))
        self.verifier.verify(account.record)
        account = await store.update_user("alice", email="", attributes=())
        self.assertEqual((account.record.display_name, account.record.email, account.record.attributes, account.record.seq), ("Alice L.", "", (), 3))
        self.assertEqual(await store.get_account("alice"), account)
        self.verifier.verify(account.record)

    async def test_update_unknown(self) -> None:
        """Updating a missing user is not-found."""
        store = await self.store()
        await self.assertFailsWith(errors.NotFound, store.update_user("nobody", display_name="x"))

    async def test_account_fields(self) -> None:
        """Password hash, password login and admin flag are set independently."""
        store = await self.store()
        await store.create_user("alice", password_hash="old")
        self.clock.advance(5)
        account = await store.set_password_hash("alice", "new")
        self.assertEqual((account.password_hash, account.updated_at), ("new", START + 5))
        account = await store.set_password_login("alice", False)
        self.assertEqual((account.password_login, account.password_hash), (False, "new"))
        account = await store.set_admin("alice", True)
        self.assertEqual((account.is_admin, account.password_login), (True, False))
        account = await store.set_password_hash("alice", None)
        self.assertIsNone(account.password_hash)
        self.assertEqual(account.record.seq, 1)  # private settings do not touch the public entry
        self.assertEqual(await store.get_account("alice"), account)
        await self.assertFailsWith(errors.NotFound, store.set_password_hash("nobody", "h"))
        await self.assertFailsWith(errors.NotFound, store.set_password_login("nobody", True))
        await self.assertFailsWith(errors.NotFound, store.set_admin("nobody", True))

    async def test_security_events(self) -> None:
        """Revocations, new passwords, password-login and administrator changes and deleted
        users each count as a security event; directory and address changes, rehashes and
        new users do not."""
        store = await self.store()
        await store.create_user("root", is_admin=True)
        await store.create_user("alice", password_hash="one")
        certificate = await self.add_certificate(store, "alice")
        self.assertEqual(await store.security_generation(), 0)
        for change in (
            lambda: store.update_user("alice", display_name="Alice"),
            lambda: store.put_addresses("alice", "online", (Endpoint.parse("192.0.2.1", 1),), 60),
            lambda: store.rehash_password("alice", "one", "one, rehashed"),
            lambda: store.create_user("bob"),
        ):
            await change()
        self.assertEqual(await store.security_generation(), 0)
        events = [
            lambda: store.set_password_hash("alice", "two"),
            lambda: store.set_password_login("alice", False),
            lambda: store.set_admin("alice", True),
            lambda: store.revoke_certificate(certificate.serial_number, "superseded"),
            lambda: store.delete_user("bob"),
        ]
        for number, change in enumerate(events, 1):
            await change()
            self.assertEqual(await store.security_generation(), number)

    async def test_password_version(self) -> None:
        """A new password changes the version; a rehash does not, and replaces only the
        hash it was made from; a user created again under a deleted name gets a version no
        session of the old account holds."""
        store = await self.store()
        created = await store.create_user("alice", password_hash="one")
        changed = await store.set_password_hash("alice", "two")
        self.assertNotEqual(changed.password_version, created.password_version)
        self.assertTrue(await store.rehash_password("alice", "two", "two, rehashed"))
        self.assertFalse(await store.rehash_password("alice", "two", "two, again"))
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual((account.password_hash, account.password_version), ("two, rehashed", changed.password_version))
        self.assertEqual(account.updated_at, changed.updated_at)
        await store.delete_user("alice")
        again = await store.create_user("alice", password_hash="one")
        self.assertNotIn(again.password_version, (created.password_version, changed.password_version))

    async def test_count_admins(self) -> None:
        """count_admins counts administrators only."""
        store = await self.store()
        self.assertEqual(await store.count_admins(), 0)
        await store.create_user("root", is_admin=True)
        await store.create_user("alice")
        await store.create_user("bob", is_admin=True)
        self.assertEqual(await store.count_admins(), 2)
        await store.set_admin("bob", False)
        self.assertEqual(await store.count_admins(), 1)

    async def test_last_administrator_kept(self) -> None:
        """The last administrator can neither lose the rights nor be deleted, even when
        two administrators remove each other at the same time."""
        store = await self.store()
        await store.create_user("root", is_admin=True)
        await self.assertFailsWith(errors.Conflict, store.set_admin("root", False))
        await self.assertFailsWith(errors.Conflict, store.delete_user("root"))
        await store.create_user("other", is_admin=True)
        results = await defer.DeferredList(
            [store.set_admin("root", False), store.set_admin("other", False)], consumeErrors=True
        )
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await store.count_admins(), 1)
        await store.set_admin("root", True)
        await store.set_admin("other", True)
        results = await defer.DeferredList([store.delete_user("root"), store.delete_user("other")], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await store.count_admins(), 1)
        await store.create_user("plain")
        self.assertEqual((await store.set_admin("plain", False)).is_admin, False)  # not an admin: fine

    async def test_list_users(self) -> None:
        """Pages in user-name order with the total; prefixes match literally."""
        store = await self.store()
        for name in ("carol", "alice", "a_b", "axb", "a.c", "bob"):
            await store.create_user(name)
        total, page = await store.list_users(0, 2)
        self.assertEqual((total, [account.username for account in page]), (6, ["a.c", "a_b"]))
        total, page = await store.list_users(2, 3)
        self.assertEqual([account.username for account in page], ["alice", "axb", "bob"])
        total, page = await store.list_users(5, 10)
        self.assertEqual([account.username for account in page], ["carol"])
        total, page = await store.list_users(50, 10)
        self.assertEqual((total, page), (6, []))
        total, page = await store.list_users(0, 10, "a_")
        self.assertEqual((total, [account.username for account in page]), (1, ["a_b"]))
        total, page = await store.list_users(0, 10, "%")
        self.assertEqual((total, page), (0, []))
        total, page = await store.list_users(0, 10, "a\\")
        self.assertEqual((total, page), (0, []))
        total, page = await store.list_users(0, 10, "a")
        self.assertEqual(total, 4)
        for account in page:
            self.verifier.verify(account.record)

    async def test_delete_user(self) -> None:
        """Deleting revokes the user's issued certificates (kept for the CRL) and removes
        the account, addresses and PKCS#12 files; others are untouched."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        first = await self.add_certificate(store, "alice")
        second = await self.add_certificate(store, "alice")
        already = await self.add_certificate(store, "alice")
        await store.revoke_certificate(already.serial_number, "key-compromise")
        bobs = await self.add_certificate(store, "bob")
        await store.add_pkcs12("alice", "laptop", "generated", b"p12", first.serial_number)
        bob_file = await store.add_pkcs12("bob", "phone", "uploaded", b"p12b", None)
        generation = await revocation_generation(store)
        self.clock.advance(7)
        self.assertEqual(await store.delete_user("alice"), 2)
        self.assertIsNone(await store.get_account("alice"))
        self.assertIsNone(await store.get_addresses("alice"))
        self.assertEqual(await store.list_pkcs12("alice"), [])
        self.assertEqual(await revocation_generation(store), generation + 2)
        for certificate in (first, second):
            info = await store.get_certificate(certificate.serial_number)
            assert info is not None
            self.assertEqual((info.revoked_at, info.revocation_reason), (START + 7, "cessation-of-operation"))
        info = await store.get_certificate(already.serial_number)
        assert info is not None
        self.assertEqual(info.revocation_reason, "key-compromise")
        self.assertIsNotNone(await store.get_account("bob"))
        bob_info = await store.get_certificate(bobs.serial_number)
        assert bob_info is not None
        self.assertIsNone(bob_info.revoked_at)
        self.assertIsNotNone(await store.get_pkcs12(bob_file.id))
        await self.assertFailsWith(errors.NotFound, store.delete_user("alice"))

    async def test_recreated_user_inherits_nothing(self) -> None:
        """A user created again under a deleted user's name does not inherit the old
        user's uploaded certificates (their issued ones stay, revoked, for the CRL)."""
        store = await self.store()
        await store.create_user("alice")
        issued = await self.add_certificate(store, "alice")
        external = await self.add_certificate(store, "alice", origin="external")
        await store.delete_user("alice")
        await store.create_user("alice")
        self.assertIsNone(await store.get_certificate(external.serial_number))
        current = [info for info in await store.list_certificates("alice") if info.status(self.clock.seconds()) == "good"]
        self.assertEqual(current, [])
        info = await store.get_certificate(issued.serial_number)
        assert info is not None
        self.assertEqual(info.status(self.clock.seconds()), "revoked")

    # -- addresses --------------------------------------------------------------------

    async def test_put_addresses(self) -> None:
        """Addresses are replaced with the next seq, an expiry and a fresh signature."""
        store = await self.store()
        await store.create_user("alice")
        endpoints = (Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 4605))
        self.clock.advance(3)
        record = await store.put_addresses("alice", "online", endpoints, 300)
        self.assertEqual((record.presence, record.endpoints, record.seq), ("online", endpoints, 2))
        self.assertEqual((record.signed_at, record.expires_at), (START + 3, START + 303))
        self.verifier.verify(record)
        self.assertEqual(await store.get_addresses("alice"), record)
        record = await store.put_addresses("alice", "away", (), 60)
        self.assertEqual((record.presence, record.endpoints, record.seq), ("away", (), 3))
        self.assertEqual(await store.get_addresses("alice"), record)

    async def test_put_addresses_unknown(self) -> None:
        """Only existing users have addresses."""
        store = await self.store()
        await self.assertFailsWith(errors.NotFound, store.put_addresses("nobody", "online", (), 60))

    async def test_group_commit_isolates_failures(self) -> None:
        """Writes committed together: one that fails (unknown user, duplicate certificate)
        is rolled back alone and fails alone; the others are stored."""
        store = await self.store()
        await store.create_user("alice")
        duplicate = await self.add_certificate(store)
        fresh = self.certificate("alice")
        outcomes = await defer.DeferredList(
            [
                store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1001),), 60),
                store.put_addresses("nobody", "online", (Endpoint("192.0.2.1", 1002),), 60),
                store.add_certificate("alice", duplicate, fingerprint(duplicate)),
                store.add_certificate("alice", fresh, fingerprint(fresh)),
                store.put_addresses("alice", "busy", (Endpoint("192.0.2.1", 1003),), 60),
            ],
            consumeErrors=True,
        )
        self.assertEqual([success for success, _ in outcomes], [True, False, False, True, True])
        self.assertIsInstance(outcomes[1][1].value, errors.NotFound)
        self.assertIsInstance(outcomes[2][1].value, errors.Conflict)
        record = await store.get_addresses("alice")
        assert record is not None
        self.assertEqual((record.presence, record.endpoints), ("busy", (Endpoint("192.0.2.1", 1003),)))
        self.assertEqual(len(await store.list_certificates("alice")), 2)
        self.assertEqual(await check_integrity(store), "ok")

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

    async def test_no_lost_updates(self) -> None:
        """Simultaneous address updates are all applied, one after the other."""
        store = await self.store()
        await store.create_user("alice")
        await defer.gatherResults(
            [store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1000 + i),), 60) for i in range(20)]
        )
        record = await store.get_addresses("alice")
        assert record is not None
        self.assertEqual(record.seq, 21)
        self.verifier.verify(record)

    async def test_expire_addresses(self) -> None:
        """Expired records become signed offline records, once."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        await store.create_user("carol")
        await store.put_addresses("alice", "online", (Endpoint("192.0.2.1", 1),), 30)
        await store.put_addresses("bob", "busy", (Endpoint("192.0.2.2", 1),), 300)
        self.assertEqual(await store.expire_addresses(), 0)
        self.clock.advance(30)
        self.assertEqual(await store.expire_addresses(), 1)
        alice = await store.get_addresses("alice")
        assert alice is not None
        self.assertEqual((alice.presence, alice.endpoints, alice.seq, alice.signed_at), ("offline", (), 3, START + 30))
        self.verifier.verify(alice)
        bob = await store.get_addresses("bob")
        assert bob is not None
        self.assertEqual(bob.presence, "busy")
        carol = await store.get_addresses("carol")
        assert carol is not None
        self.assertEqual(carol.seq, 1)  # already offline: not rewritten
        self.assertEqual(await store.expire_addresses(), 0)

    # -- certificates -----------------------------------------------------------------

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

    def certificate_with_serial(self, username: str, serial: int, issuer: str = DOMAIN) -> x509.Certificate:
        ca = pki.make_ca(issuer)
        certificate, _key = pki.build_certificate(
            ca.issuing_certificate, ca.issuing_key, subject=pki.user_name(Identity(username, DOMAIN)), serial=serial
        )
        return certificate

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

    async def test_upgrade_from_version_3(self) -> None:
        """Certificates stored under the schema keyed by serial keep everything, revocations
        included, when the table is rebuilt keyed by fingerprint."""
        store = await self.make_store()
        await store.pool.runInteraction(upgrade_schema, store.dialect, MIGRATIONS[:3])
        certificate = self.certificate_with_serial("alice", 0xABC)
        der = certificate.public_bytes(serialization.Encoding.DER)
        await store.pool.runOperation(
            store.dialect.sql(
                "INSERT INTO certificates (serial, fingerprint, username, origin, not_before, not_after,"
                " issued_at, revoked_at, revocation_reason, der) VALUES ('abc', ?, 'alice', 'issued', 1, ?, 1, 5, 'superseded', ?)"
            ),
            (fingerprint(certificate), 2**40, der),
        )
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        info = await store.get_certificate(0xABC)
        assert info is not None
        self.assertEqual((info.fingerprint, info.revoked_at, info.revocation_reason, info.der), (fingerprint(certificate), 5, "superseded", der))
        self.assertEqual(await check_integrity(store), "ok")

    # -- CRLs -------------------------------------------------------------------------

    def crl_builder(self, calls: list[tuple[int, list[tuple[int, int, str | None]]]], lifetime: int = 86400) -> Callable[..., tuple[bytes, int]]:
        def build(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            calls.append((number, entries))
            return f"crl {number}".encode(), int(self.clock.seconds()) + lifetime

        return build

    async def test_crl_built_once_then_cached(self) -> None:
        """The first request builds CRL 1; later ones get it back until something changes."""
        store = await self.store()
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        first = await store.refresh_crl("issuing", build, 3600)
        self.assertEqual((first.issuer, first.crl_number, first.der, first.revocations), ("issuing", 1, b"crl 1", 0))
        self.assertEqual(calls, [(1, [])])
        self.assertEqual(await store.refresh_crl("issuing", build, 3600), first)
        self.assertEqual(await store.get_crl("issuing"), first)
        self.assertEqual(len(calls), 1)
        self.assertIsNone(await store.get_crl("root"))

    async def test_crl_rebuilt_after_revocation(self) -> None:
        """A revocation makes the next request build a CRL listing it, with a higher number."""
        store = await self.store()
        await store.create_user("alice")
        kept = await self.add_certificate(store, "alice")
        revoked = await self.add_certificate(store, "alice")
        external = await self.add_certificate(store, "alice", origin="external")
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        await store.refresh_crl("issuing", build, 3600)
        self.clock.advance(2)
        await store.revoke_certificate(revoked.serial_number, "superseded")
        second = await store.refresh_crl("issuing", build, 3600)
        self.assertEqual(second.crl_number, 2)
        self.assertEqual(calls[-1], (2, [(revoked.serial_number, START + 2, "superseded")]))
        listed = {serial for serial, _, _ in calls[-1][1]}
        self.assertNotIn(kept.serial_number, listed)
        self.assertNotIn(external.serial_number, listed)

    async def test_crl_rebuilt_near_next_update(self) -> None:
        """A CRL within refresh_before of its next update is replaced."""
        store = await self.store()
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls, lifetime=1000)
        await store.refresh_crl("root", build, 100)
        self.clock.advance(899)
        self.assertEqual((await store.refresh_crl("root", build, 100)).crl_number, 1)
        self.clock.advance(1)
        self.assertEqual((await store.refresh_crl("root", build, 100)).crl_number, 2)

    async def test_crl_numbers_increase_across_issuers(self) -> None:
        """CRL numbers never repeat, whichever issuer; the root CRL lists nothing."""
        store = await self.store()
        await store.create_user("alice")
        certificate = await self.add_certificate(store, "alice")
        await store.revoke_certificate(certificate.serial_number, "unspecified")
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        build = self.crl_builder(calls)
        issuing = await store.refresh_crl("issuing", build, 3600)
        root = await store.refresh_crl("root", build, 3600)
        self.assertEqual((issuing.crl_number, root.crl_number), (1, 2))
        self.assertEqual(calls[1], (2, []))
        self.assertEqual(len(calls[0][1]), 1)

    async def test_failed_crl_build_changes_nothing(self) -> None:
        """A build that fails rolls the whole transaction back (no number is used up)."""
        store = await self.store()

        def broken(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            raise ValueError("the CA is unavailable")

        await self.assertFailsWith(ValueError, store.refresh_crl("issuing", broken, 3600))
        self.assertIsNone(await store.get_crl("issuing"))
        calls: list[tuple[int, list[tuple[int, int, str | None]]]] = []
        stored = await store.refresh_crl("issuing", self.crl_builder(calls), 3600)
        self.assertEqual(stored.crl_number, 1)

    # -- PKCS#12 files ----------------------------------------------------------------

    async def test_pkcs12(self) -> None:
        """Files are stored per user, listed newest first without data, read with data."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        first = await store.add_pkcs12("alice", "laptop", "generated", b"\x30first", 0x1F)
        self.clock.advance(1)
        second = await store.add_pkcs12("alice", "phone", "uploaded", b"\x30second!", None)
        await store.add_pkcs12("bob", "bob's", "uploaded", b"\x30b", None)
        self.assertEqual((first.username, first.label, first.origin, first.certificate_serial, first.size, first.created_at), ("alice", "laptop", "generated", "1f", 6, START))
        self.assertIsNone(first.data)
        listing = await store.list_pkcs12("alice")
        self.assertEqual([info.id for info in listing], [second.id, first.id])
        self.assertEqual([info.data for info in listing], [None, None])
        self.assertEqual([info.size for info in listing], [8, 6])
        fetched = await store.get_pkcs12(second.id)
        assert fetched is not None
        self.assertEqual((fetched.data, fetched.username, fetched.certificate_serial), (b"\x30second!", "alice", None))
        self.assertIsNone(await store.get_pkcs12(second.id + 1000))
        await self.assertFailsWith(errors.NotFound, store.add_pkcs12("nobody", "x", "uploaded", b"x", None))

    # -- quotas -----------------------------------------------------------------------

    async def test_concurrent_pkcs12_quota(self) -> None:
        """Forty files added at once against a quota of 20: exactly 20 are stored, the
        rest refused with QuotaExceeded (the count and the write share a transaction)."""
        store = await self.store()
        await store.create_user("alice")
        await store.create_user("bob")
        await store.add_pkcs12("bob", "b", "uploaded", b"\x30b", None)  # another user's
        adds = [store.add_pkcs12("alice", f"f{n}", "uploaded", b"\x30" + bytes([n]), None, most=20) for n in range(40)]
        outcomes = await defer.DeferredList(adds, consumeErrors=True)
        refused = [result for ok, result in outcomes if not ok]
        self.assertEqual(len(refused), 20)
        for failure in refused:
            failure.trap(errors.QuotaExceeded)
            self.assertIn("already holds 20 PKCS#12 files", failure.value.message)
        self.assertEqual(len(await store.list_pkcs12("alice")), 20)
        await store.add_pkcs12("bob", "b2", "uploaded", b"\x30c", None, most=20)

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

    async def test_generated_key_quotas(self) -> None:
        """A generated key's certificate and PKCS#12 file are stored together or not at
        all: concurrent ones stop at the PKCS#12 quota with no certificate left over."""
        self.use_certificate_time()
        store = await self.store()
        await store.create_user("alice")
        certificates = [self.certificate() for _ in range(6)]
        adds = [
            store.add_generated_key(
                "alice", certificate, fingerprint(certificate), "key", b"\x30p12", most_certificates=10, most_pkcs12=3
            )
            for certificate in certificates
        ]
        outcomes = await defer.DeferredList(adds, consumeErrors=True)
        self.assertEqual(sum(1 for ok, _ in outcomes if ok), 3)
        self.assertEqual(len(await store.list_pkcs12("alice")), 3)
        self.assertEqual(len(await store.list_certificates("alice")), 3)
        for ok, result in outcomes:
            if not ok:
                result.trap(errors.QuotaExceeded)
        first = self.certificate()
        await self.assertFailsWith(
            errors.QuotaExceeded,
            store.add_generated_key("alice", first, fingerprint(first), "k", b"\x30", most_certificates=3, most_pkcs12=10),
        )
        self.assertEqual(len(await store.list_certificates("alice")), 3)

    # -- durability -------------------------------------------------------------------

    async def test_everything_survives_reopening(self) -> None:
        """A second store on the same database sees all the data, and it is intact."""
        store = await self.store()
        await store.create_user("alice", display_name="Alice", attributes=(("k", "v"),), password_hash="h")
        await store.put_addresses("alice", "online", (Endpoint("2001:db8::5", 4605),), 300)
        certificate = await self.add_certificate(store, "alice")
        file = await store.add_pkcs12("alice", "laptop", "generated", b"\x30data", certificate.serial_number)
        await store.revoke_certificate(certificate.serial_number, "key-compromise")
        await store.refresh_crl("issuing", self.crl_builder([]), 60)
        reopened = await self.store()
        self.assertEqual(await reopened.get_account("alice"), await store.get_account("alice"))
        self.assertEqual(await reopened.get_addresses("alice"), await store.get_addresses("alice"))
        self.assertEqual(await reopened.get_certificate(certificate.serial_number), await store.get_certificate(certificate.serial_number))
        self.assertEqual(await reopened.get_pkcs12(file.id), await store.get_pkcs12(file.id))
        self.assertEqual(await reopened.get_crl("issuing"), await store.get_crl("issuing"))
        self.assertEqual(await revocation_generation(reopened), 1)
        record = await reopened.get_addresses("alice")
        assert record is not None
        self.verifier.verify(record)
        self.assertEqual(await check_integrity(reopened), "ok")


class SQLiteStoreTests(RegistryStoreTestsMixin, unittest.TestCase):
    """The store on a real SQLite file."""

    def path(self, name: str) -> str:
        if not hasattr(self, "_directory"):
            self._directory = os.path.abspath(self.mktemp())
        return os.path.join(self._directory, f"{name}.sqlite3")

    async def make_store(self, name: str = "registry") -> RegistryStore:
        pool = sqlite_pool(self.path(name), global_reactor)
        pool.start()
        self.addCleanup(pool.close)
        return RegistryStore(pool, SQLITE, DOMAIN, self.signer, self.clock.seconds)

    async def test_locked_database_is_unavailable(self) -> None:
        """A database that stays locked (or cannot be reached) makes operations fail with
        unavailable (503, try again later), logged; the store works again afterwards."""
        import sqlite3

        store = await self.store()
        await store.create_user("alice")
        await store.pool.runOperation("PRAGMA busy_timeout = 0")  # fail at once, not after 10 s
        other = sqlite3.connect(self.path("registry"), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN EXCLUSIVE")
        logged: list[Any] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        await self.assertFailsWith(errors.Unavailable, store.set_password_login("alice", False))
        self.assertTrue(any("database is unavailable" in (formatEvent(event) or "") for event in logged))
        other.execute("ROLLBACK")
        self.assertEqual((await store.set_password_login("alice", False)).password_login, False)

    async def test_file_is_private(self) -> None:
        """The database file holds password hashes: mode 0600."""
        await self.store()
        mode = stat.S_IMODE(os.stat(self.path("registry")).st_mode)
        self.assertEqual(mode, 0o600)

    async def test_open_store(self) -> None:
        """open_store creates the file and the schema from a URL."""
        path = self.path("opened")
        store = await open_store(f"sqlite:///{path}", domain=DOMAIN, signer=self.signer, now=self.clock.seconds, reactor=global_reactor)
        self.addCleanup(store.close)
        await store.create_user("alice")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(await check_integrity(store), "ok")


class PostgreSQLStoreTests(RegistryStoreTestsMixin, unittest.TestCase):
    """The same store tests on a real PostgreSQL server (see test/pgserver.py)."""

    def setUp(self) -> None:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            self.server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        super().setUp()
        self._databases: dict[str, str] = {}

    async def make_store(self, name: str = "registry") -> RegistryStore:
        from common.db.dialect import POSTGRESQL
        from common.db.pools import postgresql_pool

        if name not in self._databases:
            self._databases[name] = self.server.create_database()
        pool = postgresql_pool(self._databases[name], global_reactor, 4)
        pool.start()
        self.addCleanup(pool.close)
        return RegistryStore(pool, POSTGRESQL, DOMAIN, self.signer, self.clock.seconds)
