# mypy: allow-untyped-calls
"""Tests for :mod:`sixchat.wire.application`: application messages and the close."""

from __future__ import annotations

import datetime

from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.wire import application


class CodecTests(TestCase):
    """Round trips and the parser's own rules."""

    def test_close_round_trip(self) -> None:
        self.assertEqual(application.parse_close(application.encode_close("x y")), "x y")

    def test_time(self) -> None:
        moment = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)
        self.assertEqual(application.format_time(moment), "2026-03-04T05:06:07.89Z")
        self.assertEqual(application.parse_time("2026-03-04T05:06:07.89Z"), moment)
        self.assertEqual(
            application.format_time(moment.replace(microsecond=0)), "2026-03-04T05:06:07Z"
        )
        for bad in ("2026-13-01T00:00:00Z", "2026-03-04 05:06:07Z", "2026-03-04T05:06:07"):
            self.assertRaises(errors.MalformedMessage, application.parse_time, bad)

    def test_presence_status_checked(self) -> None:
        self.assertRaises(ValueError, application.Presence, "invisible")

    def test_element_checks(self) -> None:
        self.assertRaises(errors.MalformedMessage, application.read_application_element, "ping")
