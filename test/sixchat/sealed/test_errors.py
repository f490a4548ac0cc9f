"""Tests for the 6xx group of sixchat.errors: the sealed-message errors."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.wire import handshake as wire_handshake

EXPECTED = {
    errors.SealedMalformed: ("sealed-malformed", 600),
    errors.SealedBadSignature: ("sealed-bad-signature", 601),
    errors.SealedWrongRecipient: ("sealed-wrong-recipient", 602),
    errors.SealedExpired: ("sealed-expired", 603),
    errors.SealedReplayed: ("sealed-replayed", 604),
    errors.SealedUnknownPrekey: ("sealed-unknown-prekey", 605),
    errors.SealedDecryptFailed: ("sealed-decrypt-failed", 606),
}


class SealedErrorTests(TestCase):
    """Names, codes, lookups and the group tuple."""

    def test_names_and_codes(self) -> None:
        for cls, (name, code) in EXPECTED.items():
            self.assertEqual((cls.name, cls.code), (name, code))
            self.assertTrue(issubclass(cls, errors.SixChatError))
            error = cls()
            self.assertEqual(error.message, cls.default_message)
            self.assertTrue(str(error).endswith(f"[{name}, {code}]"))
            self.assertFalse(error.fatal)
            self.assertIn(cls, errors.error_classes())

    def test_lookup(self) -> None:
        for cls, (name, code) in EXPECTED.items():
            self.assertIs(errors.error_class_for(name, code), cls)
            self.assertIs(errors.error_class_for("sealed-something-new", code), cls)
            self.assertIs(errors.error_class_for(name, 999), cls)

    def test_group(self) -> None:
        self.assertEqual(set(errors.SEALED_ERRORS), set(EXPECTED))
        self.assertEqual(len(errors.SEALED_ERRORS), len(EXPECTED))

    def test_alerts_round_trip(self) -> None:
        """The one error-to-wire place handles them like every other error."""
        for cls in EXPECTED:
            received = wire_handshake.parse_alert(wire_handshake.alert_for(cls("details")))
            self.assertIs(type(received), cls)
            self.assertNotIn("details", received.message)
