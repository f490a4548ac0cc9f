"""Quotas under concurrent requests (issue 9, item 6): one user's requests arriving at
once on many connections to a real registry (TLS on loopback, a SQLite file) never store
more than the quota."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList
from twisted.trial import unittest

from irp import errors
from irp.server.ca import generate_key
from irp.server.registry import RegistryConfig
from test.helpers import RunningRegistry
from test.irp.server.helpers import DOMAIN, csr, pkcs12_bundle

CONNECTIONS = 10


class ConcurrentQuotaTests(unittest.TestCase):
    """Many requests of one user at once, spread over connections."""

    async def start(self, **config: Any) -> RunningRegistry:
        registry = await RunningRegistry(self, config=RegistryConfig(domain=DOMAIN, **config)).start()
        await registry.add_user("alice")
        self.clients = [await registry.client("alice") for _ in range(CONNECTIONS)]
        return registry

    async def outcomes(self, calls: list[Any]) -> tuple[int, list[errors.IRPError]]:
        """How many succeeded, and the errors of the others."""
        results = await DeferredList(calls, consumeErrors=True)
        refused = [result.value for ok, result in results if not ok]
        return len(results) - len(refused), refused

    async def test_upload_pkcs12(self) -> None:
        """Forty uploads at once against a quota of 20: 20 stored, 20 refused with
        ``conflict`` saying why."""
        await self.start(max_pkcs12_per_user=20)
        data = pkcs12_bundle()
        calls = [self.clients[n % CONNECTIONS].upload_pkcs12(data, f"copy {n}") for n in range(40)]
        stored, refused = await self.outcomes(calls)
        self.assertEqual(stored, 20)
        self.assertEqual({(error.name, error.message) for error in refused}, {("conflict", "alice already holds 20 PKCS#12 files, the most allowed")})
        self.assertEqual(len(await self.clients[0].list_pkcs12()), 20)

    async def test_request_certificate(self) -> None:
        """Certificates requested at once against a quota of 5: 5 issued, the rest
        refused with ``conflict``."""
        await self.start(max_certificates_per_user=5)
        requests = [csr(generate_key("p256")) for _ in range(2 * CONNECTIONS)]
        calls = [self.clients[n % CONNECTIONS].request_certificate(request) for n, request in enumerate(requests)]
        issued, refused = await self.outcomes(calls)
        self.assertEqual(issued, 5)
        self.assertEqual({error.name for error in refused}, {"conflict"})
        self.assertEqual(len(await self.clients[0].list_certificates()), 5)

    async def test_generate_key(self) -> None:
        """Keys generated at once against a PKCS#12 quota of 3: 3 stored, each with its
        certificate, and no certificate without its file."""
        await self.start(max_pkcs12_per_user=3)
        calls = [client.generate_key("a long passphrase", key_type="p256") for client in self.clients]
        generated, refused = await self.outcomes(calls)
        self.assertEqual(generated, 3)
        self.assertEqual({error.name for error in refused}, {"conflict"})
        self.assertEqual(len(await self.clients[0].list_pkcs12()), 3)
        self.assertEqual(len(await self.clients[0].list_certificates()), 3)
