"""The chat's line editor and chat view without a terminal (sans-I/O)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from common.identity import Identity
from sixchat import lineedit
from sixchat.chatui import ChatView, interpret, printable
from sixchat.lineedit import Key, KeyDecoder, LineEditor, clusters, text_width


def typed(*chunks: bytes) -> tuple[list[str], LineEditor, KeyDecoder]:
    """Feed ``chunks`` to a decoder and editor; returns the finished lines."""
    decoder, editor, lines = KeyDecoder(), LineEditor(), []
    for chunk in chunks:
        for key in decoder.feed(chunk):
            if key.text:
                editor.insert(key.text)
            else:
                line = editor.key(key.name)
                if line is not None:
                    lines.append(line)
    return lines, editor, decoder


class KeyDecoderTests(SynchronousTestCase):
    def test_character_split_over_reads(self) -> None:
        data = "Grüße 😀 日本語\r".encode()
        lines, _editor, decoder = typed(*(data[index : index + 1] for index in range(len(data))))
        self.assertEqual(lines, ["Grüße 😀 日本語"])
        self.assertEqual(decoder.invalid, 0)

    def test_bytes_that_are_not_utf8_are_counted(self) -> None:
        lines, _editor, decoder = typed(b"caf\xe9\r")
        self.assertEqual(lines, ["caf\ufffd"])
        self.assertEqual(decoder.invalid, 1)

    def test_escape_sequences_split_over_reads(self) -> None:
        self.assertEqual(KeyDecoder().feed(b"ab\x1b"), [Key(text="ab")])
        decoder = KeyDecoder()
        decoder.feed(b"\x1b[")
        self.assertEqual(decoder.feed(b"D"), [Key(name=lineedit.LEFT)])
        self.assertEqual(KeyDecoder().feed(b"\x1b[3~\x1b[1;5C\x1bOH"), [Key(name=lineedit.DELETE), Key(name=lineedit.RIGHT), Key(name=lineedit.HOME)])

    def test_unknown_sequences_are_not_text(self) -> None:
        decoder = KeyDecoder()
        self.assertEqual(decoder.feed(b"\x1b[15~x"), [Key(text="x")])
        self.assertEqual(decoder.ignored, 1)

    def test_bracketed_paste_keeps_line_breaks_and_escapes(self) -> None:
        decoder = KeyDecoder()
        self.assertEqual(decoder.feed(b"\x1b[200~one\r\ntwo\x1b[D"), [])
        self.assertEqual(decoder.feed(b"\x1b[20"), [])
        self.assertEqual(decoder.feed(b"1~\r"), [Key(text="one\ntwo\x1b[D"), Key(name=lineedit.ENTER)])

    def test_paste_is_capped(self) -> None:
        decoder = KeyDecoder()
        decoder.feed(b"\x1b[200~" + b"x" * (lineedit.MAX_PASTE + 10))
        keys = decoder.feed(b"\x1b[201~")
        self.assertEqual(len(keys[0].text), lineedit.MAX_PASTE)
        self.assertEqual(decoder.ignored, 10)


class ClusterTests(SynchronousTestCase):
    def test_clusters(self) -> None:
        self.assertEqual(clusters("e\u0301a"), ["e\u0301", "a"])
        self.assertEqual(clusters("👩‍👩‍👧👋🏽"), ["👩‍👩‍👧", "👋🏽"])
        self.assertEqual(clusters("🇯🇵🇫🇷"), ["🇯🇵", "🇫🇷"])
        self.assertEqual(clusters("1\ufe0f\u20e3"), ["1\ufe0f\u20e3"])
        self.assertEqual(clusters("क्षि"), ["क्", "षि"])

    def test_widths(self) -> None:
        self.assertEqual(text_width("abc"), 3)
        self.assertEqual(text_width("日本語"), 6)
        self.assertEqual(text_width("😀👩‍👩‍👧🇯🇵"), 6)
        self.assertEqual(text_width("e\u0301"), 1)
        self.assertEqual(text_width("שלום"), 4)


class LineEditorTests(SynchronousTestCase):
    def test_combining_mark_typed_after_its_letter_joins_it(self) -> None:
        editor = LineEditor()
        editor.insert("e")
        editor.insert("\u0301")
        self.assertEqual(editor.chars, ["e\u0301"])
        editor.key(lineedit.BACKSPACE)
        self.assertEqual(editor.text, "")

    def test_history(self) -> None:
        lines, editor, _decoder = typed(b"one\rtwo\rdraft\x1b[A\x1b[A")
        self.assertEqual(editor.text, "one")
        editor.key(lineedit.DOWN)
        editor.key(lineedit.DOWN)
        self.assertEqual(editor.text, "draft")
        self.assertEqual(lines, ["one", "two"])

    def test_render_counts_columns_and_scrolls(self) -> None:
        editor = LineEditor()
        editor.insert("日本語")
        self.assertEqual(editor.render(20), ("日本語", 6))
        editor.key(lineedit.LEFT)
        self.assertEqual(editor.render(20), ("日本語", 4))
        editor.set_text("x" * 100)
        shown, column = editor.render(20)
        self.assertEqual((shown[0], len(shown), column), ("…", 19, 19))  # and the cursor's cell
        editor.key(lineedit.HOME)
        shown, column = editor.render(20)
        self.assertEqual((shown[-1], column), ("…", 0))
        self.assertLessEqual(text_width(shown), 20)

    def test_render_never_overflows(self) -> None:
        editor = LineEditor()
        editor.set_text("日本語x" * 40)
        for position in range(len(editor.chars) + 1):
            editor.cursor = position
            for columns in (7, 8, 20):
                shown, column = editor.render(columns)
                self.assertLessEqual(text_width(shown), columns, (position, columns))
                self.assertLess(column, columns)

    def test_pasted_line_break_is_drawn_visibly_beside_a_joiner_or_mark(self) -> None:
        # A line break after a zero-width joiner or before a combining mark is still drawn
        # as a symbol: a real line break would move the terminal's cursor off the line.
        editor = LineEditor()
        editor.insert("a\u200d\nb\n\u0301c\u200d\t")
        shown, _ = editor.render(40)
        self.assertNotIn("\n", shown)
        self.assertNotIn("\t", shown)
        self.assertEqual(editor.text, "a\u200d\nb\n\u0301c\u200d\t")

    def test_deleting_between_two_flag_halves_joins_them(self) -> None:
        # Deleting the "x" of "F x R" (regional indicators) leaves the flag FR: one
        # character of two columns as the terminal draws it, not two half-flags of two
        # columns each (the cursor would be drawn two columns too far right).
        flag_f, flag_r = "\U0001f1eb", "\U0001f1f7"
        for name, cursor in ((lineedit.BACKSPACE, 2), (lineedit.DELETE, 1)):
            editor = LineEditor()
            editor.set_text(flag_f + "x" + flag_r)
            editor.cursor = cursor
            editor.key(name)
            self.assertEqual(editor.chars, [flag_f + flag_r], name)
            self.assertEqual(editor.cursor, 1, name)
            self.assertEqual(editor.render(20), (flag_f + flag_r, 2), name)

    def test_line_breaks_and_tabs_are_drawn_visibly(self) -> None:
        editor = LineEditor()
        editor.insert("a\nb\tc")
        self.assertEqual(editor.render(20)[0], "a\u21b5b\u21e5c")


class ChatViewTests(SynchronousTestCase):
    def view(self) -> tuple[ChatView, list[str]]:
        shown: list[str] = []
        return ChatView(Identity.parse("bob@example.org"), shown.append), shown

    def test_commands(self) -> None:
        self.assertEqual(interpret("/help"), ("help", ""))
        self.assertEqual(interpret("/quit now"), ("quit", ""))
        self.assertEqual(interpret("/nope x"), ("unknown", "/nope"))
        self.assertEqual(interpret("//x"), ("send", "/x"))
        self.assertEqual(interpret("  "), ("nothing", ""))
        self.assertEqual(interpret("hi /there"), ("send", "hi /there"))

    def test_receipt_of_a_message_not_seen_here(self) -> None:
        view, shown = self.view()
        view.event({"event": "receipt", "id": "x", "to": "bob@example.org"})
        self.assertEqual(shown, ["-- an earlier message delivered"])

    def test_queued_then_receipt_and_failure_reason(self) -> None:
        view, shown = self.view()
        events: list[dict[str, Any]] = [
            {"event": "queued", "id": "a", "to": "bob@example.org", "text": "hello"},
            {"event": "receipt", "id": "a", "to": "bob@example.org"},
            {"event": "queued", "id": "b", "to": "bob@example.org", "text": "two\nlines"},
            {"event": "undelivered", "id": "b", "to": "bob@example.org", "error": "you are blocked"},
            {"event": "queued", "id": "c", "to": "carol@example.org", "text": "not here"},
        ]
        for event in events:
            view.event(event)
        self.assertEqual(len(shown), 4)
        self.assertTrue(shown[0].endswith("#1] you: hello"))
        self.assertEqual(shown[1], "-- #1 delivered")
        self.assertIn("you: two\n", shown[2])
        self.assertEqual(shown[3], "-- #2 NOT delivered: you are blocked")

    def test_control_characters_are_not_written(self) -> None:
        self.assertEqual(printable("a\x1b[2J\x9b1m\x07b\nc"), "a\ufffd[2J\ufffd1m\ufffdb\nc")


class _ShutdownRecordingReactor:
    """The real reactor, except that "before shutdown" triggers are kept to be run by the
    test (as the reactor runs them when it stops, e.g. on SIGTERM)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.before_shutdown: dict[object, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def addSystemEventTrigger(self, phase: str, event: str, call: Any, *args: Any) -> object:
        handle = object()
        if (phase, event) == ("before", "shutdown"):
            self.before_shutdown[handle] = lambda: call(*args)
            return handle
        return self._reactor.addSystemEventTrigger(phase, event, call, *args)

    def removeSystemEventTrigger(self, handle: object) -> None:
        if self.before_shutdown.pop(handle, None) is None:
            self._reactor.removeSystemEventTrigger(handle)


class TerminalModeTests(TestCase):
    async def test_reactor_stopping_mid_chat_restores_the_terminal(self) -> None:
        import os
        import pty
        import termios

        from twisted.internet import reactor as real_reactor
        from twisted.internet.defer import Deferred

        from sixchat.chatui import run_chat

        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        cooked = termios.tcgetattr(slave)
        history: Deferred[Any] = Deferred()

        class Control:
            on_event: Any = None

            def call(self, name: str, **kwargs: Any) -> Deferred[Any]:
                return history  # the agent has not answered yet

        reactor = _ShutdownRecordingReactor(real_reactor)
        chat = Deferred.fromCoroutine(
            run_chat(reactor, Control(), Identity.parse("bob@example.org"), stdin=slave, stdout=slave, linger=0)
        )
        self.assertNotEqual(termios.tcgetattr(slave), cooked)  # raw while chatting
        # The reactor stops now (SIGTERM): what it runs before shutting down leaves raw mode.
        for call in list(reactor.before_shutdown.values()):
            call()
        self.assertEqual(termios.tcgetattr(slave), cooked)
        history.errback(ConnectionError("stopped"))
        with self.assertRaises(ConnectionError):
            await chat


class PipeLineTests(SynchronousTestCase):
    """``sixchat chat`` reading a pipe: every line is a message, the last one too."""

    def test_last_line_without_newline_is_sent(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import StringTransport

        from sixchat.chatui import _PipeLine

        sent: list[str] = []
        pipe = _PipeLine(sent.append, Deferred())
        pipe.makeConnection(StringTransport())
        pipe.dataReceived("first\nGrüße 😀".encode())
        pipe.connectionLost()
        self.assertEqual(sent, ["first", "Grüße 😀"])

    def test_no_empty_message_at_the_end(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import StringTransport

        from sixchat.chatui import _PipeLine

        sent: list[str] = []
        pipe = _PipeLine(sent.append, Deferred())
        pipe.makeConnection(StringTransport())
        pipe.dataReceived(b"one\r\n")
        pipe.connectionLost()
        self.assertEqual(sent, ["one"])
