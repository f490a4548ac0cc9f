"""Baseline: TLS bulk transfer over Twisted (the floor under SixChat's bulk records).

A bare Twisted TLS server (the product's TLS context) that swallows 4-byte length-prefixed
frames of 64 KiB without copying them, and answers a short final frame once everything
before it has arrived. The load generator streams ``total`` bytes in 64 KiB frames
through pyOpenSSL (16 KiB TLS records), then the final frame, and times the whole until
the answer.
"""

from __future__ import annotations

import os
import struct
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pki
from bench.processes import Commands, serve_twisted

_LENGTH = struct.Struct(">I")
CHUNK = 65536
#: The final frame's payload, and the server's answer.
DONE = b"done"


def serve_sink(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: swallow 64 KiB frames; answer each short frame (``params``: ``pki``)."""
    pki: Pki = params["pki"]

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from OpenSSL import SSL
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from zope.interface import implementer

        from bench.fixtures import server_context

        context = server_context(pki)
        answer = _LENGTH.pack(len(DONE)) + DONE

        @implementer(IOpenSSLServerConnectionCreator)
        class Creator:
            def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
                return SSL.Connection(context, None)

        class Sink(Protocol):
            def connectionMade(self) -> None:
                self.header = b""
                self.remaining = 0  # bytes of the current frame's payload still to come
                self.current = 0  # that frame's length
                self.received = 0

            def dataReceived(self, data: bytes) -> None:
                self.received += len(data)
                position = 0
                end = len(data)
                while position < end:
                    if self.remaining:
                        taken = min(self.remaining, end - position)
                        self.remaining -= taken
                        position += taken
                        if not self.remaining and self.current < CHUNK:
                            self.transport.write(answer)  # type: ignore[union-attr]
                        continue
                    needed = 4 - len(self.header)
                    self.header += data[position : position + needed]
                    position += needed
                    if len(self.header) == 4:
                        (self.current,) = _LENGTH.unpack(self.header)
                        self.remaining = self.current
                        self.header = b""

        factory = TLSMemoryBIOFactory(Creator(), False, Factory.forProtocol(Sink))
        port = reactor.listenTCP(0, factory, interface=HOST)
        return {"port": port.getHost().port, "pid": os.getpid()}, {}

    serve_twisted(connection, setup)


def chunks(total: int) -> Any:
    """A producer of ``total`` bytes of 64 KiB frames, then the final frame (then None)."""
    frame = _LENGTH.pack(CHUNK) + os.urandom(CHUNK)
    state = {"left": total // CHUNK, "done": False}

    def produce() -> bytes | None:
        if state["left"]:
            state["left"] -= 1
            return frame
        if not state["done"]:
            state["done"] = True
            return _LENGTH.pack(len(DONE)) + DONE
        return None

    return produce
