"""Baseline: a bare Twisted TLS request/response server with 4-byte length framing.

Nothing but Twisted's ``TLSMemoryBIOProtocol`` with the product's TLS context
(:func:`bench.fixtures.server_context`) and a minimal frame splitter: every request frame
is answered at once with a prepared response frame of a given size (the mean size of the
product's answers being compared), or with the request itself. It is the floor under
every IRP request and under SixChat's messages: what Twisted and OpenSSL cost before the
product does any work.

Twisted's default TLS protocol gathers the small writes of a reactor turn into one TLS
write; ``record_per_answer`` gives every answer a TLS record of its own instead (the
baseline of SixChat's acknowledged messages, each answered by a record).

Optionally (``hello``) the server sends one frame as soon as the TLS handshake
completes, which the TLS 1.3 handshake baseline waits for (as the SixChat initiator waits
for the responder's first record).
"""

from __future__ import annotations

import os
import struct
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pki
from bench.processes import Commands, serve_twisted

_LENGTH = struct.Struct(">I")


def frame_of(size: int, fill: bytes = b"r") -> bytes:
    """A frame whose payload is ``size`` bytes."""
    return _LENGTH.pack(size) + fill * size


def serve_echo(connection: Connection, params: dict[str, Any]) -> None:
    """Server process of the baseline.

    ``params``: ``pki`` (:class:`~bench.fixtures.Pki`); ``response_size`` (None echoes the
    request); ``nodelay`` (turn Nagle off, as the registry does); ``hello_size`` (a frame
    sent when the handshake completes); ``tls13_only`` and ``verify_clients`` (see
    :func:`bench.fixtures.server_context`); ``record_per_answer`` (see :func:`echo_factory`).
    """
    pki: Pki = params["pki"]

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from bench.fixtures import server_context

        context = server_context(
            pki, tls13_only=params.get("tls13_only", False), verify_clients=params.get("verify_clients", False)
        )
        factory = echo_factory(
            context,
            response_size=params.get("response_size"),
            hello_size=params.get("hello_size"),
            nodelay=params.get("nodelay", True),
            record_per_answer=params.get("record_per_answer", False),
        )
        port = reactor.listenTCP(0, factory, interface=HOST, backlog=1024)
        return {"port": port.getHost().port, "pid": os.getpid()}, {}

    serve_twisted(connection, setup)


def echo_factory(
    context: Any,
    *,
    response_size: int | None = None,
    hello_size: int | None = None,
    nodelay: bool = True,
    record_per_answer: bool = False,
) -> Any:
    """The baseline's Twisted TLS server factory over the pyOpenSSL ``context``.

    Each request frame is answered with a frame of ``response_size`` bytes (None: the
    request itself); ``hello_size`` sends a frame once the handshake completes. By
    default the factory's protocol is Twisted's default, which gathers the small writes
    of one reactor turn into one TLS write (answers to requests that arrived together
    share records); with ``record_per_answer`` it is the plain ``TLSMemoryBIOProtocol``,
    which seals each answer in a record of its own.
    """
    from OpenSSL import SSL
    from twisted.internet.interfaces import (
        IHandshakeListener,
        IOpenSSLServerConnectionCreator,
    )
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
    from zope.interface import implementer

    response = None if response_size is None else frame_of(response_size)
    hello = None if not hello_size else frame_of(hello_size, b"h")

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
            return SSL.Connection(context, None)

    @implementer(IHandshakeListener)
    class Echo(Protocol):
        def connectionMade(self) -> None:
            self.buffer = bytearray()
            if nodelay:
                self.transport.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

        def handshakeCompleted(self) -> None:
            if hello is not None:
                self.transport.write(hello)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            buffer = self.buffer
            buffer += data
            position = 0
            end = len(buffer)
            write = self.transport.write  # type: ignore[union-attr]
            while end - position >= 4:
                (length,) = _LENGTH.unpack_from(buffer, position)
                if end - position - 4 < length:
                    break
                if response is None:
                    write(bytes(buffer[position : position + 4 + length]))
                else:
                    write(response)
                position += 4 + length
            if position:
                del buffer[:position]

    factory = TLSMemoryBIOFactory(Creator(), False, Factory.forProtocol(Echo))
    if record_per_answer:
        factory.protocol = TLSMemoryBIOProtocol
    return factory
