"""Shared fixtures for the registry server tests: a registry per test, fake TLS transports, request builders, a registry child process."""

from __future__ import annotations

import datetime
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import error as internet_error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from common.wire.framing import FrameDecoder, encode_frame
from common.wire.xmlcodec import make_element, sub_element
from irp import errors
from irp.client import RegistryClient
from irp.server.passwords import PasswordHasher
from irp.server.registry import Registry, RegistryConfig
from irp.wire.messages import parse_response
from test import pki
from test.helpers import DEFAULT_PASSWORD, TEST_PARAMETERS, EnrolledUser, RunningRegistry

T = TypeVar("T")

DOMAIN = "example.org"
OTHER_PASSWORD = "another good password"


def csr(key: Any, *, subject: str = "mallory", extra_san: bool = True) -> bytes:
    """A CSR for ``key`` whose subject and extensions claim things the registry ignores."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, subject),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil.example"),
            ]
        )
    )
    if extra_san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"irp:{subject}@{DOMAIN}"), x509.DNSName("evil.example")]
            ),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def external_certificate(
    identity: str = f"alice@{DOMAIN}", *, email: str | None = None, expired: bool = False, serial: int | None = None
) -> x509.Certificate:
    """A certificate from another organisation's CA naming ``identity`` (or an email)."""
    partner = pki.make_ca("partner.example")
    san: list[x509.GeneralName] = [x509.RFC822Name(email)] if email else [x509.UniformResourceIdentifier(f"irp:{identity}")]
    certificate, _key = pki.build_certificate(
        partner.issuing_certificate,
        partner.issuing_key,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]),
        san=san,
        not_before=datetime.timedelta(days=-30 if expired else -1),
        not_after=datetime.timedelta(days=-1 if expired else 30),
        extended_key_usage=[ExtendedKeyUsageOID.EMAIL_PROTECTION],
        serial=serial,
    )
    return certificate


def pkcs12_bundle() -> bytes:
    """A passphrase-protected PKCS#12 file of another CA's (as a user would escrow)."""
    credentials = pki.issue_user(pki.make_ca("partner.example"), "alice")
    return pkcs12.serialize_key_and_certificates(
        b"alice", credentials.key, credentials.certificate, None,
        serialization.BestAvailableEncryption(b"escrow passphrase"),
    )


def login_element(user: str, password: str) -> Any:
    """A <login> operation element."""
    element = make_element("login", {"user": user})
    sub_element(element, "password", None, password)
    return element


def tamper(client: RegistryClient, old: bytes, new: bytes) -> None:
    """Rewrite every response the client receives (as a dishonest registry would)."""
    protocol = client.protocol
    deliver = protocol.dataReceived
    decoder = FrameDecoder(1 << 24)

    def rewrite(data: bytes) -> None:
        for frame in decoder.feed(data):
            deliver(encode_frame(frame.replace(old, new)))

    protocol.dataReceived = rewrite  # type: ignore[method-assign]


class RegistryTestCase(unittest.TestCase):
    """Starts a registry per test; helpers for users and assertions."""

    config: RegistryConfig | None = None

    async def start(self, **config: Any) -> RunningRegistry:
        registry_config = RegistryConfig(domain=DOMAIN, **config) if config else None
        self.registry = await RunningRegistry(self, config=registry_config).start()
        return self.registry

    async def fails(self, name: str, awaitable: Awaitable[T]) -> errors.IRPError:
        """Await ``awaitable``, which must fail with the IRP error of wire name ``name``."""
        try:
            result = await awaitable
        except errors.IRPError as error:
            self.assertEqual(error.name, name, f"expected {name}, got {error!r}")
            return error
        self.fail(f"expected {name}, got the result {result!r}")

    async def user(self, name: str, password: str = DEFAULT_PASSWORD, **fields: Any) -> RegistryClient:
        """Create a user and return a password-logged-in client of theirs."""
        await self.registry.add_user(name, password, **fields)
        return await self.registry.client(name, password)

    async def enrolled(self, name: str) -> tuple[EnrolledUser, RegistryClient]:
        """Create a user with a certificate; return it and a certificate-logged-in client."""
        await self.registry.add_user(name)
        user = await self.registry.issue(name)
        return user, await self.registry.client(user=user)


CLIENT_HOST = "192.0.2.10"


class FakeTLSHandle:
    """What ``transport.getHandle()`` returns for TLS: the peer's certificates."""

    def __init__(self, peer: x509.Certificate | None = None) -> None:
        self.peer = peer

    def get_peer_certificate(self, as_cryptography: bool = False) -> x509.Certificate | crypto.X509 | None:
        if self.peer is None or as_cryptography:
            return self.peer
        return crypto.X509.from_cryptography(self.peer)

    def get_peer_cert_chain(self, as_cryptography: bool = False) -> list[x509.Certificate] | list[crypto.X509] | None:
        if self.peer is None:
            return None
        return [self.peer] if as_cryptography else [crypto.X509.from_cryptography(self.peer)]


@implementer(ITCPTransport)
class FakeTCPTransport(StringTransport):
    """The TCP connection under the TLS one: records its socket options."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay


class FakeTLSTransport(StringTransport):
    """A StringTransport with a TLS handle, over a fake TCP transport."""

    def __init__(self, host: str = CLIENT_HOST, peer: x509.Certificate | None = None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.handle = FakeTLSHandle(peer)
        self.transport = FakeTCPTransport()

    def getHandle(self) -> FakeTLSHandle:
        return self.handle


def request(request_id: int, operation: str) -> bytes:
    return f'<request v="1" id="{request_id}">{operation}</request>'.encode()


def responses(transport: StringTransport) -> list[tuple[int, str, Any]]:
    """Every response written so far: (id, "ok" or the error name, results or message)."""
    found: list[tuple[int, str, Any]] = []
    for frame in FrameDecoder(1 << 24).feed(transport.value()):
        try:
            response = parse_response(frame)
        except errors.IRPError as error:
            found.append((error.request_id, error.name, error.message))  # type: ignore[attr-defined]
        else:
            found.append((response.id, "ok", response.results))
    return found


class EmptyStore:
    """Stands in for the store where a test needs only "no such certificate"."""

    def get_certificate_by_fingerprint(self, digest: str) -> Deferred[None]:
        return succeed(None)

    def data_version(self) -> None:
        """No direct reader: nothing is cached."""
        return None

    def follow_address_changes(self, watcher: object) -> bool:
        """No direct reader: no answer is cached."""
        return False


def make_registry(clock: Clock) -> Registry:
    ca = pki.make_ca()
    signing_key = ed25519.Ed25519PrivateKey.generate()
    return Registry(
        config=RegistryConfig(domain=ca.domain),
        store=EmptyStore(),  # type: ignore[arg-type]  # the operations used here never touch it
        ca=ca,
        signing_certificate=ca.issue_signing_certificate(signing_key.public_key()),
        hasher=PasswordHasher(TEST_PARAMETERS),
        clock=clock,
        run_in_thread=maybeDeferred,
    )


_LISTENING = re.compile(rb"listening on \S+ port (\d+)")


class RegistryProcess(ProcessProtocol):
    """``twistd irp`` in a child process; ``listening`` fires with its port once ready."""

    ready = _LISTENING

    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        port = _LISTENING.search(self.output)
        if port and self.ready.search(self.output) and not self.listening.called:
            self.listening.callback(int(port.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError("the registry exited before listening:\n" + self.output.decode(errors="replace")[-3000:]))
        self.ended.callback(None)

    def kill(self) -> Deferred[None]:
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except internet_error.ProcessExitedAlready:
            pass
        return self.ended
