"""Tests for :mod:`sixchat.agent.responder` (admission itself: test/sixchat/peer/test_admission.py)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from common.wire.framing import FrameDecoder
from sixchat import errors
from sixchat.agent.responder import Refused
from sixchat.wire.handshake import parse_alert


class RefusedTests(TestCase):
    def test_one_clear_alert_then_close(self) -> None:
        transport = StringTransport()
        Refused(errors.RateLimited()).makeConnection(transport)
        [frame] = FrameDecoder(1 << 16).feed(transport.value())
        self.assertIsInstance(parse_alert(frame), errors.RateLimited)
        self.assertTrue(transport.disconnecting)
