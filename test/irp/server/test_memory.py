"""What a registry connection costs in memory once it is closed (issue 11).

A closed connection must be freed by reference counting alone, the moment it is lost:
a reference cycle would keep it (its protocol, Twisted's TLS layer, its session) until
the garbage collector's next full pass, which with thousands of idle connections comes
late. And after many connections close, the registry gives their memory back to the
system (:class:`common.memory.MemoryReturn`).
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from common.memory import MemoryReturn, return_free_memory
from common.wire.framing import encode_frame
from irp.server.protocol import RegistryServerFactory, RegistryServerProtocol
from irp.server.session import SessionState
from test import pki
from test.irp.server.helpers import CLIENT_HOST, FakeTLSTransport, RegistryTestCase, make_registry


class ClosedConnectionTests(RegistryTestCase):
    """Over real TCP and TLS, with a certificate login: nothing is left once closed."""

    async def open_connection(self) -> tuple[Any, list[RegistryServerProtocol], Deferred[None]]:
        """A certificate-logged-in client, the server's protocol for it (in a list, so the
        test holds no other reference) and a Deferred fired once the server lost it."""
        registry = await self.start()
        assert registry.service is not None and registry.service.factory is not None
        lost: Deferred[None] = Deferred()
        built: list[RegistryServerProtocol] = []

        class Watched(RegistryServerProtocol):
            def connectionLost(self, reason: Any = None) -> None:
                super().connectionLost(reason)
                lost.callback(None)

        def build(addr: Any) -> RegistryServerProtocol:
            protocol = RegistryServerFactory.buildProtocol(factory, addr)
            assert isinstance(protocol, RegistryServerProtocol)
            built.append(protocol)
            return protocol

        factory = registry.service.factory
        factory.protocol = Watched  # type: ignore[assignment]
        factory.buildProtocol = build  # type: ignore[method-assign]
        _user, client = await self.enrolled("alice")
        await client.lookup("alice")
        (protocol,) = built
        assert protocol.session is not None
        self.assertIs(protocol.session.state, SessionState.CERTIFICATE)
        return client, built, lost

    async def assertFreedWithoutCollector(
        self, built: list[RegistryServerProtocol], lost: Deferred[None], close: Any, *, tls_layer: bool = True
    ) -> None:
        """After ``close()``, the protocol (and with ``tls_layer`` Twisted's TLS layer
        under it) is freed with the garbage collector off."""
        protocol = built.pop()
        refs = [weakref.ref(protocol)]
        if tls_layer:
            refs.append(weakref.ref(protocol.transport))  # type: ignore[arg-type]
        del protocol
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        close()
        await lost
        # Out of the reactor's call into connectionLost, whose frames hold the objects.
        await deferLater(reactor, 0, lambda: None)
        alive = [ref() for ref in refs]
        self.assertEqual([type(obj).__name__ for obj in alive if obj is not None], [])

    async def test_closed_by_the_client(self) -> None:
        """The client closes (the usual end of an idle connection)."""
        client, built, lost = await self.open_connection()
        await self.assertFreedWithoutCollector(built, lost, client.close)

    async def test_closed_by_the_server(self) -> None:
        """The server ends the connection (a malformed request), with close_notify."""
        client, built, lost = await self.open_connection()

        def send_garbage() -> None:
            client.protocol.transport.write(encode_frame(b"<not-a-request/>"))

        await self.assertFreedWithoutCollector(built, lost, send_garbage)


    async def test_dropped_without_close_notify(self) -> None:
        """The client's socket closes without a TLS close_notify (a client that crashed).

        Twisted's TLS layer then keeps the failure of the unexpected EOF in a local
        variable of a frame of its own traceback: that cycle holds the TLS layer (without
        its OpenSSL connection, which it drops) until the collector runs, but no longer
        the protocol, its session and core."""
        client, built, lost = await self.open_connection()
        drop = client.protocol.transport.transport.loseConnection
        await self.assertFreedWithoutCollector(built, lost, drop, tls_layer=False)


class MemoryReturnTests(unittest.TestCase):
    """After many closed connections, free memory goes back to the system once."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.released: list[float] = []
        self.memory = MemoryReturn(self.clock, every=3, delay=1.0, release=self.release)

    def release(self) -> bool:
        self.released.append(self.clock.seconds())
        return True

    def test_once_after_a_burst(self) -> None:
        for _ in range(2):
            self.memory.connection_closed()
        self.clock.advance(10)
        self.assertEqual(self.released, [])
        for _ in range(5):  # the third reaches the count; the rest are in the same burst
            self.memory.connection_closed()
        self.assertEqual(self.released, [])
        self.clock.advance(1.0)
        self.assertEqual(self.released, [11.0])
        self.assertEqual(self.memory.closed, 0)
        self.clock.advance(10)
        self.assertEqual(self.released, [11.0])

    def test_counting_starts_again(self) -> None:
        for _ in range(3):
            self.memory.connection_closed()
        self.clock.advance(1.0)
        for _ in range(3):
            self.memory.connection_closed()
        self.clock.advance(1.0)
        self.assertEqual(self.released, [1.0, 2.0])

    def test_stop_cancels(self) -> None:
        for _ in range(3):
            self.memory.connection_closed()
        self.memory.stop()
        self.clock.advance(10)
        self.assertEqual(self.released, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_registry_connections_are_counted(self) -> None:
        """Every closed registry connection counts, refused ones included."""
        registry = make_registry(self.clock)
        factory = RegistryServerFactory(registry, pki.trust_store(pki.make_ca()), self.clock)
        factory.memory = self.memory
        for _ in range(3):
            protocol = factory.buildProtocol(IPv4Address("TCP", CLIENT_HOST, 40000))
            assert protocol is not None
            protocol.makeConnection(FakeTLSTransport())
            protocol.connectionLost()
        self.clock.advance(1.0)
        self.assertEqual(len(self.released), 1)

    def test_free_memory_returned_on_glibc(self) -> None:
        if not sys.platform.startswith("linux"):
            raise unittest.SkipTest("malloc_trim is glibc's")
        self.assertTrue(return_free_memory())
