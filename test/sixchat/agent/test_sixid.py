"""The agent and sixid: its device ID published (refreshed, withdrawn), peers found and
dialled by theirs, a peer with another key refused.

Agents are real (a real registry, SixChat sessions over loopback, real SQLite files and
keys); the sixid server is :class:`SixidServerDouble`, which keeps records the way the
server does (the device's signed registration checked, the record signed with an Ed25519
key and verified by the agent with :func:`sixid.records.verify_record`).
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import TestCase

from common.endpoint import Endpoint
from common.identity import Identity, identity_from_certificate
from common.profile import Profile
from sixchat import errors
from sixchat.agent.service import Agent
from sixchat.agent.sixid import BACKOFF_FIRST, LIFETIME, device_id, sixid_server
from sixchat.recipients import InvalidRecipient, parse_recipient
from sixchat.tap import Options
from sixid import errors as sixid_errors
from sixid.ids import SixIdAddress, derive_id
from sixid.records import (
    Record,
    Registration,
    SignedRegistration,
    VerifiedRecord,
    sign_record,
    sign_registration,
    verify_record,
)
from sixid.server.operations import SixidSettings
from test.helpers import (
    CommandResult,
    RunningRegistry,
    closed_port,
    fake_clock_now,
    make_profile,
    run_module,
    start_agent,
)
from test.sixchat.agent.helpers import BOB, AgentTestCase, endpoint_of, log_text

DOMAIN = "example.org"


class SixidServerDouble:
    """The sixid server of example.org as the agent sees it through its connector."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.signing_key = Ed25519PrivateKey.generate()
        self.records: dict[SixIdAddress, VerifiedRecord] = {}
        #: Every registration accepted, in order.
        self.registrations: list[Registration] = []
        self.lookups: list[SixIdAddress] = []
        #: While set, every request fails with this error.
        self.down: Exception | None = None
        self.connections = 0

    async def connect(self, domain: str) -> SixidServerDouble:
        if self.down is not None:
            raise self.down
        if domain != DOMAIN:
            raise sixid_errors.ConnectionLost(f"no sixid server of {domain}")
        self.connections += 1
        return self

    async def register(self, signed: SignedRegistration) -> VerifiedRecord:
        if self.down is not None:
            raise self.down
        registration = signed.verify()
        owner = ""
        if signed.certificates:
            leaf = x509.load_der_x509_certificate(signed.certificates[0])
            if derive_id(leaf.public_key()) != registration.sixid:
                raise sixid_errors.CertificateRejected("the certificate is not for this key")
            owner = str(identity_from_certificate(leaf))
        return self.accept(signed, owner)

    def accept(self, signed: SignedRegistration, owner: str) -> VerifiedRecord:
        """Store a verified registration as the registry does (seq must grow)."""
        registration = signed.verify()
        address = SixIdAddress(registration.sixid, registration.domain)
        current = self.records.get(address)
        if current is not None and current.seq >= registration.seq:
            raise sixid_errors.Replayed("seq is not greater than the stored one")
        now = int(self.clock.seconds())
        record = Record(DOMAIN, registration.sixid, owner, now, signed.registration_bytes, signed.spki, signed.signature)
        data = sign_record(self.signing_key, record).to_bytes()
        verified = verify_record(data, expected=address, signer=self.signing_key.public_key(), now=now)
        self.records[address] = verified
        self.registrations.append(registration)
        return verified

    async def lookup(self, address: SixIdAddress, *, cached: bool = True) -> VerifiedRecord:
        if self.down is not None:
            raise self.down
        self.lookups.append(address)
        record = self.records.get(address)
        if record is None or record.expires <= self.clock.seconds():
            raise sixid_errors.UnknownId("no current record")
        return verify_record(record.data, expected=address, signer=self.signing_key.public_key(), now=self.clock.seconds())

    def when_lost(self) -> Deferred[None]:
        return Deferred()

    async def close(self) -> None:
        pass


