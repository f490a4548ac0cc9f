"""Figures 11, 11b: SixChat bulk MB/s through the intermediary's relay vs the same session direct.

One responder agent (the product's :class:`~sixchat.peer.protocol.PeerConnection` with
the agent's verification, :func:`bench.sixchat_server.responder_factory`) is reachable
two ways at once: directly on a loopback port, and through a relay port it reserved at
the intermediary. The load generator opens one SixChat session each way (user0 direct,
user1 relayed) and, run after run, streams the same bulk transfer as figure 7 (64 KiB
data records sealed inside the timed window, then a ``<ping/>``; the time runs until the
``<pong/>``) over the direct session (baseline) and then over the relayed one (figure).

The relayed path is the product's: the intermediary's service port (part B's
:class:`~intermediary.server.protocol.IntermediaryFactory` over TLS with the product's
context, its operations wired to :class:`intermediary.server.relay.Relay`) in a process
of its own; the agent reserves with part B's client library
(:func:`intermediary.client.connect_intermediary`, ``reserve``) and takes each circuit
with ``accept_circuit`` on a new TLS connection, running the responder on the stream.
The dialer's bytes go TCP -> relay -> TLS accept leg -> agent, and back. The one
shortcut, outside the timed window: the service's sender check skips the registry
look-up. The bench lifts the per-circuit byte cap (default 64 MiB each way) so that one
session carries every run.

Figure 11b is the same with the accept connection in plain TCP instead of TLS (a third
session, user2, through a line-protocol stand-in for reserve and accept): not the
product's leg, it shows what the leg's TLS costs against the splice itself.

Layout: the responder in the server process (``SERVER_CPU``), the relay in another
server process (:data:`RELAY_CPU`, the server core: both server-side processes share it,
so the figure pays for the relay's CPU), the load generator on ``LOAD_CPU``. The relayed
runs' server CPU is the responder's plus the relay's; each run's ``relay_cpu`` detail is
the relay's own share.

Target (figure 11): ratio >= 0.8; 11b is for information.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pki, load_certificate, load_key, make_pki, server_context
from bench.harness import Context, Figure
from bench.processes import Commands, serve_twisted
from bench.sampling import SERVER_CPU, CpuWindow, Sample
from bench.sixchat_bulk import sealing_producer, transfer_size
from bench.sixchat_handshakes import sixchat_pki
from bench.sixchat_server import RESPONDER
from bench.tls_bulk import CHUNK

FIGURE_ID = "11"
PLAIN_FIGURE_ID = "11b"
TARGET = 0.8
#: The core of the relay process (see the module docstring).
RELAY_CPU = SERVER_CPU
#: Where the relay looks for free ports (busy ones are skipped).
RELAY_PORTS = (47050, 47150)
#: The relay user of the plain accept leg's reservation (figure 11b).
PLAIN_USER = "bob.plain@example.org"


def serve_relay(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the relay, its reservation stand-in and its TLS accept port.

    ``params``: ``pki`` (its server leaf is the intermediary's certificate), ``data_dir``
    (the log). The service port is part B's: :class:`IntermediaryFactory` over TLS, with
    the operations wired to the relay (the sender check skips the registry). For figure
    11b, the stand-in takes ``reserve USER`` on its control port and answers ``reserved
    USER PORT``, then pushes ``circuit USER ID``; a plain TCP accept connection starts
    with the line ``USER ID``.
    """
    pki: Pki = params["pki"]
    data_dir = params["data_dir"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.basic import LineOnlyReceiver
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from common.identity import Identity, identity_from_certificate
        from common.tls import ServerTLS
        from intermediary.server.operations import Operations
        from intermediary.server.protocol import IntermediaryFactory
        from intermediary.server.relay import Relay, RelayLimits

        relay = Relay(
            reactor, interface=HOST, ports=range(*RELAY_PORTS), limits=RelayLimits(circuit_bytes=1 << 50)
        )

        class Reserving(LineOnlyReceiver):
            """Stand-in for the reserving service connection (not timed)."""

            def __init__(self) -> None:
                self.notifies: dict[Identity, Any] = {}

            def lineReceived(self, line: bytes) -> None:
                word, _, name = line.decode("ascii").partition(" ")
                if word == "reserve":
                    user = Identity.parse(name)

                    def notify(circuit_id: str, where: str) -> None:
                        self.sendLine(f"circuit {name} {circuit_id}".encode("ascii"))

                    self.notifies[user] = notify
                    relay.reserve(user, notify).addCallback(
                        lambda reservation: self.sendLine(f"reserved {name} {reservation.port}".encode("ascii"))
                    )

            def connectionLost(self, reason: Any = None) -> None:
                for user, notify in self.notifies.items():
                    relay.release(user, notify)

        class Accepting(Protocol):
            """The plain accept connection: one line names the circuit, then raw bytes."""

            def __init__(self) -> None:
                self.head = b""
                self.splice: Any = None

            def dataReceived(self, data: bytes) -> None:
                if self.splice is not None:
                    self.splice.data_received(data)
                    return
                self.head += data
                if b"\n" in self.head:
                    line, rest = self.head.split(b"\n", 1)
                    name, _, circuit_id = line.decode("ascii").partition(" ")
                    self.splice = relay.join(Identity.parse(name), circuit_id, self.transport)  # type: ignore[arg-type]
                    if rest:
                        self.splice.data_received(rest)

            def connectionLost(self, reason: Any = None) -> None:
                if self.splice is not None:
                    self.splice.leg_lost()

        class Verifier:
            """The service's sender check, without the registry look-up (the figure
            measures the spliced stream, not the log-in)."""

            async def verify(self, leaf: Any, intermediates: Any) -> Identity:
                return identity_from_certificate(leaf)

        operations = Operations(pki.domain, None, None, reactor, relay=relay)  # type: ignore[arg-type]
        service = TLSMemoryBIOFactory(
            ServerTLS(server_context(pki)), False, IntermediaryFactory(operations, Verifier(), reactor)  # type: ignore[arg-type]
        )
        listening = reactor.listenTCP(0, service, interface=HOST)
        control = reactor.listenTCP(0, Factory.forProtocol(Reserving), interface=HOST)
        plain = reactor.listenTCP(0, Factory.forProtocol(Accepting), interface=HOST)

        def circuits(users: list[str]) -> list[dict[str, Any]]:
            return [
                {"user": name, "state": splice.state.value, "up": splice.core.up, "down": splice.core.down}
                for name in users
                for splice in relay.circuits(Identity.parse(name))
            ]

        info = {
            "service_port": listening.getHost().port,
            "control_port": control.getHost().port,
            "plain_accept_port": plain.getHost().port,
        }
        return info, {"circuits": circuits}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "relay.log"))


