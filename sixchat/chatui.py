"""The terminal chat of ``sixchat chat``: incoming messages, receipts and presence appear
above the line being typed.

On a terminal the line is edited in raw mode by :mod:`sixchat.lineedit` (full Unicode: wide
and combining characters, emoji sequences, pasted lines, history), drawn here over Twisted's
standard I/O; from a pipe, each line read is a message and end of input leaves. Lines that
start with ``/`` are commands (``/help`` lists them); ``//`` sends a line starting with ``/``.
Nothing typed is dropped without a word: a line the agent refuses (too long, characters a
message cannot hold) is put back for editing with the reason shown.
"""

from __future__ import annotations

import os
import sys
import termios
import time
import tty
import unicodedata
from collections.abc import Callable
from typing import Any

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from common.identity import Identity
from sixchat import lineedit
from sixchat.schedule import state_text

QUIT_COMMANDS = ("/quit", "/exit")
HELP = (
    "Commands: /help shows this; /quit (or /exit, Ctrl-D on an empty line, Ctrl-C) leaves.",
    "Start a message with // to send a line beginning with /. Paste several lines at once to",
    "send each; a bracketed paste keeps its line breaks in one message. Arrows, Home/End,",
    "Ctrl-A/E/U/K edit the line; Up and Down recall earlier lines.",
)
PROMPT = "> "
#: Longest wait, when the chat ends, for what it has written to reach the terminal.
CLOSE_TIMEOUT = 2.0
#: Enables and disables the terminal's bracketed paste.
PASTE_ON = "\x1b[?2004h"
PASTE_OFF = "\x1b[?2004l"


