"""Password logins after a refusal: a refused certificate, a federated session, password
login switched off and on again (issue 9, items 4 and 5), over real TLS on loopback."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from common.identity import Identity
from common.wire.xmlcodec import make_element
from irp import errors
from irp.server.session import Session, SessionState
from irp.wire.messages import build_request, parse_request
from irp.wire.records import Endpoint
from test import pki
from test.helpers import DEFAULT_PASSWORD, EnrolledUser, RunningRegistry
from test.irp.server.helpers import DOMAIN, login_element


class PasswordLoginDisabledTests(unittest.TestCase):
    """Refusals of a disabled password login do not use up the user's login budget."""

    async def test_refusals_do_not_lock_the_user_out(self) -> None:
        """More refusals than the per-user failure budget, then an administrator enables
        password login again: the user logs in with the password at once."""
        registry = await RunningRegistry(self).start()
        budget = registry.registry.config.login_failures_per_user
        await registry.add_user("alice", password_login=False)
        client = await registry.client()
        for _ in range(budget + 3):
            with self.assertRaises(errors.PasswordLoginDisabled):
                await client.login("alice", DEFAULT_PASSWORD)
        admin = await registry.admin()
        await admin.set_password_login("alice", True)
        session = await client.login("alice", DEFAULT_PASSWORD)
        self.assertEqual((str(session.user), session.method), (f"alice@{DOMAIN}", "password"))


class LoginReplacesRefusedSessionTests(unittest.TestCase):
    """A password login replaces whatever the connection's certificate made of it."""

    async def test_password_login_after_refused_certificate(self) -> None:
        """A connection whose certificate was refused logs in with a password; from then
        on every operation runs as the password user."""
        registry = await RunningRegistry(self).start()
        await registry.add_user("alice")
        impostor = pki.issue_user(pki.make_ca(DOMAIN, label="impostor"), "alice")
        client = await registry.client(user=EnrolledUser("alice", "", impostor.key, impostor.certificate, 0))
        with self.assertRaises(errors.CertificateRejected):
            await client.whoami()
        await client.login("alice", DEFAULT_PASSWORD)
        session = await client.whoami()
        self.assertEqual((str(session.user), session.method), (f"alice@{DOMAIN}", "password"))
        record, account = await client.get_user("alice")
        self.assertEqual(str(record.identity), f"alice@{DOMAIN}")
        self.assertIsNotNone(account)  # one's own settings: the caller is alice
        await client.register_addresses([Endpoint("2001:db8::1", 4605)])
        addresses = await client.lookup("alice")
        self.assertEqual([str(endpoint.address) for endpoint in addresses.endpoints], ["2001:db8::1"])
        self.assertEqual(await client.list_pkcs12(), [])

    async def test_local_login_ends_a_federated_session(self) -> None:
        """A session of a federated domain's user that logs in as a local user with a
        password may use local operations (it is no longer federated)."""
        running = await RunningRegistry(self).start()
        await running.add_user("alice")
        registry = running.registry
        session = Session(peer_host="127.0.0.1", identity=Identity("bob", "example.net"), state=SessionState.FEDERATED)

        async def call(element: Any) -> Any:
            return await registry.handle(session, parse_request(build_request(1, element)))

        with self.assertRaises(errors.Forbidden):
            await call(make_element("list-pkcs12"))
        await call(login_element("alice", DEFAULT_PASSWORD))
        self.assertFalse(session.federated)
        [listing] = await call(make_element("list-pkcs12"))
        self.assertEqual(listing.tag, "pkcs12-files")
