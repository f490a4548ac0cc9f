"""The ``sixchat`` command, run in child processes (it runs its own reactor) against a real
registry and real agents served by this test's reactor."""

from __future__ import annotations

import os
import re
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint, format_fingerprint
from common.profile import Profile
from test.helpers import (
    DEFAULT_PASSWORD,
    CommandResult,
    RunningRegistry,
    closed_port,
    make_profile,
    run_module,
    start_agent,
)

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")


Result = CommandResult


def write_file(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


class CLITestCase(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.registry = await RunningRegistry(self).start()
        self.users: dict[str, Any] = {}
        self.paths: dict[str, str] = {}

    async def profile(self, name: str) -> str:
        if name not in self.paths:
            self.users[name] = await self.registry.enrol(name)
            self.paths[name] = make_profile(self.registry, self.users[name], os.path.join(self.home, name))
        return self.paths[name]

    async def sixchat(self, *args: str, profile: str | None = None, stdin: bytes | None = None) -> Result:
        """Run ``sixchat [--profile P] ARGS``; no traceback may appear."""
        argv = [*(["--profile", profile] if profile else []), *args]
        result: Result = await run_module("sixchat.cli", argv, home=self.home, stdin=stdin or b"")
        self.assertNotIn("Traceback", result.err, result)
        return result

    async def agent(self, name: str, **settings: Any) -> Any:
        await self.profile(name)
        agent, events = await start_agent(self, self.registry, self.users[name], path=self.paths[name], **settings)
        return agent, events


class HelpTests(CLITestCase):
    async def test_help_everywhere(self) -> None:
        result = await self.sixchat("--help")
        self.assertEqual(result.code, 0)
        commands = ["init", "enrol", "trust-domain", "contacts", "add", "remove", "block", "unblock", "send", "chat", "history", "status", "lookup"]
        for command in commands:
            self.assertIn(command, result.out)
        results = await gatherResults([Deferred.fromCoroutine(self.sixchat(command, "--help")) for command in commands])
        for command, result in zip(commands, results, strict=True):
            self.assertEqual(result.code, 0, command)
            self.assertIn(f"usage: sixchat {command}", result.out)

    async def test_no_command(self) -> None:
        result = await self.sixchat()
        self.assertEqual(result.code, 2)
        self.assertIn("required", result.err)

    async def test_no_profile(self) -> None:
        """The message names sixchat's own command, in full (not 'irp init')."""
        missing = os.path.join(self.home, "missing")
        result = await self.sixchat("status", profile=missing)
        self.assertEqual(result.code, 2)
        self.assertIn(f"sixchat --profile {missing} init --server HOST --domain DOMAIN", result.err)
        self.assertNotIn("irp ", result.err)
        self.assertEqual(result.out, "")

    async def test_not_enrolled(self) -> None:
        """A profile without a key: the message gives sixchat's enrol command, in full."""
        from common.profile import ProfileConfig

        path = os.path.join(self.home, "dave")
        Profile(path).create(ProfileConfig(server="127.0.0.1", port=self.registry.port, domain="example.org", username="dave"), self.registry.root)
        for command in (("status",), ("send", "bob", "hi", "--no-wait")):
            result = await self.sixchat(*command, profile=path)
            self.assertNotEqual(result.code, 0, result)
            self.assertIn(f"run 'sixchat --profile {path} enrol' first", result.err)
            self.assertNotIn("irp ", result.err)


class RunningAgentTests(CLITestCase):
    """Commands talking to the user's running agent over its control socket."""

    async def test_contacts_send_history_lookup(self) -> None:
        _alice, _alice_events = await self.agent("alice", control=True)
        bob, bob_events = await self.agent("bob", listen=("::1",))
        await bob.store.add_contact(ALICE)
        profile = self.paths["alice"]

        status = await self.sixchat("status", profile=profile)
        self.assertEqual(status.code, 0, status)
        self.assertIn("alice@example.org  (running agent)", status.out)
        self.assertIn(format_fingerprint(fingerprint(self.users["alice"].certificate)), status.out)
        self.assertIn("sessions: none; accepting: contacts", status.out)

        added = await self.sixchat("add", "bob", "--name", "Bob", profile=profile)
        self.assertEqual(added.code, 0, added)
        self.assertIn("Added bob@example.org.", added.out)
        self.assertIn(format_fingerprint(fingerprint(self.users["bob"].certificate)), added.out)
        listed = await self.sixchat("contacts", profile=profile)
        # Bob's agent runs and is registered: contacts asks the registry (issue 9, item 15).
        self.assertRegex(listed.out, r"bob@example.org\s+online\s+Bob")

        sent = await self.sixchat("send", "bob", "hello", "from", "the", "command", profile=profile)
        self.assertEqual((sent.code, sent.out.strip()), (0, "Delivered to bob@example.org."), sent)
        received = await bob_events.wait_for(event="message")
        self.assertEqual(received["text"], "hello from the command")

        piped = await self.sixchat("send", "bob", profile=profile, stdin=b"from stdin\n")
        self.assertEqual(piped.code, 0, piped)

        history = await self.sixchat("history", "bob", profile=profile)
        self.assertRegex(history.out, r"\d\d:\d\d -> bob@example.org: hello from the command  \[delivered\]")
        self.assertIn("from stdin", history.out)

        looked = await self.sixchat("lookup", "bob@example.org", profile=profile)
        self.assertIn("bob@example.org: online", looked.out)
        self.assertIn(f"[::1]:{bob.ports[0].getHost().port}", looked.out)

        for command, text in (("block", "Blocked bob@example.org."), ("unblock", "Unblocked bob@example.org."), ("remove", "Removed bob@example.org.")):
            result = await self.sixchat(command, "bob", profile=profile)
            self.assertEqual((result.code, result.out.strip()), (0, text), result)
        self.assertIn("no contacts", (await self.sixchat("contacts", profile=profile)).out)

    async def test_readable_failures(self) -> None:
        await self.agent("alice", control=True)
        profile = self.paths["alice"]
        result = await self.sixchat("send", "alice", "hi", profile=profile)
        self.assertEqual(result.code, 1)
        self.assertIn("sixchat: ", result.err)
        self.assertIn("self-connection", result.err)
        result = await self.sixchat("send", "bob@", "hi", profile=profile)
        self.assertEqual(result.code, 2)
        result = await self.sixchat("lookup", "nobody", profile=profile)
        self.assertNotEqual(result.code, 0)
        self.assertIn("nobody@example.org", result.err)
        result = await self.sixchat("send", "bob", profile=profile, stdin=b"")
        self.assertIn("nothing to send", result.err)

    async def test_chat_through_the_running_agent(self) -> None:
        await self.agent("alice", control=True)
        bob, _bob_events = await self.agent("bob", listen=("::1",))
        await bob.store.add_contact(ALICE)
        await bob.store.add_contact(BOB)  # (harmless; Bob's own contacts)
        result = await self.sixchat("chat", "bob", profile=self.paths["alice"], stdin=b"first line\nsecond line\n/quit\nnot sent\n")
        self.assertEqual(result.code, 0, result)
        self.assertIn("Chatting with bob@example.org", result.out)
        self.assertIn("#1] you: first line", result.out)
        self.assertIn("#2] you: second line", result.out)
        self.assertIn("-- #2 delivered", result.out)
        texts = [m.body for m in await bob.store.history(ALICE)]
        self.assertEqual(texts, ["first line", "second line"])


class WithoutAgentTests(CLITestCase):
    """The command runs an agent itself when none runs."""

    async def test_send_with_an_agent_of_its_own(self) -> None:
        await self.profile("alice")
        bob, _bob_events = await self.agent("bob", listen=("::1",))
        await bob.store.add_contact(ALICE)
        result = await self.sixchat("send", "bob", "no agent running here", profile=self.paths["alice"])
        self.assertEqual((result.code, result.out.strip()), (0, "Delivered to bob@example.org."), result)
        status = await self.sixchat("status", profile=self.paths["alice"])
        self.assertIn("(no agent running)", status.out)
        history = await self.sixchat("history", profile=self.paths["alice"])
        self.assertIn("no agent running here  [delivered]", history.out)

    async def test_send_to_someone_offline(self) -> None:
        await self.profile("alice")
        await self.profile("bob")
        queued = await self.sixchat("send", "bob", "later", "--no-wait", profile=self.paths["alice"])
        self.assertEqual(queued.code, 0, queued)
        self.assertRegex(queued.out, r"Queued message [0-9a-f-]{36} for bob@example.org.")
        waited = await self.sixchat("send", "bob", "still later", "--wait", "0.5", profile=self.paths["alice"])
        self.assertEqual(waited.code, 1, waited)
        self.assertIn("stays queued", waited.out)
        history = await self.sixchat("history", "bob", profile=self.paths["alice"])
        self.assertEqual(len(re.findall(r"\[queued\]", history.out)), 2, history.out)

    async def test_chat_with_an_agent_of_its_own(self) -> None:
        await self.profile("alice")
        bob, _bob_events = await self.agent("bob", listen=("::1",))
        await bob.store.add_contact(ALICE)
        result = await self.sixchat("chat", "bob", "--listen", "tcp:0:interface=127.0.0.1", profile=self.paths["alice"], stdin=b"hello from chat\n")
        self.assertEqual(result.code, 0, result)
        self.assertIn("#1] you: hello from chat", result.out)
        self.assertIn("-- #1 delivered", result.out)
        self.assertEqual([m.body for m in await bob.store.history(ALICE)], ["hello from chat"])

    async def test_init_enrol_trust_domain(self) -> None:
        root = write_file(os.path.join(self.home, "root.pem"), self.registry.root.public_bytes(Encoding.PEM))
        password = write_file(os.path.join(self.home, "password"), DEFAULT_PASSWORD.encode())
        os.chmod(password, 0o600)  # password files are refused when others may read them
        await self.registry.create_user("carol")
        profile = os.path.join(self.home, "carol")
        server = f"127.0.0.1:{self.registry.port}"
        result = await self.sixchat("init", "--server", server, "--domain", "example.org", "--user", "carol", "--ca-file", root, profile=profile)
        self.assertEqual(result.code, 0, result)
        result = await self.sixchat("enrol", "--password-file", password, "--key-type", "p256", profile=profile)
        self.assertEqual(result.code, 0, result)
        self.assertTrue(Profile(profile).enrolled)

        other = await RunningRegistry(self, domain="other.example").start()
        digest = format_fingerprint(fingerprint(other.root))
        result = await self.sixchat("trust-domain", "other.example", "--registry", f"127.0.0.1:{other.port}", "--ca-fingerprint", digest, profile=profile)
        self.assertEqual(result.code, 0, result)
        self.assertIn("Trusting other.example", result.out)
        self.assertIn("other.example", Profile(profile).trusted_roots())
        self.assertEqual(Profile(profile).load_config().registries["other.example"], f"127.0.0.1:{other.port}")
        wrong = await self.sixchat("trust-domain", "third.example", "--registry", f"127.0.0.1:{other.port}", "--ca-fingerprint", digest, profile=profile)
        self.assertNotEqual(wrong.code, 0)
        self.assertIn("third.example", wrong.err + wrong.out)
        self.assertNotIn("third.example", Profile(profile).trusted_roots())


class ChatViewTests(TestCase):
    """What the chat shows for each agent event (sixchat/chatui.py)."""

    def test_events(self) -> None:
        from sixchat.chatui import ChatView

        lines: list[str] = []
        view = ChatView(BOB, lines.append)
        for event in (
            {"event": "queued", "to": "bob@example.org", "id": "m1", "text": "a message"},
            {"event": "message", "from": "bob@example.org", "text": "hi", "sent": 0},
            {"event": "message", "from": "carol@example.org", "text": "not this chat", "sent": 0},
            {"event": "receipt", "to": "bob@example.org", "id": "m1"},
            {"event": "undelivered", "to": "bob@example.org", "id": "m2"},
            {"event": "presence", "who": "bob@example.org", "status": "busy"},
            {"event": "session", "who": "bob@example.org", "state": "up"},
            {"event": "session", "who": "bob@example.org", "state": "down", "error": "The connection ended without an authenticated close."},
        ):
            view.event(event)
        self.assertEqual(len(lines), 7)
        self.assertRegex(lines[0], r"^\[\d\d:\d\d #1\] you: a message$")
        self.assertRegex(lines[1], r"^\[\d\d:\d\d\] bob: hi$")
        self.assertEqual(lines[2], "-- #1 delivered")
        self.assertEqual(lines[3], "-- an earlier message NOT delivered")
        self.assertEqual(lines[4:], ["-- bob@example.org is busy", "-- connected", "-- disconnected (The connection ended without an authenticated close.)"])

    def test_stored_and_scheduled(self) -> None:
        from sixchat.chatui import ChatView

        lines: list[str] = []
        view = ChatView(BOB, lines.append)
        view.event({"event": "queued", "to": "bob@example.org", "id": "m1", "text": "a message"})
        view.event({"event": "stored", "to": "bob@example.org", "id": "m1", "reason": "stored"})
        view.event({"event": "scheduled", "to": "bob@example.org", "id": "m2", "deliver_at": 1_800_000_000})
        view.event({"event": "receipt", "to": "bob@example.org", "id": "m1", "via": "intermediary"})
        self.assertEqual(lines[1], "-- #1 stored at example.org's intermediary; delivered when bob@example.org is online")
        self.assertRegex(lines[2], r"^-- an earlier message scheduled for 20\d\d-\d\d-\d\d \d\d:\d\d at example.org's intermediary$")
        self.assertEqual(lines[3], "-- #1 delivered")
        history: list[str] = []
        ChatView(BOB, history.append).history([{"direction": "out", "state": "stored", "sent": 0, "text": "one", "peer": "bob@example.org"}])
        self.assertTrue(history[0].endswith("you: one  [stored at example.org's intermediary]"), history)

    def test_history(self) -> None:
        from sixchat.chatui import ChatView

        lines: list[str] = []
        ChatView(BOB, lines.append).history(
            [
                {"direction": "out", "state": "delivered", "sent": 0, "text": "one"},
                {"direction": "out", "state": "undelivered", "sent": 0, "text": "two"},
                {"direction": "in", "state": "received", "sent": 0, "text": "three"},
            ]
        )
        self.assertEqual([line.split("] ", 1)[1] for line in lines], ["you: one", "you: two  [undelivered]", "bob: three"])


class DeliveryReportTests(CLITestCase):
    """What ``send``, ``status``, ``cancel`` and ``--server`` tell the user (issue 9, 13/15)."""

    async def test_send_to_an_unknown_user_fails_at_once(self) -> None:
        await self.agent("alice", control=True)
        result = await self.sixchat("send", "nobody", "hello?", "--wait", "20", profile=self.paths["alice"])
        self.assertEqual(result.code, 1, result)
        self.assertIn("Not delivered to nobody@example.org: no such user", result.out)

    async def test_queue_progress_and_cancel(self) -> None:
        alice, _alice_events = await self.agent("alice", control=True)
        await self.profile("bob")
        await alice.store.add_contact(BOB)
        profile = self.paths["alice"]
        waited = await self.sixchat("send", "bob", "are you there?", "--wait", "1", profile=profile)
        self.assertEqual(waited.code, 1, waited)
        self.assertIn("... asking the registry of example.org about bob@example.org", waited.err)
        self.assertIn("offline", waited.err)
        message_id = re.search(r"sixchat cancel ([0-9a-f-]{36})", waited.out).group(1)  # type: ignore[union-attr]
        status = await self.sixchat("status", profile=profile)
        self.assertIn("queued messages: 1", status.out)
        self.assertRegex(status.out, rf"{message_id}  \d\d:\d\d -> bob@example.org  \[queued\]  \(bob@example.org is offline")
        cancelled = await self.sixchat("cancel", message_id, profile=profile)
        self.assertEqual((cancelled.code, cancelled.out.strip()), (0, f"Cancelled message {message_id} to bob@example.org."), cancelled)
        self.assertIn("queued messages: none", (await self.sixchat("status", profile=profile)).out)
        again = await self.sixchat("cancel", message_id, profile=profile)
        self.assertEqual(again.code, 1, again)
        self.assertIn("no queued message", again.err)
        history = await self.sixchat("history", "bob", profile=profile)
        self.assertIn("are you there?  [cancelled]", history.out)

    async def test_status_when_registration_failed(self) -> None:
        alice, _alice_events = await self.agent("alice", control=True)
        alice.registration = (False, "cannot reach the registry (ConnectionRefusedError)")
        status = await self.sixchat("status", profile=self.paths["alice"])
        self.assertIn("NOT published: cannot reach the registry", status.out)
        self.assertNotIn("  published", status.out)

    async def test_server_option_with_a_running_agent_is_refused(self) -> None:
        await self.agent("alice", control=True)
        result = await self.sixchat("--server", "elsewhere.example:4604", "contacts", profile=self.paths["alice"])
        self.assertNotEqual(result.code, 0, result)
        self.assertIn("an agent is running for this profile", result.err)

    async def test_server_option_is_used_by_the_commands_own_agent(self) -> None:
        await self.profile("alice")
        result = await self.sixchat("--server", f"127.0.0.1:{await closed_port()}", "lookup", "alice", profile=self.paths["alice"])
        self.assertNotEqual(result.code, 0, result)
        self.assertIn("connect", result.err.lower())


class IntermediaryTests(CLITestCase):
    """``sixchat send`` with the domain's intermediary: stored, scheduled, shown."""

    timeout = 60

    async def test_send_stored_and_scheduled(self) -> None:
        from test.sixchat.agent.helpers import ready, start_intermediary

        await start_intermediary(self, self.registry, await self.registry.enrol("intermediary"))
        bob, _ = await self.agent("bob", listen=("::1",))
        await ready(bob)  # Bob's agent published prekeys once
        await bob.stopService()
        alice_profile = await self.profile("alice")
        stored = await self.sixchat("send", "bob", "while you were out", profile=alice_profile)
        self.assertEqual(
            (stored.code, stored.out.strip()),
            (0, "Stored at example.org's intermediary; it will be delivered when bob@example.org is online."),
            stored,
        )
        from datetime import UTC, datetime, timedelta

        when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
        scheduled = await self.sixchat("send", "--at", when.isoformat(), "bob", "happy new year", profile=alice_profile)
        self.assertEqual(scheduled.code, 0, scheduled)
        local = when.astimezone().strftime("%Y-%m-%d %H:%M")
        self.assertRegex(scheduled.out.strip(), rf"^Scheduled for {local} .*: held at example.org's intermediary until then.$")
        history = await self.sixchat("history", "bob", profile=alice_profile)
        self.assertIn("while you were out  [stored at example.org's intermediary]", history.out)
        self.assertIn(f"happy new year  [scheduled for {local} ", history.out)
        status = await self.sixchat("status", profile=alice_profile)
        self.assertIn("queued messages: 2", status.out)
        self.assertIn("intermediary: used to send only", status.out)
        self.assertIn("[stored at example.org's intermediary]  (stored at example.org's intermediary, will be delivered when bob@example.org is online)", status.out)
        bad = await self.sixchat("send", "--at", "tomorrow", "bob", "x", profile=alice_profile)
        self.assertEqual(bad.code, 2, bad)
        self.assertIn("HH:MM", bad.err)
        too_far = await self.sixchat("send", "--at", "2099-01-01T09:00Z", "bob", "x", profile=alice_profile)
        self.assertNotEqual(too_far.code, 0, too_far)
        self.assertIn("at most 28 days ahead", too_far.err)
