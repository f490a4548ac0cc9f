"""The terminal chat of ``sixchat chat``: incoming messages, receipts and presence appear
above the line being typed.

On a terminal the line is edited in raw mode (Twisted's ``recvline``, with history); from a
pipe, each line read is a message and end of input leaves.
"""

from __future__ import annotations

import os
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from irp.identity import Identity

QUIT_COMMANDS = ("/quit", "/exit")
MAX_SHOWN_TEXT = 40


def _stamp(seconds: float | None = None) -> str:
    return time.strftime("%H:%M", time.localtime(seconds if seconds is not None else time.time()))


class ChatView:
    """What the chat shows; independent of how lines are typed."""

    def __init__(self, peer: Identity, write: Callable[[str], None]) -> None:
        self.peer = peer
        self.write = write
        self.sent: dict[str, str] = {}

    def event(self, event: dict[str, Any]) -> None:
        """Show one agent event that concerns this chat."""
        kind = event.get("event")
        who = event.get("from") or event.get("to") or event.get("who")
        if who != str(self.peer):
            return
        if kind == "message":
            self.write(f"[{_stamp(event.get('sent'))}] {self.peer.username}: {event.get('text', '')}")
        elif kind == "receipt":
            self.write(f"           delivered: {self._short(event.get('id'))}")
        elif kind == "undelivered":
            self.write(f"           NOT delivered: {self._short(event.get('id'))}")
        elif kind == "presence":
            self.write(f"-- {self.peer} is {event.get('status')}")
        elif kind == "session":
            state = "connected" if event.get("state") == "up" else "disconnected"
            reason = f" ({event['error']})" if event.get("error") else ""
            self.write(f"-- {state}{reason}")

    def _short(self, message_id: Any) -> str:
        text = self.sent.get(str(message_id), "")
        return text if len(text) <= MAX_SHOWN_TEXT else text[: MAX_SHOWN_TEXT - 1] + "…"

    def history(self, rows: list[dict[str, Any]]) -> None:
        """Show earlier messages."""
        for row in rows:
            speaker = "you" if row["direction"] == "out" else self.peer.username
            state = "" if row["direction"] == "in" or row["state"] == "delivered" else f"  [{row['state']}]"
            self.write(f"[{_stamp(row['sent'])}] {speaker}: {row['text']}{state}")


class _TerminalLine(HistoricRecvLine):
    """Raw-mode line editing; submitted lines go to ``submit``."""

    ps = (b"> ", b"> ")

    def __init__(self, submit: Callable[[str], None], done: Deferred[None]) -> None:
        super().__init__()
        self.submit = submit
        self.done = done

    def initializeScreen(self) -> None:
        """Do not clear the screen: just show the prompt."""
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def show(self, text: str) -> None:
        """Print ``text`` above the line being typed, then redraw that line."""
        terminal = self.terminal
        terminal.eraseLine()
        terminal.write(b"\r" + text.encode("utf-8", "replace") + b"\r\n")
        terminal.write(self.ps[self.pn] + b"".join(self.lineBuffer))
        behind = len(self.lineBuffer) - self.lineBufferIndex
        if behind:
            terminal.cursorBackward(behind)

    def lineReceived(self, line: bytes) -> None:
        """A finished line."""
        self.submit(line.decode("utf-8", "replace"))

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        """Ctrl-C and Ctrl-D leave."""
        if keyID in (b"\x03", b"\x04"):
            if not self.done.called:
                self.done.callback(None)
            return
        super().keystrokeReceived(keyID, modifier)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """End of input."""
        if not self.done.called:
            self.done.callback(None)


class _PipeLine(LineReceiver):
    """Line mode for pipes: each line is a message; end of input leaves."""

    delimiter = b"\n"

    def __init__(self, submit: Callable[[str], None], done: Deferred[None]) -> None:
        self.submit = submit
        self.done = done

    def lineReceived(self, line: bytes) -> None:
        """A line read."""
        self.submit(line.decode("utf-8", "replace").rstrip("\r"))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """End of input."""
        if not self.done.called:
            self.done.callback(None)


async def run_chat(reactor: Any, control: Any, peer: Identity, *, history: int = 20, linger: float = 3.0) -> int:
    """Chat with ``peer`` until the user leaves; returns the exit code."""
    done: Deferred[None] = Deferred()
    interactive = os.isatty(sys.stdin.fileno())
    line_protocol: Any = None
    view = ChatView(peer, lambda text: print(text, flush=True))
    #: Sends not yet answered, and ids of messages without a receipt yet.
    sending: list[Deferred[Any]] = []
    unconfirmed: set[str] = set()
    settled: list[Deferred[None]] = []

    def check_settled() -> None:
        if not unconfirmed and all(call.called for call in sending):
            for waiter in settled:
                if not waiter.called:
                    waiter.callback(None)

    def submit(text: str) -> None:
        if done.called:
            return  # typed after /quit
        if text.strip() in QUIT_COMMANDS:
            done.callback(None)
            return
        if not text.strip():
            return

        def sent(result: dict[str, Any]) -> None:
            view.sent[result["id"]] = text
            unconfirmed.add(result["id"])
            view.write(f"[{_stamp()}] you: {text}")

        def failed(failure: Failure) -> None:
            view.write(f"-- not sent: {failure.getErrorMessage()}")

        call = control.call("send", to=str(peer), text=text)
        sending.append(call)
        call.addCallbacks(sent, failed).addBoth(lambda _: check_settled())

    def on_event(event: dict[str, Any]) -> None:
        view.event(event)
        if event.get("event") in ("receipt", "undelivered"):
            unconfirmed.discard(str(event.get("id")))
            check_settled()

    saved = None
    if interactive:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
        terminal = ServerProtocol(_TerminalLine, submit, done)
        stdio.StandardIO(terminal, reactor=reactor)
        line_protocol = terminal.terminalProtocol
        view.write = lambda text: line_protocol.show(text)
    else:
        stdio.StandardIO(_PipeLine(submit, done), reactor=reactor)
    try:
        view.write(f"Chatting with {peer}. Type a message and press Enter; /quit or Ctrl-D leaves.")
        rows = await control.call("history", who=str(peer), limit=history)
        view.history(rows)
        control.on_event = on_event
        await control.call("subscribe")
        await done
        if sending:
            # Wait (at most ``linger`` seconds) for the receipts of the last messages.
            waiter: Deferred[None] = Deferred()
            settled.append(waiter)

            def give_up() -> None:
                if not waiter.called:
                    waiter.callback(None)

            timer = reactor.callLater(linger, give_up)
            check_settled()
            await waiter
            if timer.active():
                timer.cancel()
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, saved)
            print(flush=True)
    return 0