def _stamp(seconds: float | None = None) -> str:
    return time.strftime("%H:%M", time.localtime(seconds if seconds is not None else time.time()))


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: control characters that a terminal could obey
    (escape sequences, C1 controls such as U+009B) become U+FFFD; line breaks stay."""
    return "".join("\ufffd" if unicodedata.category(char) == "Cc" and char not in "\n\t" else char for char in text)


def interpret(line: str) -> tuple[str, str]:
    """What a finished line asks for: ``("send", text)``, ``("quit", "")``,
    ``("help", "")``, ``("unknown", command)`` or ``("nothing", "")``."""
    if not line.strip():
        return ("nothing", "")
    if line.startswith("//"):
        return ("send", line[1:])
    if line.startswith("/"):
        command = line.split(maxsplit=1)[0]
        if command in QUIT_COMMANDS:
            return ("quit", "")
        if command in ("/help", "/?"):
            return ("help", "")
        return ("unknown", command)
    return ("send", line)


class ChatView:
    """What the chat shows; independent of how lines are typed.

    Every message of this conversation that the agent queues (typed here or sent by another
    command) is shown once, with a number; its receipt or failure refers to that number.
    """

    def __init__(self, peer: Identity, write: Callable[[str], None]) -> None:
        self.peer = peer
        self.write = write
        self.numbers: dict[str, int] = {}
        #: The messages the history showed: their events, if they come too, are not shown
        #: again (the chat subscribes before it reads the history, so none falls between).
        self.shown: set[str] = set()

    def _number(self, message_id: Any) -> int:
        key = str(message_id)
        if key not in self.numbers:
            self.numbers[key] = len(self.numbers) + 1
        return self.numbers[key]

    def _line(self, stamp: str, number: int | None, speaker: str, text: str, suffix: str = "") -> None:
        tag = f"[{stamp} #{number}]" if number is not None else f"[{stamp}]"
        lines = printable(text).split("\n")
        indent = " " * (len(tag) + len(speaker) + 3)
        self.write(f"{tag} {speaker}: {lines[0]}" + "".join(f"\n{indent}{line}" for line in lines[1:]) + suffix)

    def event(self, event: dict[str, Any]) -> None:
        """Show one agent event that concerns this chat (unknown kinds are ignored)."""
        kind = event.get("event")
        who = event.get("from") or event.get("to") or event.get("who")
        if who != str(self.peer):
            return
        reason = event.get("error") or event.get("reason")
        because = f": {printable(str(reason))}" if reason else ""
        if kind in ("message", "queued") and str(event.get("id")) in self.shown:
            return
        if kind == "message":
            self._line(_stamp(event.get("sent")), None, self.peer.username, str(event.get("text", "")))
        elif kind == "queued":
            self._line(_stamp(), self._number(event.get("id")), "you", str(event.get("text", "")))
        elif kind == "receipt":
            self.write(f"-- {self._which(event.get('id'))} delivered")
        elif kind == "undelivered":
            self.write(f"-- {self._which(event.get('id'))} NOT delivered{because}")
        elif kind == "stored":
            self.write(f"-- {self._which(event.get('id'))} stored at {self.peer.domain}'s intermediary; delivered when {self.peer} is online")
        elif kind == "scheduled":
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(event.get("deliver_at") or 0)))
            self.write(f"-- {self._which(event.get('id'))} scheduled for {when} at {self.peer.domain}'s intermediary")
        elif kind == "missing":
            self.write(f"-- {printable(str(event.get('text', '')))}")
        elif kind == "presence":
            self.write(f"-- {self.peer} is {printable(str(event.get('status')))}")
        elif kind == "session":
            state = "connected" if event.get("state") == "up" else "disconnected"
            self.write(f"-- {state}{' (' + because[2:] + ')' if because else ''}")

    def _which(self, message_id: Any) -> str:
        if str(message_id) in self.numbers:
            return f"#{self.numbers[str(message_id)]}"
        return "an earlier message"

    def history(self, rows: list[dict[str, Any]]) -> None:
        """Show earlier messages."""
        for row in rows:
            if "id" in row:
                self.shown.add(str(row["id"]))
            mine = row["direction"] == "out"
            state = "" if not mine or row["state"] == "delivered" else f"  [{state_text(row)}]"
            number = self._number(row["id"]) if mine and "id" in row else None
            self._line(_stamp(row["sent"]), number, "you" if mine else self.peer.username, row["text"], state)


class TerminalChat(Protocol):
    """Raw-mode line editing on a terminal; finished lines go to ``submit``."""

    def __init__(self, submit: Callable[[str], None], done: Deferred[None], out_fd: int) -> None:
        self.submit = submit
        self.done = done
        self.out_fd = out_fd
        self.keys = lineedit.KeyDecoder()
        self.editor = lineedit.LineEditor()
        #: Fires once the terminal is closed (everything written).
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """Turn bracketed paste on and show the prompt."""
        self._write(PASTE_ON)
        self.redraw()

    def _write(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8"))

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.out_fd).columns
        except OSError:
            return 80

    def redraw(self) -> None:
        """Draw the line being edited, with the cursor where it is in the line."""
        shown, column = self.editor.render(self._columns() - len(PROMPT) - 1)
        column += len(PROMPT)
        self._write("\r\x1b[K" + PROMPT + printable(shown) + "\r" + (f"\x1b[{column}C" if column else ""))

    def show(self, text: str) -> None:
        """Print ``text`` above the line being typed, then redraw that line."""
        self._write("\r\x1b[K" + "\r\n".join(text.split("\n")) + "\r\n")
        self.redraw()

    def restore(self, text: str) -> bool:
        """Put ``text`` back on the line if nothing else is being typed (returns whether)."""
        if self.editor.text:
            return False
        self.editor.set_text(text)
        self.redraw()
        return True

    def dataReceived(self, data: bytes) -> None:
        """Keys and text from the terminal."""
        for key in self.keys.feed(data):
            if key.text:
                self.editor.insert(key.text)
            elif key.name == lineedit.INTERRUPT or (key.name == lineedit.EOF and not self.editor.text):
                self._leave()
                return
            elif key.name == lineedit.EOF:
                self.editor.key(lineedit.DELETE)
            else:
                line = self.editor.key(key.name)
                if line is not None:
                    self.redraw()
                    self.submit(line)
                    if self.done.called:
                        return
        if self.keys.invalid:
            self.show(f"-- {self.keys.invalid} byte(s) typed were not UTF-8 and became \ufffd (is the terminal set to UTF-8?)")
            self.keys.invalid = 0
        self.redraw()

    def _leave(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        """Turn bracketed paste off and leave the cursor on a fresh line."""
        self._write("\r\x1b[K" + PASTE_OFF)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """End of input, or the end of the chat."""
        self._leave()
        if not self.lost.called:
            self.lost.callback(None)


class _PipeLine(LineReceiver):
    """Line mode for pipes: each line is a message; end of input leaves."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, submit: Callable[[str], None], done: Deferred[None]) -> None:
        self.submit = submit
        self.done = done
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        """A line read."""
        self.submit(line.decode("utf-8", "replace").rstrip("\r"))

    def lineLengthExceeded(self, line: bytes) -> None:
        """Say so rather than drop it silently."""
        print(f"-- not sent: a line longer than {self.MAX_LENGTH} bytes", flush=True)
        super().lineLengthExceeded(line)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """End of input; a last line without its newline is a line too."""
        rest = self.clearLineBuffer()
        if rest.strip(b"\r"):
            self.lineReceived(rest)
        if not self.done.called:
            self.done.callback(None)
        if not self.lost.called:
            self.lost.callback(None)


