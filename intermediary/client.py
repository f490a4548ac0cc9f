"""The intermediary's client library (what SixChat agents import).

:func:`connect_intermediary` finds a domain's intermediary through its registry (the
address record of the account ``intermediary``), connects over TLS presenting the user's
certificate, and checks the server's certificate the way agents check peers: it chains to
the domain's pinned root, names exactly ``intermediary@<domain>``, and is one of the
certificates the registry holds for that account now (fingerprint). Then
:class:`IntermediaryClient` runs the operations of docs/intermediary.rst; every call returns
a Deferred that fails with an :class:`~intermediary.errors.IntermediaryError`
(:class:`~intermediary.errors.ConnectionLost` when the connection ends first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from common.addresses import dial_name
from common.identity import Identity
from common.pki.certificates import certificate_der
from common.pki.errors import CertificateInvalid
from common.pki.keyfiles import PrivateKey
from common.pki.trust import TrustStore
from common.rpc.client import ClientErrors, RpcClientProtocol
from common.tls import make_client_context
from intermediary import ACCOUNT, errors
from intermediary.circuit import CircuitStream, join_circuit
from intermediary.wire import (
    MAX_FRAME,
    Ack,
    Acked,
    CircuitOffer,
    Delivery,
    Deposit,
    Deposited,
    ErrorAnswer,
    FetchPrekey,
    Operation,
    Ping,
    Pong,
    PrekeyCount,
    PrekeyData,
    PublishPrekeys,
    Request,
    Reserve,
    Reserved,
    Response,
    ServerMessage,
    Subscribe,
    Subscribed,
    Superseded,
    encode_request,
    parse_server_message,
)
from irp.client.discovery import discover, srv_name

__all__ = ["CircuitStream", "Delivery", "IntermediaryClient", "PrekeyCount", "Reservation", "connect_intermediary", "intermediary_identity"]

log = Logger()

#: A relay reservation: address, port, expires.
Reservation = Reserved
#: Seconds between keep-alive pings while subscribed or reserved.
PING_INTERVAL = 60.0
MAX_OUTSTANDING = 32

DirectoryLookup = Callable[[Identity], Awaitable[tuple[Any, set[str]]]]


def intermediary_identity(domain: str) -> Identity:
    """The identity a domain's intermediary runs as."""
    return Identity(ACCOUNT, domain)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """TLS 1.2+ with the suite's ciphers, presenting the user's certificate; the server's
    certificate is checked after the handshake (it is a user certificate, not a host's)."""

    def __init__(self, key: PrivateKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
        self.context = make_client_context(key, certificate, chain)  # type: ignore[arg-type]

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802
        """Twisted's hook."""
        connection = SSL.Connection(self.context, None)
        connection.set_connect_state()
        return connection


class IntermediaryClientProtocol(RpcClientProtocol):
    """Frames requests, matches answers by id, hands pushes to their callbacks
    (:class:`common.rpc.client.RpcClientProtocol` speaking :mod:`intermediary.wire`)."""

    error_classes: ClassVar[ClientErrors] = errors
    base_error = errors.IntermediaryError
    response_type = Response
    error_type = ErrorAnswer
    peer = "the intermediary"
    max_frame = MAX_FRAME
    max_outstanding = MAX_OUTSTANDING

    def __init__(self, reactor: Any, timeout: float, check_server: Callable[[x509.Certificate, list[x509.Certificate]], None]) -> None:
        super().__init__(reactor, timeout)
        self.check_server_certificate = check_server
        self.on_deliver: Callable[[Delivery], None] | None = None
        self.on_circuit: Callable[[str, str], None] | None = None
        self.on_superseded: Callable[[], None] | None = None

    def check_server(self) -> None:
        """TLS is up: check that the server is the domain's intermediary."""
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        peer = handle.get_peer_certificate()
        chain = [certificate.to_cryptography() for certificate in handle.get_peer_cert_chain() or []]
        if peer is None:
            raise errors.ServerVerificationFailed("the server presented no certificate")
        leaf = peer.to_cryptography()
        self.check_server_certificate(leaf, [c for c in chain if certificate_der(c) != certificate_der(leaf)])

    def encode_request(self, request_id: int, operation: Operation) -> bytes:
        """The document of request ``request_id``."""
        return encode_request(Request(request_id, operation))

    def parse_answer(self, payload: bytes) -> ServerMessage:
        """What the server sent."""
        return parse_server_message(payload)

    def pushed(self, event: Delivery | CircuitOffer | Superseded) -> None:
        """A push: to its callback."""
        if isinstance(event, Delivery):
            if self.on_deliver is not None:
                self.on_deliver(event)
        elif isinstance(event, CircuitOffer):
            if self.on_circuit is not None:
                self.on_circuit(event.circuit_id, event.source)
        elif self.on_superseded is not None:
            self.on_superseded()
        else:
            log.info("Another connection of this user subscribed: this one no longer receives messages")


class IntermediaryClient:
    """One connection to a domain's intermediary (see the module docs)."""

    def __init__(self, protocol: IntermediaryClientProtocol, host: str, port: int) -> None:
        self.protocol = protocol
        self.host = host
        self.port = port
        self._keepalive: LoopingCall | None = None
        #: The last reservation this connection got (where circuits are joined).
        self.reservation: Reservation | None = None

    async def publish_prekeys(self, prekeys: list[bytes]) -> PrekeyCount:
        """Publish signed prekeys (encoded by ``sixchat.sealed.prekeys.encode_prekey``)."""
        result: PrekeyCount = await self.protocol.call(PublishPrekeys(tuple(prekeys)), PrekeyCount)
        return result

    async def fetch_prekey(self, user: Identity) -> bytes:
        """One prekey of ``user`` (a user of the intermediary's domain), as published."""
        result: PrekeyData = await self.protocol.call(FetchPrekey(user), PrekeyData)
        return result.data

    async def deposit(self, to: Identity, envelope: bytes, expires: int, deliver_at: int | None = None) -> str:
        """Store a sealed message for ``to``; returns the server's message id once it is
        committed."""
        result: Deposited = await self.protocol.call(Deposit(to, expires, deliver_at, envelope), Deposited)
        return result.message_id

    async def subscribe(self, on_deliver: Callable[[Delivery], None], on_superseded: Callable[[], None] | None = None) -> int:
        """Receive the user's messages (``on_deliver`` for each; acknowledge with
        :meth:`ack` once stored); returns how many were waiting. ``on_superseded`` is
        called if a newer subscription of the same user (another connection) ends this one."""
        self.protocol.on_deliver = on_deliver
        self.protocol.on_superseded = on_superseded
        result: Subscribed = await self.protocol.call(Subscribe(), Subscribed)
        self._keep_alive()
        return result.pending

    async def ack(self, message_id: str) -> None:
        """The message is stored at the recipient: the intermediary deletes it."""
        await self.protocol.call(Ack(message_id), Acked)

    async def reserve(self, on_circuit: Callable[[str, str], None]) -> Reservation:
        """Reserve a relay port; ``on_circuit(circuit_id, "address port")`` per dialer
        (``circuit_id`` is the circuit's single-use join secret: pass it to
        :meth:`accept_circuit`, never log it)."""
        self.protocol.on_circuit = on_circuit
        result: Reserved = await self.protocol.call(Reserve(), Reserved)
        self.reservation = result
        self._keep_alive()
        return result

    async def accept_circuit(self, circuit_id: str) -> CircuitStream:
        """Join circuit ``circuit_id``, offered to this connection's reservation: a plain
        TCP connection to the reservation's address and join port carries ``<join>``;
        returns the raw stream once ``<joined/>`` arrived (within the client's timeout).
        Fails with ``UnknownCircuit`` (unknown, used or expired id), ``ClientError`` (this
        connection reserved nothing), ``Unavailable``, ``Timeout``, ``ConnectionLost``."""
        reservation = self.reservation
        if reservation is None:
            raise errors.ClientError("no relay reservation on this connection: accept circuits on the client that reserved")
        return await join_circuit(self.protocol.reactor, reservation.address, reservation.join_port, circuit_id, self.protocol.timeout)

    async def ping(self) -> None:
        """Round trip to the intermediary."""
        await self.protocol.call(Ping(), Pong)

    def _keep_alive(self) -> None:
        if self._keepalive is None:
            self._keepalive = LoopingCall(self._ping_quietly)
            self._keepalive.clock = self.protocol.reactor
            self._keepalive.start(PING_INTERVAL, now=False)
            self.protocol.when_lost().addBoth(lambda _: self._stop_keepalive())

    def _ping_quietly(self) -> Deferred[None]:
        pinging: Deferred[Any] = Deferred.fromCoroutine(self.ping())
        return pinging.addErrback(lambda _failure: None)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        return self.protocol.when_lost()

    async def close(self) -> None:
        """Close the connection (and wait until it is gone)."""
        self._stop_keepalive()
        if not self.protocol.closed:
            self.protocol.transport.loseConnection()  # type: ignore[union-attr]
            await self.when_lost()


def server_checker(
    domain: str, root: x509.Certificate, fingerprints: set[str], clock: Any
) -> Callable[[x509.Certificate, list[x509.Certificate]], None]:
    """The check of the server's certificate: chains to ``root`` (``domain``'s pinned root),
    names ``intermediary@domain``, and its SHA-256 fingerprint is in ``fingerprints``."""
    trust = TrustStore(anchors=[(domain, root)])
    expected = intermediary_identity(domain)

    def check(leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        try:
            verified = trust.verify_user_certificate(leaf, intermediates, now=datetime.fromtimestamp(clock.seconds(), UTC))
        except CertificateInvalid as error:
            raise errors.ServerVerificationFailed(f"the intermediary's certificate does not verify: {error.message}") from None
        if verified.identity != expected:
            raise errors.ServerVerificationFailed(f"the server is {verified.identity}, not {expected}")
        if hashlib.sha256(certificate_der(leaf)).hexdigest() not in fingerprints:
            raise errors.ServerVerificationFailed(f"the registry of {domain} does not hold this certificate for {expected}")

    return check


async def connect_intermediary(
    reactor: Any,
    domain: str,
    *,
    directory_lookup: DirectoryLookup,
    key: PrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    roots: dict[str, x509.Certificate],
    timeout: float = 15.0,
    server: tuple[str, int] | None = None,
    resolver: Any = None,
) -> IntermediaryClient:
    """Connect to ``domain``'s intermediary (see the module docs). ``directory_lookup``
    returns the address record and certificate fingerprints of an identity, per its
    registry; ``server`` skips the address (the certificate is still checked). When the
    registry holds no current address for the intermediary, DNS SRV
    (``_sixchat-intermediary._tcp.<domain>``, asked through the ``twisted.names``
    ``resolver``, default the system's) may name it; the certificate is checked all the
    same."""
    root = roots.get(domain)
    if root is None:
        raise errors.ClientError(f"{domain} is not a trusted domain: trust its CA first")
    record, fingerprints = await directory_lookup(intermediary_identity(domain))
    if server is not None:
        targets = [server]
    else:
        current = record is not None and record.is_current(reactor.seconds())
        targets = [(endpoint.address, endpoint.port) for endpoint in record.endpoints] if current else []
        if not targets:
            targets = await discover_by_srv(domain, resolver)
        if not targets:
            raise errors.Unavailable(
                f"the intermediary of {domain} has registered no current address (and {srv_name(domain, SRV_SERVICE)} names none)"
            )
    check = server_checker(domain, root, set(fingerprints), reactor)
    last: errors.IntermediaryError = errors.Unavailable(f"cannot reach the intermediary of {domain}")
    for host, port in targets:
        try:
            protocol = await _connect_one(reactor, host, port, _ClientTLS(key, certificate, chain), check, timeout)
        except errors.ServerVerificationFailed:
            raise
        except errors.IntermediaryError as error:
            last = error
            continue
        except Exception as error:  # noqa: BLE001 - any failure to connect: try the next address
            last = errors.Unavailable(f"cannot reach the intermediary of {domain} at {host} port {port}: {error}")
            continue
        return IntermediaryClient(protocol, host, port)
    raise last


#: The DNS SRV service of a domain's intermediary (the fallback when its registry holds no
#: current address for it).
SRV_SERVICE = "_sixchat-intermediary._tcp"
#: Seconds the SRV look-up may take (two tries): the registry's answer is the usual way.
SRV_TIMEOUT = (1, 3)


async def discover_by_srv(domain: str, resolver: Any = None) -> list[tuple[str, int]]:
    """The intermediary's ``(host, port)`` targets that DNS SRV names for ``domain``, in
    RFC 2782 order; empty when there is no record, the domain says it has none (target
    ``.``), or the DNS cannot be asked."""
    try:
        return await discover(domain, resolver, service=SRV_SERVICE, default_port=None, timeout=SRV_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - NotFound, timeouts, SERVFAIL...: no SRV answer
        log.debug("No SRV record of {domain}'s intermediary: {why}", domain=domain, why=str(error))
        return []


async def _connect_one(
    reactor: Any, host: str, port: int, tls: _ClientTLS, check: Callable[[x509.Certificate, list[x509.Certificate]], None], timeout: float
) -> IntermediaryClientProtocol:
    protocol = IntermediaryClientProtocol(reactor, timeout, check)
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, dial_name(host), port, timeout=timeout))
    await endpoint.connect(Factory.forProtocol(lambda: protocol))
    connected: IntermediaryClientProtocol = await protocol.handshake(errors.Timeout("the TLS handshake with the intermediary took too long"))
    return connected
