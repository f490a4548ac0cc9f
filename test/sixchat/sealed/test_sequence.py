"""Tests for sixchat.sealed.sequence: the replay, reorder and gap rules."""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.sealed.sequence import (
    MAX_MISSING_RANGES,
    MAX_REMEMBERED_IDS,
    Outcome,
    SenderSequence,
    SequenceTracker,
    Verdict,
)
from test.sixchat.sealed.helpers import ALICE, CAROL


def mid(number: int) -> str:
    """A message id for ``number``."""
    return f"00000000-0000-4000-8000-{number:012d}"


class RuleTests(TestCase):
    """new, gap, late, replay."""

    def setUp(self) -> None:
        self.tracker = SequenceTracker()

    def accept(self, seq: int, sender: object = ALICE, message_id: str | None = None) -> Verdict:
        return self.tracker.accept(sender, seq, message_id or mid(seq))  # type: ignore[arg-type]

    def test_in_order(self) -> None:
        for seq in range(1, 6):
            self.assertEqual(self.accept(seq), Verdict(Outcome.NEW))
        self.assertEqual(self.tracker.next_expected(ALICE), 6)
        self.assertEqual(self.tracker.missing(ALICE), [])

    def test_first_message_need_not_be_one(self) -> None:
        """A first message numbered 3: 1 and 2 are missing."""
        verdict = self.accept(3)
        self.assertEqual(verdict, Verdict(Outcome.GAP, range(1, 3)))
        self.assertTrue(verdict.accepted)
        self.assertEqual(self.tracker.missing(ALICE), [range(1, 3)])

    def test_gap_then_late(self) -> None:
        self.accept(1)
        self.assertEqual(self.accept(5), Verdict(Outcome.GAP, range(2, 5)))
        self.assertEqual(self.tracker.missing(ALICE), [range(2, 5)])
        self.assertEqual(self.accept(3), Verdict(Outcome.LATE))
        self.assertEqual(self.tracker.missing(ALICE), [range(2, 3), range(4, 5)])
        self.assertEqual(self.accept(2).outcome, Outcome.LATE)
        self.assertEqual(self.accept(4).outcome, Outcome.LATE)
        self.assertEqual(self.tracker.missing(ALICE), [])
        self.assertEqual(self.accept(6).outcome, Outcome.NEW)

    def test_replay(self) -> None:
        self.accept(1)
        self.accept(2)
        for seq in (1, 2):
            verdict = self.accept(seq)
            self.assertEqual(verdict.outcome, Outcome.REPLAY)
            self.assertFalse(verdict.accepted)
            self.assertRaises(errors.SealedReplayed, verdict.check)
        self.assertEqual(self.tracker.next_expected(ALICE), 3)

    def test_late_message_accepted_once(self) -> None:
        self.accept(3)
        self.assertEqual(self.accept(1).outcome, Outcome.LATE)
        self.assertEqual(self.accept(1).outcome, Outcome.REPLAY)

    def test_id_reused_under_another_number(self) -> None:
        self.accept(1, message_id=mid(1))
        self.assertEqual(self.accept(2, message_id=mid(1)).outcome, Outcome.REPLAY)
        self.assertEqual(self.tracker.next_expected(ALICE), 2)

    def test_senders_are_independent(self) -> None:
        self.accept(1)
        self.assertEqual(self.accept(1, sender=CAROL).outcome, Outcome.NEW)

    def test_classify_records_nothing(self) -> None:
        self.assertEqual(self.tracker.classify(ALICE, 4, mid(4)).outcome, Outcome.GAP)
        self.assertEqual(self.tracker.next_expected(ALICE), 1)
        self.assertIsNone(self.tracker.state(ALICE))
        self.assertEqual(self.accept(1).outcome, Outcome.NEW)

    def test_numbers_out_of_range(self) -> None:
        self.assertRaises(ValueError, self.tracker.accept, ALICE, 0, mid(0))
        self.assertRaises(ValueError, self.tracker.accept, ALICE, 10**12, mid(1))

    def test_missing_ranges_are_capped(self) -> None:
        """Beyond 64 gaps the oldest are forgotten: their messages count as replays."""
        for index in range(MAX_MISSING_RANGES + 2):
            self.accept(2 * index + 2)
        missing = self.tracker.missing(ALICE)
        self.assertEqual(len(missing), MAX_MISSING_RANGES)
        self.assertEqual(missing[0], range(5, 6))
        self.assertEqual(self.accept(1).outcome, Outcome.REPLAY)
        self.assertEqual(self.accept(3).outcome, Outcome.REPLAY)
        self.assertEqual(self.accept(5).outcome, Outcome.LATE)

    def test_splitting_respects_the_cap(self) -> None:
        for index in range(MAX_MISSING_RANGES):
            self.accept(4 * index + 4)
        self.assertEqual(len(self.tracker.missing(ALICE)), MAX_MISSING_RANGES)
        self.assertEqual(self.accept(2).outcome, Outcome.LATE)  # splits 1..3
        self.assertEqual(len(self.tracker.missing(ALICE)), MAX_MISSING_RANGES)

    def test_ids_are_capped(self) -> None:
        for seq in range(1, MAX_REMEMBERED_IDS + 11):
            self.accept(seq)
        state = self.tracker.state(ALICE)
        assert state is not None
        self.assertEqual(len(state.ids), MAX_REMEMBERED_IDS)
        self.assertEqual(state.ids[-1], mid(MAX_REMEMBERED_IDS + 10))
        # An old number is still a replay through its number.
        self.assertEqual(self.accept(1).outcome, Outcome.REPLAY)


