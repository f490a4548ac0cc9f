"""Tests for :mod:`common.startup`: the gate in front of listening ports, and listening
sockets adopted from another process (the registry's workers)."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from common.startup import EarlyPorts, Gate


class FakePort:
    """A listening port that records whether it accepts connections."""

    def __init__(self) -> None:
        self.reading = True
        self.stopped = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> None:
        self.stopped = True


class AdoptingReactor(MemoryReactor):
    """A memory reactor whose adopted ports are :class:`FakePort` s."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> FakePort:
        self.adoptedPorts.append((fileno, addressFamily, factory))
        port = FakePort()
        self.ports.append(port)
        return port


class Target(Factory):
    protocol = Protocol


class GateTests(SynchronousTestCase):
    """Connections reach the service only once it is ready."""

    def test_closed_until_open(self) -> None:
        gate = Gate("test")
        self.assertIsNone(gate.buildProtocol(None))
        gate.open(Target())
        self.assertIsInstance(gate.buildProtocol(None), Protocol)

    def test_held_ports_accept_once_open(self) -> None:
        """A held port accepts nothing (the connection is left to the other processes on
        the socket) until the gate opens."""
        gate = Gate("test")
        port = FakePort()
        gate.hold(port)
        self.assertFalse(port.reading)
        gate.open(Target())
        self.assertTrue(port.reading)


class AdoptedPortsTests(SynchronousTestCase):
    """EarlyPorts on inherited sockets: adopted, held until ready, descriptors closed."""

    def test_adopted_and_held(self) -> None:
        reactor = AdoptingReactor()
        read_end, write_end = os.pipe()
        os.close(read_end)
        early = EarlyPorts(reactor, ["tcp:4604"], "test", adopted=[(write_end, socket.AF_INET6)])
        self.assertEqual(reactor.tcpServers, [])  # nothing bound: the sockets are inherited
        self.assertEqual([(fd, family) for fd, family, _ in reactor.adoptedPorts], [(write_end, socket.AF_INET6)])
        self.assertIs(reactor.adoptedPorts[0][2], early.gate)
        # The reactor keeps its own duplicate: the inherited descriptor is closed.
        self.assertRaises(OSError, os.fstat, write_end)
        (port,) = reactor.ports
        self.assertFalse(port.reading)
        ports = self.successResultOf(Deferred.fromCoroutine(early.ports()))
        self.assertEqual(ports, [port])
        early.gate.open(Target())
        self.assertTrue(port.reading)

    def test_adoption_failure(self) -> None:
        """A socket the reactor cannot adopt fails like a port that cannot be bound."""

        class Refusing(AdoptingReactor):
            def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> FakePort:
                raise OSError("not a socket")

        read_end, write_end = os.pipe()
        os.close(read_end)
        early = EarlyPorts(Refusing(), [], "test", adopted=[(write_end, socket.AF_INET)])
        self.assertIsInstance(early.failure(), OSError)
        self.assertRaises(OSError, os.fstat, write_end)
        self.failureResultOf(Deferred.fromCoroutine(early.ports()), OSError)
