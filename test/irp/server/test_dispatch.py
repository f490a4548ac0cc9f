"""Request dispatch (irp.server.dispatch): the operation table, field and access checks,
answers at once, and the registry's request path without the network (moved from test_registry)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.identity import Identity
from common.wire.xmlcodec import make_element
from irp import errors
from irp.server.dispatch import CHILD_FIELDS
from irp.server.session import Session, SessionState
from irp.wire.messages import build_request, parse_request
from test.irp.server.helpers import make_registry


class RegistryUnitTests(unittest.SynchronousTestCase):
    """The registry's own rules, with a stand-in store (no database)."""

    def test_list_users_prefix_lower_cased(self) -> None:
        """User names are lower case: so is the prefix the store is asked for (a
        case-sensitive LIKE, as PostgreSQL's, would otherwise find nobody)."""
        registry = make_registry(Clock())
        asked: list[str] = []

        class Store:
            def list_users(self, offset: int, limit: int, prefix: str) -> Deferred[tuple[int, list[Any]]]:
                asked.append(prefix)
                return succeed((0, []))

        registry.store = Store()  # type: ignore[assignment]
        session = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        request = parse_request(build_request(1, make_element("list-users", {"prefix": "BoB"})))
        self.successResultOf(registry.handle(session, request))
        self.assertEqual(asked, ["bob"])

    def test_cached_lookup_is_answered_at_once(self) -> None:
        """A look-up whose answer is cached is answered without a Deferred, and is still
        refused in the usual way when the caller may not make it."""
        clock = Clock()
        registry = make_registry(clock)
        answers = registry.caches.answers
        answers.put("bob", answers.reading("bob"), b"<addresses/>", 1)

        asked: list[str] = []

        class Store:
            def follow_address_changes(self, watcher: object) -> bool:
                return True

            def get_addresses(self, username: str) -> Deferred[None]:
                asked.append(username)
                return succeed(None)

        registry.store = Store()  # type: ignore[assignment]
        request = parse_request(build_request(1, make_element("lookup", {"user": "bob"})))
        alice = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        alice.generation = registry.sessions.generation
        self.assertEqual(registry.handle_now(alice, request), [b"<addresses/>"])
        self.assertEqual(self.successResultOf(registry.handle(alice, request)), [b"<addresses/>"])
        # Refusals: anonymous, bad fields, a refused certificate, an expired one (its
        # own reason, once), each through a Deferred as on the full path.
        anonymous = registry.handle_now(Session(peer_host="192.0.2.2"), request)
        assert isinstance(anonymous, Deferred)
        self.failureResultOf(anonymous, errors.NotAuthenticated)
        bad = parse_request(build_request(2, make_element("lookup", {"user": "bob", "extra": "1"})))
        self.failureResultOf(registry.handle_now(alice, bad), errors.BadRequest)  # type: ignore[arg-type]
        refused = Session(peer_host="192.0.2.3", state=SessionState.REJECTED, rejection="no")
        self.failureResultOf(registry.handle_now(refused, request), errors.CertificateRejected)  # type: ignore[arg-type]
        expired = Session(peer_host="192.0.2.4", identity=Identity("carol", registry.domain), state=SessionState.CERTIFICATE)
        expired.certificate_not_after = int(clock.seconds()) - 1
        failure = self.failureResultOf(registry.handle_now(expired, request), errors.CertificateRejected)  # type: ignore[arg-type]
        self.assertIn("expired", failure.value.message)
        # A write to bob's record: the answer is not current, the full path runs.
        answers.evict("bob", 2)
        self.assertEqual(asked, [])
        self.failureResultOf(registry.handle_now(alice, request), errors.NotFound)  # type: ignore[arg-type]
        self.assertEqual(asked, ["bob"])

    def test_cached_lookup_waits_for_revalidation(self) -> None:
        """After a security change the session is re-validated before any answer."""
        registry = make_registry(Clock())
        answers = registry.caches.answers
        answers.put("bob", answers.reading("bob"), b"<addresses/>", 1)
        revalidated: list[Session] = []
        waiting: Deferred[None] = Deferred()

        async def revalidate(session: Session) -> None:
            revalidated.append(session)
            await waiting

        class Store:
            def follow_address_changes(self, watcher: object) -> bool:
                return True

        registry.store = Store()  # type: ignore[assignment]
        registry.sessions.revalidate = revalidate  # type: ignore[method-assign]
        alice = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        alice.generation = registry.sessions.generation - 1
        answer = registry.handle_now(alice, parse_request(build_request(1, make_element("lookup", {"user": "bob"}))))
        assert isinstance(answer, Deferred)
        self.assertEqual(revalidated, [alice])
        self.assertNoResult(answer)
        waiting.callback(None)
        self.assertEqual(self.successResultOf(answer), [b"<addresses/>"])

    def test_every_child_element_has_fields(self) -> None:
        """Every child element an operation takes has its fields declared."""
        registry = make_registry(Clock())
        for name, operation in registry.operations.items():
            for child in operation.children:
                self.assertIn(child, CHILD_FIELDS, name)


    def test_rate_limited_login_is_answered_late(self) -> None:
        """A locked-out login is refused only after the tarpit delay, so refused guesses on
        one connection cannot keep the server busy."""
        clock = Clock()
        registry = make_registry(clock)
        session = Session(peer_host="192.0.2.9")
        for _ in range(registry.config.login_failures_per_address + 1):
            registry.auth.address_limiter.record_failure(("address", "192.0.2.9"))
        request = parse_request(
            b'<request v="1" id="1"><login user="alice"><password>guess guess guess</password></login></request>'
        )
        answer = registry.handle(session, request)
        self.assertNoResult(answer)
        clock.advance(registry.config.login_refusal_delay)
        self.failureResultOf(answer, errors.RateLimited)

    def test_concurrent_guesses_are_counted_before_hashing(self) -> None:
        """Attempts still being checked count against the limit: a user cannot be the
        target of more concurrent password checks than failures allowed."""
        clock = Clock()
        registry = make_registry(clock)
        started: list[Deferred[Any]] = []

        def held(function: Any, *args: Any) -> Deferred[Any]:
            waiting: Deferred[Any] = Deferred()
            started.append(waiting)
            return waiting

        registry.run_in_thread = held  # type: ignore[method-assign]

        class Store:
            def get_account(self, username: str) -> Deferred[None]:
                return succeed(None)

        registry.store = Store()  # type: ignore[assignment]
        request = b'<request v="1" id="1"><login user="alice"><password>guess guess guess</password></login></request>'
        answers = [
            registry.handle(Session(peer_host=f"192.0.2.{index}"), parse_request(request)) for index in range(20)
        ]
        refused: list[Any] = []
        for answer in answers:
            answer.addErrback(lambda failure: refused.append(failure.value))
        clock.advance(registry.config.login_refusal_delay)
        # As many attempts as may fail are let through (at most 2 hash at once, the rest
        # queue); every other attempt is refused at once, before any hashing.
        allowed = registry.config.login_failures_per_user + 1
        self.assertEqual(len(refused), len(answers) - allowed)
        self.assertTrue(all(isinstance(error, errors.RateLimited) for error in refused))
        self.assertEqual(len(started), registry.config.concurrent_hashes)
