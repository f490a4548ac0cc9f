"""``sixchat chat`` through a real pseudo-terminal: the command runs as its own process on
a pty (as a user's terminal runs it), talks to Alice's running agent over its control socket,
and Bob's agent (real TLS on loopback, real registry) receives what was typed."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat.wire.application import MAX_TEXT_LENGTH
from test.helpers import REPOSITORY
from test.sixchat.agent.helpers import AgentTestCase

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")

#: How long to wait for the screen to show something before the test fails.
SCREEN_TIMEOUT = 15.0

GREETING = "Grüße 😀 日本語"
#: Accents, emoji with skin tone, a ZWJ family, a flag, CJK, Hebrew and Arabic (right to
#: left), combining marks (e + U+0301, a Devanagari conjunct) and a keycap.
EVERYTHING = "Grüße 👋🏽 👩‍👩‍👧 🇯🇵 日本語 한국어 שלום مرحبا e\u0301 क्षि 1\ufe0f\u20e3"


class PtyChat(ProcessProtocol):
    """``sixchat chat`` running on a pseudo-terminal; ``screen`` is all it has written."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self._waiting: list[tuple[bytes, int, Deferred[int], Any]] = []

    @property
    def screen(self) -> str:
        """What the command wrote, decoded."""
        return self.output.decode("utf-8", "replace")

    def type(self, text: str | bytes) -> None:
        """Type (or paste) ``text`` as UTF-8 bytes."""
        assert self.transport is not None
        self.transport.write(text.encode("utf-8") if isinstance(text, str) else text)

    def mark(self) -> int:
        """A position in the output, to look only at what comes after it."""
        return len(self.output)

    def since(self, mark: int) -> str:
        """The output after ``mark``."""
        return bytes(self.output[mark:]).decode("utf-8", "replace")

    def wait_for(self, text: str, after: int = 0) -> Deferred[int]:
        """Fires (with the position just after it) once ``text`` appears after ``after``;
        fails after SCREEN_TIMEOUT seconds with the screen in the message."""
        waiter: Deferred[int] = Deferred()
        needle = text.encode("utf-8")
        timer = reactor.callLater(SCREEN_TIMEOUT, self._timeout, needle, waiter)  # type: ignore[attr-defined]
        self._waiting.append((needle, after, waiter, timer))
        self._check()
        return waiter

    def _timeout(self, needle: bytes, waiter: Deferred[int]) -> None:
        self._waiting = [item for item in self._waiting if item[2] is not waiter]
        waiter.errback(AssertionError(f"{needle.decode()!r} never appeared; the screen was:\n{self.screen}"))

    def _check(self) -> None:
        for item in list(self._waiting):
            needle, after, waiter, timer = item
            found = self.output.find(needle, after)
            if found >= 0:
                self._waiting.remove(item)
                timer.cancel()
                waiter.callback(found + len(needle))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        self._check()

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)


