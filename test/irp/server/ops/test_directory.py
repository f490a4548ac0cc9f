"""Directory operations (irp.server.ops.directory): users, look-ups, addresses."""

from __future__ import annotations

from common.wire.xmlcodec import make_element, sub_element
from irp.server.registry import RegistryConfig
from irp.wire.records import Endpoint
from test.irp.server.helpers import (
    DOMAIN,
    RegistryTestCase,
    tamper,
)


class DirectoryTests(RegistryTestCase):
    """get-user, update-user, list-users."""

    async def test_get_user(self) -> None:
        """Everyone logged in sees a user's signed public entry; only the user and
        administrators see the account settings."""
        await self.start()
        alice = await self.user("alice", display_name="Alice", email="alice@example.org")
        bob = await self.user("bob")
        record, account = await alice.get_user("alice")
        self.assertEqual((record.display_name, record.email, record.seq), ("Alice", "alice@example.org", 1))
        assert account is not None
        self.assertEqual((account.is_admin, account.password_login, account.has_password), (False, True, True))
        record, account = await bob.get_user("alice@example.org")
        self.assertEqual(record.display_name, "Alice")
        self.assertIsNone(account)
        _record, account = await (await self.registry.admin()).get_user("alice")
        self.assertIsNotNone(account)
        await self.fails("not-found", bob.get_user("nobody"))

    async def test_update_user_seen_by_others(self) -> None:
        """An update is signed with the next seq and visible to others at once."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        record = await alice.update_user(display_name="Alice L.", email="al@example.org", attributes={"team": "red", "x": "1"})
        self.assertEqual((record.seq, record.attributes), (2, (("team", "red"), ("x", "1"))))
        seen, _ = await bob.get_user("alice")
        self.assertEqual(seen, record)
        record = await alice.update_user(attributes={})
        self.assertEqual((record.display_name, record.attributes, record.seq), ("Alice L.", (), 3))

    async def test_update_user_refusals(self) -> None:
        """Bad values are refused and change nothing."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.update_user(email="not an email"))
        await self.fails("invalid-argument", alice.update_user(display_name="line\nbreak"))
        await self.fails("invalid-argument", alice.update_user(attributes={"bad name": "x"}))
        operation = make_element("update-user")
        sub_element(operation, "attribute", {"name": "x"}, "1")
        await self.fails("bad-request", alice.protocol.request(operation))
        record, _ = await alice.get_user("alice")
        self.assertEqual(record.seq, 1)

    async def test_update_other_user(self) -> None:
        """Users cannot change others' entries; administrators can."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        await self.fails("forbidden", bob.update_user("alice", display_name="pwned"))
        admin = await self.registry.admin()
        record = await admin.update_user("alice", display_name="Set by admin")
        self.assertEqual(record.display_name, "Set by admin")

    async def test_list_users_paging(self) -> None:
        """Pages by user name with the total; prefix filters; every entry verifies."""
        await self.start()
        names = [f"user{i:02d}" for i in range(7)]
        for name in names:
            await self.registry.add_user(name)
        client = await self.registry.client("user00")
        everyone = sorted(["admin", *names])
        seen: list[str] = []
        offset = 0
        while True:
            total, page = await client.list_users(offset, 3)
            self.assertEqual(total, len(everyone))
            if not page:
                break
            self.assertLessEqual(len(page), 3)
            seen.extend(record.identity.username for record in page)
            offset += len(page)
        self.assertEqual(seen, everyone)
        total, page = await client.list_users(0, 50, "user0")
        self.assertEqual((total, len(page)), (7, 7))
        total, page = await client.list_users(2, 2, "user")
        self.assertEqual([record.identity.username for record in page], ["user02", "user03"])
        await self.fails("invalid-argument", client.list_users(0, 10_000))
        await self.fails("invalid-argument", client.list_users(0, 0))

    async def test_full_page_of_large_entries(self) -> None:
        """A page of 200 entries with 32 attributes each (6 602 elements, more than a
        request may hold) reaches the client whole."""
        await self.start()
        attributes = tuple((f"attribute{index:02d}", "v") for index in range(32))
        for number in range(200):
            await self.registry.store.create_user(f"user{number:03d}", attributes=attributes)
        client = await self.registry.client("admin", self.registry.admin_password)
        total, page = await client.list_users(0, 200, "user")
        self.assertEqual((total, len(page)), (200, 200))
        self.assertEqual({len(record.attributes) for record in page}, {32})
        self.assertEqual((await client.whoami()).method, "password")  # the connection is fine


class AddressTests(RegistryTestCase):
    """register-address and lookup."""

    async def test_register_then_lookup_from_another_connection(self) -> None:
        """Registered addresses are visible to another user's connection at once, signed."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        before = await bob.lookup("alice")
        self.assertEqual((before.presence, before.endpoints), ("offline", ()))
        endpoints = [Endpoint.parse("2001:db8::7", 4605), Endpoint.parse("192.0.2.7", 4605)]
        record = await alice.register_addresses(endpoints, "online", ttl=120)
        self.assertEqual(record.seq, before.seq + 1)
        self.assertEqual(record.expires_at - record.signed_at, 120)
        seen = await bob.lookup("alice")
        self.assertEqual(seen, record)
        self.assertEqual(list(seen.endpoints), endpoints)
        self.assertTrue(seen.is_current(self.registry.registry.clock.seconds()))

    async def test_offline_drops_endpoints(self) -> None:
        """Going offline publishes no addresses."""
        await self.start()
        alice = await self.user("alice")
        record = await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)], "offline")
        self.assertEqual((record.presence, record.endpoints), ("offline", ()))

    async def test_default_ttl(self) -> None:
        """Without a ttl the registry's default applies."""
        await self.start()
        alice = await self.user("alice")
        record = await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)], "busy")
        self.assertEqual(record.expires_at - record.signed_at, RegistryConfig(domain=DOMAIN).address_ttl_default)

    async def test_register_refusals(self) -> None:
        """Bad presence, ttl, addresses, duplicates and too many endpoints are refused."""
        await self.start()
        alice = await self.user("alice")
        one = [Endpoint.parse("192.0.2.7", 4605)]
        await self.fails("invalid-argument", alice.register_addresses(one, "invisible"))
        await self.fails("invalid-argument", alice.register_addresses(one, ttl=5))
        await self.fails("invalid-argument", alice.register_addresses(one, ttl=10**6))
        await self.fails("invalid-argument", alice.register_addresses(one * 2))
        many = [Endpoint.parse(f"192.0.2.{i}", 4605) for i in range(1, 10)]
        await self.fails("invalid-argument", alice.register_addresses(many))
        for address, port in (
            ("example.org", "4605"),
            ("224.0.0.1", "4605"),
            ("fe80::1%eth0", "4605"),
            ("::1", "0"),
            ("::1", "\u0664\u0666\u0660\u0665"),
            ("::ffff:192.0.2.7", "4605"),
            ("::192.0.2.7", "4605"),
        ):
            operation = make_element("register-address")
            sub_element(operation, "endpoint", {"address": address, "port": port})
            await self.fails("invalid-argument", alice.protocol.request(operation))
        record = await alice.lookup("alice")
        self.assertEqual(record.seq, 1)

    async def test_lookup_unknown(self) -> None:
        """Unknown users and users of other domains are not-found."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("not-found", alice.lookup("nobody"))
        await self.fails("not-found", alice.lookup("bob@example.net"))

    async def test_tampered_addresses_fail_verification(self) -> None:
        """The client checks the registry's signature: a changed port is caught."""
        await self.start()
        alice = await self.user("alice")
        await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)])
        bob = await self.user("bob")
        await bob.ca_chain()
        tamper(bob, b'port="4605"', b'port="4606"')
        error = await self.fails("server-verification-failed", bob.lookup("alice"))
        self.assertIn("signature", error.message)

    async def test_tampered_user_entry_fails_verification(self) -> None:
        """A changed directory entry is caught too."""
        await self.start()
        await self.registry.add_user("alice", display_name="Alice")
        bob = await self.user("bob")
        await bob.ca_chain()
        tamper(bob, b'display-name="Alice"', b'display-name="Mallory"')
        await self.fails("server-verification-failed", bob.get_user("alice"))

    async def test_answer_for_another_user_refused(self) -> None:
        """A record for someone other than the one asked for is refused."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        tamper(bob, b'id="bob@example.org"', b'id="alice@example.org"')
        await self.fails("server-verification-failed", bob.lookup("bob"))
