"""Two registry servers of one domain sharing one PostgreSQL database and one CA.

Clients are spread across both servers; concurrent writes to one user lose nothing,
certificate serial numbers stay unique, both servers serve one consistent CRL, and a
revocation made through one server ends sessions held on the other.
"""

from __future__ import annotations

import os

from twisted.internet.defer import DeferredList, gatherResults
from twisted.trial import unittest

from irp import errors
from irp.cli import make_csr
from irp.server.ca import generate_key
from irp.wire.records import Endpoint
from test.helpers import RunningRegistry


class TwoServerTests(unittest.TestCase):
    async def start_pair(self) -> tuple[RunningRegistry, RunningRegistry]:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        database = server.create_database()
        data_dir = os.path.abspath(self.mktemp())
        first = await RunningRegistry(self, database=database, data_dir=data_dir).start()
        second = await RunningRegistry(self, database=database, data_dir=data_dir).start()
        self.assertNotEqual(first.port, second.port)
        return first, second

    async def test_both_serve_the_same_directory(self) -> None:
        first, second = await self.start_pair()
        alice = await first.enrol("alice")
        on_second = await second.client(user=alice)
        session = await on_second.whoami()
        self.assertEqual((str(session.user), session.method), ("alice@example.org", "certificate"))
        self.assertEqual(first.root, second.root)

    async def test_no_lost_update_on_one_user(self) -> None:
        first, second = await self.start_pair()
        alice = await first.enrol("alice")
        clients = [await (first if index % 2 else second).client(user=alice) for index in range(8)]
        initial = (await clients[0].lookup("alice")).seq
        writes = [
            client.register_addresses([Endpoint.parse("192.0.2.1", 1000 + index * 10 + round_)], "online", 300)
            for round_ in range(5)
            for index, client in enumerate(clients)
        ]
        records = await gatherResults(writes)
        seqs = [record.seq for record in records]
        self.assertEqual(len(set(seqs)), len(writes), "two acknowledged writes got the same sequence number")
        final = await clients[1].lookup("alice")
        self.assertEqual(final.seq, initial + len(writes))

    async def test_unique_serials_and_one_crl(self) -> None:
        first, second = await self.start_pair()
        await first.create_user("alice")
        clients = [await (first if index % 2 else second).client("alice") for index in range(6)]
        requests = [client.request_certificate(make_csr(generate_key("p256"))) for client in clients for _ in range(3)]
        entries = await gatherResults(requests)
        serials = [entry.serial for entry in entries]
        self.assertEqual(len(set(serials)), len(serials))
        revoked = {entries[index].serial for index in (0, 3, 7, 11)}
        outcomes = await DeferredList([clients[index % 6].revoke(serial, "key-compromise") for index, serial in enumerate(revoked)], consumeErrors=True)
        self.assertTrue(all(success for success, _ in outcomes))
        first_crls = {info.issuer: info for info in await clients[0].get_crls()}
        second_crls = {info.issuer: info for info in await clients[1].get_crls()}
        self.assertEqual(first_crls["issuing"].number, second_crls["issuing"].number)
        listed = {entry.serial_number for entry in first_crls["issuing"].crl}
        self.assertEqual(listed, {entry.serial_number for entry in second_crls["issuing"].crl})
        self.assertEqual(listed, revoked)

    async def test_revocation_on_one_server_ends_sessions_on_the_other(self) -> None:
        first, second = await self.start_pair()
        alice = await first.enrol("alice")
        on_second = await second.client(user=alice)
        await on_second.whoami()
        admin = await first.admin()
        await admin.revoke(alice.serial, "key-compromise")
        assert second.service is not None
        await second.service._sync_generation()  # the periodic check, run now
        with self.assertRaises(errors.CertificateRejected):
            await on_second.lookup("alice")


class SharedSQLiteTests(unittest.TestCase):
    """Two registry processes on one SQLite file (one machine): look-up answers cached by
    one process never hide a registration made through the other."""

    async def test_registration_visible_at_once_on_the_other_process(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        first = await RunningRegistry(self, data_dir=data_dir).start()
        second = await RunningRegistry(self, data_dir=data_dir).start()
        alice = await first.enrol("alice")
        writer = await first.client(user=alice)
        reader = await second.client(user=alice)
        for port in range(1000, 1010):
            # The reader looks up twice (the second answer may come from its cache)...
            await reader.lookup("alice")
            await reader.lookup("alice")
            record = await writer.register_addresses([Endpoint.parse("192.0.2.1", port)], "online", 300)
            # ...and still sees each registration at once.
            seen = await reader.lookup("alice")
            self.assertEqual((seen.seq, seen.endpoints), (record.seq, record.endpoints))

    async def test_revoked_certificate_refused_at_once_on_the_other_process(self) -> None:
        """A process that remembers a certificate from earlier logins refuses it at the next
        login once another process has revoked it (the database changed)."""
        data_dir = os.path.abspath(self.mktemp())
        first = await RunningRegistry(self, data_dir=data_dir).start()
        second = await RunningRegistry(self, data_dir=data_dir).start()
        alice = await first.enrol("alice")
        for _ in range(2):  # the second login is answered from what the process remembers
            client = await second.client(user=alice)
            self.assertEqual((await client.whoami()).method, "certificate")
        admin = await first.admin()
        await admin.revoke(alice.serial, "key-compromise")
        client = await second.client(user=alice)
        with self.assertRaises(errors.CertificateRejected):
            await client.whoami()
