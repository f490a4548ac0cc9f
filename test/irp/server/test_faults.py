"""Fault injection: the registry is killed with SIGKILL again and again under load.

After every kill the registry is restarted on the same data directory and each write the
clients saw acknowledged must be there: address records (or newer ones), issued
certificates, revocations; the SQLite file must pass its integrity check, serial numbers
and fingerprints stay unique, and the CRL lists exactly the revoked certificates.

CI runs a few rounds; ``IRP_FAULT_ROUNDS=200 trial test.irp.server.test_faults`` runs a long campaign
(see docs/security.rst).
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from twisted.internet import error as internet_error
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from common.pki.keyfiles import fingerprint, load_certificates
from irp import errors
from irp.cli import make_csr
from irp.client import RegistryClient, connect
from irp.server.ca import generate_key
from irp.wire.records import Endpoint
from test.helpers import REPOSITORY
from test.irp.server.helpers import RegistryProcess

ROUNDS = int(os.environ.get("IRP_FAULT_ROUNDS", "3"))
#: Certificates a worker keeps at most (the registry allows 50 current ones per user).
CERTIFICATES_HELD = 20
USERS = 4


def start_registry(data_dir: str) -> tuple[RegistryProcess, Deferred[int]]:
    process = RegistryProcess()
    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    arguments = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "--logfile=-",
        "irp", "--domain", "example.org", "--data-dir", data_dir,
        "--listen", "tcp:0:interface=127.0.0.1", "--hostname", "127.0.0.1",
        "--key-type", "p256", "--argon2-memory", "8192",
    ]
    reactor.spawnProcess(process, sys.executable, arguments, env=environment, path=REPOSITORY)
    return process, process.listening


@dataclass
class Acknowledged:
    """Writes the clients saw acknowledged."""

    addresses: dict[str, tuple[int, tuple[Endpoint, ...]]] = field(default_factory=dict)
    certificates: dict[int, str] = field(default_factory=dict)
    revoked: set[int] = field(default_factory=set)


@dataclass
class User:
    name: str
    password: str
    key: Any = None
    certificate: x509.Certificate | None = None


class RegistryKillTests(TestCase):
    timeout = 120 + 30 * ROUNDS

    async def client(self, port: int, root: x509.Certificate, user: User | None = None) -> RegistryClient:
        client = await connect(
            reactor, "127.0.0.1", port, domain="example.org", trust_roots=[root],
            client_key=None if user is None else user.key,
            client_certificate=None if user is None else user.certificate, timeout=20,
        )
        return client

    async def test_acknowledged_writes_survive_sigkill(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        rng = random.Random(4604)
        acknowledged = Acknowledged()
        process, listening = start_registry(data_dir)
        self.addCleanup(process.kill)
        port = await listening
        root = load_certificates(os.path.join(data_dir, "ca", "root.pem"))[0]
        with open(os.path.join(data_dir, "admin-password"), encoding="ascii") as handle:
            admin_password = handle.read().strip()
        users = [User(f"user{index}", f"password-of-user-{index}") for index in range(USERS)]
        admin = await self.client(port, root)
        await admin.login("admin", admin_password)
        for user in users:
            await admin.create_user(user.name, password=user.password)
            client = await self.client(port, root)
            await client.login(user.name, user.password)
            user.key = generate_key("p256")
            entry = await client.request_certificate(make_csr(user.key))
            user.certificate = entry.certificate
            acknowledged.certificates[entry.serial] = entry.fingerprint
            await client.close()
        await admin.close()

        total_acknowledged = 0
        unexpected: list[str] = []
        #: Each user's certificates issued during the rounds and not yet revoked.
        live: dict[str, list[int]] = {user.name: [] for user in users}
        for round_number in range(ROUNDS):
            clients = [await self.client(port, root, user) for user in users]
            kill_after = rng.randint(5, 40)
            done = {"count": 0}
            killed: Deferred[None] = Deferred()

            def acked() -> None:
                done["count"] += 1
                if done["count"] == kill_after and not killed.called:
                    killed.callback(None)

            async def work(index: int, client: RegistryClient) -> None:
                user = users[index]
                step = 0
                while not killed.called:
                    step += 1
                    try:
                        choice = rng.random()
                        if choice < 0.6:
                            endpoint = Endpoint.parse("127.0.0.1", 1 + (round_number * 997 + step * 7 + index) % 65000)
                            record = await client.register_addresses([endpoint], "online", 600)
                            acknowledged.addresses[user.name] = (record.seq, record.endpoints)
                        elif choice < 0.85 and len(live[user.name]) < CERTIFICATES_HELD:
                            key = generate_key("p256")
                            entry = await client.request_certificate(make_csr(key))
                            acknowledged.certificates[entry.serial] = entry.fingerprint
                            live[user.name].append(entry.serial)
                        else:
                            # Revoke one (keeping under the registry's per-user quota).
                            if not live[user.name]:
                                continue
                            serial = live[user.name].pop(0)
                            revoked = await client.revoke(serial, "superseded")
                            acknowledged.revoked.add(revoked.serial)
                    except (errors.ConnectionLost, errors.Timeout, internet_error.ConnectionDone, internet_error.ConnectionLost):
                        return  # the registry was killed under this request
                    except errors.IRPError as error:
                        unexpected.append(f"{user.name}: {error}")
                        return
                    acked()

            workers = [Deferred.fromCoroutine(work(index, client)) for index, client in enumerate(clients)]
            # Killed after kill_after acknowledged writes (or, should every worker stop
            # first, with nothing in flight).
            await DeferredList([killed, DeferredList(workers, consumeErrors=True)], fireOnOneCallback=True)
            self.assertEqual(unexpected, [])
            await process.kill()
            total_acknowledged += done["count"]
            self.assertGreaterEqual(done["count"], kill_after)
            await DeferredList(workers, consumeErrors=True)
            self.check_database(data_dir, acknowledged)
            process, listening = start_registry(data_dir)
            self.addCleanup(process.kill)
            port = await listening
            await self.check_registry(data_dir, port, root, users, acknowledged)
        await process.kill()
        report = os.environ.get("IRP_FAULT_REPORT")
        if report:
            with open(report, "w", encoding="utf-8") as handle:
                handle.write(
                    f"rounds (SIGKILLs): {ROUNDS}\nacknowledged writes during rounds: {total_acknowledged}\n"
                    f"certificates checked: {len(acknowledged.certificates)}\nrevocations checked: {len(acknowledged.revoked)}\n"
                    f"address records checked per round: {len(acknowledged.addresses)}\nlost: 0\n"
                )

    def check_database(self, data_dir: str, acknowledged: Acknowledged) -> None:
        connection = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        try:
            self.assertEqual(connection.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            serials = [row[0] for row in connection.execute("SELECT serial FROM certificates")]
            fingerprints = [row[0] for row in connection.execute("SELECT fingerprint FROM certificates")]
            self.assertEqual(len(serials), len(set(serials)))
            self.assertEqual(len(fingerprints), len(set(fingerprints)))
            stored = {int(serial, 16): digest for serial, digest in connection.execute("SELECT serial, fingerprint FROM certificates")}
            for serial, digest in acknowledged.certificates.items():
                self.assertEqual(stored.get(serial), digest, f"acknowledged certificate {serial:x} lost")
            revoked = {int(row[0], 16) for row in connection.execute("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")}
            self.assertLessEqual(acknowledged.revoked, revoked)
        finally:
            connection.close()

    async def check_registry(
        self, data_dir: str, port: int, root: x509.Certificate, users: list[User], acknowledged: Acknowledged
    ) -> None:
        client = await self.client(port, root, users[0])
        try:
            for name, (seq, endpoints) in acknowledged.addresses.items():
                record = await client.lookup(name)
                self.assertGreaterEqual(record.seq, seq, f"acknowledged address registration of {name} lost")
                if record.seq == seq:
                    self.assertEqual(record.endpoints, endpoints)
            crls = await client.get_crls()
            issuing = next(info.crl for info in crls if info.issuer == "issuing")
            listed = {entry.serial_number for entry in issuing}
            self.assertEqual(listed, revoked_in_database(data_dir), "the CRL differs from the revocations")
            self.assertLessEqual(acknowledged.revoked, listed)
            for serial in acknowledged.revoked:
                status = await client.certificate_status(serial=serial)
                self.assertEqual(status.state, "revoked")
            for serial, digest in list(acknowledged.certificates.items())[-5:]:
                entry = await client.get_certificate(serial)
                self.assertEqual(entry.fingerprint, digest)
                assert entry.certificate is not None
                self.assertEqual(fingerprint(entry.certificate), digest)
        finally:
            await client.close()


def revoked_in_database(data_dir: str) -> set[int]:
    """Serials the database holds as revoked (read while the registry runs: WAL allows it)."""
    connection = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
    try:
        rows = connection.execute("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND origin = 'issued'")
        return {int(row[0], 16) for row in rows}
    finally:
        connection.close()


class AgentProcess(RegistryProcess):
    """``twistd sixchat`` in a child process; ready once its control socket listens."""

    ready = re.compile(rb"SixChat agent of \S+ is ready")


def start_agent(profile: str) -> tuple[AgentProcess, Deferred[int]]:
    process = AgentProcess()
    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    arguments = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "--logfile=-",
        "sixchat", "--profile", profile, "--listen", "tcp:0:interface=127.0.0.1", "--ttl", "60",
    ]
    reactor.spawnProcess(process, sys.executable, arguments, env=environment, path=REPOSITORY)
    return process, process.listening


class AgentKillTests(TestCase):
    timeout = 120 + 30 * ROUNDS

    async def test_queued_and_acknowledged_messages_survive_sigkill(self) -> None:
        from common.identity import Identity
        from sixchat.agent.control import connect_control
        from sixchat.agent.service import Agent, AgentSettings
        from test.helpers import RunningRegistry, make_profile

        registry = await RunningRegistry(self).start()
        alice_user = await registry.enrol("alice")
        bob_user = await registry.enrol("bob")
        alice_profile = make_profile(registry, alice_user, os.path.abspath(os.path.join(self.mktemp(), "alice")))
        bob_profile = make_profile(registry, bob_user, os.path.abspath(os.path.join(self.mktemp(), "bob")))
        alice_id, bob_id = Identity.parse("alice@example.org"), Identity.parse("bob@example.org")
        bob = Agent(AgentSettings(profile_dir=bob_profile, listen=["tcp:0:interface=127.0.0.1"], retry_interval=1.0), reactor)
        bob.startService()
        self.addCleanup(bob.stopService)
        await bob.ready
        assert bob.store is not None
        await bob.store.add_contact(alice_id)
        received_by_bob: set[str] = set()
        all_received: Deferred[None] = Deferred()
        queued_by_alice: set[str] = set()

        def bob_event(event: dict[str, Any]) -> None:
            if event.get("event") == "message":
                received_by_bob.add(event["id"])
            if finished["queueing"] and queued_by_alice <= received_by_bob and not all_received.called:
                all_received.callback(None)

        finished = {"queueing": False}
        bob.subscribe(bob_event)

        rng = random.Random(4605)
        acknowledged_by_alice: set[str] = set()
        for round_number in range(ROUNDS):
            process, listening = start_agent(alice_profile)
            self.addCleanup(process.kill)
            await listening
            control = await connect_control(reactor, alice_profile)
            if round_number == 0:
                await control.call("add-contact", who=str(bob_id))
            # Bob writes to Alice: a receipt from Alice means she acknowledged (stored) it.
            bob_messages = [await bob.send_text(alice_id, f"bob {round_number}.{index}") for index in range(3)]
            kill_after = rng.randint(1, 6)
            for index in range(kill_after):
                result = await control.call("send", to=str(bob_id), text=f"alice {round_number}.{index}")
                queued_by_alice.add(result["id"])
            await process.kill()
            for message in bob_messages:
                stored = await bob.store.get_message(message.id)
                assert stored is not None
                if stored.state == "delivered":
                    acknowledged_by_alice.add(message.id)
        # A last run lets Alice deliver what she had queued; then check both stores.
        finished["queueing"] = True
        if queued_by_alice <= received_by_bob:
            all_received.callback(None)
        process, listening = start_agent(alice_profile)
        self.addCleanup(process.kill)
        await listening
        control = await connect_control(reactor, alice_profile)
        await all_received
        history = await control.call("history", who=str(bob_id), limit=1000)
        await process.kill()
        self.assertLessEqual(queued_by_alice, received_by_bob, "a message Alice had queued was lost")
        alice_has = {row["id"] for row in history if row["direction"] == "in"}
        self.assertLessEqual(acknowledged_by_alice, alice_has, "a message Alice had acknowledged was lost")
        report = os.environ.get("IRP_FAULT_REPORT")
        if report:
            with open(report + ".agent", "w", encoding="utf-8") as handle:
                handle.write(
                    f"agent SIGKILLs: {ROUNDS}\nmessages queued before a kill, all delivered: {len(queued_by_alice)}\n"
                    f"messages acknowledged before a kill, all kept: {len(acknowledged_by_alice)}\nlost: 0\n"
                )