def register_for(server: SixidServerDouble, agent: Agent, endpoints: tuple[Endpoint, ...], *, owner: str | None = None) -> SixIdAddress:
    """Register ``endpoints`` under ``agent``'s device ID as its key would (``owner``:
    the record's, default: the agent's user)."""
    address = SixIdAddress(device_id(agent.credentials.certificate), DOMAIN)
    now = int(server.clock.seconds())
    seq = max([registration.seq for registration in server.registrations if registration.sixid == address.sixid] + [0]) + 1
    registration = Registration(DOMAIN, address.sixid, seq, now, now + LIFETIME, endpoints)
    server.accept(sign_registration(agent.credentials.private_key, registration), str(agent.identity) if owner is None else owner)
    return address


class RecipientTests(TestCase):
    """The one parser of recipients."""

    def test_users_and_devices(self) -> None:
        digest = bytes(range(20))
        from sixid.ids import SixId

        sixid = SixId(digest)
        self.assertEqual(parse_recipient("bob@example.org"), BOB)
        self.assertEqual(parse_recipient("bob", "example.org"), BOB)
        for text in (f"{sixid}@example.org", f"{sixid.grouped().upper()}@Example.org", f"  {sixid.grouped()}@example.org "):
            self.assertEqual(parse_recipient(text), SixIdAddress(sixid, DOMAIN))
        for text, why in (
            (str(sixid), "looks like a device ID"),
            ("bob", "expected user@domain or ID@domain"),
            ("a@b@c", "expected user@domain or ID@domain"),
            (f"{sixid}@bad..domain", "invalid device address"),
            ("Bad User@example.org", "invalid user name"),
        ):
            with self.assertRaises(InvalidRecipient) as caught:
                parse_recipient(text, "example.org" if text == str(sixid) else None)
            self.assertIn(why, str(caught.exception))


