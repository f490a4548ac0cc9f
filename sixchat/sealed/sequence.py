"""The recipient's replay, reorder and gap rules for sealed messages (docs/sealed.rst,
"Sequence numbers").

Each sender numbers the sealed messages it sends to one recipient 1, 2, 3... (signed in the
envelope). For each sender the recipient keeps the next number it expects, the numbers it
skipped (ranges, "missing") and the last message ids it accepted. A message is:

* **new**: its number is the next expected one; accepted;
* **gap**: its number is beyond the next expected one; accepted, and the numbers skipped
  become missing (delayed, lost, or withheld by an intermediary: the user is told);
* **late**: its number is a missing one (delivered out of order); accepted once, and no
  longer missing;
* **replay**: its number was accepted already or is below every number still tracked, or
  its id was accepted already; refused (:class:`~sixchat.errors.SealedReplayed`).

The tracker is pure and serialisable (:meth:`SequenceTracker.to_bytes`): the agent stores it
in the same transaction as the message it accepted, so that a crash can neither lose a
message nor let it be accepted twice. :meth:`SequenceTracker.classify` judges without
recording, :meth:`SequenceTracker.accept` records.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from common.identity import Identity
from sixchat import errors

#: The most missing ranges kept per sender; beyond it the oldest are forgotten (a message
#: from a forgotten range then counts as a replay).
MAX_MISSING_RANGES: Final = 64
#: The most accepted message ids kept per sender (the newest).
MAX_REMEMBERED_IDS: Final = 256
#: The largest sequence number (as in envelopes).
MAX_SEQUENCE: Final = 10**12 - 1
_FORMAT: Final = 1


class Outcome(enum.Enum):
    """What a sequence number means (see the module documentation)."""

    NEW = "new"
    GAP = "gap"
    LATE = "late"
    REPLAY = "replay"


@dataclass(frozen=True)
class Verdict:
    """The judgement of one message; ``missing`` (for GAP) is the range of numbers skipped."""

    outcome: Outcome
    missing: range = range(0)

    @property
    def accepted(self) -> bool:
        """True unless the message is a replay."""
        return self.outcome is not Outcome.REPLAY

    def check(self) -> None:
        """Raise SealedReplayed for a replay."""
        if self.outcome is Outcome.REPLAY:
            raise errors.SealedReplayed()


@dataclass
class SenderSequence:
    """What the recipient remembers about one sender."""

    next_seq: int = 1
    #: Disjoint inclusive ranges (first, last), ascending, all below ``next_seq``.
    missing: list[tuple[int, int]] = field(default_factory=list)
    #: The newest accepted message ids, oldest first.
    ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``next``, ``missing``, ``ids``)."""
        return {"next": self.next_seq, "missing": [list(pair) for pair in self.missing], "ids": list(self.ids)}

    @classmethod
    def from_json(cls, data: Any) -> SenderSequence:
        """The inverse of :meth:`to_json`; ValueError if the data breaks an invariant."""
        if not isinstance(data, dict) or set(data) != {"next", "missing", "ids"}:
            raise ValueError("a sender's sequence state needs exactly next, missing, ids")
        next_seq, missing, ids = data["next"], data["missing"], data["ids"]
        if not _is_int(next_seq) or not 1 <= next_seq <= MAX_SEQUENCE + 1:
            raise ValueError("next is out of range")
        if not isinstance(missing, list) or len(missing) > MAX_MISSING_RANGES:
            raise ValueError("missing must be a list of at most 64 ranges")
        pairs: list[tuple[int, int]] = []
        previous = 0
        for pair in missing:
            if not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_int, pair))):
                raise ValueError("a missing range is two integers")
            first, last = pair
            if not previous < first <= last < next_seq:
                raise ValueError("missing ranges must be ascending, disjoint, below next")
            pairs.append((first, last))
            previous = last + 1
        if not isinstance(ids, list) or len(ids) > MAX_REMEMBERED_IDS or not all(
            isinstance(item, str) for item in ids
        ):
            raise ValueError("ids must be a list of at most 256 strings")
        return cls(next_seq, pairs, list(ids))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SequenceTracker:
    """Per-sender sequence state of one recipient (see the module documentation)."""

    def __init__(self, senders: dict[Identity, SenderSequence] | None = None) -> None:
        self._senders: dict[Identity, SenderSequence] = dict(senders or {})

    def classify(self, sender: Identity, seq: int, message_id: str) -> Verdict:
        """Judge a message without recording it."""
        if not 1 <= seq <= MAX_SEQUENCE:
            raise ValueError(f"a sequence number is from 1 to {MAX_SEQUENCE}")
        state = self._senders.get(sender)
        if state is None:
            state = SenderSequence()
        if message_id in state.ids:
            return Verdict(Outcome.REPLAY)
        if seq == state.next_seq:
            return Verdict(Outcome.NEW)
        if seq > state.next_seq:
            return Verdict(Outcome.GAP, range(state.next_seq, seq))
        if any(first <= seq <= last for first, last in state.missing):
            return Verdict(Outcome.LATE)
        return Verdict(Outcome.REPLAY)

    def accept(self, sender: Identity, seq: int, message_id: str) -> Verdict:
        """Judge a message and record it unless it is a replay."""
        verdict = self.classify(sender, seq, message_id)
        if not verdict.accepted:
            return verdict
        state = self._senders.setdefault(sender, SenderSequence())
        if verdict.outcome is Outcome.LATE:
            state.missing = list(_without(state.missing, seq))
        else:
            if verdict.outcome is Outcome.GAP:
                state.missing.append((state.next_seq, seq - 1))
            state.next_seq = seq + 1
        del state.missing[:-MAX_MISSING_RANGES]
        state.ids.append(message_id)
        del state.ids[:-MAX_REMEMBERED_IDS]
        return verdict

    def missing(self, sender: Identity) -> list[range]:
        """The numbers of ``sender``'s messages skipped and not received since."""
        state = self._senders.get(sender)
        return [range(first, last + 1) for first, last in state.missing] if state else []

    def next_expected(self, sender: Identity) -> int:
        """The number the next new message from ``sender`` should carry."""
        state = self._senders.get(sender)
        return state.next_seq if state else 1

    def state(self, sender: Identity) -> SenderSequence | None:
        """A copy of what is remembered about ``sender`` (None if nothing)."""
        state = self._senders.get(sender)
        if state is None:
            return None
        return SenderSequence(state.next_seq, list(state.missing), list(state.ids))

    def copy(self) -> SequenceTracker:
        """An independent copy (judge on it, keep it if the store commits)."""
        return SequenceTracker.from_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces), UTF-8."""
        document = {
            "format": _FORMAT,
            "senders": {str(sender): state.to_json() for sender, state in self._senders.items()},
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SequenceTracker:
        """Read :meth:`to_bytes`' output; ValueError if it is not valid."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("the sequence state is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError("unknown sequence state format")
        senders = document.get("senders")
        if set(document) != {"format", "senders"} or not isinstance(senders, dict):
            raise ValueError("the sequence state needs exactly format and senders")
        return cls({Identity.parse(name): SenderSequence.from_json(state) for name, state in senders.items()})


def _without(ranges: list[tuple[int, int]], seq: int) -> Iterator[tuple[int, int]]:
    """``ranges`` with ``seq`` taken out (splitting the range that held it)."""
    for first, last in ranges:
        if first <= seq <= last:
            if first < seq:
                yield first, seq - 1
            if seq < last:
                yield seq + 1, last
        else:
            yield first, last
