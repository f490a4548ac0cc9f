"""PKCS#12 operations (irp.server.ops.pkcs12)."""

from __future__ import annotations

from common.wire.xmlcodec import make_element
from test.irp.server.helpers import (
    RegistryTestCase,
    pkcs12_bundle,
)


class Pkcs12Tests(RegistryTestCase):
    """upload-pkcs12, list-pkcs12, get-pkcs12."""

    def bundle(self) -> bytes:
        return pkcs12_bundle()

    async def test_upload_and_download(self) -> None:
        """An uploaded PKCS#12 comes back byte for byte, to its owner and administrators."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        data = self.bundle()
        info = await alice.upload_pkcs12(data, "escrowed")
        self.assertEqual((info.label, info.origin, info.size, info.certificate_serial), ("escrowed", "uploaded", len(data), None))
        self.assertEqual([(item.id, item.size) for item in await alice.list_pkcs12()], [(info.id, len(data))])
        self.assertEqual((await alice.get_pkcs12(info.id)).data, data)
        self.assertEqual((await (await self.registry.admin()).get_pkcs12(info.id)).data, data)
        await self.fails("not-found", bob.get_pkcs12(info.id))
        await self.fails("not-found", alice.get_pkcs12(info.id + 100))
        await self.fails("bad-request", alice.protocol.request(make_element("get-pkcs12")))

    async def test_refusals(self) -> None:
        """Data that is not PKCS#12, a bad label, and a full quota are refused."""
        await self.start(max_pkcs12_per_user=1)
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.upload_pkcs12(b"\x30\x03\x02\x01\x02"))
        await self.fails("invalid-argument", alice.upload_pkcs12(b"hello world, not DER"))
        await self.fails("invalid-argument", alice.upload_pkcs12(self.bundle(), "bad\nlabel"))
        await alice.upload_pkcs12(self.bundle())
        await self.fails("conflict", alice.upload_pkcs12(self.bundle()))

    async def test_too_large(self) -> None:
        """A file over max_pkcs12_size is invalid-argument: a field's limit, not the
        frame's, so the connection goes on."""
        await self.start(max_pkcs12_size=1024)
        alice = await self.user("alice")
        body = b"\x02\x01\x03" + b"\x04\x82\x04\x00" + b"x" * 1024
        data = b"\x30\x82" + len(body).to_bytes(2, "big") + body
        error = await self.fails("invalid-argument", alice.upload_pkcs12(data))
        self.assertIn("1024", error.message)
        await self.fails("invalid-argument", alice.upload_pkcs12(b"\x30" * 4096))  # over the <data> limit
        self.assertEqual(await alice.list_pkcs12(), [])
