"""The SixChat figures' workloads (5, 6, 7) and their TLS baselines, without sockets.

Not speed tests: they check that each side does the work the figure claims it does
(every initiator new; sealing inside the window; one TLS record per message and per
answer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport
from twisted.trial.unittest import TestCase

from bench.fixtures import Pki, client_context, issue_users, load_certificate, make_pki, server_context
from bench.loadgen import LoadError, TLSFramed, send_messages
from bench.sixchat_bulk import sealing_producer
from bench.sixchat_handshakes import initiator_plan
from bench.tls_echo import echo_factory, frame_of
from bench.tls_handshakes import fresh_at

_RECORD_HEADER = struct.Struct(">BHH")
_APPLICATION_DATA = 0x17

_PKI: list[Pki] = []


def small_pki() -> Pki:
    """One PKI for the module's TLS tests (making one costs a few key generations)."""
    if not _PKI:
        _PKI.append(make_pki("p384", users=1))
    return _PKI[0]


def application_records(data: bytes) -> int:
    """The number of TLS application-data records in ``data`` (whole records only)."""
    count = 0
    position = 0
    while len(data) - position >= _RECORD_HEADER.size:
        kind, _version, length = _RECORD_HEADER.unpack_from(data, position)
        position += _RECORD_HEADER.size + length
        if position > len(data):
            break
        count += kind == _APPLICATION_DATA
    return count


def drain(read: Callable[[int], bytes]) -> bytes:
    """Every byte ``read`` gives until OpenSSL has no more for now."""
    chunks = []
    while True:
        try:
            chunks.append(read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def read_bio(connection: SSL.Connection) -> bytes:
    """Everything ``connection`` has written to its memory BIO."""
    return drain(connection.bio_read)


def drain_plaintext(connection: SSL.Connection) -> bytes:
    """Every decrypted byte ``connection`` can read now."""
    return drain(connection.recv)


def memory_client(pki: Pki) -> SSL.Connection:
    """A load generator's TLS client on a memory BIO."""
    client = SSL.Connection(client_context(pki.users[0]), None)
    client.set_connect_state()
    return client


class _NoSocket:
    """What :class:`bench.loadgen.Framed` needs of a socket when TLS runs on memory BIOs."""

    def fileno(self) -> int:
        return -1


class InitiatorPlanTests(TestCase):
    """Figure 5: every handshake from an initiator never seen before."""

    def test_no_user_twice(self) -> None:
        users = [f"user{index}" for index in range(2 * 3 * 7 + 5)]
        plan = initiator_plan(users, runs=3, per_run=7)
        self.assertEqual(len(plan), 3)
        planned = [user for baseline, figure in plan for user in (*baseline, *figure)]
        self.assertEqual(len(planned), 2 * 3 * 7)
        self.assertEqual(len(set(planned)), len(planned))
        for baseline, figure in plan:
            self.assertEqual((len(baseline), len(figure)), (7, 7))

    def test_too_few_users(self) -> None:
        with self.assertRaises(ValueError):
            initiator_plan(list(range(13)), runs=1, per_run=7)

    def test_pool_never_wraps(self) -> None:
        pool = ["a", "b"]
        self.assertEqual([fresh_at(pool, 0), fresh_at(pool, 1)], ["a", "b"])
        with self.assertRaises(LoadError):
            fresh_at(pool, 2)

    def test_issued_users_are_new(self) -> None:
        pki = small_pki()
        users = issue_users(pki, ["fresh000000", "fresh000001"])
        self.assertEqual([user.name for user in users], ["fresh000000", "fresh000001"])
        self.assertEqual(len({user.key for user in users} | {pki.users[0].key}), 3)
        issuing = load_certificate(pki.issuing)
        for user in users:
            load_certificate(user.certificate).verify_directly_issued_by(issuing)
            self.assertEqual(user.chain, (pki.issuing,))


class _CountingSession:
    """A stand-in SixChat session that counts what it seals."""

    def __init__(self) -> None:
        self.sealed: list[str] = []

    def send_data(self, data: bytes) -> bytes:
        self.sealed.append("data")
        return b"D" + data

    def send_message(self, message: Any) -> bytes:
        self.sealed.append(type(message).__name__)
        return b"M"


class SealingProducerTests(TestCase):
    """Figure 7: SixChat records are sealed when produced, inside the timed window."""

    def test_seals_one_record_per_call(self) -> None:
        session = _CountingSession()
        produce = sealing_producer(session, b"x" * 16, 3)
        self.assertEqual(session.sealed, [])
        self.assertEqual(produce(), b"D" + b"x" * 16)
        self.assertEqual(session.sealed, ["data"])
        produce()
        produce()
        self.assertEqual(session.sealed, ["data"] * 3)
        self.assertEqual(produce(), b"M")
        self.assertEqual(session.sealed, ["data", "data", "data", "Ping"])
        self.assertIsNone(produce())
        self.assertEqual(len(session.sealed), 4)


class RecordPerMessageTests(TestCase):
    """Figure 6: the TLS baseline sends one record per message and per answer."""

    def handshake(self, client: SSL.Connection, server: SSL.Connection) -> None:
        """Run a TLS handshake between two memory-BIO connections."""
        server.set_accept_state()
        for _ in range(20):
            for connection in (client, server):
                try:
                    connection.do_handshake()
                except SSL.WantReadError:
                    pass
            to_server = read_bio(client)
            if to_server:
                server.bio_write(to_server)
            to_client = read_bio(server)
            if to_client:
                client.bio_write(to_client)
            if not to_server and not to_client:
                break
        drain_plaintext(client)

    def connected(self) -> tuple[SSL.Connection, SSL.Connection, TLSFramed]:
        """A client and a server on memory BIOs after their handshake, and the client's
        framed writer."""
        pki = small_pki()
        client = memory_client(pki)
        server = SSL.Connection(server_context(pki), None)
        self.handshake(client, server)
        return client, server, TLSFramed(_NoSocket(), client)  # type: ignore[arg-type]

    def test_window_of_messages_one_record_each(self) -> None:
        client, server, framed = self.connected()
        message = frame_of(1024, b"m")
        send_messages(framed, lambda: message, 4, record_per_message=True)
        written = read_bio(client)
        self.assertEqual(application_records(written), 4)
        server.bio_write(written)
        self.assertEqual(drain_plaintext(server), message * 4)

    def test_byte_stream_joins_messages(self) -> None:
        client, _server, framed = self.connected()
        message = frame_of(1024, b"m")
        send_messages(framed, lambda: message, 4)
        self.assertEqual(application_records(read_bio(client)), 1)

    def test_echo_server_answers_one_record_each(self) -> None:
        pki = small_pki()
        factory = echo_factory(server_context(pki), response_size=45, nodelay=False, record_per_answer=True)
        self.assertFalse(issubclass(factory.protocol, BufferingTLSTransport))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        client = memory_client(pki)
        for _ in range(20):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            to_server = read_bio(client)
            if to_server:
                protocol.dataReceived(to_server)
            to_client = transport.value()
            transport.clear()
            if to_client:
                client.bio_write(to_client)
            if not to_server and not to_client:
                break
        drain_plaintext(client)  # session tickets, if any
        request = frame_of(1024, b"m")
        requests = b""
        for _ in range(4):
            client.send(request)
            requests += read_bio(client)
        self.assertEqual(application_records(requests), 4)
        protocol.dataReceived(requests)  # all four arrive together
        answers = transport.value()
        self.assertEqual(application_records(answers), 4)
        client.bio_write(answers)
        self.assertEqual(drain_plaintext(client), frame_of(45) * 4)
        protocol.loseConnection()
