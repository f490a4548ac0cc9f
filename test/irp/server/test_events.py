"""The registry's event hook (irp.server.events): every request and login told to the
listeners, with its outcome; a listener may hold an answer, never change it."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.pki.trust import TrustStore
from common.wire.xmlcodec import make_element
from irp import errors
from irp.server.events import OK, LoginDone, RequestDone
from irp.server.session import Session
from irp.wire.messages import build_request, parse_request
from test.irp.server.helpers import EmptyStore, RegistryTestCase, make_registry


class Recorder:
    """A listener keeping what it is told; ``hold`` makes it hold answers."""

    def __init__(self, hold: Deferred[None] | None = None) -> None:
        self.requests: list[RequestDone] = []
        self.logins: list[LoginDone] = []
        self.hold = hold

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        self.requests.append(event)
        return self.hold

    def login_done(self, event: LoginDone) -> None:
        self.logins.append(event)


class Failing:
    """A listener that fails on everything."""

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        raise RuntimeError("observer broke")

    def login_done(self, event: LoginDone) -> None:
        raise RuntimeError("observer broke")


def anonymous() -> Session:
    """A session that has not logged in (``whoami`` answers it without the store)."""
    return Session(peer_host="192.0.2.1")


class DispatchEventTests(unittest.SynchronousTestCase):
    """The dispatcher tells its listeners of each request (no network, no database)."""

    def setUp(self) -> None:
        self.registry = make_registry(Clock())
        self.recorder = Recorder()
        self.registry.events.add(self.recorder)

    def test_refusal_reported_with_its_code(self) -> None:
        """An unknown operation is refused; the listener hears the wire code."""
        request = parse_request(build_request(1, make_element("no-such-thing", {})))
        self.failureResultOf(self.registry.handle(Session(peer_host="192.0.2.1"), request))
        [event] = self.recorder.requests
        self.assertEqual((event.operation, event.outcome, list(event.results)), ("no-such-thing", "unknown-operation", []))
        self.assertGreaterEqual(event.seconds, 0.0)

    def test_answer_reported_ok(self) -> None:
        """An answered request is reported ``ok`` with its results and its caller."""
        request = parse_request(build_request(1, make_element("whoami", {})))
        session = anonymous()
        results = self.successResultOf(self.registry.handle(session, request))
        [event] = self.recorder.requests
        self.assertEqual(event.outcome, OK)
        self.assertIs(event.session, session)
        self.assertEqual(list(event.results), results)

    def test_listener_holds_answer(self) -> None:
        """A listener returning a Deferred holds the answer until it fires."""
        hold: Deferred[None] = Deferred()
        self.registry.events.add(Recorder(hold))
        request = parse_request(build_request(1, make_element("whoami", {})))
        answer = self.registry.handle(anonymous(), request)
        self.assertNoResult(answer)
        hold.callback(None)
        self.assertEqual(len(self.successResultOf(answer)), 1)

    def test_failing_listener_changes_nothing(self) -> None:
        """A listener that raises is logged; the answer and the other listeners are as
        without it."""
        self.registry.events.listeners.insert(0, Failing())
        request = parse_request(build_request(1, make_element("whoami", {})))
        self.successResultOf(self.registry.handle(anonymous(), request))
        self.assertEqual(len(self.recorder.requests), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_listener_no_report(self) -> None:
        """Without listeners the answer comes as before (at once)."""
        self.registry.events.remove(self.recorder)
        request = parse_request(build_request(1, make_element("whoami", {})))
        self.successResultOf(self.registry.handle(anonymous(), request))
        self.assertEqual(self.recorder.requests, [])


class DownStore(EmptyStore):
    """A store whose database is down."""

    def get_certificate_by_fingerprint(self, digest: str) -> Deferred[None]:
        return fail(errors.Unavailable("the registry's database is unavailable; try again later"))


class UnavailableLoginTests(unittest.SynchronousTestCase):
    """A certificate login the database cannot decide is refused and reported."""

    def test_database_down(self) -> None:
        registry = make_registry(Clock())
        registry.store = DownStore()  # type: ignore[assignment]
        recorder = Recorder()
        registry.events.add(recorder)
        session = anonymous()
        deciding = registry.auth.authenticate_presented(session, b"any certificate", list, TrustStore(anchors=[]))
        assert deciding is not None
        self.failureResultOf(deciding, errors.Unavailable)
        [event] = recorder.logins
        self.assertEqual((event.method, event.user, event.outcome, event.address), ("certificate", "", "unavailable", "192.0.2.1"))


class LoginEventTests(RegistryTestCase):
    """Logins told to the listeners, over real TLS with a real store."""

    async def test_password_logins(self) -> None:
        """A good password, a wrong one and a disabled password login each give one
        event with the outcome the client gets."""
        registry = await self.start()
        recorder = Recorder()
        registry.registry.events.add(recorder)
        await registry.add_user("alice", "correct horse battery")
        client = await registry.client("alice", "correct horse battery")
        client.close()
        await self.fails("login-failed", registry.client("alice", "wrong password"))
        outcomes = [(event.method, event.user, event.outcome) for event in recorder.logins]
        self.assertEqual(
            outcomes,
            [("password", "alice@example.org", OK), ("password", "alice@example.org", "login-failed")],
        )
        self.assertTrue(all(event.address == "127.0.0.1" for event in recorder.logins))
        self.assertNotIn("wrong password", repr(recorder.logins))

    async def test_certificate_login(self) -> None:
        """A certificate login is one event naming the user; a revoked certificate's
        login is refused with the reason."""
        registry = await self.start()
        recorder = Recorder()
        registry.registry.events.add(recorder)
        user, client = await self.enrolled("bob")
        await client.whoami()
        client.close()
        self.assertIn(("certificate", "bob@example.org", OK), [(e.method, e.user, e.outcome) for e in recorder.logins])
        await registry.store.revoke_certificate(user.certificate.serial_number, "key-compromise")
        refused = await registry.client(user=user)
        await self.fails("certificate-rejected", refused.whoami())
        refused.close()
        last = recorder.logins[-1]
        self.assertEqual((last.method, last.user, last.outcome), ("certificate", "bob@example.org", "certificate-rejected"))
        self.assertIn("revoked", last.reason)
