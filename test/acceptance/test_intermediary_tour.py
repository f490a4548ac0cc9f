"""The README's intermediary tour with the installed commands (issue 12): Bob's agent is
stopped, Alice sends, Bob starts and gets it (Alice sees it delivered); then Bob's agent
accepts no connection at all (``--no-listen``, as behind a NAT) and Alice reaches it through
the intermediary's relay."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import AGENT_READY, Deployment

#: Seconds a message may take to arrive (a new connection, a push, a receipt back).
DELIVERY = 30.0
TEXT = "Are you there? Grüße 😀"
STORED = "Stored at example.org's intermediary; it will be delivered when bob@example.org is online."
PUBLISHED = re.compile(r"Published \d+ prekeys")
RELAY = re.compile(r"Relay reserved at \S+ port \d+")


class IntermediaryTourTests(SynchronousTestCase):
    """README "Tour: when Bob is offline, or cannot accept connections"."""

    def test_tour(self) -> None:
        deployment = Deployment(self)
        registry = deployment.start_registry()
        _admin, profiles = deployment.enrol_users(registry, {"intermediary": "irp", "alice": "irp", "bob": "sixchat"})
        alice, bob = profiles["alice"], profiles["bob"]
        intermediary = deployment.start_intermediary(deployment.intermediary_arguments(profiles["intermediary"]))
        alice_agent, bob_agent = deployment.start_agents(alice, bob)
        for agent in (alice_agent, bob_agent):  # each published its prekeys at the intermediary
            deployment.wait_for(agent, PUBLISHED, "the agent's prekeys")
        deployment.sixchat("--profile", alice, "add", "bob")
        deployment.sixchat("--profile", bob, "add", "alice")

        # Bob is offline: the message is stored for him.
        self.assertTrue(bob_agent.stop(), "Bob's agent did not stop on SIGTERM")
        sent = deployment.sixchat("--profile", alice, "send", "bob", TEXT)
        self.assertIn(STORED, sent.out, sent.describe())
        status = deployment.sixchat("--profile", alice, "history", "bob")
        self.assertIn("stored at example.org's intermediary", status.out, status.describe())

        # Alice watches her chat; Bob starts, gets the message, and his receipt comes back.
        alice_chat = deployment.terminal("sixchat", "--profile", alice, "chat", "bob")
        if alice_chat.output.wait_for("Chatting with bob@example.org", DELIVERY) is None:
            deployment.fail("Alice's chat did not start")
        bob_agent = deployment.spawn("bob-agent-2", "-n", "sixchat", "--profile", bob, "--listen", "tcp:0:interface=127.0.0.1")
        deployment.wait_for(bob_agent, AGENT_READY, "Bob's agent's ready line")
        if alice_chat.output.wait_for(r"-- [^\n]*(?<!NOT )delivered(?! when)", DELIVERY) is None:
            deployment.fail("Alice's chat never showed the message delivered")
        history = deployment.sixchat("--profile", bob, "history", "alice")
        self.assertIn(f"<- alice@example.org: {TEXT}", history.out, history.describe())
        alice_chat.close()

        # Bob behind a NAT: no listening socket, a relay port at the intermediary instead.
        self.assertTrue(bob_agent.stop())
        bob_agent = deployment.spawn("bob-agent-3", "-n", "sixchat", "--profile", bob, "--no-listen")
        deployment.wait_for(bob_agent, AGENT_READY, "Bob's agent's ready line")
        deployment.wait_for(bob_agent, RELAY, "Bob's relay reservation")
        self.assertNotRegex(bob_agent.output.text, r"SixChat agent of \S+ listening on")
        relayed = deployment.sixchat("--profile", alice, "send", "bob", "Through the relay")
        self.assertIn("Delivered to bob@example.org.", relayed.out, relayed.describe())
        history = deployment.sixchat("--profile", bob, "history", "alice")
        self.assertIn("<- alice@example.org: Through the relay", history.out, history.describe())
        # Nothing readable about the content in the intermediary's log.
        for text in (TEXT, "Are you there", "Through the relay"):
            self.assertNotIn(text, intermediary.output.text)
