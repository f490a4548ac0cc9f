"""Logins (irp.server.auth): passwords, certificates, sessions ending (moved from test_registry)."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.task import Clock

from common.identity import Identity
from irp.server.ca import generate_key
from irp.server.passwords import Argon2Parameters, PasswordHasher
from irp.server.session import Session
from irp.wire.messages import build_request, parse_request
from test import pki
from test.helpers import DEFAULT_PASSWORD, TEST_PARAMETERS, EnrolledUser
from test.irp.server.helpers import (
    DOMAIN,
    RegistryTestCase,
    login_element,
)


class SessionTests(RegistryTestCase):
    """capabilities, login, logout, whoami and certificate login."""

    async def test_capabilities(self) -> None:
        """The server names its domain, version, auth methods, limits and operations."""
        await self.start()
        client = await self.registry.client()
        element = await client.capabilities()
        self.assertEqual((element.get("domain"), element.get("versions")), (DOMAIN, "1"))
        self.assertEqual(int(element.get("max-request", "0")), self.registry.limits.max_request)
        self.assertEqual({child.get("method") for child in element.iter("auth")}, {"certificate", "password"})
        operations = {child.get("name") for child in element.iter("operation")}
        self.assertEqual(operations, set(self.registry.registry.operations))
        self.assertIn("generate-key", operations)

    async def test_password_login(self) -> None:
        """login, whoami and logout."""
        await self.start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        self.assertEqual((await client.whoami()).method, "none")
        session = await client.login("alice", DEFAULT_PASSWORD)
        self.assertEqual((str(session.user), session.method, session.is_admin), ("alice@example.org", "password", False))
        whoami = await client.whoami()
        self.assertEqual((str(whoami.user), whoami.method), ("alice@example.org", "password"))
        session = await client.logout()
        self.assertIsNone(session.user)
        await self.fails("not-authenticated", client.lookup("alice"))

    async def test_login_with_full_identity(self) -> None:
        """user@domain works for the registry's own domain only."""
        await self.start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        self.assertEqual((await client.login("alice@example.org", DEFAULT_PASSWORD)).method, "password")
        await self.fails("not-found", client.login("alice@example.net", DEFAULT_PASSWORD))

    async def test_admin_login(self) -> None:
        """The bootstrap administrator logs in with the password from its file."""
        await self.start()
        client = await self.registry.admin()
        self.assertTrue((await client.whoami()).is_admin)

    async def test_wrong_password_and_unknown_user_look_the_same(self) -> None:
        """A wrong password, an unknown user and a user without a password all read
        login-failed with the same message."""
        await self.start()
        await self.registry.add_user("alice")
        await self.registry.add_user("nopass", None)
        client = await self.registry.client()
        messages = set()
        for user, password in (("alice", "wrong password!"), ("nobody", DEFAULT_PASSWORD), ("nopass", DEFAULT_PASSWORD)):
            messages.add((await self.fails("login-failed", client.login(user, password))).message)
        self.assertEqual(len(messages), 1)
        self.assertIsNone((await client.whoami()).user)

    async def test_user_lockout(self) -> None:
        """After too many failures even the right password is rate-limited."""
        await self.start(login_failures_per_user=2)
        await self.registry.add_user("alice")
        client = await self.registry.client()
        for _ in range(3):
            await self.fails("login-failed", client.login("alice", "wrong password!"))
        error = await self.fails("rate-limited", client.login("alice", DEFAULT_PASSWORD))
        self.assertIn("seconds", error.message)

    async def test_address_budget_not_reset_by_own_login(self) -> None:
        """Logging into one's own account does not reset the address's failure budget
        (else one account would allow unlimited guessing against everyone else)."""
        await self.start(login_failures_per_address=3)
        for name in ("mallory", "bob", "carol", "dave", "erin"):
            await self.registry.add_user(name)
        client = await self.registry.client()
        for victim in ("bob", "carol", "dave"):
            await self.fails("login-failed", client.login(victim, "guess number one"))
        await client.login("mallory", DEFAULT_PASSWORD)
        await self.fails("login-failed", client.login("erin", "guess number one"))
        await self.fails("rate-limited", client.login("erin", DEFAULT_PASSWORD))

    async def test_address_budget_per_ipv6_64(self) -> None:
        """Failed logins from one IPv6 /64 share one budget, whichever source address
        they use. (Loopback offers no such addresses, so the requests go straight to the
        registry, as the protocol would hand them over.)"""
        await self.start(login_failures_per_address=2)
        await self.registry.add_user("alice")
        await self.registry.add_user("bob")
        registry = self.registry.registry

        async def login(host: str, user: str, password: str) -> Any:
            request = parse_request(build_request(1, login_element(user, password)))
            return await registry.handle(Session(peer_host=host), request)

        for number in range(1, 4):
            await self.fails("login-failed", login(f"2001:db8::{number}", "bob", "wrong password!"))
        await self.fails("rate-limited", login("2001:db8::ffff", "alice", DEFAULT_PASSWORD))
        await login("2001:db8:0:1::1", "alice", DEFAULT_PASSWORD)

    async def test_rehash_on_login(self) -> None:
        """A hash with old parameters is replaced at the next successful login."""
        await self.start()
        await self.registry.add_user("alice")
        old = PasswordHasher(Argon2Parameters(memory_kib=128, iterations=1, lanes=1)).hash(DEFAULT_PASSWORD)
        await self.registry.store.set_password_hash("alice", old)
        await self.registry.client("alice")
        account = await self.registry.store.get_account("alice")
        assert account is not None and account.password_hash is not None
        self.assertNotEqual(account.password_hash, old)
        self.assertFalse(self.registry.registry.hasher.needs_rehash(account.password_hash))
        await self.registry.client("alice")  # the new hash works

    async def test_rehash_keeps_other_sessions(self) -> None:
        """A rehash (the same password, stronger parameters) is not a new password: other
        password sessions of the user outlive it, even when sessions are re-validated."""
        await self.start()
        await self.registry.add_user("alice")
        await self.registry.add_user("bob")
        earlier = await self.registry.client("alice")
        registry = self.registry.registry
        registry.hasher = PasswordHasher(dataclasses.replace(TEST_PARAMETERS, memory_kib=512))  # an upgrade
        await self.registry.client("alice")  # rehashes
        account = await self.registry.store.get_account("alice")
        assert account is not None and account.password_hash is not None
        self.assertFalse(registry.hasher.needs_rehash(account.password_hash))
        await (await self.registry.admin()).set_admin("bob", True)  # every session re-validates
        await earlier.lookup("alice")
        self.assertEqual((await earlier.whoami()).method, "password")

    async def test_rehash_does_not_undo_a_new_password(self) -> None:
        """A rehash replaces only the hash it was computed for: a password set meanwhile
        stays."""
        await self.start()
        await self.registry.add_user("alice")
        store = self.registry.store
        old = await store.get_account("alice")
        assert old is not None and old.password_hash is not None
        await store.set_password_hash("alice", "$argon2id$new")
        self.assertFalse(await store.rehash_password("alice", old.password_hash, "$argon2id$rehashed"))
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual(account.password_hash, "$argon2id$new")

    async def test_unknown_user_costs_one_hash(self) -> None:
        """The dummy hash that an unknown user's password is checked against is made when
        the registry starts: the first such login costs no extra hash."""
        await self.start()
        hasher = self.registry.registry.hasher
        made: list[str] = []
        original = hasher.hash

        def counting(password: str) -> str:
            made.append(password)
            return original(password)

        hasher.hash = counting  # type: ignore[method-assign]
        client = await self.registry.client()
        await self.fails("login-failed", client.login("nobody", DEFAULT_PASSWORD))
        self.assertEqual(made, [])

    async def test_certificate_expiry_ends_session(self) -> None:
        """A certificate that expires during a session ends it at the next request (no
        other event needed); the session is anonymous afterwards."""
        await self.start()
        alice, client = await self.enrolled("alice")
        await client.lookup("alice")
        later = Clock()
        later.advance(alice.certificate.not_valid_after_utc.timestamp() + 1)
        self.registry.registry.clock = later  # the registry's clock only
        error = await self.fails("certificate-rejected", client.lookup("alice"))
        self.assertIn("expired", error.message)
        await self.fails("not-authenticated", client.lookup("alice"))

    async def test_certificate_login(self) -> None:
        """A certificate the registry issued logs the connection in at once."""
        await self.start()
        _alice, client = await self.enrolled("alice")
        session = await client.whoami()
        self.assertEqual((str(session.user), session.method), ("alice@example.org", "certificate"))
        await client.lookup("alice")

    async def test_foreign_certificate_refused(self) -> None:
        """A certificate of another CA for the same domain is refused readably."""
        await self.start()
        await self.registry.add_user("alice")
        impostor = pki.issue_user(pki.make_ca(DOMAIN, label="impostor"), "alice")
        client = await self.registry.client(user=EnrolledUser("alice", "", impostor.key, impostor.certificate, 0))
        await self.fails("certificate-rejected", client.whoami())
        await self.fails("certificate-rejected", client.lookup("alice"))
        # Public operations still work: the CA chain and CRL help to find out why.
        await client.capabilities()
        await client.ca_chain()

    async def test_unissued_certificate_of_our_ca_refused(self) -> None:
        """A certificate with our CA's signature but unknown to the store is refused."""
        await self.start()
        await self.registry.add_user("alice")
        key = generate_key("p256")
        certificate = self.registry.ca.issue_user_certificate(Identity("alice", DOMAIN), key.public_key())
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, 0))
        error = await self.fails("certificate-rejected", client.whoami())
        self.assertIn("not issued by this registry", error.message)
