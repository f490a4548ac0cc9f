"""The SixChat side under test: a responder agent's protocol layer, and a cheap initiator.

Server (:func:`serve_sixchat`, in the process pinned to the server core): the product's
:class:`sixchat.peer.protocol.PeerConnection` (the Twisted adapter over the sans-I/O
handshake and record layer) with an owner that behaves as :class:`sixchat.agent.service.Agent`
does on the wire, and checks peers with the agent's own
:class:`sixchat.peer.verification.PeerVerifier`:

* every initiator is verified by ``PeerVerifier`` (chain to the trusted root with
  :class:`common.pki.trust.TrustStore`, revocation against the issuing CA's CRL, the contact
  look-up in a real SQLite :class:`sixchat.agent.store.AgentStore`, policy ``anyone``); the CRL
  is handed over at start instead of being fetched from a registry (the agent caches it
  too, so it is fetched once in a real run as well);
* on a new session it sends ``<presence status="online"/>``, answers every
  ``<message>`` with a ``<receipt>`` and every ``<ping/>`` with a ``<pong/>``, as the agent
  does;
* unlike the agent, it does not store the messages it receives (the figures are about
  the protocol, and storing is a database write per message), nor does it rate-limit
  handshakes per address (the agent's limit is 20 per 10 s and per address).

Load generator: :class:`SixChatExchange` (handshake, wait for the responder's first
record, authenticated close) for handshake runs, and :func:`open_session` (one session for
message and bulk runs). Both use the product's sans-I/O :class:`sixchat.handshake.Handshake`
as initiator, but accept the responder without checking its chain (the generator is not
what is measured), and count the responder's records by their length prefix without
decrypting them.
"""

from __future__ import annotations

import os
import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pem, Pki, load_certificate, load_key
from bench.loadgen import HandshakeSession, LoadError, TCPFramed, start_connect
from bench.processes import Commands, serve_twisted

RESPONDER = "bob"
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


def credentials(pki: Pki, leaf: Pem) -> Any:
    """:class:`sixchat.handshake.LocalCredentials` of a leaf of ``pki``."""
    from common.identity import Identity
    from sixchat.handshake import LocalCredentials

    return LocalCredentials(
        Identity(leaf.name, pki.domain),
        load_certificate(leaf.certificate),
        [load_certificate(pem) for pem in leaf.chain],
        load_key(leaf.key),
    )


async def responder_factory(reactor: Any, pki: Pki, data_dir: str) -> tuple[Any, dict[str, Any]]:
    """The responder agent's protocol factory (see the module docstring) and its counts:
    each connection it builds is a :class:`PeerConnection` in the responder role, whatever
    carries it (an accepted TCP connection, or a relay circuit's TLS leg)."""
    from cryptography import x509
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory

    from common.pki.trust import TrustStore
    from sixchat import errors
    from sixchat.agent.store import AgentStore
    from sixchat.handshake import Role
    from sixchat.peer.protocol import ConnectionLimits, PeerConnection
    from sixchat.peer.verification import PeerVerifier, RevocationChecker
    from sixchat.wire.application import ChatMessage, Ping, Pong, Presence, Receipt

    store = await AgentStore.open(os.path.join(data_dir, "agent.sqlite3"), reactor)
    crl = x509.load_pem_x509_crl(pki.crl)

    async def fetch_crl(domain: str) -> x509.CertificateRevocationList:
        return crl

    local = credentials(pki, pki.server)
    verifier = PeerVerifier(
        TrustStore([load_certificate(pki.root)]),
        RevocationChecker(fetch_crl, reactor),
        store,
        reactor,
        policy="anyone",
        home_domain=pki.domain,
        known_intermediates=local.chain,
    )
    counts: dict[str, Any] = {"sessions": 0, "failures": 0, "messages": 0, "last_error": ""}

    class Owner:
        """What the agent does on the wire (see the module docstring)."""

        clock = reactor
        limits = ConnectionLimits()

        def __init__(self) -> None:
            self.credentials = local

        def verify_peer(self, connection: PeerConnection, identity: Any, chain: list[Any]) -> Deferred[None]:
            return Deferred.fromCoroutine(verifier.verify(identity, chain))

        def connection_started(self, connection: PeerConnection) -> None:
            pass

        def session_established(self, connection: PeerConnection) -> None:
            counts["sessions"] += 1
            connection.send(Presence("online"))

        def message_received(self, connection: PeerConnection, message: Any) -> None:
            counts["messages"] += 1
            if isinstance(message, ChatMessage):
                connection.send(Receipt(message.id))
            elif isinstance(message, Ping):
                connection.send(Pong())

        def connection_ended(self, connection: PeerConnection, error: errors.SixChatError | None) -> None:
            if error is not None and not isinstance(error, errors.Truncated):
                counts["failures"] += 1
                counts["last_error"] = str(error)

    owner = Owner()

    class Responders(Factory):
        def buildProtocol(self, addr: Any) -> PeerConnection:
            return PeerConnection(owner, Role.RESPONDER)  # type: ignore[arg-type]

    return Responders(), counts


