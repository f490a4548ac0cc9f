"""Tests for :mod:`irp.server.store.users`: creating, changing and deleting users.

Every engine runs the same tests (SQLite on a file, PostgreSQL on a real server: see
:mod:`test.irp.server.store.helpers`).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from irp import errors
from test.irp.server.store.helpers import (
    START,
    PostgreSQLStore,
    RegistryStoreTestsMixin,
    SQLiteStore,
    revocation_generation,
)


class UserTestsMixin(RegistryStoreTestsMixin):
    """Creating, changing and deleting users, on every engine."""

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


class SQLiteUserTests(UserTestsMixin, SQLiteStore, unittest.TestCase):
    """On a real SQLite file."""


class PostgreSQLUserTests(UserTestsMixin, PostgreSQLStore, unittest.TestCase):
    """On a real PostgreSQL server (see test/pgserver.py)."""
