"""Tests for :mod:`sixchat.agent.outbox` (unit level; delivery between real agents is in
test_service and test_delivery)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import TestCase

from common.identity import Identity
from sixchat import errors
from sixchat.agent.outbox import Outbox
from sixchat.wire.application import MAX_TEXT_LENGTH

ALICE = Identity.parse("alice@example.org")
BOB = Identity.parse("bob@example.org")


class UntouchedStore:
    """A store that fails any call: refusals happen before anything is stored."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was used ({name})")


def outbox() -> Outbox:
    agent: Any = SimpleNamespace(store=UntouchedStore(), identity=ALICE)
    return Outbox(agent)


class RefusalTests(TestCase):
    """What can never be sent is refused at once, not queued; refusals are not fatal."""

    async def test_to_oneself(self) -> None:
        with self.assertRaises(errors.SelfConnection):
            await outbox().send_text(ALICE, "hello me")

    async def test_too_long(self) -> None:
        with self.assertRaises(errors.MessageTooLarge) as caught:
            await outbox().send_text(BOB, "x" * (MAX_TEXT_LENGTH + 1))
        self.assertFalse(caught.exception.fatal)

    async def test_not_xml_text(self) -> None:
        with self.assertRaises(errors.MalformedMessage) as caught:
            await outbox().send_text(BOB, "bell \x07")
        self.assertFalse(caught.exception.fatal)

    def test_forget_unknown_connection(self) -> None:
        outbox().forget(SimpleNamespace())  # type: ignore[arg-type]
