"""The registry's caches (irp.server.caching): each one can be turned off, by
``twistd irp --no-cache NAME``, and the answers stay the same without it."""

from __future__ import annotations

from typing import Any

from twisted.python import usage
from twisted.trial import unittest

from common.caches import AnswerCache, RecentCache, VersionedCache
from common.wire.xmlcodec import make_element, serialize
from irp.server.caching import CACHE_NAMES, NoAnswerCache, NoCache, RegistryCaches, parse_cache_names
from irp.server.registry import RegistryConfig
from irp.server.session import Session, SessionState
from irp.tap import Options
from irp.wire.messages import build_request, parse_request
from test.helpers import DEFAULT_PASSWORD, RunningRegistry


class CachesTests(unittest.SynchronousTestCase):
    def test_build(self) -> None:
        """Each cache named is off (a NoCache that keeps nothing); the others are on."""
        caches = RegistryCaches.build()
        self.assertIsInstance(caches.answers, AnswerCache)
        self.assertIsInstance(caches.certificates, VersionedCache)
        self.assertIsInstance(caches.usernames, RecentCache)
        off = RegistryCaches.build({"answers", "usernames"})
        self.assertIsInstance(off.answers, NoAnswerCache)
        self.assertIsInstance(off.certificates, VersionedCache)
        self.assertIsInstance(off.usernames, NoCache)
        self.assertFalse(off.answers.put("bob", off.answers.reading("bob"), b"<addresses/>", 1))
        self.assertFalse(off.answers.replace("bob", 0, b"<addresses/>", 1))
        self.assertIsNone(off.answers.get("bob"))
        self.assertRaises(ValueError, RegistryCaches.build, {"everything"})

    def test_parse_names(self) -> None:
        self.assertEqual(parse_cache_names("answers"), {"answers"})
        self.assertEqual(parse_cache_names("answers,usernames"), {"answers", "usernames"})
        self.assertEqual(parse_cache_names("all"), set(CACHE_NAMES))
        for bad in ("", "cache", "all,answers"):
            self.assertRaises(ValueError, parse_cache_names, bad)

    def test_option(self) -> None:
        """``--no-cache`` is repeatable, reaches the registry's configuration, and refuses
        unknown names readably."""

        def config(*argv: str) -> RegistryConfig:
            options = Options()
            options.parseOptions(["--domain", "example.org", *argv])
            settings = options.settings()
            assert settings.config is not None
            return settings.config

        self.assertEqual(config().no_cache, frozenset())
        self.assertEqual(config("--no-cache", "answers", "--no-cache", "certificates").no_cache, {"answers", "certificates"})
        self.assertEqual(config("--no-cache", "all").no_cache, set(CACHE_NAMES))
        error = self.assertRaises(usage.UsageError, config, "--no-cache", "nonsense")
        self.assertIn("answers, certificates, usernames", str(error))
        self.assertIn("--no-cache", Options().__str__())


class SameAnswersTests(unittest.TestCase):
    """Without its caches a registry answers exactly as with them."""

    async def test_same_answers_without_caches(self) -> None:
        running = await RunningRegistry(self).start()
        await running.add_user("alice")
        await running.add_user("bob")
        await running.add_user("carol")
        carol = await running.issue("carol")
        registry = running.registry
        await (await running.client("bob")).register_addresses([])

        async def answers() -> list[Any]:
            session = Session(peer_host="192.0.2.1")
            await registry.auth.password_login(session, "alice", DEFAULT_PASSWORD)
            results: list[Any] = []
            for element in (
                make_element("lookup", {"user": "bob"}),
                make_element("lookup", {"user": "bob@example.org"}),
                make_element("lookup", {"user": "bob"}),
                make_element("get-user", {"user": "bob"}),
                make_element("lookup", {"user": "nobody"}),
            ):
                try:
                    answer = await registry.handle(session, parse_request(build_request(1, element)))
                except Exception as error:
                    results.append((type(error).__name__, str(error)))
                else:
                    results.append([item if isinstance(item, bytes) else serialize(item) for item in answer])
            for _ in range(2):
                certified = Session(peer_host="192.0.2.2")
                await registry.auth.authenticate_certificate(certified, carol.certificate)
                results.append((certified.state, str(certified.identity), certified.certificate_serial))
            return results

        cached = await answers()
        self.assertEqual(cached[-1][0], SessionState.CERTIFICATE)
        registry.caches = RegistryCaches.build(CACHE_NAMES)  # as --no-cache all builds it
        self.assertEqual(await answers(), cached)
