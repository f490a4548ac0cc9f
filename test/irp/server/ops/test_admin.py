"""Administration operations (irp.server.ops.admin)."""

from __future__ import annotations

from twisted.internet.defer import DeferredList

from test.helpers import DEFAULT_PASSWORD
from test.irp.server.helpers import (
    OTHER_PASSWORD,
    RegistryTestCase,
    external_certificate,
)


class AdministrationTests(RegistryTestCase):
    """create-user, set-password, set-password-login, set-admin, delete-user."""

    async def test_create_user(self) -> None:
        """Administrators create users, who can then log in."""
        await self.start()
        admin = await self.registry.admin()
        record, account = await admin.create_user("alice", password=DEFAULT_PASSWORD, display_name="Alice", email="a@example.org")
        self.assertEqual((str(record.identity), record.display_name), ("alice@example.org", "Alice"))
        assert account is not None
        self.assertEqual((account.is_admin, account.has_password, account.password_login), (False, True, True))
        await self.registry.client("alice")
        await self.fails("conflict", admin.create_user("alice", password=DEFAULT_PASSWORD))
        await self.fails("invalid-argument", admin.create_user("bob", password="short"))
        await self.fails("invalid-argument", admin.create_user("Bad Name", password=DEFAULT_PASSWORD))
        await self.fails("not-found", admin.create_user("carol@example.net", password=DEFAULT_PASSWORD))
        for email in ("not an email", "nobody", "two@at signs"):
            await self.fails("invalid-argument", admin.create_user("dave", password=DEFAULT_PASSWORD, email=email))
        await self.fails("login-failed", (await self.registry.client()).login("dave", DEFAULT_PASSWORD))  # not created
        _record, account = await admin.create_user("root2", admin=True)
        assert account is not None
        self.assertEqual((account.is_admin, account.has_password), (True, False))

    async def test_set_own_password(self) -> None:
        """A password session needs the current password to set a new one; afterwards
        only the new one works."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("login-failed", alice.set_password(None, OTHER_PASSWORD))
        await self.fails("login-failed", alice.set_password(None, OTHER_PASSWORD, "wrong current!"))
        await self.fails("invalid-argument", alice.set_password(None, "short", DEFAULT_PASSWORD))
        await alice.set_password(None, OTHER_PASSWORD, DEFAULT_PASSWORD)
        self.assertEqual((await alice.whoami()).method, "password")  # the changer stays in
        await self.registry.client("alice", OTHER_PASSWORD)
        client = await self.registry.client()
        await self.fails("login-failed", client.login("alice", DEFAULT_PASSWORD))

    async def test_certificate_session_sets_password_without_current(self) -> None:
        """A certificate login is strong enough to set the password alone."""
        await self.start()
        _alice, client = await self.enrolled("alice")
        await client.set_password(None, OTHER_PASSWORD)
        await self.registry.client("alice", OTHER_PASSWORD)

    async def test_password_reset_ends_other_password_sessions(self) -> None:
        """When an administrator resets a password (say, a stolen one), sessions logged
        in with the old password end; certificate sessions are unaffected."""
        await self.start()
        _alice, certificate_session = await self.enrolled("alice")
        thief = await self.registry.client("alice")
        admin = await self.registry.admin()
        await admin.set_password("alice", OTHER_PASSWORD)
        await self.fails("not-authenticated", thief.lookup("alice"))
        self.assertIsNone((await thief.whoami()).user)
        await certificate_session.lookup("alice")
        self.assertEqual((await admin.whoami()).method, "password")

    async def test_admin_sets_other_password(self) -> None:
        """Administrators set anyone's password; users cannot."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        await self.fails("forbidden", bob.set_password("alice", OTHER_PASSWORD))
        await (await self.registry.admin()).set_password("alice", OTHER_PASSWORD)
        await self.registry.client("alice", OTHER_PASSWORD)
        await self.fails("not-found", (await self.registry.admin()).set_password("nobody", OTHER_PASSWORD))

    async def test_password_login_disabled_only_certificates_work(self) -> None:
        """A user may disable password login: their password session ends, password
        logins are refused, the certificate still works; only an administrator can
        enable it again."""
        await self.start()
        alice, certificate_session = await self.enrolled("alice")
        password_session = await self.registry.client("alice")
        element = await password_session.set_password_login(None, False)
        self.assertEqual(element.find("account").get("password-login"), "false")  # type: ignore[union-attr]
        await self.fails("password-login-disabled", password_session.lookup("alice"))
        client = await self.registry.client()
        await self.fails("password-login-disabled", client.login("alice", DEFAULT_PASSWORD))
        await self.fails("login-failed", client.login("alice", "wrong password!"))
        await certificate_session.lookup("alice")
        await self.fails("forbidden", certificate_session.set_password_login(None, True))
        admin = await self.registry.admin()
        await admin.set_password_login("alice", True)
        await self.registry.client("alice")
        del alice

    async def test_created_without_password_login(self) -> None:
        """password-login=false at creation: the password is refused from the start."""
        await self.start()
        admin = await self.registry.admin()
        await admin.create_user("alice", password=DEFAULT_PASSWORD, password_login=False)
        client = await self.registry.client()
        await self.fails("password-login-disabled", client.login("alice", DEFAULT_PASSWORD))

    async def test_set_admin(self) -> None:
        """Administrator rights take effect at once; the last administrator keeps them."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("forbidden", alice.create_user("bob", password=DEFAULT_PASSWORD))
        admin = await self.registry.admin()
        await admin.set_admin("alice", True)
        self.assertTrue((await alice.whoami()).is_admin)
        await alice.create_user("bob", password=DEFAULT_PASSWORD)
        await alice.set_admin("alice", False)
        await self.fails("forbidden", alice.create_user("carol", password=DEFAULT_PASSWORD))
        await self.fails("conflict", admin.set_admin("admin", False))
        await self.fails("not-found", admin.set_admin("nobody", True))

    async def test_administrators_removing_each_other(self) -> None:
        """Two administrators withdrawing each other's rights (or deleting each other) at
        the same moment cannot leave the registry without an administrator."""
        await self.start()
        await self.registry.add_user("root2", is_admin=True)
        first = await self.registry.admin()
        second = await self.registry.client("root2")
        results = await DeferredList([first.set_admin("root2", False), second.set_admin("admin", False)], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await self.registry.store.count_admins(), 1)
        await self.registry.store.set_admin("root2", True)
        await self.registry.store.set_admin("admin", True)
        third = await self.registry.client("root2")
        fourth = await self.registry.admin()
        results = await DeferredList([third.delete_user("admin"), fourth.delete_user("root2")], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await self.registry.store.count_admins(), 1)

    async def test_delete_user(self) -> None:
        """Deleting a user revokes their certificates, removes their entry, addresses and
        files, and ends their sessions."""
        await self.start()
        alice, certificate_session = await self.enrolled("alice")
        password_session = await self.registry.client("alice")
        info, _ = await password_session.generate_key("a long passphrase", key_type="p256")
        admin = await self.registry.admin()
        element = await admin.delete_user("alice")
        self.assertEqual((element.get("user"), element.get("revoked")), ("alice@example.org", "2"))
        self.assertEqual((await admin.certificate_status(alice.serial)).state, "revoked")
        await self.fails("not-found", admin.lookup("alice"))
        await self.fails("not-found", admin.get_user("alice"))
        await self.fails("not-found", admin.get_pkcs12(info.id))
        await self.fails("not-authenticated", certificate_session.whoami())
        await self.fails("not-authenticated", password_session.lookup("admin"))
        client = await self.registry.client()
        await self.fails("login-failed", client.login("alice", DEFAULT_PASSWORD))
        await self.fails("not-found", admin.delete_user("alice"))
        await self.fails("conflict", admin.delete_user("admin"))

    async def test_recreated_user_is_new(self) -> None:
        """A user created again under a deleted name gets nothing of the old one's:
        the old password session stays ended, old certificates stay revoked."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        old_session = await self.registry.client("alice")
        await old_session.upload_certificate(external_certificate())
        admin = await self.registry.admin()
        await admin.delete_user("alice")
        await admin.create_user("alice", password=DEFAULT_PASSWORD)
        await self.fails("not-authenticated", old_session.lookup("alice"))
        new = await self.registry.client("alice")
        self.assertEqual([entry.status for entry in await new.list_certificates()], ["revoked"])
        fresh = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", fresh.whoami())
