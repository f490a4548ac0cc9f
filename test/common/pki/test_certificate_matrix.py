"""The certificate matrix, for both protocols, from one table.

Every kind of bad certificate (see ``test.pki.BAD_CERTIFICATES``, plus a revoked one) is
presented to a real registry as a client certificate over TLS, and to a real SixChat agent
by a dialer over TCP. Each must be refused, with the error the table names, and nothing
must be granted: no registry session, no SixChat session, no message delivered.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from common.identity import Identity
from irp import errors as irp_errors
from irp.client import connect
from sixchat import errors as sixchat_errors
from test import pki
from test.helpers import BareOwner, RunningRegistry, dial_bare, start_agent
from test.sixchat_certs import forged_credentials

ALICE = Identity.parse("alice@example.org")

#: defect -> (the registry's reason word, the SixChat error class, its reason if any).
#: The registry answers certificate-rejected for every one (its message names the reason).
MATRIX: dict[str, tuple[str, type[sixchat_errors.SixChatError], str | None]] = {
    "expired": ("expired", sixchat_errors.PeerRejected, "expired"),
    "not-yet-valid": ("not-yet-valid", sixchat_errors.CertificateInvalid, None),
    "self-signed": ("unknown-issuer", sixchat_errors.PeerRejected, "untrusted-ca"),
    "other-ca": ("unknown-issuer", sixchat_errors.PeerRejected, "untrusted-ca"),
    "forged-signature": ("bad-signature", sixchat_errors.CertificateInvalid, None),
    "no-client-auth": ("wrong-usage", sixchat_errors.CertificateInvalid, None),
    "no-extended-key-usage": ("wrong-usage", sixchat_errors.CertificateInvalid, None),
    "no-digital-signature": ("wrong-usage", sixchat_errors.CertificateInvalid, None),
    "ca-leaf": ("wrong-usage", sixchat_errors.CertificateInvalid, None),
    "no-identity": ("bad-identity", sixchat_errors.CertificateInvalid, None),
    "two-identities": ("bad-identity", sixchat_errors.CertificateInvalid, None),
    "other-domain": ("bad-identity", sixchat_errors.CertificateInvalid, None),
    "weak-key": ("weak-key", sixchat_errors.CertificateInvalid, None),
    "long-chain": ("chain-too-long", sixchat_errors.CertificateInvalid, None),
    "garbled-extension": ("malformed", sixchat_errors.CertificateInvalid, None),
    "unknown-critical-extension": ("malformed", sixchat_errors.CertificateInvalid, None),
}

@implementer(IOpenSSLClientConnectionCreator)
class AttackerTLS:
    """A client TLS context as an attacker would build it: any certificate and key (its
    own security level lowered so it will even send an RSA-1024 one), no server checks."""

    def __init__(self, key: Any, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_cipher_list(b"DEFAULT@SECLEVEL=0")
        context.use_certificate(crypto.X509.from_cryptography(certificate))
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))
        for extra in chain:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        self.context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


class CertificateMatrixTests(TestCase):
    async def test_table_covers_every_defect(self) -> None:
        self.assertEqual(set(MATRIX), set(pki.BAD_CERTIFICATES))

    async def test_registry_refuses_every_bad_certificate(self) -> None:
        registry = await RunningRegistry(self).start()
        await registry.create_user("alice")
        problems = []
        for defect, (reason, _error, _why) in sorted(MATRIX.items()):
            bad = pki.bad_user(registry.ca, defect)
            client = await connect(
                reactor, "127.0.0.1", registry.port, domain="example.org", trust_roots=[registry.root],
                tls_options=lambda *_: AttackerTLS(bad.key, bad.certificate, tuple(bad.intermediates)), timeout=10,
            )
            try:
                await client.lookup("alice")
            except irp_errors.CertificateRejected as error:
                if not error.message.endswith(f"({reason})"):
                    problems.append(f"{defect}: refused, but not for {reason}: {error.message!r}")
            except irp_errors.IRPError as error:
                problems.append(f"{defect}: expected certificate-rejected, got {error.name}")
            else:
                problems.append(f"{defect}: a look-up was allowed")
            await client.close()
        # And a certificate the registry issued, then revoked.
        alice = await registry.enrol("alice", create=False)
        admin = await registry.admin()
        await admin.revoke(alice.serial, "key-compromise")
        client = await registry.client(user=alice)
        with self.assertRaises(irp_errors.CertificateRejected) as caught:
            await client.lookup("alice")
        self.assertIn("revoked", caught.exception.message)
        self.assertEqual(problems, [])

    async def test_sixchat_agent_refuses_every_bad_certificate(self) -> None:
        registry = await RunningRegistry(self).start()
        bob = await registry.enrol("bob")
        agent, _events = await start_agent(self, registry, bob, policy="anyone")
        address = next(iter(agent.advertised))
        problems = []
        for defect, (_reason, error_class, why) in sorted(MATRIX.items()):
            bad = pki.bad_user(registry.ca, defect)
            credentials = forged_credentials(identity=ALICE, certificates=[bad.certificate, *bad.intermediates], private_key=bad.key)
            owner = BareOwner(credentials)
            with capturedLogs() as logs:
                await dial_bare(owner, address.address, address.port, Identity.parse("bob@example.org"))
                _connection, error = await owner.first_end
                for connection in list(agent.connections):
                    await connection.when_lost()
            if owner.established and owner.established[0].session is not None and agent.sessions:
                problems.append(f"{defect}: a session was established")
            if not isinstance(error, error_class):
                problems.append(f"{defect}: expected {error_class.__name__}, the dialer got {type(error).__name__}: {error}")
            elif why is not None and getattr(error, "wire_reason", getattr(error, "reason", None)) != why:
                problems.append(f"{defect}: expected reason {why}, got {getattr(error, 'reason', None)}")
            if not any("failed" in str(event.get("log_format", "")) or "Refused" in str(event.get("log_format", "")) for event in logs):
                problems.append(f"{defect}: the agent logged nothing")
        self.assertEqual(agent.sessions, {})
        self.assertEqual(problems, [])


