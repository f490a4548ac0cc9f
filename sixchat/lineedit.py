"""A sans-I/O line editor for terminals, in full Unicode.

:class:`KeyDecoder` turns the bytes a terminal sends into keys and text: UTF-8 is decoded
incrementally (a character split over two reads is kept whole; bytes that are not UTF-8
become U+FFFD and are counted, so that the caller can say so), escape sequences become named
keys, and bracketed paste (``ESC [ 200 ~`` ... ``ESC [ 201 ~``) becomes one piece of text,
line breaks included.

:class:`LineEditor` holds the line being typed as a list of *characters as the user sees
them* (grapheme clusters: a base with its combining marks, an emoji sequence joined by ZWJ,
with skin tones or variation selectors, a flag made of two regional indicators), so that
Backspace, Delete and the arrows move over one such character, never one byte or one code
point of it. :meth:`LineEditor.render` shows the line in a given number of terminal columns,
counting East Asian wide characters and emoji as two columns and combining marks as none,
and scrolls horizontally when the line is wider than the terminal.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass, field

#: Keys :class:`KeyDecoder` reports by name.
ENTER = "enter"
BACKSPACE = "backspace"
DELETE = "delete"
LEFT = "left"
RIGHT = "right"
UP = "up"
DOWN = "down"
HOME = "home"
END = "end"
KILL_LINE = "kill-line"  # Ctrl-U
KILL_TO_END = "kill-to-end"  # Ctrl-K
INTERRUPT = "interrupt"  # Ctrl-C
EOF = "eof"  # Ctrl-D

#: Most text a paste may hold before the rest is refused (a cap on the buffer).
MAX_PASTE = 1024 * 1024

_CONTROL_KEYS = {
    "\r": ENTER,
    "\n": ENTER,
    "\x7f": BACKSPACE,
    "\x08": BACKSPACE,
    "\x01": HOME,
    "\x05": END,
    "\x02": LEFT,
    "\x06": RIGHT,
    "\x10": UP,
    "\x0e": DOWN,
    "\x15": KILL_LINE,
    "\x0b": KILL_TO_END,
    "\x03": INTERRUPT,
    "\x04": EOF,
}
_CSI_KEYS = {
    "A": UP,
    "B": DOWN,
    "C": RIGHT,
    "D": LEFT,
    "H": HOME,
    "F": END,
    "1~": HOME,
    "7~": HOME,
    "4~": END,
    "8~": END,
    "3~": DELETE,
}
PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"


@dataclass
class Key:
    """A named key (``name``) or text typed or pasted (``text``)."""

    name: str = ""
    text: str = ""


@dataclass
class KeyDecoder:
    """Bytes from a terminal in, :class:`Key` items out."""

    #: How many bytes were not UTF-8 (each became U+FFFD) since the last look.
    invalid: int = 0
    #: Escape sequences and control characters that mean nothing here, since the last look.
    ignored: int = 0
    _decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _pending: str = ""
    _paste: list[str] | None = None
    _paste_size: int = 0

    def feed(self, data: bytes) -> list[Key]:
        """The keys that ``data`` completes (an incomplete character or escape sequence
        waits for the next bytes)."""
        text = self._decoder.decode(data)
        self.invalid += text.count("\ufffd")  # (a U+FFFD typed as such counts too)
        self._pending += text
        keys: list[Key] = []
        while self._pending:
            used = self._paste_step(keys) if self._paste is not None else self._key_step(keys)
            if used == 0:
                break  # an incomplete escape sequence: wait for more
            self._pending = self._pending[used:]
        return _merged(keys)

    def _paste_step(self, keys: list[Key]) -> int:
        assert self._paste is not None
        end = self._pending.find(PASTE_END)
        if end < 0:
            # Keep what might be the start of the end marker.
            keep = next((n for n in range(len(PASTE_END) - 1, 0, -1) if self._pending.endswith(PASTE_END[:n])), 0)
            chunk = self._pending[: len(self._pending) - keep]
            self._add_paste(chunk)
            return len(chunk)
        self._add_paste(self._pending[:end])
        pasted = "".join(self._paste).replace("\r\n", "\n").replace("\r", "\n")
        self._paste = None
        keys.append(Key(text=pasted))
        return end + len(PASTE_END)

    def _add_paste(self, chunk: str) -> None:
        assert self._paste is not None
        room = MAX_PASTE - self._paste_size
        if len(chunk) > room:
            self.ignored += len(chunk) - room
            chunk = chunk[:room]
        self._paste.append(chunk)
        self._paste_size += len(chunk)

    def _key_step(self, keys: list[Key]) -> int:
        pending = self._pending
        first = pending[0]
        if first != "\x1b":
            if first in _CONTROL_KEYS:
                keys.append(Key(name=_CONTROL_KEYS[first]))
            elif first == "\t" or unicodedata.category(first) != "Cc":
                keys.append(Key(text=first))
            else:
                self.ignored += 1
            return 1
        if len(pending) == 1:
            return 0
        if pending[1] not in "[O":
            self.ignored += 1  # Alt plus a key: nothing here; the key itself still counts
            return 1
        # CSI or SS3: parameters and intermediates, then one final byte in @..~
        for index in range(2, min(len(pending), 32)):
            if "\x40" <= pending[index] <= "\x7e":
                body = pending[2 : index + 1]
                name = _CSI_KEYS.get(body) or (_CSI_KEYS[body[-1]] if body[-1] in "ABCDHF" else None)
                if pending[: index + 1] == PASTE_START:
                    self._paste, self._paste_size = [], 0
                elif name is not None:
                    keys.append(Key(name=name))
                else:
                    self.ignored += 1
                return index + 1
        if len(pending) >= 32:
            self.ignored += 1
            return 1
        return 0


def _merged(keys: list[Key]) -> list[Key]:
    """Runs of typed text as one item."""
    merged: list[Key] = []
    for key in keys:
        if key.text and merged and merged[-1].text:
            merged[-1] = Key(text=merged[-1].text + key.text)
        else:
            merged.append(key)
    return merged


# -- characters as the user sees them ------------------------------------------------------

_ZWJ = "\u200d"


def _extends(char: str) -> bool:
    """Whether ``char`` belongs to the character before it."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags)
        or 0x1160 <= code <= 0x11FF  # Hangul medial and final jamo
        or char == _ZWJ
    )


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def clusters(text: str) -> list[str]:
    """``text`` cut into characters as the user sees them."""
    result: list[str] = []
    for char in text:
        # A line break or tab stands alone (it is drawn as a symbol of its own).
        if result and char not in "\n\t" and result[-1] not in ("\n", "\t"):
            last = result[-1]
            joined = last.endswith(_ZWJ)
            flag_half = _regional(char) and len(last) == 1 and _regional(last)
            if joined or flag_half or _extends(char):
                result[-1] = last + char
                continue
        result.append(char)
    return result


