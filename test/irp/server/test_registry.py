"""Integration tests of every registry operation over real TLS on loopback.

Each test starts a real registry (:class:`test.helpers.RunningRegistry`: TLS, its own CA, a
SQLite file) and talks to it with the real client library, checking what each operation
returns and what it changes for everyone else.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from common.pki.keyfiles import fingerprint
from common.wire.framing import HEADER, encode_frame
from common.wire.xmlcodec import make_element, sub_element
from irp import errors
from irp.client import RegistryClient
from irp.server.ca import generate_key
from irp.wire.records import Endpoint
from test import pki
from test.helpers import DEFAULT_PASSWORD, RunningRegistry
from test.irp.server.helpers import (
    OTHER_PASSWORD,
    RegistryTestCase,
    login_element,
)


class ConnectionTests(RegistryTestCase):
    """The registry over the network: limits that show through the client."""

    async def test_too_many_connections(self) -> None:
        """Connections beyond the per-address limit get too-many-connections."""
        from irp.server.protocol import ConnectionLimits

        self.registry = await RunningRegistry(self, limits=ConnectionLimits(max_connections_per_address=2)).start()
        first = await self.registry.client()
        await self.registry.client()
        third = await self.registry.client()
        await self.fails("too-many-connections", third.whoami())
        await first.whoami()

    async def released(self, registry: RunningRegistry) -> Deferred[None]:
        """A Deferred that fires when the server next frees a connection's slot."""
        assert registry.service is not None and registry.service.factory is not None
        counter = registry.service.factory.connections
        freed: Deferred[None] = Deferred()
        original = counter.release

        def release(host: str) -> None:
            original(host)
            if not freed.called:
                freed.callback(None)

        counter.release = release  # type: ignore[method-assign]
        self.addCleanup(setattr, counter, "release", original)
        return freed

    async def test_fatal_error_closes_at_once(self) -> None:
        """After a fatal error the client gets the error and the connection closes at once
        (TLS close_notify both ways), not when the abort timer (frame_timeout, 30 s) fires;
        the address's connection slot is free again."""
        self.registry = await RunningRegistry(self).start()
        for frame in (encode_frame(b"<broken"), encode_frame(b'<request v="1"><whoami/></request>'), HEADER.pack(1 << 30)):
            client = await self.registry.client()
            freed = await self.released(self.registry)
            answer: Deferred[Any] = Deferred()
            timer = global_reactor.callLater(10, answer.cancel)
            client.protocol.waiting[1] = answer
            client.protocol.transport.write(frame)  # type: ignore[union-attr]
            try:
                await answer
            except errors.IRPError as error:
                self.assertIn(error.name, ("malformed-message", "message-too-large"))
            else:
                self.fail("the server accepted a broken frame")
            finally:
                if timer.active():
                    timer.cancel()
            await client.protocol.disconnected.addTimeout(10, global_reactor)
            await freed.addTimeout(10, global_reactor)
            self.assertEqual(self.registry.service.factory.connections.count("127.0.0.1"), 0)  # type: ignore[union-attr]

    async def test_field_limits_are_not_fatal(self) -> None:
        """A field over its limit is invalid-argument and the connection goes on."""
        self.registry = await RunningRegistry(self).start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        await self.fails("invalid-argument", client.protocol.request(login_element("alice", "x" * 1025)))
        self.assertEqual((await client.login("alice", DEFAULT_PASSWORD)).method, "password")
        operation = make_element("upload-certificate")
        sub_element(operation, "pem", None, "x" * 20000)
        await self.fails("invalid-argument", client.protocol.request(operation))
        await client.whoami()


