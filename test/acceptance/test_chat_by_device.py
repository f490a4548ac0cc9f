"""Reaching an agent by its device ID, as a user does (issue 13): the installed registry
serves sixid with its default policy (``certified``), Alice's agent publishes its device
ID (``twistd sixchat --sixid``), ``sixchat id`` prints it, and Bob chats with that ID under
a real pseudo-terminal; the text arrives in Alice's history as typed."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import AGENT_READY, Deployment
from test.acceptance.test_chat import DELIVERED, DELIVERY, add_contacts

#: The registry's log line once sixid listens (its port read from it).
SIXID_SERVING = re.compile(r"sixid serving on \S*?:(\d+)\b")
#: Alice's agent's log line once its device ID is published.
PUBLISHED = re.compile(r"Published device ID ([a-z2-7]{32}@example\.org)")
TYPED = "Grüße an dein Gerät 😀"


class ChatByDeviceTests(SynchronousTestCase):
    """``sixchat chat ID@example.org`` in a terminal."""

    def test_chat_with_a_device_id(self) -> None:
        deployment = Deployment(self)
        registry = deployment.start_registry("example.org", "registry", "--sixid-listen", "tcp:0:interface=127.0.0.1")
        port = deployment.wait_for(registry.service, SIXID_SERVING, "sixid's listening line").group(1)
        self.assertIn("(policy certified)", registry.service.output.text)
        _, profiles = deployment.enrol_users(registry, {"alice": "irp", "bob": "sixchat"})
        alice, bob = profiles["alice"], profiles["bob"]
        sixid_server = ("--sixid-server", f"127.0.0.1:{port}")

        agents = [
            deployment.spawn("alice-agent", "-n", "sixchat", "--profile", alice, "--listen", "tcp:0:interface=127.0.0.1",
                             "--sixid", *sixid_server),
            deployment.spawn("bob-agent", "-n", "sixchat", "--profile", bob, "--listen", "tcp:0:interface=127.0.0.1",
                             *sixid_server),
        ]
        for agent in agents:
            deployment.wait_for(agent, AGENT_READY, "the agent's ready line")
        published = deployment.wait_for(agents[0], PUBLISHED, "Alice's device ID published").group(1)
        device = deployment.sixchat("--profile", alice, "id").out.splitlines()[0].strip()
        self.assertEqual(device, published)
        add_contacts(deployment, (alice, "bob", ()), (bob, "alice", ("--pin",)))

        chat = deployment.terminal("sixchat", "--profile", bob, "chat", device)
        if chat.output.wait_for("Chatting with", 30) is None:
            deployment.fail("the chat did not start within 30 s\n" + chat.describe())
        chat.type(TYPED + "\r")
        if chat.output.count(DELIVERED, 1, DELIVERY) < 1:
            deployment.fail("no receipt within the delivery time\n" + chat.describe())
        chat.type("/quit\r")
        self.assertEqual(chat.exited(15), 0, chat.describe())

        history = deployment.sixchat("--profile", alice, "history", "bob").out
        self.assertIn(f" <- bob@example.org: {TYPED}", history)
