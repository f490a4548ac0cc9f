"""``sixchat send --at`` times and the states shown for stored and scheduled messages
(sixchat/schedule.py)."""

from __future__ import annotations

import os
import time
from datetime import datetime

from twisted.trial.unittest import TestCase

from common.cliutil import CommandError
from sixchat.schedule import parse_at, state_text


class ParseAtTests(TestCase):
    def setUp(self) -> None:
        saved = os.environ.get("TZ")
        os.environ["TZ"] = "Europe/Berlin"
        time.tzset()

        def restore() -> None:
            if saved is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = saved
            time.tzset()

        self.addCleanup(restore)
        # 2026-03-10 08:30 in Berlin (UTC+1).
        self.now = datetime.fromisoformat("2026-03-10T08:30:00+01:00").timestamp()

    def test_later_today(self) -> None:
        self.assertEqual(parse_at("09:00", self.now), int(datetime.fromisoformat("2026-03-10T09:00:00+01:00").timestamp()))

    def test_passed_today_means_tomorrow(self) -> None:
        self.assertEqual(parse_at("08:30", self.now), int(datetime.fromisoformat("2026-03-11T08:30:00+01:00").timestamp()))
        self.assertEqual(parse_at("7:05", self.now), int(datetime.fromisoformat("2026-03-11T07:05:00+01:00").timestamp()))

    def test_tomorrow_across_a_clock_change(self) -> None:
        """Berlin moves to summer time on 2026-03-29: 09:00 the next day is UTC+2 then."""
        before = datetime.fromisoformat("2026-03-28T10:00:00+01:00").timestamp()
        self.assertEqual(parse_at("09:00", before), int(datetime.fromisoformat("2026-03-29T09:00:00+02:00").timestamp()))

    def test_iso_8601_with_zone(self) -> None:
        self.assertEqual(parse_at("2026-12-24T09:00Z", self.now), int(datetime.fromisoformat("2026-12-24T09:00:00+00:00").timestamp()))
        self.assertEqual(parse_at("2026-12-24T09:00+05:30", self.now), int(datetime.fromisoformat("2026-12-24T03:30:00+00:00").timestamp()))

    def test_refusals(self) -> None:
        for text, why in (
            ("25:00", "HH:MM"),
            ("tomorrow", "HH:MM"),
            ("2026-12-24T09:00", "needs its zone"),
            ("2026-01-01T09:00Z", "in the past"),
        ):
            with self.assertRaises(CommandError) as caught:
                parse_at(text, self.now)
            self.assertIn(why, str(caught.exception), text)


class StateTextTests(TestCase):
    def test_states(self) -> None:
        self.assertEqual(state_text({"state": "stored", "peer": "bob@example.org"}), "stored at example.org's intermediary")
        self.assertEqual(state_text({"state": "sent", "to": "bob@example.org"}), "sent")
        scheduled = state_text({"state": "scheduled", "peer": "bob@example.org", "deliver_at": 1_800_000_000})
        self.assertTrue(scheduled.startswith("scheduled for 20"), scheduled)