class ServiceTests(unittest.TestCase):
    """The registry service: housekeeping shared between processes, renewal."""

    async def test_daily_renewal(self) -> None:
        """The daily check renews the server and record-signing certificates near their
        end: new connections get the new server certificate, ca-chain serves the new
        record-signing certificate (same key), open connections go on."""
        registry = await RunningRegistry(self).start()
        service = registry.service
        assert service is not None and service.credentials is not None
        self.assertIn(86400.0, [loop.interval for loop in service.loops])
        old = service.credentials
        before = await registry.client()
        await service.renew_credentials()  # nothing ends within 30 days: nothing changes
        self.assertEqual(service.credentials.server_certificate, old.server_certificate)
        await service.renew_credentials(renew_before=datetime.timedelta(days=398))  # both "near their end"
        new = service.credentials
        self.assertNotEqual(new.server_certificate, old.server_certificate)
        self.assertNotEqual(new.signing_certificate, old.signing_certificate)
        self.assertEqual(new.signing_certificate.public_key(), old.signing_certificate.public_key())
        after = await registry.client()
        presented = after.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
        self.assertEqual(presented, new.server_certificate)
        self.assertEqual((await after.ca_chain()).record_signing, new.signing_certificate)
        await registry.add_user("alice")
        alice = await registry.client("alice")
        await alice.register_addresses([Endpoint.parse("192.0.2.1", 4605)])  # signed and verified
        self.assertEqual(registry.store.signer.certificate, new.signing_certificate)
        await before.whoami()

    async def test_changes_end_sessions_in_other_processes(self) -> None:
        """Two registry processes on one database: a password change, a password-login
        change, an administrator change or a deleted user made through one ends or
        re-checks sessions on the other at its next sync (not only revocations)."""
        first = await RunningRegistry(self).start()
        second = await RunningRegistry(self, data_dir=first.data_dir).start()
        assert second.service is not None
        for name in ("alice", "bob", "carol"):
            await first.add_user(name)
        await first.add_user("dave", is_admin=True)
        alice, bob, carol, dave = [await second.client(name) for name in ("alice", "bob", "carol", "dave")]
        admin = await first.admin()
        await admin.set_password("alice", OTHER_PASSWORD)
        await admin.set_password_login("bob", False)
        await admin.delete_user("carol")
        await admin.set_admin("dave", False)
        await second.service._sync_generation()  # the periodic check, run now
        failures = []
        for client in (alice, bob, carol):
            try:
                await client.lookup("admin")
            except errors.IRPError as error:
                failures.append(error.name)
        self.assertEqual(failures, ["not-authenticated", "password-login-disabled", "not-authenticated"])
        self.assertFalse((await dave.whoami()).is_admin)
        await self.fails_forbidden(dave)

    async def fails_forbidden(self, client: RegistryClient) -> None:
        try:
            await client.create_user("mallory", password=DEFAULT_PASSWORD)
        except errors.Forbidden:
            return
        self.fail("a former administrator could still create users")


class GivenTLSCertificateTests(unittest.TestCase):
    """``--tls-certificate``/``--tls-key``: the operator's certificate serves TLS."""

    async def test_given_certificate_is_served(self) -> None:
        import os

        from twisted.internet import reactor

        from common.pki.keyfiles import write_certificates, write_private_key
        from irp.client import connect

        web = pki.make_ca("example.org", label="web-pki")
        key = generate_key("p256")
        certificate = web.issue_server_certificate(["127.0.0.1"], key.public_key())
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        write_certificates(os.path.join(folder, "tls.pem"), [certificate, web.issuing_certificate])
        write_private_key(os.path.join(folder, "tls.key"), key)
        registry = await RunningRegistry(
            self, tls_certificate=os.path.join(folder, "tls.pem"), tls_key=os.path.join(folder, "tls.key")
        ).start()
        client = await connect(
            reactor, "127.0.0.1", registry.port, domain="example.org", trust_roots=[web.root_certificate, registry.root], timeout=10
        )
        self.addCleanup(client.close)
        served = client.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
        self.assertEqual(fingerprint(served), fingerprint(certificate))
        # The registry's own CA still anchors everything else it says.
        chain = await client.ca_chain()
        self.assertEqual(chain.root, registry.root)

    def test_foreign_certificate_is_said_loudly(self) -> None:
        """A given certificate that does not chain to the domain's root (self-signed, or
        another CA's) is named in a warning; one the domain's CA issued is not."""
        from irp.server.credentials import ServerCredentials, chains_to, foreign_certificate_warning

        domain = pki.make_ca("example.org")
        web = pki.make_ca("example.org", label="web-pki")
        key = generate_key("p256")
        ours = domain.issue_server_certificate(["127.0.0.1"], key.public_key())
        theirs = web.issue_server_certificate(["127.0.0.1"], key.public_key())
        self.assertTrue(chains_to(ours, [domain.issuing_certificate], domain.root_certificate))
        self.assertFalse(chains_to(theirs, [web.issuing_certificate, domain.issuing_certificate], domain.root_certificate))
        self.assertFalse(chains_to(theirs, [], domain.root_certificate))

        def credentials(certificate: object, chain: tuple[object, ...]) -> ServerCredentials:
            return ServerCredentials(
                ca=domain, server_key=key, server_certificate=certificate,  # type: ignore[arg-type]
                signing_key=None, signing_certificate=None, server_chain=chain,  # type: ignore[arg-type]
            )

        self.assertIsNone(foreign_certificate_warning(credentials(ours, ()), "tls.pem"))
        warning = foreign_certificate_warning(credentials(theirs, (web.issuing_certificate,)), "tls.pem")
        assert warning is not None
        self.assertIn("tls.pem does not chain to the root CA of example.org", warning)

    def test_key_must_match(self) -> None:
        import os

        from common.pki.keyfiles import KeyFileError, write_certificates, write_private_key
        from irp.server.credentials import with_given_server_certificate

        web = pki.make_ca("example.org", label="web-pki")
        certificate = web.issue_server_certificate(["127.0.0.1"], generate_key("p256").public_key())
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        write_certificates(os.path.join(folder, "tls.pem"), [certificate])
        write_private_key(os.path.join(folder, "tls.key"), generate_key("p256"))
        self.assertRaises(
            KeyFileError, with_given_server_certificate, None, os.path.join(folder, "tls.pem"), os.path.join(folder, "tls.key")  # type: ignore[arg-type]
        )
