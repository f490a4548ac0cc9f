"""Joining a relay circuit (client side): the plain TCP join leg and the stream it becomes.

:func:`join_circuit` connects to the relay's join port (the address and ``join-port`` of the
``<reserved>`` answer), sends the one frame ``<join circuit="ID"/>`` and waits for
``<joined/>``; the connection is then a raw byte stream to the dialer
(:class:`CircuitStream`). The leg needs no TLS: the circuit id is a single-use secret the
agent learnt on its authenticated TLS service connection, and what the circuit carries is a
SixChat session, authenticated and encrypted end to end (docs/relay.rst).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from common.addresses import dial_name
from common.wire.framing import FrameDecoder, FrameError, encode_frame
from intermediary import errors
from intermediary.joinframes import MAX_JOIN_FRAME, encode_join, parse_join_answer


def circuit_label(circuit_id: str) -> str:
    """What logs call a circuit, on both sides: its id is the join secret and is never
    logged; the first 12 hex digits of the id's SHA-256 name it instead."""
    return hashlib.sha256(circuit_id.encode("ascii")).hexdigest()[:12]

class JoinClientProtocol(Protocol):
    """The join connection: one frame out, one frame in, then raw bytes.

    ``joined`` fires once ``<joined/>`` arrived, or fails with the refusal the join port
    sent (``UnknownCircuit``, ``RateLimited``...), ``MalformedMessage``, ``Timeout``
    (``timeout`` seconds without an answer) or ``ConnectionLost``.
    """

    def __init__(self, reactor: Any, circuit_id: str, timeout: float) -> None:
        self.reactor = reactor
        self.request = encode_frame(encode_join(circuit_id))
        self.timeout = timeout
        self.decoder: FrameDecoder | None = FrameDecoder(MAX_JOIN_FRAME)
        self.joined: Deferred[JoinClientProtocol] = Deferred()
        self.failure: errors.IntermediaryError | None = None
        #: The protocol the stream is attached to, and the bytes that came before it.
        self.attached: IProtocol | None = None
        self.held: list[bytes] = []
        self._call: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        """Send the join frame; the answer has ``timeout`` seconds."""
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        transport.write(self.request)
        self._call = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._call = None
        self._refused(errors.Timeout(f"the relay did not answer the join within {self.timeout:g} seconds"), abort=True)

    def _refused(self, error: errors.IntermediaryError, *, abort: bool = False) -> None:
        self.failure = self.failure or error
        self.decoder = None
        transport: Any = self.transport
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """The answer frame, then the circuit's bytes."""
        if self.decoder is None:
            if self.joined.called and self.failure is None:
                self._deliver(data)
            return
        try:
            self.decoder.append(data)
            frame = self.decoder.next_frame()
            if frame is None:
                return
            parse_join_answer(frame)
        except FrameError as error:
            self._refused(errors.MalformedMessage(f"the relay broke the framing: {error}"))
            return
        except errors.IntermediaryError as error:
            self._refused(error)
            return
        rest = self.decoder.take_pending()
        self.decoder = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if rest:
            self.held.append(rest)
        self.joined.callback(self)

    def _deliver(self, data: bytes) -> None:
        if self.attached is None:
            self.held.append(data)
        else:
            self.attached.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Fail the join if it was pending; else end the attached protocol."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self.joined.called:
            self.joined.errback(self.failure or errors.ConnectionLost("the relay closed the join connection"))
        elif self.attached is not None:
            self.attached.connectionLost(reason)


class CircuitStream:
    """A joined circuit: a raw byte stream to the dialer, through the relay.

    :meth:`attach` gives it to a protocol (the agent's responder ``PeerConnection``): the
    protocol is connected to the join connection's transport, receives every byte from
    the dialer (those that arrived already first) and ``connectionLost`` when the circuit
    ends.
    """

    def __init__(self, protocol: JoinClientProtocol) -> None:
        self._protocol = protocol

    @property
    def transport(self) -> Any:
        """The underlying TCP transport (write raw bytes to it)."""
        return self._protocol.transport

    def attach(self, protocol: IProtocol) -> None:
        """Run ``protocol`` on the circuit."""
        leg = self._protocol
        leg.attached = protocol
        protocol.makeConnection(leg.transport)  # type: ignore[arg-type]
        held, leg.held = leg.held, []
        for data in held:
            protocol.dataReceived(data)


async def join_circuit(reactor: Any, host: str, port: int, circuit_id: str, timeout: float) -> CircuitStream:
    """Join circuit ``circuit_id`` at the relay's join port ``(host, port)``; returns the
    stream once ``<joined/>`` arrived (errors as :class:`JoinClientProtocol` says)."""
    protocol = JoinClientProtocol(reactor, circuit_id, timeout)
    endpoint = HostnameEndpoint(reactor, dial_name(host), port, timeout=timeout)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
    except Exception as error:  # noqa: BLE001 - any failure to connect
        raise errors.Unavailable(f"cannot reach the relay's join port at {host} port {port}: {error}") from None
    await protocol.joined
    return CircuitStream(protocol)