class PublishTests(AgentTestCase):
    """``--sixid``: the agent's addresses at its domain's sixid server."""

    async def test_publish_refresh_change_withdraw(self) -> None:
        clock = fake_clock_now()
        server = SixidServerDouble(clock)
        with capturedLogs() as logs:
            alice, _ = await self.agent("alice", clock=clock, sixid=True, sixid_connector=server.connect)
        address = SixIdAddress(derive_id(alice.credentials.certificate.public_key()), DOMAIN)
        record = server.records[address]
        # Certified: the record names Alice as the owner; the addresses are those registered in IRP.
        self.assertEqual(record.owner, Identity("alice", DOMAIN))
        self.assertEqual(record.endpoints, (endpoint_of(alice),))
        self.assertEqual(record.expires - record.signed_at, LIFETIME)
        self.assertTrue(any(f"Published device ID {address}" in line for line in log_text(logs)), log_text(logs))
        self.assertIn(address.sixid.grouped(), alice.status()["sixid"])
        self.assertEqual(alice.status()["device"], f"{address.sixid.grouped()}@{DOMAIN}")

        # Refreshed at half its lifetime, not before.
        clock.advance(LIFETIME / 2 - 1)
        self.assertEqual(len(server.registrations), 1)
        clock.advance(1)
        await alice.publisher.idle()
        self.assertEqual(len(server.registrations), 2)
        self.assertGreater(server.registrations[1].seq, server.registrations[0].seq)

        # New addresses (a relay came): published at once.
        relay = Endpoint.parse("192.0.2.7", 40000)
        alice.mailbox.relay = relay
        await alice.relay_changed()
        await alice.publisher.idle()
        self.assertEqual(server.records[address].endpoints, (endpoint_of(alice), relay))
        # The same addresses again: nothing to do.
        await alice.relay_changed()
        await alice.publisher.idle()
        self.assertEqual(len(server.registrations), 3)

        with capturedLogs() as logs:
            await alice.stopService()
        withdrawal = server.records[address]
        self.assertEqual(withdrawal.endpoints, ())
        self.assertGreater(withdrawal.seq, server.registrations[2].seq)
        self.assertTrue(any(f"Withdrew device ID {address}" in line for line in log_text(logs)), log_text(logs))

    async def test_new_key_new_id(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        alice, _ = await self.agent("alice", sixid=True, sixid_connector=server.connect)
        await alice.publisher.idle()
        old = SixIdAddress(device_id(alice.credentials.certificate), DOMAIN)
        renewed = await self.registry.issue("alice")
        Profile(self.paths["alice"]).save_credentials(renewed.key, [renewed.certificate, *renewed.chain])
        with capturedLogs() as logs:
            self.assertTrue(alice.reload_credentials(force=True))
            await alice.publisher.idle()
        new = SixIdAddress(device_id(renewed.certificate), DOMAIN)
        self.assertNotEqual(new, old)
        # The old ID is withdrawn (signed with the old key), the new one published.
        self.assertEqual(server.records[old].endpoints, ())
        self.assertEqual((server.records[new].endpoints, server.records[new].owner), ((endpoint_of(alice),), Identity("alice", DOMAIN)))
        lines = log_text(logs)
        self.assertTrue(any(f"Withdrew device ID {old}" in line and "the certificate changed" in line for line in lines), lines)
        self.assertTrue(any(f"Published device ID {new}" in line for line in lines), lines)

    async def test_backoff_while_the_server_fails(self) -> None:
        clock = fake_clock_now()
        server = SixidServerDouble(clock)
        server.down = sixid_errors.ConnectionLost("cannot connect to the sixid server at 192.0.2.1 port 4606")
        with capturedLogs() as logs:
            alice, _ = await self.agent("alice", clock=clock, sixid=True, sixid_connector=server.connect)
            await alice.publisher.idle()
            for delay in (BACKOFF_FIRST, BACKOFF_FIRST * 2):
                clock.advance(delay)
                await alice.publisher.idle()
        lines = [line for line in log_text(logs) if "Could not publish device ID" in line]
        self.assertEqual(len(lines), 3, log_text(logs))
        self.assertIn("cannot connect to the sixid server", lines[0])
        self.assertIn(f"trying again in {BACKOFF_FIRST:g} s", lines[0])
        self.assertIn(f"trying again in {BACKOFF_FIRST * 4:g} s", lines[2])
        self.assertIn("not published: cannot connect", alice.status()["sixid"])
        server.down = None
        clock.advance(BACKOFF_FIRST * 4 - 1)
        self.assertEqual(server.registrations, [])
        clock.advance(1)
        await alice.publisher.idle()
        self.assertEqual(len(server.registrations), 1)
        self.assertEqual(alice.publisher.failures, 0)

    async def test_replayed_sequence_number_is_overtaken(self) -> None:
        clock = fake_clock_now()
        server = SixidServerDouble(clock)
        bob, _ = await self.agent("bob", clock=clock)
        # A registration from "the future" (a clock that went back since): seq far ahead.
        address = SixIdAddress(device_id(bob.credentials.certificate), DOMAIN)
        now = int(clock.seconds())
        ahead = Registration(DOMAIN, address.sixid, int(now * 1000) + 10**9, now, now + LIFETIME, ())
        server.accept(sign_registration(bob.credentials.private_key, ahead), "bob@example.org")
        await bob.stopService()
        bob, _ = await self.agent("bob", clock=clock, sixid=True, sixid_connector=server.connect)
        await bob.publisher.idle()
        self.assertEqual(server.records[address].endpoints, (endpoint_of(bob),))
        self.assertGreater(server.records[address].seq, ahead.seq)


class FindByIdTests(AgentTestCase):
    """``sixchat send ID@domain``: the record's endpoints, the ID's key, the owner."""

    async def test_send_to_a_device_reaches_it_at_its_record(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        alice, alice_events = await self.agent("alice", contacts=("bob",), sixid_connector=server.connect)
        # Bob's registry knows only a dead address: only the sixid record leads to him.
        dead = Endpoint.parse("127.0.0.1", await closed_port())
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",), advertise=[dead])
        device = register_for(server, bob, (endpoint_of(bob),))

        message = await alice.send_text(parse_recipient(f"{device.sixid.grouped()}@{DOMAIN}"), "hello device")
        self.assertEqual(message.peer, BOB)
        received = await bob_events.wait_for(event="message", id=message.id)
        self.assertEqual(received["text"], "hello device")
        await alice_events.wait_for(event="receipt", id=message.id)
        self.assertEqual(await self.history(alice, BOB), [("out", "hello device", "delivered")])
        self.assertEqual(server.lookups, [device, device])
        self.assertEqual(alice.sessions[BOB].peer_device, device.sixid)

        # Addressed by name again: the registry's addresses are used (and a session open
        # with Bob serves either way).
        await self.deliver(alice, alice_events, bob_events, BOB, "by name")

    async def test_peer_with_another_key_is_refused(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        alice, alice_events = await self.agent("alice", contacts=("bob",), sixid_connector=server.connect)
        # Bob's first device registered its ID at the address where his second device
        # (another key, a certificate his registry holds too) now answers.
        first, _ = await self.agent("bob", listen=("::1",), contacts=("alice",))
        device = register_for(server, first, ())
        await first.stopService()
        second_user = await self.registry.issue("bob")
        second, second_events = await start_agent(self, self.registry, second_user, listen=("::1",))
        assert second.store is not None
        await second.store.add_contact(Identity("alice", DOMAIN))
        register_for(server, first, (endpoint_of(second),))
        self.assertNotEqual(device_id(second.credentials.certificate), device.sixid)

        with capturedLogs() as logs:
            message = await alice.send_text(device, "only for the first device")
            await self.settle(alice)
        problems = alice_events.matching(event="progress", id=message.id)
        self.assertEqual(len(problems), 1, alice_events.events)
        problem = problems[0]
        self.assertIn(f"dialled device {device.sixid.grouped()}@{DOMAIN} but bob@example.org answered there with the key of device", problem["reason"])
        self.assertIn(device_id(second.credentials.certificate).grouped(), problem["reason"])
        self.assertTrue(any("did not give a session with bob@example.org" in line for line in log_text(logs)), log_text(logs))
        self.assertEqual(second_events.matching(event="message"), [])
        self.assertEqual(await self.history(alice, BOB), [("out", "only for the first device", "queued")])
        self.assertNotIn(BOB, alice.sessions)

    async def test_only_the_addressed_device_gets_the_message(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        alice, alice_events = await self.agent("alice", contacts=("bob",), sixid_connector=server.connect)
        first, first_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        second, second_events = await start_agent(self, self.registry, await self.registry.issue("bob"), listen=("::1",))
        device = register_for(server, first, (endpoint_of(first),))
        # Bob's second device has a session with Alice already (it wrote to her).
        hello = await second.send_text(Identity("alice", DOMAIN), "from my other device")
        await alice_events.wait_for(event="message", id=hello.id)
        self.assertEqual(alice.sessions[BOB].peer_device, device_id(second.credentials.certificate))

        message = await alice.send_text(device, "for the first device only")
        await first_events.wait_for(event="message", id=message.id)
        await alice_events.wait_for(event="receipt", id=message.id)
        self.assertEqual(alice.sessions[BOB].peer_device, device.sixid)
        self.assertEqual([event["text"] for event in second_events.matching(event="message")], [])

    async def test_unknown_uncertified_and_withdrawn_devices(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        alice, _ = await self.agent("alice", sixid_connector=server.connect, intermediary=False)
        bob, _ = await self.agent("bob", listen=("::1",))
        device = SixIdAddress(device_id(bob.credentials.certificate), DOMAIN)
        with self.assertRaises(errors.PeerUnreachable) as unknown:
            await alice.send_text(device, "anyone?")
        self.assertIn("is not registered at the sixid server of example.org now", unknown.exception.message)

        register_for(server, bob, (endpoint_of(bob),), owner="")
        with self.assertRaises(errors.IdentityMismatch) as uncertified:
            await alice.send_text(device, "anyone?")
        self.assertIn("is not certified by example.org's CA", uncertified.exception.message)
        assert alice.store is not None
        self.assertEqual(await alice.store.pending(), [])

        register_for(server, bob, ())
        message = await alice.send_text(device, "offline?")
        await self.settle(alice)
        rows = await alice.store.pending()
        self.assertEqual([(row.id, row.peer) for row in rows], [(message.id, BOB)])
        self.assertIn("is offline (it withdrew its addresses)", rows[0].reason or "")

    async def test_control_find_and_send(self) -> None:
        from sixchat.agent.control import ControlError, run_command

        server = SixidServerDouble(fake_clock_now())
        alice, _ = await self.agent("alice", contacts=("bob",), sixid_connector=server.connect)
        bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        device = register_for(server, bob, (endpoint_of(bob),))
        found = await run_command(alice, {"op": "find", "who": f"{device.sixid.grouped()}@{DOMAIN}"})
        self.assertEqual(found["owner"], "bob@example.org")
        self.assertEqual(found["endpoints"], [[endpoint_of(bob).address, endpoint_of(bob).port]])
        sent = await run_command(alice, {"op": "send", "to": str(device), "text": "via control"})
        self.assertEqual(sent["to"], "bob@example.org")
        await bob_events.wait_for(event="message", id=sent["id"])
        with self.assertRaises(ControlError) as caught:
            await run_command(alice, {"op": "find", "who": "bob@example.org"})
        self.assertIn("is a user, not a device", str(caught.exception))
        with self.assertRaises(ControlError) as caught:
            await run_command(alice, {"op": "block", "who": str(device)})
        self.assertIn("is a device ID: this needs the user", str(caught.exception))


class CommandTests(AgentTestCase):
    """``sixchat id``, and ``send``/``lookup``/``chat`` by device ID through the running
    agent (the command runs in a child process; the agents run here)."""

    async def sixchat(self, name: str, *args: str, stdin: bytes = b"") -> CommandResult:
        result: CommandResult = await run_module("sixchat.cli", ["--profile", self.paths[name], *args], home=self.home, stdin=stdin)
        self.assertNotIn("Traceback", result.err, result)
        return result

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)

    async def test_id(self) -> None:
        alice, _ = await self.agent("alice")
        await alice.stopService()
        sixid = device_id(self.users["alice"].certificate)
        result = await self.sixchat("alice", "id")
        self.assertEqual((result.code, result.out), (0, f"{sixid}@{DOMAIN}\n{sixid.grouped()}@{DOMAIN}\n"), result)

    async def test_send_lookup_and_chat_by_device_id(self) -> None:
        server = SixidServerDouble(fake_clock_now())
        await self.agent("alice", contacts=("bob",), control=True, sixid_connector=server.connect)
        bob, _ = await self.agent("bob", listen=("::1",), contacts=("alice",))
        device = register_for(server, bob, (endpoint_of(bob),))
        grouped = f"{device.sixid.grouped()}@{DOMAIN}"

        sent = await self.sixchat("alice", "send", grouped, "to", "your", "device")
        self.assertEqual((sent.code, sent.out.strip()), (0, "Delivered to bob@example.org."), sent)
        self.assertIn(f"Device {grouped} is bob@example.org's.", sent.err)

        looked = await self.sixchat("alice", "lookup", str(device))
        self.assertEqual(looked.code, 0, looked)
        self.assertIn(f"{grouped}: device of bob@example.org, until", looked.out)
        self.assertIn(f"[::1]:{endpoint_of(bob).port}", looked.out)

        chat = await self.sixchat("alice", "chat", grouped, stdin=b"chatting with the device\n")
        self.assertEqual(chat.code, 0, chat)
        self.assertIn("Chatting with bob@example.org", chat.out)
        self.assertIn("#2] you: chatting with the device\n-- #2 delivered", chat.out)
        assert bob.store is not None
        self.assertEqual([m.body for m in await bob.store.history(Identity("alice", DOMAIN))], ["to your device", "chatting with the device"])

        unknown = await self.sixchat("alice", "send", f"{'a' * 32}@{DOMAIN}", "hello?")
        self.assertEqual(unknown.code, 1, unknown)
        self.assertIn("is not registered at the sixid server of example.org now", unknown.err)
        refused = await self.sixchat("alice", "add", grouped)
        self.assertEqual(refused.code, 2, refused)
        self.assertIn("is a device ID: give the user", refused.err)
        # The running agent has its own sixid settings.
        refused = await self.sixchat("alice", "send", grouped, "hi", "--sixid-server", "127.0.0.1:4606")
        self.assertEqual(refused.code, 2, refused)
        self.assertIn("--sixid-server applies only to an agent this command starts", refused.err)


class OptionTests(AgentTestCase):
    """``twistd sixchat --sixid [--sixid-server HOST[:PORT]]``."""

    async def test_options(self) -> None:
        await self.user("alice")
        profile = make_profile(self.registry, self.users["alice"], self.paths["alice"])

        def parse(*argv: str) -> Options:
            options = Options()
            options.parseOptions(["--profile", profile, *argv])
            return options

        self.assertEqual((parse().settings().sixid, parse().settings().sixid_server), (False, None))
        self.assertEqual((parse("--sixid").settings().sixid, parse("--sixid").settings().sixid_server), (True, None))
        settings = parse("--sixid-server", "sixid.example.org").settings()
        self.assertEqual((settings.sixid, settings.sixid_server), (True, ("sixid.example.org", 4606)))
        self.assertEqual(parse("--sixid-server", "[::1]:7000").settings().sixid_server, ("::1", 7000))
        for argv, text in ((["--sixid", "--no-register"], "leave out --no-register"), (["--sixid-server", "host:0"], "--sixid-server")):
            with self.assertRaises(usage.UsageError) as caught:
                parse(*argv)
            self.assertIn(text, str(caught.exception))


class ServerChoiceTests(AgentTestCase):
    """Where the agent finds a domain's sixid server."""

    async def test_own_domain_and_others(self) -> None:
        alice, _ = await self.agent("alice")
        self.assertEqual(sixid_server(alice, DOMAIN), (self.registry.connect_host, 4606))
        self.assertIsNone(sixid_server(alice, "example.net"))
        alice.settings.sixid_server = ("sixid.example.org", 7000)
        self.assertEqual(sixid_server(alice, DOMAIN), ("sixid.example.org", 7000))
        alice.settings.sixid_server, alice.settings.server = None, ("registry.example.org", 4604)
        self.assertEqual(sixid_server(alice, DOMAIN), ("registry.example.org", 4606))
        # A domain the profile does not trust is refused before any connection.
        with self.assertRaises(errors.PeerUnreachable) as caught:
            await alice.sixid.find(SixIdAddress(device_id(alice.credentials.certificate), "example.net"))
        self.assertIn("example.net is not a trusted domain", caught.exception.message)


class RealServerTests(AgentTestCase):
    """Against the registry's own sixid server: real TLS, the sixid client, the registry's
    certificate check (policy ``certified``) and its SQLite store."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = await RunningRegistry(self, sixid=SixidSettings()).start()
        self.users = {}
        self.paths = {}

    def server(self) -> tuple[str, int]:
        return (self.registry.connect_host, self.registry.sixid_port)

    async def test_publish_send_by_id_and_withdraw(self) -> None:
        with capturedLogs() as logs:
            bob, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",), sixid=True, sixid_server=self.server())
            await bob.publisher.idle()
        device = SixIdAddress(device_id(bob.credentials.certificate), DOMAIN)
        self.assertTrue(any(f"Published device ID {device}" in line for line in log_text(logs)), log_text(logs))
        alice, alice_events = await self.agent("alice", contacts=("bob",), sixid_server=self.server())
        record = await alice.sixid.find(device)
        self.assertEqual((record.owner, record.endpoints), (BOB, (endpoint_of(bob),)))
        self.assertEqual(record.expires - record.signed_at, LIFETIME)

        message = await alice.send_text(device, "over the registry's sixid")
        self.assertEqual((await bob_events.wait_for(event="message", id=message.id))["text"], "over the registry's sixid")
        await alice_events.wait_for(event="receipt", id=message.id)

        with capturedLogs() as logs:
            await bob.stopService()
        self.assertTrue(any(f"Withdrew device ID {device}" in line for line in log_text(logs)), log_text(logs))
        withdrawn = await alice.sixid.find(device, fresh=True)
        self.assertEqual(withdrawn.endpoints, ())
        self.assertGreater(withdrawn.seq, record.seq)

    async def test_peer_with_another_key_is_refused(self) -> None:
        await self.user("bob")
        second, second_events = await start_agent(self, self.registry, await self.registry.issue("bob"), listen=("::1",))
        # Bob's first device publishes, certified, the address where his second one answers.
        first, _ = await self.agent("bob", listen=("::1",), sixid=True, sixid_server=self.server(), advertise=[endpoint_of(second)])
        await first.publisher.idle()
        self.assertIn("published as", first.status()["sixid"])
        device = SixIdAddress(device_id(first.credentials.certificate), DOMAIN)
        alice, alice_events = await self.agent("alice", contacts=("bob",), sixid_server=self.server(), intermediary=False)

        message = await alice.send_text(device, "for the first device")
        await self.settle(alice)
        problems = alice_events.matching(event="progress", id=message.id)
        self.assertEqual(len(problems), 1, alice_events.events)
        self.assertIn(f"dialled device {device.sixid.grouped()}@{DOMAIN} but bob@example.org answered there with the key of device", problems[0]["reason"])
        self.assertEqual(second_events.matching(event="message"), [])
        self.assertEqual(await self.history(alice, BOB), [("out", "for the first device", "queued")])
