"""common.timeutil: RFC 3339 UTC time stamps."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from common.timeutil import format_timestamp, from_datetime, parse_timestamp, to_datetime


class TimestampTests(SynchronousTestCase):
    def test_format(self) -> None:
        self.assertEqual(format_timestamp(0), "1970-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(1795320216), "2026-11-22T04:03:36Z")

    @given(st.integers(min_value=0, max_value=253402300799))
    def test_round_trip(self, seconds: int) -> None:
        text = format_timestamp(seconds)
        self.assertEqual(parse_timestamp(text), seconds)
        self.assertEqual(text, datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def test_refused(self) -> None:
        for text in ("", "2026-11-22", "2026-11-22T04:03:36", "2026-11-22T04:03:36+00:00", "yesterday"):
            self.assertRaises(ValueError, parse_timestamp, text)

    def test_datetimes(self) -> None:
        moment = to_datetime(1795320216)
        self.assertEqual(moment.tzinfo, timezone.utc)
        self.assertEqual(from_datetime(moment), 1795320216)