async def run_chat(
    reactor: Any,
    control: Any,
    peer: Identity,
    *,
    history: int = 20,
    linger: float = 3.0,
    stdin: int | None = None,
    stdout: int | None = None,
    send_to: str | None = None,
) -> int:
    """Chat with ``peer`` until the user leaves; returns the exit code. ``stdin`` and
    ``stdout`` are file descriptors (the process's own by default). Messages are sent to
    ``send_to`` (one of ``peer``'s devices, ``ID@domain``) if given, else to ``peer``."""
    in_fd = sys.stdin.fileno() if stdin is None else stdin
    out_fd = sys.stdout.fileno() if stdout is None else stdout
    done: Deferred[None] = Deferred()
    interactive = os.isatty(in_fd)
    terminal: TerminalChat | None = None
    view = ChatView(peer, lambda text: print(printable(text), flush=True))
    #: Sends not yet answered, and ids of messages without a receipt yet.
    sending: list[Deferred[Any]] = []
    unconfirmed: set[str] = set()
    settled: list[Deferred[None]] = []

    def check_settled() -> None:
        if not unconfirmed and all(call.called for call in sending):
            for waiter in settled:
                if not waiter.called:
                    waiter.callback(None)

    #: Lines finished before the chat is subscribed to the agent's events wait here, so
    #: that their messages and receipts are shown.
    early: list[str] = []
    subscribed = False
    quitting = False

    def submit(line: str) -> None:
        nonlocal quitting
        if quitting:
            return  # typed after /quit
        if not subscribed:
            early.append(line)
            return
        action, text = interpret(line)
        if action == "quit":
            quitting = True
            if not done.called:
                done.callback(None)
        elif action == "help":
            for help_line in HELP:
                view.write(help_line)
        elif action == "unknown":
            view.write(f"-- unknown command {printable(text)} (not sent; /help lists the commands, // sends a line starting with /)")
        elif action == "send":
            send(text, line)

    def send(text: str, typed: str) -> None:
        def sent(result: dict[str, Any]) -> None:
            view._number(result["id"])
            unconfirmed.add(result["id"])

        def failed(failure: Failure) -> None:
            kept = terminal.restore(typed) if terminal is not None else False
            where = "the line is back for editing" if kept else "Up recalls the line" if terminal is not None else "the line was not sent"
            view.write(f"-- not sent: {failure.getErrorMessage()} ({where})")

        call = control.call("send", to=send_to or str(peer), text=text)
        sending.append(call)
        call.addCallbacks(sent, failed).addBoth(lambda _: check_settled())

    def on_event(event: dict[str, Any]) -> None:
        view.event(event)
        if event.get("event") in ("receipt", "undelivered", "stored", "scheduled"):
            unconfirmed.discard(str(event.get("id")))
            check_settled()

    saved = None
    # The chat's own descriptors: closing them at the end (which waits until all is written)
    # leaves the process's standard input and output open.
    stdio_in, stdio_out = os.dup(in_fd), os.dup(out_fd)
    if interactive:
        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd)
        terminal = TerminalChat(submit, done, out_fd)
        reader: TerminalChat | _PipeLine = terminal
        # (mypy reads the Windows signature of StandardIO, without stdin and stdout)
        transport = stdio.StandardIO(terminal, stdin=stdio_in, stdout=stdio_out, reactor=reactor)  # type: ignore[call-arg]
        view.write = terminal.show

        def leave_terminal() -> None:
            # The reactor stops before the chat ends (SIGTERM): the terminal must not stay raw.
            try:
                os.write(out_fd, ("\r\n" + PASTE_OFF).encode("utf-8"))
            except OSError:
                pass
            termios.tcsetattr(in_fd, termios.TCSANOW, saved)

        shutdown_trigger = reactor.addSystemEventTrigger("before", "shutdown", leave_terminal)
    else:
        reader = _PipeLine(submit, done)
        transport = stdio.StandardIO(reader, stdin=stdio_in, stdout=stdio_out, reactor=reactor)  # type: ignore[call-arg]
    try:
        view.write(f"Chatting with {peer}. Type a message and press Enter; /help for commands, /quit or Ctrl-D leaves.")
        # Subscribe first, keeping the events, then read the history: a message queued or
        # received in between is in one or the other (or both: shown once), never in neither.
        waiting_events: list[dict[str, Any]] = []
        control.on_event = waiting_events.append
        await control.call("subscribe")
        rows = await control.call("history", who=str(peer), limit=history)
        view.history(rows)
        control.on_event = on_event
        for event in waiting_events:
            on_event(event)
        subscribed = True
        for line in early:
            submit(line)
        await done
        if sending:
            # Wait (at most ``linger`` seconds) for the receipts of the last messages.
            waiter: Deferred[None] = Deferred()
            settled.append(waiter)
            waiter.addTimeout(linger, reactor, onTimeoutCancel=_no_result)
            check_settled()
            await waiter
    finally:
        control.on_event = lambda event: None
        if terminal is not None:
            terminal.close()
        transport.loseConnection()
        await _within(reactor, reader.lost, CLOSE_TIMEOUT)
        if saved is not None:
            reactor.removeSystemEventTrigger(shutdown_trigger)
            termios.tcsetattr(in_fd, termios.TCSANOW, saved)
    return 0


async def _within(reactor: Any, waiter: Deferred[None], seconds: float) -> None:
    """Wait for ``waiter``, at most ``seconds`` (then it fires with None)."""
    await waiter.addTimeout(seconds, reactor, onTimeoutCancel=_no_result)


def _no_result(_result: object, _timeout: float) -> None:
    """A wait that timed out ends without a result (not with an error)."""
    return None