class SerialisationTests(TestCase):
    """to_bytes and from_bytes."""

    def test_round_trip(self) -> None:
        tracker = SequenceTracker()
        tracker.accept(ALICE, 1, mid(1))
        tracker.accept(ALICE, 4, mid(4))
        tracker.accept(CAROL, 2, mid(2))
        data = tracker.to_bytes()
        restored = SequenceTracker.from_bytes(data)
        self.assertEqual(restored.to_bytes(), data)
        self.assertEqual(restored.missing(ALICE), [range(2, 4)])
        self.assertEqual(restored.accept(ALICE, 4, mid(40)).outcome, Outcome.REPLAY)
        self.assertEqual(restored.accept(ALICE, 3, mid(3)).outcome, Outcome.LATE)
        self.assertEqual(json.loads(data)["senders"]["alice@example.org"]["next"], 5)

    def test_canonical(self) -> None:
        self.assertEqual(SequenceTracker().to_bytes(), b'{"format":1,"senders":{}}')

    def test_copy_is_independent(self) -> None:
        tracker = SequenceTracker()
        copy = tracker.copy()
        copy.accept(ALICE, 1, mid(1))
        self.assertEqual(tracker.next_expected(ALICE), 1)
        self.assertEqual(copy.next_expected(ALICE), 2)

    def test_state_is_a_copy(self) -> None:
        tracker = SequenceTracker()
        tracker.accept(ALICE, 3, mid(3))
        state = tracker.state(ALICE)
        assert state is not None
        state.missing.clear()
        self.assertEqual(tracker.missing(ALICE), [range(1, 3)])

    def test_invalid(self) -> None:
        good = {"next": 5, "missing": [[2, 3]], "ids": [mid(1)]}
        for document in (
            b"not json",
            b"\xff",
            b"[]",
            b'{"format":2,"senders":{}}',
            b'{"format":1}',
            b'{"format":1,"senders":[],"x":1}',
            b'{"format":1,"senders":{"Alice":' + json.dumps(good).encode() + b"}}",
        ):
            self.assertRaises(ValueError, SequenceTracker.from_bytes, document)
        for state in (
            {**good, "extra": 1},
            {**good, "next": 0},
            {**good, "next": True},
            {**good, "missing": [[3, 2]]},
            {**good, "missing": [[2, 5]]},
            {**good, "missing": [[2, 3], [3, 4]]},
            {**good, "missing": [[1, 1]] * 65},
            {**good, "missing": [["2", 3]]},
            {**good, "ids": [1]},
            {**good, "ids": "x"},
        ):
            self.assertRaises(ValueError, SenderSequence.from_json, state)
        self.assertEqual(SenderSequence.from_json(good).to_json(), good)
