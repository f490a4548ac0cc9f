"""The agent's control socket (sixchat/control.py): a real UNIX socket of a running agent,
JSON lines both ways; and the in-process variant the command uses when no agent runs."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from sixchat.agent.control import (
    SOCKET_NAME,
    ControlClientProtocol,
    ControlError,
    ControlServerProtocol,
    InProcessControl,
    connect_control,
    control_socket_path,
)
from sixchat.agent.service import Agent
from test.helpers import RawPeer, RunningRegistry, start_agent

BOB = Identity.parse("bob@example.org")


class ControlSocketTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.registry = await RunningRegistry(self).start()
        self.alice_user = await self.registry.enrol("alice")
        self.bob_user = await self.registry.enrol("bob")
        self.alice, self.alice_events = await start_agent(self, self.registry, self.alice_user, control=True)
        self.bob, self.bob_events = await start_agent(self, self.registry, self.bob_user, listen=("::1",))
        assert self.bob.store is not None
        await self.bob.store.add_contact(Identity.parse("alice@example.org"))
        control = await connect_control(reactor, self.alice.settings.profile_dir)
        assert control is not None
        self.control: ControlClientProtocol = control
        self.addCleanup(self.close_control)

    async def close_control(self) -> None:
        if self.control.transport is not None and not self.control.closed.called:
            self.control.transport.loseConnection()
            await self.control.closed

    async def raw(self, *lines: bytes) -> list[dict[str, Any]]:
        """Send raw lines on a fresh control connection; return the replies to them."""
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.internet.protocol import Factory

        peer = RawPeer()
        endpoint = UNIXClientEndpoint(reactor, control_socket_path(self.alice.settings.profile_dir))
        await endpoint.connect(Factory.forProtocol(peer.protocol))
        for line in lines:
            peer.transport.write(line)
        replies: list[dict[str, Any]] = []
        while len(replies) < len(lines):
            if peer.closed.called:
                break
            waiter: Deferred[None] = Deferred()
            reactor.callLater(0, waiter.callback, None)  # let the agent answer
            await waiter
            replies = [json.loads(line) for line in bytes(peer.received).splitlines() if line]
        peer.transport.loseConnection()
        await peer.closed
        return [json.loads(line) for line in bytes(peer.received).splitlines() if line]

    async def test_socket_is_private(self) -> None:
        path = control_socket_path(self.alice.settings.profile_dir)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    async def test_status(self) -> None:
        status = await self.control.call("status")
        self.assertEqual(status["identity"], "alice@example.org")
        self.assertEqual(status["fingerprint"], fingerprint(self.alice_user.certificate))
        self.assertEqual(status["sessions"], [])

    async def test_contacts(self) -> None:
        added = await self.control.call("add-contact", who="bob@example.org", name="Bob", pin=True)
        digest = fingerprint(self.bob_user.certificate)
        self.assertEqual(added["registry_fingerprints"], [digest])
        self.assertEqual(added["contact"], {"who": "bob@example.org", "name": "Bob", "fingerprints": [digest], "blocked": False, "presence": "offline", "last_address": None})
        self.assertTrue(await self.control.call("block", who="bob@example.org"))
        [contact] = await self.control.call("contacts")
        self.assertTrue(contact["blocked"])
        self.assertTrue(await self.control.call("unblock", who="bob@example.org"))
        self.assertTrue(await self.control.call("remove-contact", who="bob@example.org"))
        self.assertEqual(await self.control.call("contacts"), [])
        self.assertFalse(await self.control.call("remove-contact", who="bob@example.org"))

    async def test_add_contact_checks_the_registry(self) -> None:
        with self.assertRaises(ControlError) as caught:
            await self.control.call("add-contact", who="nobody@example.org")
        self.assertEqual(caught.exception.name, "not-found")
        added = await self.control.call("add-contact", who="nobody@example.org", check=False)
        self.assertEqual(added["registry_fingerprints"], [])
        with self.assertRaises(ControlError) as caught:
            await self.control.call("add-contact", who="bob@example.org", fingerprints=["not a fingerprint"])
        self.assertEqual(caught.exception.name, "bad-request")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_send_with_events(self) -> None:
        events: list[dict[str, Any]] = []
        receipt: Deferred[dict[str, Any]] = Deferred()

        def on_event(event: dict[str, Any]) -> None:
            events.append(event)
            if event["event"] == "receipt" and not receipt.called:
                receipt.callback(event)

        self.control.on_event = on_event
        self.assertTrue(await self.control.call("subscribe"))
        result = await self.control.call("send", to="bob@example.org", text="hello over the socket")
        got = await receipt
        self.assertEqual(got, {"event": "receipt", "id": result["id"], "to": "bob@example.org"})
        self.assertEqual(events[0], {"event": "queued", "id": result["id"], "to": "bob@example.org", "text": "hello over the socket"})
        self.assertIn({"event": "session", "who": "bob@example.org", "state": "up"}, events)
        [row] = await self.control.call("history", who="bob@example.org")
        self.assertEqual((row["id"], row["direction"], row["state"], row["text"], row["peer"]), (result["id"], "out", "delivered", "hello over the socket", "bob@example.org"))
        found = await self.control.call("lookup", who="bob@example.org")
        self.assertEqual(found["presence"], "online")
        self.assertEqual(found["endpoints"], [["::1", self.bob.ports[0].getHost().port]])

    async def test_errors_have_names(self) -> None:
        cases = [
            ({"op": "send", "to": "alice@example.org", "text": "me"}, "self-connection"),
            ({"op": "send", "to": "bob@example.org", "text": "x" * 16385}, "message-too-large"),
            ({"op": "send", "to": "bob@example.org", "text": "bell \x07"}, "malformed-message"),
            ({"op": "send", "to": "not an identity", "text": "hi"}, "invalid-identity"),
            ({"op": "lookup", "who": "nobody@example.org"}, "not-found"),
            ({"op": "history", "limit": "ten"}, "bad-request"),
            ({"op": "fly"}, "unknown-operation"),
        ]
        for request, name in cases:
            with self.assertRaises(ControlError) as caught:
                await self.control.call(request.pop("op"), **request)
            self.assertEqual(caught.exception.name, name, request)
        self.assertEqual(self.flushLoggedErrors(), [])
        # Nothing refused was stored.
        assert self.alice.store is not None
        self.assertEqual(await self.alice.store.history(), [])

    async def test_malformed_requests(self) -> None:
        replies = await self.raw(b"not json\n", b"[1, 2]\n", b'{"id": 7, "op": "status"}\n')
        self.assertEqual([(reply["ok"], reply.get("name")) for reply in replies], [(False, "bad-request"), (False, "bad-request"), (True, None)])
        self.assertEqual(replies[2]["id"], 7)

    async def test_oversized_request(self) -> None:
        replies = await self.raw(b"x" * (1024 * 1024 + 10) + b"\n")
        self.assertEqual([reply.get("name") for reply in replies], ["too-long"])

    async def test_a_second_agent_on_the_same_profile_cannot_start(self) -> None:
        from sixchat.agent.service import AgentSettings

        second = Agent(AgentSettings(profile_dir=self.alice.settings.profile_dir, listen=[], register=False), reactor)
        with capturedLogs() as logs:
            second.startService()
            with self.assertRaises(CannotListenError):
                await second.ready
        self.assertTrue(any("could not start" in formatEvent(event) for event in logs))
        self.assertEqual(self.flushLoggedErrors(), [])
        await second.stopService()
        # The first is unharmed.
        self.assertEqual((await self.control.call("status"))["identity"], "alice@example.org")

    async def test_stop_removes_the_socket(self) -> None:
        path = control_socket_path(self.alice.settings.profile_dir)
        await self.control.call("status")
        await self.alice.stopService()
        await self.control.closed
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(await connect_control(reactor, self.alice.settings.profile_dir))


class ControlUnitTests(TestCase):
    def test_other_users_are_refused(self) -> None:
        class Handle:
            def getsockopt(self, *args: Any) -> bytes:
                return struct.pack("3i", 1, os.getuid() + 1, 0)

        class Transport(StringTransport):
            def getHandle(self) -> Handle:
                return Handle()

        protocol = ControlServerProtocol(agent=None)
        transport = Transport()
        with capturedLogs() as logs:
            protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("Refused a control connection" in formatEvent(event) for event in logs))

    def test_same_user_is_served(self) -> None:
        class Handle:
            def getsockopt(self, *args: Any) -> bytes:
                return struct.pack("3i", 1, os.getuid(), 0)

        class Transport(StringTransport):
            def getHandle(self) -> Handle:
                return Handle()

        class FakeAgent:
            store = None

            def status(self) -> dict[str, str]:
                return {"identity": "alice@example.org"}

        protocol = ControlServerProtocol(agent=FakeAgent())
        transport = Transport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"id": 1, "op": "status"}\n')
        self.assertFalse(transport.disconnecting)
        self.assertEqual(json.loads(transport.value()), {"id": 1, "ok": True, "result": {"identity": "alice@example.org", "queue": []}})

    def test_socket_path(self) -> None:
        short = control_socket_path("/tmp/p")
        self.assertEqual(short, os.path.join("/tmp/p", SOCKET_NAME))
        long_dir = "/tmp/" + "x" * 120
        path = control_socket_path(long_dir)
        self.assertLessEqual(len(path.encode()), 100)
        self.assertEqual(path, control_socket_path(long_dir))
        self.assertNotEqual(path, control_socket_path(long_dir + "y"))

    async def test_no_agent_running(self) -> None:
        self.assertIsNone(await connect_control(reactor, self.mktemp()))
        # A stale socket file left by a crashed agent.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        stale_path = control_socket_path(directory)
        os.makedirs(os.path.dirname(stale_path), mode=0o700, exist_ok=True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(stale_path)
        self.addCleanup(lambda: os.path.exists(stale_path) and os.unlink(stale_path))
        stale.close()
        self.assertIsNone(await connect_control(reactor, directory))

    def test_client_fails_outstanding_requests_when_the_agent_goes(self) -> None:
        client = ControlClientProtocol()
        client.makeConnection(StringTransport())
        waiting = client.call("status")
        client.connectionLost()
        failure = self.failureResultOf(waiting, ControlError)
        self.assertEqual(failure.value.name, "connection-lost")
        self.assertIsNone(self.successResultOf(client.closed))

    def test_client_ignores_garbage(self) -> None:
        client = ControlClientProtocol()
        client.makeConnection(StringTransport())
        waiting = client.call("status")
        client.dataReceived(b"garbage\n[1]\n\"text\"\n")
        self.assertNoResult(waiting)
        client.dataReceived(b'{"id": 1, "ok": false, "error": "no", "name": "nope"}\n')
        self.assertEqual(self.failureResultOf(waiting, ControlError).value.name, "nope")


class InProcessTests(TestCase):
    async def test_same_calls_in_process(self) -> None:
        registry = await RunningRegistry(self).start()
        alice, _ = await start_agent(self, registry, await registry.enrol("alice"))
        control = InProcessControl(alice)
        seen: list[dict[str, Any]] = []
        control.on_event = seen.append
        self.assertTrue(await control.call("subscribe"))
        self.assertEqual((await control.call("status"))["identity"], "alice@example.org")
        with self.assertRaises(ControlError) as caught:
            await control.call("send", to="alice@example.org", text="me")
        self.assertEqual(caught.exception.name, "self-connection")
        with self.assertRaises(ControlError) as caught:
            await control.call("history", limit="many")
        self.assertEqual(caught.exception.name, "bad-request")
        await control.call("add-contact", who="bob@example.org", check=False)
        await control.call("send", to="bob@example.org", text="queued")
        self.assertEqual([event["event"] for event in seen][:1], ["queued"])
