"""sixid's allow list over IRP (irp.server.ops.sixid): sixid-allow, sixid-disallow and
sixid-list, administrators only, against a real registry on loopback."""

from __future__ import annotations

from common.wire.xmlcodec import make_element
from test.irp.server.helpers import RegistryTestCase

CANONICAL = "q3dv6zkam4tfjx2b7wqple5nyc4hur6g"
GROUPED = "Q3DV-6ZKA-M4TF-JX2B-7WQP-LE5N-YC4H-UR6G"
OTHER = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


class SixidAllowListTests(RegistryTestCase):
    async def test_allow_list_and_disallow(self) -> None:
        """Either form of an ID is stored canonical, with its note, when and by whom;
        allowing twice keeps the first entry; disallowing says whether it was there."""
        await self.start()
        admin = await self.registry.admin()
        self.assertTrue(await admin.sixid_allow(f"  {GROUPED} ", "Alice's phone"))
        self.assertFalse(await admin.sixid_allow(CANONICAL, "another note"))
        self.assertTrue(await admin.sixid_allow(OTHER))
        entries = await admin.sixid_list()
        self.assertEqual([entry.sixid for entry in entries], [OTHER, CANONICAL])
        self.assertEqual((entries[1].note, entries[1].added_by), ("Alice's phone", "admin@example.org"))
        self.assertLessEqual(abs(entries[1].added_at - self.registry.registry.clock.seconds()), 5)
        self.assertEqual(entries[0].note, "")
        self.assertTrue(await self.registry.store.sixid_allowed(CANONICAL))
        self.assertTrue(await admin.sixid_disallow(GROUPED.lower()))
        self.assertFalse(await admin.sixid_disallow(CANONICAL))
        self.assertEqual([entry.sixid for entry in await admin.sixid_list()], [OTHER])
        self.assertFalse(await self.registry.store.sixid_allowed(CANONICAL))

    async def test_pages(self) -> None:
        await self.start()
        admin = await self.registry.admin()
        ids = sorted(character * 32 for character in "abcdefg")
        for sixid in ids:
            await admin.sixid_allow(sixid)
        self.assertEqual([entry.sixid for entry in await admin.sixid_list(offset=2, limit=3)], ids[2:5])
        self.assertEqual([entry.sixid for entry in await admin.sixid_list(offset=6)], ids[6:])
        self.assertEqual(await admin.sixid_list(offset=7), [])
        await self.fails("invalid-argument", admin.sixid_list(limit=10_001))
        await self.fails("invalid-argument", admin.sixid_list(limit=0))

    async def test_refused_values(self) -> None:
        """Not an ID (too short, a character outside base32, bad grouping), a note with
        control characters or too long: invalid-argument, nothing stored."""
        await self.start()
        admin = await self.registry.admin()
        for text in ("", "a" * 31, "a" * 33, "1" * 32, "Q3DV6ZKA-M4TF-JX2B-7WQP-LE5N-YC4H-UR6G", "Q3DV--6ZKA-M4TF-JX2B-7WQP-LE5N-YC4H-UR6"):
            await self.fails("invalid-argument", admin.sixid_allow(text))
            await self.fails("invalid-argument", admin.sixid_disallow(text))
        await self.fails("invalid-argument", admin.sixid_allow(CANONICAL, "two\nlines"))
        await self.fails("invalid-argument", admin.sixid_allow(CANONICAL, "x" * 257))
        self.assertEqual(await admin.sixid_list(), [])

    async def test_fields_checked(self) -> None:
        await self.start()
        admin = await self.registry.admin()
        await self.fails("bad-request", admin.protocol.request(make_element("sixid-allow")))
        await self.fails("bad-request", admin.protocol.request(make_element("sixid-allow", {"sixid": CANONICAL, "colour": "red"})))
        await self.fails("bad-request", admin.protocol.request(make_element("sixid-list", {"offset": "ten"})))

    async def test_administrators_only(self) -> None:
        """Users (by password or certificate) are forbidden; anonymous callers must log in."""
        await self.start()
        alice = await self.user("alice")
        _bob, bob = await self.enrolled("bob")
        for client in (alice, bob):
            await self.fails("forbidden", client.sixid_allow(CANONICAL))
            await self.fails("forbidden", client.sixid_disallow(CANONICAL))
            await self.fails("forbidden", client.sixid_list())
        anonymous = await self.registry.client()
        await self.fails("not-authenticated", anonymous.sixid_list())
        self.assertFalse(await self.registry.store.sixid_allowed(CANONICAL))

    async def test_listed_in_capabilities(self) -> None:
        await self.start()
        client = await self.registry.client()
        capabilities = await client.capabilities()
        names = {operation.get("name") for operation in capabilities.iter("operation")}
        self.assertLessEqual({"sixid-allow", "sixid-disallow", "sixid-list"}, names)
