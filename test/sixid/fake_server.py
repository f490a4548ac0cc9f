"""A small sixid server for the client's and the command's tests, built with the core
codec over real TLS: it runs the operations on a dict, and can be told to misbehave (hold
answers, push before answering a watch, tamper with records, present another CA's chain).
The real server is tested in test/sixid/server; this one lets the client's tests provoke
what a correct server never does."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.endpoint import Endpoint
from common.identity import identity_from_certificate
from common.pki.keys import generate_key
from common.tls import ServerTLS, make_server_context
from common.wire.framing import FrameDecoder, encode_frame
from irp.server.ca import CertificateAuthority
from sixid import errors
from sixid.ids import derive_id
from sixid.records import Record, Registration, SignedRecord, SignedRegistration, sign_record, sign_registration
from sixid.wire import (
    Changed,
    Lookup,
    Pong,
    RecordResult,
    Register,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    Watching,
    encode_error,
    encode_push,
    encode_response,
    parse_request,
)
from test.pki import make_ca
from test.sixid.helpers import DOMAIN, ENDPOINTS


@dataclass(frozen=True)
class RegistryPKI:
    """A domain's CA, its server's TLS key and certificate, its record-signing key and chain."""

    ca: CertificateAuthority
    server_context: Any
    signing_key: ed25519.Ed25519PrivateKey
    signer_chain: tuple[bytes, bytes, bytes]

    @property
    def root(self) -> x509.Certificate:
        return self.ca.root_certificate


@functools.cache
def registry_pki(label: str = "") -> RegistryPKI:
    """The PKI of a registry of example.org (``label``: another CA of the same name)."""
    ca = make_ca(DOMAIN, label=label)
    server_key = generate_key("p256")
    server_certificate = ca.issue_server_certificate(["127.0.0.1", "localhost"], server_key.public_key())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    signing_certificate = ca.issue_signing_certificate(signing_key.public_key())
    chain = tuple(certificate.public_bytes(Encoding.DER) for certificate in (signing_certificate, ca.issuing_certificate, ca.root_certificate))
    context = make_server_context(server_key, server_certificate, [ca.issuing_certificate])
    return RegistryPKI(ca, context, signing_key, chain)  # type: ignore[arg-type]


def device(key_type: str = "p256") -> Any:
    """A fresh device key."""
    return generate_key(key_type)


def signed_registration(key: Any, *, seq: int = 1, lifetime: int = 3600, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> SignedRegistration:
    """A registration of ``key``'s ID at example.org, signed now."""
    now = int(reactor.seconds())
    return sign_registration(key, Registration(DOMAIN, derive_id(key.public_key()), seq, now, now + lifetime, endpoints))


# -- a small server built with the core codec ---------------------------------------------------


@dataclass
class FakeRegistry:
    """What the fake server holds and how it misbehaves (shared by its connections)."""

    pki: RegistryPKI
    records: dict[str, bytes] = field(default_factory=dict)
    connections: list[FakeServerProtocol] = field(default_factory=list)
    #: Operations received, by name.
    seen: list[str] = field(default_factory=list)
    #: The signer chain answered (default: the real one).
    signer_chain: tuple[bytes, ...] | None = None
    #: Changes records before they are answered.
    tamper: Callable[[bytes], bytes] | None = None
    #: Answers no request of these operations.
    hold: set[str] = field(default_factory=set)
    #: Pushes this record before answering a watch.
    push_before_watch: bytes | None = None

    def record_for(self, signed: Any, owner: str = "") -> bytes:
        registration = signed.registration
        record = Record(DOMAIN, registration.sixid, owner, int(reactor.seconds()), signed.registration_bytes, signed.spki, signed.signature)
        return sign_record(self.pki.signing_key, record).to_bytes()

    def store(self, data: bytes) -> None:
        sixid = str(SignedRecord.from_bytes(data).record.sixid)
        self.records[sixid] = data
        for connection in self.connections:
            if sixid in connection.watched:
                connection.send(encode_push(Changed(data)))

    def answer(self, data: bytes) -> bytes:
        return data if self.tamper is None else self.tamper(data)


class FakeServerProtocol(Protocol):
    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.decoder = FrameDecoder(32 * 1024)
        self.watched: set[str] = set()

    def connectionMade(self) -> None:
        self.registry.connections.append(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.registry.connections.remove(self)

    def send(self, document: bytes) -> None:
        self.transport.write(encode_frame(document))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            request = parse_request(frame)
            operation = request.operation
            name = type(operation).__name__.lower()
            self.registry.seen.append(name)
            if name in self.registry.hold:
                continue
            registry = self.registry
            if isinstance(operation, Register):
                signed = operation.registration
                signed.verify()
                # Certified: the leaf names the owner (the real server checks the chain).
                owner = str(identity_from_certificate(x509.load_der_x509_certificate(signed.certificates[0]))) if signed.certificates else ""
                data = registry.record_for(signed, owner)
                self.send(encode_response(request.id, RecordResult(registry.answer(data))))
                registry.store(data)
            elif isinstance(operation, Lookup):
                stored = registry.records.get(str(operation.sixid))
                if stored is None:
                    self.send(encode_error(request.id, errors.UnknownId("no current record of this ID")))
                else:
                    self.send(encode_response(request.id, RecordResult(registry.answer(stored))))
            elif isinstance(operation, Watch):
                self.watched.add(str(operation.sixid))
                if registry.push_before_watch is not None:
                    self.send(encode_push(Changed(registry.push_before_watch)))
                stored = registry.records.get(str(operation.sixid))
                self.send(encode_response(request.id, Watching(None if stored is None else registry.answer(stored))))
            elif isinstance(operation, Unwatch):
                self.watched.discard(str(operation.sixid))
                self.send(encode_response(request.id, Unwatched()))
            elif isinstance(operation, Signer):
                self.send(encode_response(request.id, SignerChain(registry.signer_chain or registry.pki.signer_chain)))
            else:
                self.send(encode_response(request.id, Pong()))


async def serve(testcase: TestCase, pki: RegistryPKI | None = None) -> tuple[FakeRegistry, int]:
    """Start a fake sixid server on loopback; returns its state and port."""
    registry = FakeRegistry(pki or registry_pki())
    factory = TLSMemoryBIOFactory(ServerTLS(registry.pki.server_context), False, Factory.forProtocol(lambda: FakeServerProtocol(registry)))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
    testcase.addCleanup(port.stopListening)

    def disconnect() -> None:
        for connection in list(registry.connections):
            connection.transport.abortConnection()  # type: ignore[union-attr]

    testcase.addCleanup(disconnect)
    return registry, port.getHost().port  # type: ignore[attr-defined]
