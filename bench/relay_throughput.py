"""Figure 11: SixChat bulk MB/s through the intermediary's relay vs the same session direct.

One responder agent (the product's :class:`~sixchat.peer.protocol.PeerConnection` with
the agent's verification, :func:`bench.sixchat_server.responder_factory`) is reachable
two ways at once: directly on a loopback port, and through a relay port it reserved at
the intermediary. The load generator opens one SixChat session each way (user0 direct,
user1 relayed) and, run after run, streams the same bulk transfer as figure 7 (64 KiB
data records sealed inside the timed window, then a ``<ping/>``; the time runs until the
``<pong/>``) over the direct session (baseline) and then over the relayed one (figure).

The relayed path is the product's: the intermediary's service port (part B's
:class:`~intermediary.server.protocol.IntermediaryFactory` over TLS with the product's
context, its operations wired to :class:`intermediary.server.relay.Relay`, started so that
its join port listens) in a process of its own; the agent reserves with the client library
(:func:`intermediary.client.connect_intermediary`, ``reserve``) and takes each circuit with
``accept_circuit``: a plain TCP connection to the relay's join port, ``<join>``,
``<joined/>``, then the responder runs on the stream. The dialer's bytes go TCP -> relay
-> TCP join leg -> agent, and back. The one shortcut, outside the timed window: the
service's sender check skips the registry look-up. The bench lifts the per-circuit byte
cap (default 64 MiB each way) so that one session carries every run.

Layout: the responder in the server process (``SERVER_CPU``), the relay in another
server process (:data:`RELAY_CPU`, the server core: both server-side processes share it,
so the figure pays for the relay's CPU), the load generator on ``LOAD_CPU``. The relayed
runs' server CPU is the responder's plus the relay's; each run's ``relay_cpu`` detail is
the relay's own share.

Target: ratio >= 0.8.
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
TARGET = 0.8
#: The core of the relay process (see the module docstring).
RELAY_CPU = SERVER_CPU
#: Where the relay looks for free ports (busy ones are skipped).
RELAY_PORTS = (47050, 47150)


def serve_relay(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the intermediary's service port and its relay (with its join port).

    ``params``: ``pki`` (its server leaf is the intermediary's certificate), ``data_dir``
    (the log). The service port is part B's: :class:`IntermediaryFactory` over TLS, with
    the operations wired to the relay (the sender check skips the registry).
    """
    pki: Pki = params["pki"]
    data_dir = params["data_dir"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from common.identity import Identity, identity_from_certificate
        from common.tls import ServerTLS
        from intermediary.server.operations import Operations
        from intermediary.server.protocol import IntermediaryFactory
        from intermediary.server.relay import Relay, RelayLimits

        relay = Relay(
            reactor, interface=HOST, ports=range(*RELAY_PORTS), limits=RelayLimits(circuit_bytes=1 << 50), join_port=0
        )
        relay.start()

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

        def circuits(users: list[str]) -> list[dict[str, Any]]:
            return [
                {"user": name, "state": splice.state.value, "up": splice.core.up, "down": splice.core.down}
                for name in users
                for splice in relay.circuits(Identity.parse(name))
            ]

        info = {"service_port": listening.getHost().port, "join_port": relay.join_port}
        return info, {"circuits": circuits}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "relay.log"))


def serve_relayed_responder(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the SixChat responder, listening directly and reachable through
    the relay (``params``: ``pki``, ``intermediary_pki``, ``data_dir``, ``relay`` = the
    relay's info). Relay port ``relay_port`` is reserved with the client library
    (:func:`intermediary.client.connect_intermediary`, ``reserve``), and each circuit is
    taken with ``accept_circuit`` on that client (the plain TCP join leg)."""
    pki: Pki = params["pki"]
    intermediary_pki: Pki = params["intermediary_pki"]
    data_dir = params["data_dir"]
    relay_info = params["relay"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        import hashlib

        from twisted.internet.defer import Deferred

        from bench.sixchat_server import RESPONDER, responder_factory
        from common.pki.certificates import certificate_der
        from intermediary.client import connect_intermediary

        responders, counts = await responder_factory(reactor, pki, data_dir)
        direct = reactor.listenTCP(0, responders, interface=HOST, backlog=1024)
        server = load_certificate(intermediary_pki.server.certificate)

        async def lookup(identity: Any) -> tuple[Any, set[str]]:
            return None, {hashlib.sha256(certificate_der(server)).hexdigest()}

        service = await connect_intermediary(
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
            stream = await service.accept_circuit(circuit_id)
            stream.attach(responders.buildProtocol(None))

        reservation = await service.reserve(lambda circuit_id, source: Deferred.fromCoroutine(accept(circuit_id)))
        if reservation.join_port != relay_info["join_port"]:
            raise RuntimeError("the reservation names another join port than the relay's")
        info = {
            "port": direct.getHost().port,
            "relay_port": reservation.port,
            "identity": f"{RESPONDER}@{pki.domain}",
        }
        return info, {"counts": lambda: dict(counts)}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "sixchat.log"))


def measure(
    responder: dict[str, Any], relay_pid: int, pki: Pki, settings: Any, total: int
) -> list[tuple[Sample, Sample]]:
    """Load generator: (direct, relayed) pairs of MB/s, one session each way, the two runs
    back to back."""
    from bench.loadgen import send_and_wait
    from bench.sampling import process_cpu_seconds
    from bench.sixchat_server import credentials, open_session
    from common.identity import Identity

    bob = Identity.parse(responder["identity"])
    ports = (responder["port"], responder["relay_port"])
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
            runs.append((direct, relayed))
    finally:
        for framed, session in sessions:
            framed.write(session.close("bye"))
            framed.close()
    return runs


def run(ctx: Context) -> list[Figure]:
    """Measure figure 11."""
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
        circuits = relay.call("circuits", users=[f"{RESPONDER}@{pki.domain}"])
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
        "the product's relay path: the service over TLS (reserve, <circuit> push), accept_circuit joining on the"
        " relay's plain TCP join port (<join>, <joined/>), Relay, dialer TCP; the service's sender check skips the"
        " registry look-up (not timed)"
    )
    return [
        Figure(
            FIGURE_ID,
            "SixChat bulk through the relay, plain TCP join leg (64 KiB records sealed in the window)",
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
    ]
