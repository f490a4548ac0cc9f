"""SixChat as a user runs it: two ``twistd -n sixchat`` agents, the ``sixchat`` command,
and ``sixchat chat`` under a real pseudo-terminal (issue 9, items 9, 12 and 13)."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment, Registry

#: Seconds a message may take to be delivered (a new session: lookup, handshake, receipt).
DELIVERY = 20.0
#: Seconds within which a message to a user who does not exist must be refused.
AT_ONCE = 10.0

#: What is typed in the chat: accents, CJK, emoji (with skin tones, a ZWJ sequence, a flag),
#: right-to-left scripts, combining marks (decomposed, kept as typed), Hangul, a conjunct.
TYPED = "Grüße 😀 日本語"
PASTED = (
    "Ça va, Zoë? Ñandú, naïve café, Œuvre, Łódź",
    "שלום עולם — مرحبا بالعالم",
    "e\u0301 a\u0308 n\u0303 o\u0302\u0323 \u0915\u094d\u0937",
    "👩🏽‍💻 👍🏿 🇯🇵 한국어 中文 Ελληνικά Русский",
)
#: A receipt shown in the chat (not "NOT delivered").
DELIVERED = re.compile(r"(?<!not )delivered", re.IGNORECASE)


def alice_and_bob(deployment: Deployment, *, bob: bool = True) -> tuple[Registry, str, str]:
    """The README's chat tour up to the agents: a registry, Alice enrolled with ``irp`` and
    Bob with ``sixchat``. Returns the registry and Alice's and Bob's profiles."""
    registry = deployment.start_registry()
    _, profiles = deployment.enrol_users(registry, {"alice": "irp", "bob": "sixchat"} if bob else {"alice": "irp"})
    return registry, profiles["alice"], profiles.get("bob", "")


def add_contacts(deployment: Deployment, *pairs: tuple[str, str, tuple[str, ...]]) -> None:
    """``sixchat --profile P add WHO [OPTIONS]`` for each pair, all at once."""
    started = [deployment.start("sixchat", "--profile", profile, "add", who, *options) for profile, who, options in pairs]
    for process, begun in started:
        deployment.check(deployment.finish(process, begun, begun + 60))


class UnicodeChatTests(SynchronousTestCase):
    """``sixchat chat bob`` under a pseudo-terminal, with Alice's and Bob's agents running."""

    def test_unicode_through_a_terminal(self) -> None:
        """Typed and pasted non-ASCII text (accents, CJK, emoji, right-to-left, combining
        marks) reaches Bob exactly as typed: his history shows each line code point for
        code point."""
        deployment = Deployment(self)
        _, alice, bob = alice_and_bob(deployment)
        deployment.start_agents(alice, bob)
        add_contacts(deployment, (alice, "bob", ()), (bob, "alice", ("--pin",)))

        chat = deployment.terminal("sixchat", "--profile", alice, "chat", "bob")
        if chat.output.wait_for("Chatting with bob@example.org", 30) is None:
            deployment.fail("the chat did not start within 30 s")
        for character in TYPED:  # typed key by key
            chat.type(character)
        chat.type("\r")
        chat.type(PASTED[0] + "\r")  # pasted, one line at a time, then two lines at once
        chat.type(PASTED[1] + "\r")
        chat.type(PASTED[2] + "\r" + PASTED[3] + "\r")
        sent = (TYPED, *PASTED)
        # Receipts shown in the chat: a bounded wait, so that the history is read after
        # delivery; what was delivered is checked below.
        chat.output.count(DELIVERED, len(sent), DELIVERY)
        chat.type("/quit\r")
        code = chat.exited(15)
        if code != 0:
            deployment.fail("the chat did not end within 15 s of /quit" if code is None else f"the chat ended with exit status {code}")

        history = deployment.sixchat("--profile", bob, "history", "alice")
        received = [line.split(" <- alice@example.org: ", 1)[1] for line in history.out.splitlines() if " <- alice@example.org: " in line]
        missing = [text for text in sent if text not in received]
        if missing:
            deployment.fail(
                "Bob's history does not show what Alice typed:\n"
                + "\n".join(f"  typed {text!r}" for text in missing)
                + "\n  received: "
                + repr(received)
                + "\n"
                + history.describe()
            )
        self.assertEqual(received, list(sent))


class RenewalTests(SynchronousTestCase):
    """``irp renew`` while Alice's agent runs (issue 9, item 12)."""

    def test_renew_with_a_running_agent(self) -> None:
        """Alice renews her certificate while her agent runs; new sessions then work both
        ways, without restarting the agent."""
        deployment = Deployment(self)
        _, alice, bob = alice_and_bob(deployment)
        deployment.start_agents(alice, bob)
        # Contacts (not pinned: a renewal changes the certificate); no session exists yet,
        # so each message below needs a new one, made after the renewal.
        add_contacts(deployment, (alice, "bob", ()), (bob, "alice", ()))
        renewed = deployment.irp("--profile", alice, "renew")
        self.assertIn("Renewed", renewed.out, renewed.describe())
        for sender, receiver, text in ((alice, "bob", "after the renewal, Alice to Bob"), (bob, "alice", "after the renewal, Bob to Alice")):
            result = deployment.sixchat("--profile", sender, "send", "--wait", str(DELIVERY), receiver, text, expect=None)
            if result.code != 0 or f"Delivered to {receiver}@example.org" not in result.out:
                deployment.fail(f"after 'irp renew' with the agent running, a message to {receiver} was not delivered:\n{result.describe()}")
        history = deployment.sixchat("--profile", bob, "history", "alice")
        self.assertIn("<- alice@example.org: after the renewal, Alice to Bob", history.out, history.describe())


class UnknownUserTests(SynchronousTestCase):
    """``sixchat send`` to a user who does not exist (issue 9, item 13)."""

    def test_send_to_unknown_user(self) -> None:
        """The command fails at once, non-zero, saying that there is no such user, whether
        it runs an agent itself or talks to a running one."""
        deployment = Deployment(self)
        _, alice, _ = alice_and_bob(deployment, bob=False)
        for how in ("without a running agent", "with the agent running"):
            if how == "with the agent running":
                deployment.start_agents(alice)
            result = deployment.sixchat("--profile", alice, "send", "nobody", "hello?", expect=None, timeout=AT_ONCE)
            said = result.out + result.err
            if result.killed:
                deployment.fail(f"{how}: sending to a user who does not exist did not fail at once (bound {AT_ONCE:.0f} s):\n{result.describe()}")
            if result.code == 0 or "nobody@example.org" not in said or not re.search(r"no (such )?user|not found|unknown user|does not exist", said, re.IGNORECASE):
                deployment.fail(f"{how}: sending to a user who does not exist must fail saying so:\n{result.describe()}")
