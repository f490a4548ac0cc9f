"""Session states and the revalidation rule (irp.server.session)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.identity import Identity
from irp import errors
from irp.server.session import Session, SessionRules, SessionState

ALICE = Identity("alice", "example.org")


class SessionStateTests(unittest.SynchronousTestCase):
    def test_anonymous(self) -> None:
        session = Session(peer_host="192.0.2.1")
        self.assertEqual((session.state, session.method, session.logged_in), (SessionState.ANONYMOUS, "none", False))
        self.assertRaises(errors.NotAuthenticated, lambda: session.username)

    def test_logins_and_end(self) -> None:
        session = Session(peer_host="192.0.2.1")
        session.log_in_certificate(ALICE, 7, 1000, 3)
        self.assertEqual((session.method, session.username, session.certificate_serial, session.generation), ("certificate", "alice", 7, 3))
        session.log_in_password(ALICE, 2, 4)
        self.assertEqual((session.method, session.certificate_serial, session.certificate_not_after, session.password_version), ("password", None, None, 2))
        session.end()
        self.assertEqual((session.state, session.identity, session.password_version), (SessionState.ANONYMOUS, None, None))

    def test_federated(self) -> None:
        session = Session(peer_host="192.0.2.1")
        session.log_in_federated(Identity("bob", "example.net"), 1000, 0)
        self.assertEqual((session.method, session.federated, session.logged_in), ("certificate", True, True))
        self.assertRaises(errors.Forbidden, lambda: session.username)
        session.log_in_password(ALICE, 1, 0)
        self.assertFalse(session.federated)

    def test_rejected(self) -> None:
        """A refused certificate stays refused after a logout; a password login leaves it."""
        session = Session(peer_host="192.0.2.1")
        session.reject("expired")
        self.assertEqual((session.rejected, session.method, session.logged_in), ("expired", "none", False))
        session.end()
        self.assertEqual(session.rejected, "expired")
        session.log_in_password(ALICE, 1, 0)
        self.assertIsNone(session.rejected)


class SessionRulesTests(unittest.SynchronousTestCase):
    def rules(self, account: Any = None, certificate: Any = None) -> tuple[SessionRules, Clock]:
        clock = Clock()

        class Store:
            def get_account(self, username: str) -> Deferred[Any]:
                return succeed(account)

            def get_certificate(self, serial: int) -> Deferred[Any]:
                return succeed(certificate)

        class Parts:
            store = Store()

        Parts.clock = clock  # type: ignore[attr-defined]
        return SessionRules(Parts()), clock  # type: ignore[arg-type]

    def test_expired_certificate_ends_the_session(self) -> None:
        rules, clock = self.rules()
        session = Session(peer_host="192.0.2.1")
        session.log_in_certificate(ALICE, 7, 10, rules.generation)
        rules.check_certificate_current(session)
        clock.advance(11)
        self.assertRaises(errors.CertificateRejected, rules.check_certificate_current, session)
        self.assertEqual(session.state, SessionState.ANONYMOUS)

    def test_security_change_revalidates(self) -> None:
        """After a change a password session whose account is gone ends."""
        rules, _clock = self.rules(account=None)
        session = Session(peer_host="192.0.2.1")
        session.log_in_password(ALICE, 1, rules.generation)
        self.assertFalse(rules.is_stale(session))
        rules.security_changed()
        self.assertTrue(rules.is_stale(session))
        self.failureResultOf(Deferred.fromCoroutine(rules.check(session)), errors.NotAuthenticated)
        self.assertEqual(session.state, SessionState.ANONYMOUS)

    def test_federated_sessions_are_not_looked_up(self) -> None:
        rules, _clock = self.rules()
        session = Session(peer_host="192.0.2.1")
        session.log_in_federated(Identity("bob", "example.net"), 10**10, rules.generation)
        rules.security_changed()
        self.successResultOf(Deferred.fromCoroutine(rules.revalidate(session)))
        self.assertEqual(session.generation, rules.generation)