def serve_sixchat(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: a SixChat responder on a loopback port.

    ``params``: ``pki`` (its server leaf is the responder's user certificate) and
    ``data_dir`` (for the agent store).
    """
    pki: Pki = params["pki"]
    data_dir = params["data_dir"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        responders, counts = await responder_factory(reactor, pki, data_dir)
        port = reactor.listenTCP(0, responders, interface=HOST, backlog=1024)
        return {"port": port.getHost().port, "identity": f"{RESPONDER}@{pki.domain}"}, {"counts": lambda: dict(counts)}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "sixchat.log"))


def record_payload_size(message: Any) -> int:
    """The frame payload size of a record carrying application ``message``."""
    from sixchat.record import TAG_LENGTH
    from sixchat.wire.application import encode_application

    return 1 + 1 + len(encode_application(message)) + TAG_LENGTH


# ---------------------------------------------------------------------------------------
# Load generator side


class SixChatExchange(HandshakeSession):
    """Handshake as initiator, wait for the responder's first record, close cleanly."""

    def __init__(self, port: int, local: Any, peer: Any, source: str | None = None) -> None:
        from sixchat.handshake import Handshake, Role

        super().__init__(start_connect(HOST, port, source))
        self.handshake = Handshake(Role.INITIATOR, local, expected_peer=peer)
        self.framed = TCPFramed(self.sock)
        self.session: Any = None
        self.state = "connect"

    def step(self) -> int:
        """Connect, handshake, then count the responder's records."""
        framed = self.framed
        if self.state == "connect":
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            self.state = "handshake"
            framed.write(b"".join(self.handshake.start()))
        if self.state == "handshake":
            framed.flush()
            data = framed.read_available()
            if data:
                self._handle(self.handshake.receive_data(data))
            elif framed.closed:
                raise LoadError("the responder closed the connection during the handshake")
        if self.state == "session":
            framed.flush()
            framed.pump_in()
            if framed.outstanding <= 0:
                return 0
            if framed.closed:
                raise LoadError("the responder closed the session before its first record")
        return _IN | (_OUT if framed.outbox else 0)

    def _handle(self, events: list[Any]) -> None:
        from sixchat.handshake import (
            HandshakeAborted,
            HandshakeComplete,
            PeerNeedsVerification,
            SendData,
        )

        for event in events:
            if isinstance(event, SendData):
                self.framed.write(event.data)
            elif isinstance(event, PeerNeedsVerification):
                self._handle(self.handshake.accept_peer())
            elif isinstance(event, HandshakeComplete):
                self.session = event.session
                self.state = "session"
                self.framed.outstanding = 1
                self.framed.inbox += event.leftover
            elif isinstance(event, HandshakeAborted):
                raise LoadError(f"handshake aborted: {event.error}")

    def finish(self) -> None:
        """Authenticated close, then close the socket."""
        if self.session is not None and not self.framed.closed:
            try:
                self.framed.write(self.session.close("bye"))
            except Exception:  # noqa: BLE001 - best effort
                self.framed.close()
                return
        self.framed.close()


def open_session(port: int, local: Any, peer: Any, timeout: float = 30.0) -> tuple[TCPFramed, Any]:
    """One established session (the responder's first record already read)."""
    exchange = SixChatExchange(port, local, peer)
    epoll = select.epoll()
    epoll.register(exchange.fd, exchange.wanted)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise LoadError("the SixChat handshake did not complete")
            epoll.poll(0.5)
            wanted = exchange.step()
            if wanted == 0:
                break
            epoll.modify(exchange.fd, wanted)
    finally:
        epoll.close()
    exchange.framed.frames = 0
    return exchange.framed, exchange.session