def serve_relayed_responder(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the SixChat responder, listening directly and reachable through
    the relay (``params``: ``pki``, ``intermediary_pki``, ``data_dir``, ``relay`` = the
    relay's info). Relay port ``relay_port`` is reserved with part B's client library
    (:func:`intermediary.client.connect_intermediary`, ``reserve``, then
    ``accept_circuit`` on a new connection per circuit: figure 11); ``plain_relay_port``
    through the stand-in, for :data:`PLAIN_USER` (figure 11b)."""
    pki: Pki = params["pki"]
    intermediary_pki: Pki = params["intermediary_pki"]
    data_dir = params["data_dir"]
    relay_info = params["relay"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        import hashlib

        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import ClientFactory, Protocol
        from twisted.protocols.basic import LineOnlyReceiver

        from bench.sixchat_server import RESPONDER, responder_factory
        from common.pki.certificates import certificate_der
        from intermediary.client import connect_intermediary

        responders, counts = await responder_factory(reactor, pki, data_dir)
        direct = reactor.listenTCP(0, responders, interface=HOST, backlog=1024)
        server = load_certificate(intermediary_pki.server.certificate)

        async def lookup(identity: Any) -> tuple[Any, set[str]]:
            return None, {hashlib.sha256(certificate_der(server)).hexdigest()}

        async def connect() -> Any:
            return await connect_intermediary(
                reactor,
                pki.domain,
                directory_lookup=lookup,
                key=load_key(pki.server.key),
                certificate=load_certificate(pki.server.certificate),
                chain=[load_certificate(pem) for pem in pki.server.chain],
                roots={pki.domain: load_certificate(intermediary_pki.root)},
                server=(HOST, relay_info["service_port"]),
            )

        async def accept(circuit_id: str) -> None:
            stream = await (await connect()).accept_circuit(circuit_id)
            stream.attach(responders.buildProtocol(None))

        service = await connect()
        reservation = await service.reserve(lambda circuit_id, source: Deferred.fromCoroutine(accept(circuit_id)))

        # Figure 11b: the plain TCP leg, through the line-protocol stand-in.
        plain_reserved: Deferred[int] = Deferred()

        class Leg(Protocol):
            """A plain accept connection: names the circuit, then carries a responder
            PeerConnection."""

            def __init__(self, head: bytes) -> None:
                self.head = head
                self.peer: Any = None

            def connectionMade(self) -> None:
                self.transport.write(self.head + b"\n")  # type: ignore[union-attr]
                self.peer = responders.buildProtocol(None)
                self.peer.makeConnection(self.transport)

            def dataReceived(self, data: bytes) -> None:
                self.peer.dataReceived(data)

            def connectionLost(self, reason: Any = None) -> None:
                if self.peer is not None:
                    self.peer.connectionLost(reason)

        class Reserving(LineOnlyReceiver):
            def connectionMade(self) -> None:
                self.sendLine(f"reserve {PLAIN_USER}".encode("ascii"))

            def lineReceived(self, line: bytes) -> None:
                word, name, value = line.decode("ascii").split(" ")
                if word == "reserved":
                    plain_reserved.callback(int(value))
                elif word == "circuit":
                    head = f"{name} {value}".encode("ascii")
                    reactor.connectTCP(HOST, relay_info["plain_accept_port"], ClientFactory.forProtocol(lambda: Leg(head)))

        reactor.connectTCP(HOST, relay_info["control_port"], ClientFactory.forProtocol(Reserving))
        info = {
            "port": direct.getHost().port,
            "relay_port": reservation.port,
            "plain_relay_port": await plain_reserved,
            "identity": f"{RESPONDER}@{pki.domain}",
        }
        return info, {"counts": lambda: dict(counts)}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "sixchat.log"))


def measure(
    responder: dict[str, Any], relay_pid: int, pki: Pki, settings: Any, total: int
) -> list[tuple[Sample, Sample, Sample]]:
    """Load generator: (direct, TLS-leg relayed, plain-leg relayed) triples of MB/s, one
    session each way, the three runs back to back."""
    from bench.loadgen import send_and_wait
    from bench.sampling import process_cpu_seconds
    from bench.sixchat_server import credentials, open_session
    from common.identity import Identity

    bob = Identity.parse(responder["identity"])
    ports = (responder["port"], responder["relay_port"], responder["plain_relay_port"])
    sessions = [open_session(port, credentials(pki, pki.users[index]), bob) for index, port in enumerate(ports)]
    payload = os.urandom(CHUNK)

    def timed(connection: Any, session: Any, pids: tuple[int, ...]) -> Sample:
        relay_before = process_cpu_seconds(relay_pid)
        with CpuWindow(pids) as window:
            send_and_wait(connection, sealing_producer(session, payload, total // CHUNK))
        relay_share = (process_cpu_seconds(relay_pid) - relay_before) / window.wall
        return window.sample(total / window.wall / 1e6, bytes=total, relay_cpu=round(relay_share, 3))

    for framed, session in sessions:
        send_and_wait(framed, sealing_producer(session, payload, 8))
    runs = []
    try:
        for _ in range(settings.runs):
            direct = timed(*sessions[0], (responder["pid"],))
            relayed = timed(*sessions[1], (responder["pid"], relay_pid))
            plain = timed(*sessions[2], (responder["pid"], relay_pid))
            runs.append((direct, relayed, plain))
    finally:
        for framed, session in sessions:
            framed.write(session.close("bye"))
            framed.close()
    return runs


def run(ctx: Context) -> list[Figure]:
    """Measure figures 11 and 11b."""
    from bench.processes import ServerProcess

    settings = ctx.settings
    pki = sixchat_pki(ctx)
    intermediary_pki = ctx.shared(
        "pki-intermediary", lambda: make_pki(settings.key_type, users=0, server_user="intermediary")
    )
    relay = ServerProcess(
        "relay", "bench.relay_throughput:serve_relay", {"pki": intermediary_pki, "data_dir": ctx.path("relay")}, cpu=RELAY_CPU
    )
    responder = ServerProcess(
        "relayed-responder",
        "bench.relay_throughput:serve_relayed_responder",
        {"pki": pki, "intermediary_pki": intermediary_pki, "data_dir": ctx.path("relayed-responder")},
    )
    try:
        relay.start()
        responder.params["relay"] = relay.info
        responder.start()
        total = transfer_size(ctx)
        runs = ctx.worker().run(measure, responder.info, relay.pid, pki, settings, total)
        circuits = relay.call("circuits", users=[f"{RESPONDER}@{pki.domain}", PLAIN_USER])
        counts = responder.call("counts")
    finally:
        responder.stop()
        relay.stop()
    direct = [run[0] for run in runs]
    parameters = {"record_bytes": CHUNK, "bytes_per_run": total, "relay_cpu": RELAY_CPU}
    details = {"responder": counts, "circuits": circuits}
    layout = (
        "same responder process, same transfer both ways, runs back to back; the relayed runs' server CPU is the"
        " responder's plus the relay's (both on the server core; the relay's own share is each run's relay_cpu)"
    )
    stand_ins = (
        "the product's relay path: part B's service over TLS (reserve, <circuit> push, accept_circuit on a new TLS"
        " connection), Relay, dialer TCP; the service's sender check skips the registry look-up (not timed)"
    )
    return [
        Figure(
            FIGURE_ID,
            "SixChat bulk through the relay, TLS accept leg (64 KiB records sealed in the window)",
            "MB/s",
            [run[1] for run in runs],
            "the same SixChat bulk, direct",
            "MB/s",
            direct,
            target=TARGET,
            parameters=parameters,
            details=details,
            notes=[layout, stand_ins],
        ),
        Figure(
            PLAIN_FIGURE_ID,
            "the same through the relay with a plain TCP accept leg (the splice without the leg's TLS)",
            "MB/s",
            [run[2] for run in runs],
            "the same SixChat bulk, direct",
            "MB/s",
            direct,
            parameters=parameters,
            notes=[layout, "not the product's leg (which is TLS; reserve and accept by a line-protocol stand-in): shows what the leg's TLS costs"],
        ),
    ]
