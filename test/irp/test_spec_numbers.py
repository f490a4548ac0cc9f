"""Numbers docs/irp.rst states, checked against a real registry with the shipped defaults
(issue 9, item 24: the spec says one thing about each)."""

from __future__ import annotations

from twisted.trial import unittest

from irp import errors
from irp.server.registry import RegistryConfig
from test.helpers import RunningRegistry


class LoginLockoutTests(unittest.TestCase):
    """Rate limits and lock-outs: with the default --login-failures 5, a guesser of one
    user name gets six login-failed answers, and the seventh attempt is rate-limited."""

    async def test_six_failures_then_rate_limited(self) -> None:
        defaults = RegistryConfig(domain="example.org")
        self.assertEqual(defaults.login_failures_per_user, 5)
        # The shipped limits; only the tarpit before a refusal is left out (it is timed).
        registry = await RunningRegistry(self, config=RegistryConfig(domain="example.org", login_refusal_delay=0.0)).start()
        await registry.add_user("bob")
        client = await registry.client()
        answers = []
        for _attempt in range(7):
            try:
                await client.login("bob", "not bob's password")
            except errors.IRPError as error:
                answers.append(error.name)
        self.assertEqual(answers, ["login-failed"] * 6 + ["rate-limited"])
