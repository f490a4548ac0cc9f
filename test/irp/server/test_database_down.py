"""While the database is down, every operation answers ``unavailable`` and the log says
so once: a real PostgreSQL server stopped mid-run, and a SQLite file that cannot be read
(its pages, log and index overwritten: "file is not a database"), then brought back."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from irp import errors
from irp.cli import make_csr
from irp.client import RegistryClient
from irp.server.ca import generate_key
from irp.wire.records import Endpoint
from sixid.errors import SixidError
from sixid.server.service import SixidSettings
from test.helpers import EnrolledUser, RunningRegistry

#: How many requests may meet a connection of the pool that broke during the outage
#: after the database is back (each is dropped at its first failure and made again).
STALE_CONNECTIONS = 12


class Outage:
    """A registry with a logged-in user, an administrator, and the log lines."""

    def __init__(self, testcase: unittest.TestCase, registry: RunningRegistry) -> None:
        self.testcase = testcase
        self.registry = registry
        self.events: list[dict[str, Any]] = []
        self.alice: EnrolledUser
        self.user: RegistryClient
        self.admin: RegistryClient

    async def prepare(self) -> None:
        self.alice = await self.registry.enrol("alice")
        self.user = await self.registry.client(user=self.alice)
        await self.user.whoami()  # logged in before the outage
        self.admin = await self.registry.admin()
        globalLogPublisher.addObserver(self.events.append)
        self.testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def operations(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        user, admin, alice = self.user, self.admin, self.alice
        return {
            "lookup": lambda: user.lookup("alice"),
            "register-address": lambda: user.register_addresses([Endpoint.parse("192.0.2.1", 1000)], "online", 300),
            "request-certificate": lambda: user.request_certificate(make_csr(generate_key("p256"))),
            "list-certificates": lambda: user.list_certificates(),
            "certificate-status": lambda: user.certificate_status(alice.serial),
            "get-crl": lambda: user.get_crls(),
            "list-pkcs12": lambda: user.list_pkcs12(),
            "list-users": lambda: admin.list_users(),
            "create-user": lambda: admin.create_user("bob", password="a long enough password"),
            "set-password-login": lambda: admin.set_password_login("alice", True),
            "revoke": lambda: user.revoke(alice.serial),
            "password login": lambda: self.registry.client("alice", alice.password),
            "certificate login": self.certificate_login,
            "sixid lookup": self.sixid_lookup,
        }

    async def sixid_lookup(self) -> Any:
        """A sixid look-up on the registry's sixid port (sixid's own ``unavailable``)."""
        from twisted.internet import reactor

        from sixid.client import connect_sixid
        from sixid.ids import SixIdAddress, derive_id

        client = await connect_sixid(
            reactor, "example.org", trust=self.registry.root, server=("127.0.0.1", self.registry.sixid_port), timeout=10
        )
        self.testcase.addCleanup(client.close)
        address = SixIdAddress(derive_id(generate_key("p256").public_key()), "example.org")
        return await client.lookup(address, cached=False)

    async def certificate_login(self) -> Any:
        client = await self.registry.client(user=self.alice)
        return await client.whoami()

    async def all_unavailable(self) -> None:
        """Every operation is refused with unavailable (none with internal-error)."""
        answers = {}
        for name, operation in self.operations().items():
            try:
                await operation()
            except (errors.IRPError, SixidError) as error:
                answers[name] = error.name
            else:
                answers[name] = "ok"
        self.testcase.assertEqual(answers, dict.fromkeys(answers, "unavailable"))

    async def housekeeping(self) -> None:
        """Each step of the housekeeping loops (expiring addresses, following other
        processes' security changes, the daily renewal) ends quietly: a failure would stop
        its loop for good."""
        service = self.registry.service
        assert service is not None
        for loop in service.loops:
            await loop.f()
        self.testcase.assertTrue(service.loops and all(loop.running for loop in service.loops))

    def check_one_line(self) -> None:
        """The outage made one log line ("The database is unavailable: REASON"), whoever
        noticed it first (a request, a housekeeping step, the PostgreSQL listener), no
        traceback and nothing critical; beyond it only the refusals (one per request or
        refused connection)."""
        lines = [formatEvent(event) for event in self.events]
        outage = [line for line in lines if line.startswith("The database is unavailable: ")]
        self.testcase.assertEqual(len(outage), 1, lines)
        self.testcase.assertEqual([formatEvent(e) for e in self.events if "log_failure" in e], [])
        loud = [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]
        others = [line for line in loud if line not in outage and not line.startswith("Closing connection from ")]
        self.testcase.assertEqual(others, [])
        refusals = [line for line in lines if line.startswith(("Closing connection from ", "Request "))]
        self.testcase.assertTrue(all("unavailable" in line for line in refusals), refusals)

    async def check_back(self) -> None:
        """Operations succeed again, and the log says the database is back."""
        for _attempt in range(STALE_CONNECTIONS):
            try:
                await self.admin.list_users()
                break
            except errors.Unavailable:
                continue
        else:
            self.testcase.fail("the registry did not recover")
        client = await self.registry.client("alice", self.alice.password)
        self.testcase.assertEqual((await client.whoami()).method, "password")
        self.testcase.assertEqual((await self.user.lookup("alice")).identity.username, "alice")
        lines = [formatEvent(event) for event in self.events]
        self.testcase.assertIn("The database is back", lines)


class PostgreSQLDownTests(unittest.TestCase):
    """A real PostgreSQL server stopped mid-run, then started again."""

    timeout = 120

    async def test_stopped_server(self) -> None:
        from test.pgserver import PostgresServer, PostgresUnavailable

        server = PostgresServer()  # its own: this test stops it
        try:
            server.start()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        self.addCleanup(server.stop)
        registry = await RunningRegistry(self, database=server.create_database(), sixid=SixidSettings(policy="open")).start()
        outage = Outage(self, registry)
        await outage.prepare()
        server.halt()
        await outage.all_unavailable()
        await outage.housekeeping()
        await outage.all_unavailable()
        outage.check_one_line()
        server.resume()
        await outage.check_back()


class SQLiteDownTests(unittest.TestCase):
    """A SQLite file that cannot be read any more, then restored."""

    async def test_unreadable_file(self) -> None:
        registry = await RunningRegistry(self, sixid=SixidSettings(policy="open")).start()
        outage = Outage(self, registry)
        await outage.prepare()
        path = os.path.join(registry.data_dir, "registry.sqlite3")
        originals: dict[str, bytes] = {}
        # Overwritten in place, never cut short: the direct reader maps the file.
        for name in (path, path + "-wal", path + "-shm"):
            with open(name, "r+b") as handle:
                originals[name] = handle.read()
                handle.seek(0)
                handle.write(os.urandom(len(originals[name])))
        await outage.all_unavailable()
        await outage.housekeeping()
        outage.check_one_line()
        self.assertIn("The database is unavailable: file is not a database", [formatEvent(e) for e in outage.events])
        for name, data in originals.items():
            with open(name, "r+b") as handle:
                handle.write(data)
        await outage.check_back()
        # The direct reader was left in no read transaction (it would read an old snapshot).
        self.assertFalse(registry.store.direct_reader.in_transaction)