class ChatThroughPtyTests(AgentTestCase):
    """The chat window, typed into through a pseudo-terminal."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice, self.alice_events = await self.agent("alice", contacts=("bob",), control=True)
        self.bob, self.bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))

    async def open_chat(self) -> PtyChat:
        """Run ``sixchat chat bob`` for Alice on a pty; it is ready when it shows its prompt."""
        chat = PtyChat()
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        environment = {
            "PYTHONPATH": REPOSITORY,
            "HOME": home,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
        }
        arguments = [sys.executable, "-m", "sixchat.cli", "chat", "--profile", self.paths["alice"], "bob"]
        process = reactor.spawnProcess(chat, sys.executable, arguments, env=environment, path=home, usePTY=True)  # type: ignore[attr-defined]

        async def close() -> None:
            if not chat.ended.called:
                process.signalProcess("KILL")
            await chat.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        await chat.wait_for("/quit")
        return chat

    async def send_line(self, chat: PtyChat, typed: str | bytes, expected: str) -> tuple[dict[str, Any], str]:
        """Type ``typed``, wait until Bob has ``expected`` and Alice's screen shows its
        receipt; returns Bob's event and the output from the moment of typing."""
        mark = chat.mark()
        arrived = self.bob_events.next(event="message", text=expected)
        chat.type(typed)
        message = await arrived.addTimeout(SCREEN_TIMEOUT, reactor)
        await self.alice_events.wait_for(event="receipt", id=message["id"])
        await chat.wait_for("delivered", after=mark)
        return message, chat.since(mark)

    async def test_unicode_reaches_the_peer_exactly(self) -> None:
        """Item 9: what is typed in full Unicode arrives exactly, and the screen shows it."""
        chat = await self.open_chat()
        for text in (GREETING, EVERYTHING):
            message, _shown = await self.send_line(chat, text + "\r", text)
            self.assertEqual(message["text"], text)
            stored = [row for row in await self.history(self.bob, ALICE) if row[1] == text]
            self.assertEqual(stored, [("in", text, "received")])
        await chat.wait_for(f"you: {EVERYTHING}")

    async def test_each_line_is_shown_once(self) -> None:
        """Item 15: a sent line appears once after Enter (not echoed again by the receipt)."""
        chat = await self.open_chat()
        _message, shown = await self.send_line(chat, GREETING + "\r", GREETING)
        # Conversation lines, leaving out the redraws of the line being edited ("> ...").
        lines = [part for part in shown.split("\x1b[K") if not part.startswith("> ")]
        self.assertEqual(sum(part.count(GREETING) for part in lines), 1, shown)
        self.assertEqual(sum(part.count("you: " + GREETING) for part in lines), 1, shown)

    async def test_wide_characters_are_edited_as_characters(self) -> None:
        """Backspace removes one character (not a byte or a code point) and the arrows move
        over whole characters: CJK, emoji sequences, a letter with a combining mark."""
        chat = await self.open_chat()
        left = "\x1b[D"
        cases = [
            ("日本語\x7f\r", "日本"),
            ("e\u0301\x7fa\r", "a"),
            ("a👩‍👩‍👧b" + left + left + "X\r", "aX👩‍👩‍👧b"),
            ("🇯🇵🇫🇷\x7f!\r", "🇯🇵!"),
            ("Grüße" + left * 2 + "\x7f\r", "Grße"),
            ("שלום\x01>\x05<\r", ">שלום<"),
        ]
        for typed, expected in cases:
            message, _shown = await self.send_line(chat, typed, expected)
            self.assertEqual(message["text"], expected)

    async def test_utf8_split_across_writes(self) -> None:
        """A character whose bytes arrive in separate reads is kept whole."""
        chat = await self.open_chat()
        data = (GREETING + "\r").encode("utf-8")
        mark = chat.mark()
        arrived = self.bob_events.next(event="message", text=GREETING)
        for index in range(len(data)):
            chat.type(data[index : index + 1])
        message = await arrived
        self.assertEqual(message["text"], GREETING)
        await chat.wait_for("delivered", after=mark)

    async def test_pasted_lines(self) -> None:
        """Several lines pasted at once: each complete line is a message, the last one
        stays on the line to be finished; a bracketed paste is one message, line breaks
        included."""
        chat = await self.open_chat()
        first = self.bob_events.next(event="message", text="première ligne")
        second = self.bob_events.next(event="message", text="第二行")
        chat.type("première ligne\r第二行\rnot yet")
        await first
        await second
        message, _shown = await self.send_line(chat, " finished\r", "not yet finished")
        message, _shown = await self.send_line(chat, "\x1b[200~one 😀\r\ntwo\x1b[201~ three\r", "one 😀\ntwo three")
        self.assertEqual(message["text"], "one 😀\ntwo three")

    async def test_commands_are_not_sent(self) -> None:
        """Item 15: /help is answered, an unknown /command is reported, // sends a line
        starting with /; none of the commands reaches Bob."""
        chat = await self.open_chat()
        mark = chat.mark()
        chat.type("/help\r")
        await chat.wait_for("/quit", after=mark)
        mark = chat.mark()
        chat.type("/frobnicate now\r")
        await chat.wait_for("unknown command /frobnicate", after=mark)
        await self.send_line(chat, "//slash at the start\r", "/slash at the start")
        texts = [row[1] for row in await self.history(self.bob, ALICE)]
        self.assertEqual(texts, ["/slash at the start"])

    async def test_too_long_line_is_kept(self) -> None:
        """Item 15: a line over the limit is refused with the limit named, and stays in the
        editor: one Backspace and Enter sends it."""
        chat = await self.open_chat()
        text = "x" * MAX_TEXT_LENGTH
        mark = chat.mark()
        chat.type("\x1b[200~" + text + "y\x1b[201~\r")
        await chat.wait_for(f"{MAX_TEXT_LENGTH} characters", after=mark)
        message, _shown = await self.send_line(chat, "\x7f\r", text)
        self.assertEqual(len(message["text"]), MAX_TEXT_LENGTH)
        self.assertEqual([row[1] for row in await self.history(self.bob, ALICE)], [text])

    async def test_messages_sent_elsewhere(self) -> None:
        """Item 15: a message sent by another command (``sixchat send``) shows its text
        and then its receipt, never a blank ``delivered:`` line."""
        chat = await self.open_chat()
        mark = chat.mark()
        message = await self.alice.send_text(BOB, "sent from another terminal")
        await self.alice_events.wait_for(event="receipt", id=message.id)
        await chat.wait_for("sent from another terminal", after=mark)
        await chat.wait_for("delivered", after=mark)
        self.assertNotIn("delivered: \r", chat.since(mark))
        self.assertNotRegex(chat.since(mark), r"delivered:\s*\r")

    async def test_incoming_unicode_and_controls(self) -> None:
        """What Bob sends is shown in full Unicode; C1 control characters in it (which a
        terminal might obey) are shown harmlessly."""
        chat = await self.open_chat()
        mark = chat.mark()
        await self.bob.send_text(ALICE, EVERYTHING)
        await chat.wait_for(f"bob: {EVERYTHING}", after=mark)
        await self.bob.send_text(ALICE, "evil\x9b2Jtext")
        await chat.wait_for("evil", after=mark)
        self.assertNotIn("\x9b", chat.since(mark))

    async def test_quit_restores_the_terminal(self) -> None:
        """/quit leaves with exit code 0 and turns bracketed paste off again."""
        chat = await self.open_chat()
        self.assertIn("\x1b[?2004h", chat.screen)
        chat.type("/quit\r")
        self.assertEqual(await chat.ended, 0)
        self.assertIn("\x1b[?2004l", chat.screen)

    async def test_unsendable_characters_are_reported(self) -> None:
        """Nothing is dropped silently: a pasted control character that a message cannot
        hold is reported, the line comes back, and once fixed it is sent."""
        chat = await self.open_chat()
        mark = chat.mark()
        chat.type("\x1b[200~bell\x07 ü\x1b[201~\r")
        await chat.wait_for("not sent: ", after=mark)
        await chat.wait_for("the line is back for editing", after=mark)
        # Home, then Delete the first five characters ("bell" and the bell character).
        message, _shown = await self.send_line(chat, "\x01" + "\x1b[3~" * 5 + "\r", " ü")
        self.assertEqual([row[1] for row in await self.history(self.bob, ALICE)], [" ü"])


