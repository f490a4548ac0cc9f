"""Tests for :mod:`sixchat.wire.fields`: SixChat's strict checks (canonical base64)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.wire import fields


class FieldTests(TestCase):
    """The checks raise MalformedMessage; base64 is canonical."""

    def test_decode_base64(self) -> None:
        self.assertEqual(fields.decode_base64("AAE=", "x"), b"\x00\x01")
        for bad in ("AAF=", "AAE", "AA E=", "AAE=\n", "é", "", "AB=="):
            self.assertRaises(
                errors.MalformedMessage, fields.decode_base64, bad, "x", max_length=10
            )
        self.assertRaises(errors.MalformedMessage, fields.decode_base64, "AAE=", "x", length=3)

    def test_token(self) -> None:
        self.assertEqual(fields.token("SIXCHAT1-X.y_z", "a suite"), "SIXCHAT1-X.y_z")
        for bad in ("", "-a", "a b", "x" * 65):
            self.assertRaises(errors.MalformedMessage, fields.token, bad, "a suite")