def width(cluster: str) -> int:
    """Terminal columns of one cluster: 2 for wide characters and emoji, 0 for a lone
    mark or format character, else 1."""
    first = cluster[0]
    if first in "\t\n":
        return 1  # shown as one symbol
    category = unicodedata.category(first)
    if category in ("Mn", "Me", "Cf") and len(cluster) == 1:
        return 0
    if unicodedata.east_asian_width(first) in ("W", "F") or "\ufe0f" in cluster or _regional(first):
        return 2
    if len(cluster) > 1 and (_ZWJ in cluster or any(0x1F3FB <= ord(c) <= 0x1F3FF for c in cluster)):
        return 2
    return 1


def text_width(text: str) -> int:
    """Terminal columns of ``text``."""
    return sum(width(cluster) for cluster in clusters(text))


def _shown(cluster: str) -> str:
    """How a cluster is drawn in the line being edited (line breaks and tabs visibly)."""
    return {"\n": "\u21b5", "\t": "\u21e5"}.get(cluster, cluster)


@dataclass
class LineEditor:
    """The line being typed, its cursor and the lines typed before (history)."""

    max_history: int = 500
    chars: list[str] = field(default_factory=list)
    cursor: int = 0
    history: list[str] = field(default_factory=list)
    _browsing: int | None = None
    _draft: str = ""

    @property
    def text(self) -> str:
        """The line as typed."""
        return "".join(self.chars)

    def set_text(self, text: str) -> None:
        """Replace the line; the cursor goes to its end."""
        self.chars = clusters(text)
        self.cursor = len(self.chars)

    def insert(self, text: str) -> None:
        """Insert ``text`` at the cursor (clusters are re-formed around it, so that a
        combining mark typed after a letter joins it)."""
        before = "".join(self.chars[: self.cursor]) + text
        after = "".join(self.chars[self.cursor :])
        self.chars = clusters(before + after)
        self.cursor = len(clusters(before))

    def key(self, name: str) -> str | None:
        """Apply an editing key; ENTER returns the finished line (and empties the editor)."""
        if name == ENTER:
            line = self.text
            self.chars, self.cursor, self._browsing = [], 0, None
            if line.strip() and (not self.history or self.history[-1] != line):
                self.history.append(line)
                del self.history[: -self.max_history]
            return line
        if name == BACKSPACE and self.cursor > 0:
            self.cursor -= 1
            del self.chars[self.cursor]
            self.insert("")  # what was on either side may now form one character
        elif name == DELETE and self.cursor < len(self.chars):
            del self.chars[self.cursor]
            self.insert("")
        elif name == LEFT:
            self.cursor = max(0, self.cursor - 1)
        elif name == RIGHT:
            self.cursor = min(len(self.chars), self.cursor + 1)
        elif name == HOME:
            self.cursor = 0
        elif name == END:
            self.cursor = len(self.chars)
        elif name == KILL_LINE:
            del self.chars[: self.cursor]
            self.cursor = 0
        elif name == KILL_TO_END:
            del self.chars[self.cursor :]
        elif name in (UP, DOWN):
            self._browse(-1 if name == UP else 1)
        return None

    def _browse(self, step: int) -> None:
        if not self.history:
            return
        if self._browsing is None:
            if step > 0:
                return
            self._draft, self._browsing = self.text, len(self.history)
        index = self._browsing + step
        if index < 0:
            return
        if index >= len(self.history):
            self._browsing = None
            self.set_text(self._draft)
            return
        self._browsing = index
        self.set_text(self.history[index])

    def render(self, columns: int) -> tuple[str, int]:
        """The part of the line to draw in ``columns`` terminal columns and the column of
        the cursor in it (the view scrolls to keep the cursor visible; ``…`` marks text
        cut off on either side)."""
        columns = max(columns, 4)
        widths = [width(c) for c in self.chars]
        # Start from the cursor and take characters to its left, then to its right.
        start = self.cursor
        used = 0
        room = columns - 1  # the cursor's own column at the end
        while start > 0 and used + widths[start - 1] <= room - (1 if start > 1 else 0):
            start -= 1
            used += widths[start]
        end = self.cursor
        used += 1 if start > 0 else 0  # the "…" on the left
        while end < len(self.chars) and used + widths[end] <= room - (1 if end + 1 < len(self.chars) else 0):
            used += widths[end]
            end += 1
        left = "\u2026" if start > 0 else ""
        right = "\u2026" if end < len(self.chars) else ""
        shown = left + "".join(_shown(c) for c in self.chars[start:end]) + right
        cursor_column = len(left) + sum(widths[start : self.cursor])
        return shown, cursor_column