class SubscribeBeforeHistoryTests(TestCase):
    """The chat subscribes to the agent's events before it reads the history, so a message
    queued while it opens is shown exactly once, whichever of the two it is in."""

    async def test_no_gap_between_history_and_events(self) -> None:
        from twisted.internet.defer import succeed

        from sixchat.chatui import run_chat

        bob = "bob@example.org"
        before = {"event": "queued", "id": "m1", "to": bob, "text": "queued before the history"}
        between = {"event": "queued", "id": "m2", "to": bob, "text": "queued while it was read"}
        calls: list[str] = []

        class Control:
            on_event: Any = None

            def call(self, name: str, **arguments: Any) -> Deferred[Any]:
                calls.append(name)
                if name == "history":
                    # Both events reach the chat while the agent answers: one message is
                    # in the history too, the other only in the events.
                    self.on_event(before)
                    self.on_event(between)
                    return succeed([{"id": "m1", "direction": "out", "state": "queued", "sent": 0, "text": before["text"]}])
                return succeed(None)

        import io

        printed = io.StringIO()
        self.patch(sys, "stdout", printed)  # a chat reading a pipe prints what it shows
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        os.close(stdin_write)  # no typed lines: the chat ends at end of input
        try:
            await Deferred.fromCoroutine(
                run_chat(reactor, Control(), Identity.parse(bob), stdin=stdin_read, stdout=stdout_write, linger=0)
            )
        finally:
            for fd in (stdin_read, stdout_read, stdout_write):
                os.close(fd)
        shown = printed.getvalue()
        self.assertLess(calls.index("subscribe"), calls.index("history"))
        self.assertEqual(shown.count("queued before the history"), 1, shown)
        self.assertEqual(shown.count("queued while it was read"), 1, shown)
