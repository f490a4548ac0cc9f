"""Shared test fixtures: a real registry on loopback, and clients of it.

:class:`RunningRegistry` starts the real ``RegistryService`` (TLS on a loopback port, a
SQLite file in the test's temporary folder, a real CA created on first start) with cheap
Argon2 parameters and fast P-256 keys. Certificate fixtures come from :mod:`test.pki`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki.keyfiles import PrivateKey, fingerprint
from irp.cli import make_csr
from irp.client import RegistryClient, connect
from irp.server.ca import CertificateAuthority, generate_key
from irp.server.passwords import Argon2Parameters
from irp.server.protocol import ConnectionLimits
from irp.server.registry import Registry, RegistryConfig
from irp.server.service import ADMIN_PASSWORD_FILE, RegistryService, RegistrySettings
from irp.server.store import RegistryStore

DEFAULT_PASSWORD = "correct horse battery staple"

#: Cheap Argon2id parameters for tests that hash many passwords; the shipped defaults
#: (:class:`irp.server.passwords.Argon2Parameters`) are run by the tests that need the real cost.
TEST_PARAMETERS = Argon2Parameters(memory_kib=256, iterations=1, lanes=1)

#: The checkout's top folder (the tests run from a checkout).
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class EnrolledUser:
    """A user with a key and a certificate issued by the running registry."""

    username: str
    password: str
    key: PrivateKey
    certificate: x509.Certificate
    serial: int
    #: Intermediates to present with the certificate (the issuing CA).
    chain: tuple[x509.Certificate, ...] = ()


@dataclass
class RunningRegistry:
    """A registry process running inside the test's reactor."""

    testcase: TestCase
    domain: str = "example.org"
    config: RegistryConfig | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    listen_host: str = "127.0.0.1"
    data_dir: str = ""
    database: str | None = None
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    federated_roots: tuple[x509.Certificate, ...] = ()
    registries: dict[str, tuple[str, int]] = field(default_factory=dict)
    resolver: Any = None
    tls_certificate: str | None = None
    tls_key: str | None = None
    service: RegistryService | None = None
    admin_password: str = ""
    #: The password hashing cost: cheap by default, Argon2Parameters() for the shipped one.
    argon2: Argon2Parameters = TEST_PARAMETERS
    #: sixid's settings (a sixid.server.service.SixidSettings): served on a port of its own
    #: (:attr:`sixid_port`) when given.
    sixid: Any = None
    #: The CA keys' passphrase (--key-passphrase-file).
    key_passphrase: bytes | None = None
    #: Endpoints serving the Prometheus metrics (none: not served).
    metrics_listen: tuple[str, ...] = ()
    #: Serve the HTTP endpoint (issue 14) on a loopback port of its own (:attr:`http_url`).
    http: bool = False

    @property
    def port(self) -> int:
        """The port the registry listens on."""
        assert self.service is not None
        return self.service.ports[0].getHost().port  # type: ignore[attr-defined, no-any-return]

    @property
    def sixid_port(self) -> int:
        """The port sixid listens on (``sixid`` given)."""
        assert self.service is not None
        return self.service.sixid_ports[0].getHost().port  # type: ignore[attr-defined, no-any-return]

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP endpoint (``http`` given), ending in ``/``."""
        assert self.service is not None and self.service.settings.http_url is not None
        return self.service.settings.http_url

    @property
    def connect_host(self) -> str:
        """The address clients dial (loopback when listening on a wildcard)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.listen_host, self.listen_host)

    @property
    def root(self) -> x509.Certificate:
        """The domain's root CA."""
        assert self.service is not None and self.service.credentials is not None
        return self.service.credentials.ca.root_certificate

    @property
    def registry(self) -> Registry:
        """The running :class:`Registry` (for setting up fixtures without the network)."""
        assert self.service is not None and self.service.registry is not None
        return self.service.registry

    @property
    def store(self) -> RegistryStore:
        """The registry's store."""
        assert self.service is not None and self.service.store is not None
        return self.service.store

    @property
    def ca(self) -> CertificateAuthority:
        """The domain's CA."""
        assert self.service is not None and self.service.credentials is not None
        return self.service.credentials.ca

    async def start(self) -> RunningRegistry:
        """Start the service; stop it when the test ends."""
        self.data_dir = self.data_dir or os.path.abspath(self.testcase.mktemp())
        listen = f"tcp:0:interface={self.listen_host.replace(':', chr(92) + ':')}"
        settings = RegistrySettings(
            domain=self.domain,
            data_dir=self.data_dir,
            listen=[listen],
            hostnames=list(self.hostnames),
            database=self.database,
            federated_roots=list(self.federated_roots),
            registries=dict(self.registries),
            resolver=self.resolver,
            tls_certificate=self.tls_certificate,
            tls_key=self.tls_key,
            key_type="p256",
            config=self.config,
            limits=self.limits,
            argon2=self.argon2,
            sixid=self.sixid,
            sixid_listen=[listen],
            key_passphrase=self.key_passphrase,
            metrics_listen=list(self.metrics_listen),
        )
        if self.http:
            settings.http_listen = ["tcp:0:interface=127.0.0.1"]
        self.service = RegistryService(settings, global_reactor)
        if self.service.http is not None:
            # Bound first: certificates issued at start name the port.
            (port,) = await self.service.http.bind().ports()
            settings.http_url = f"http://127.0.0.1:{port.getHost().port}/"  # type: ignore[attr-defined]
        self.service.startService()
        self.testcase.addCleanup(self.service.stopService)
        await self.service.ready
        with open(os.path.join(self.data_dir, ADMIN_PASSWORD_FILE), encoding="ascii") as handle:
            self.admin_password = handle.read().strip()
        return self

    async def client(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        user: EnrolledUser | None = None,
        host: str | None = None,
        timeout: float = 10.0,
        bind_address: str | None = None,
    ) -> RegistryClient:
        """A connected client: anonymous, password-logged-in, or with a certificate."""
        client = await connect(
            global_reactor,
            host or self.connect_host,
            self.port,
            domain=self.domain,
            trust_roots=[self.root],
            client_key=None if user is None else user.key,
            client_certificate=None if user is None else user.certificate,
            client_chain=() if user is None else user.chain,
            timeout=timeout,
            bind_address=bind_address,
        )
        self.testcase.addCleanup(client.close)
        if username is not None:
            await client.login(username, password or DEFAULT_PASSWORD)
        return client

    async def admin(self) -> RegistryClient:
        """A client logged in as the bootstrap administrator."""
        return await self.client("admin", self.admin_password)

    async def create_user(self, username: str, password: str = DEFAULT_PASSWORD, **fields: Any) -> None:
        """Create a user through the administrator's connection."""
        admin = await self.admin()
        await admin.create_user(username, password=password, **fields)
        await admin.close()

    async def enrol(self, username: str, password: str = DEFAULT_PASSWORD, *, create: bool = True) -> EnrolledUser:
        """Create a user (optionally), then get a certificate for a fresh key by CSR."""
        if create:
            await self.create_user(username, password)
        client = await self.client(username, password)
        key = generate_key("p256")
        entry = await client.request_certificate(make_csr(key))
        await client.close()
        assert entry.certificate is not None
        return EnrolledUser(username, password, key, entry.certificate, entry.serial, (self.ca.issuing_certificate,))

    async def add_user(self, username: str, password: str | None = DEFAULT_PASSWORD, **fields: Any) -> None:
        """Create a user directly in the registry (no connection: fast fixture set-up)."""
        await self.registry.add_user(username, password=password, **fields)

    async def issue(self, username: str, password: str = DEFAULT_PASSWORD) -> EnrolledUser:
        """Issue a certificate for a fresh key to an existing user directly (no connection),
        as ``request-certificate`` would."""
        key = generate_key("p256")
        certificate = self.ca.issue_user_certificate(Identity(username, self.domain), key.public_key())
        await self.store.add_certificate(username, certificate, fingerprint(certificate))
        return EnrolledUser(username, password, key, certificate, certificate.serial_number, (self.ca.issuing_certificate,))


def make_profile(registry: RunningRegistry, user: EnrolledUser, path: str) -> str:
    """Write an IRP/SixChat profile folder for an enrolled user of ``registry``."""
    from common.profile import Profile, ProfileConfig

    assert registry.service is not None and registry.service.credentials is not None
    profile = Profile(path)
    profile.create(
        ProfileConfig(server=registry.connect_host, port=registry.port, domain=registry.domain, username=user.username),
        registry.root,
    )
    profile.save_credentials(user.key, [user.certificate, registry.service.credentials.ca.issuing_certificate])
    return path


# -- SixChat agents ----------------------------------------------------------------------


class EventCollector:
    """Collects a SixChat agent's events and lets a test wait for one.

    ``wait_for(event="receipt", id=...)`` fires with the first event (past or future) whose
    items include all those given.
    """

    def __init__(self, agent: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiting: list[tuple[dict[str, Any], Any]] = []
        agent.subscribe(self._event)

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for pattern, waiter in list(self._waiting):
            if all(event.get(key) == value for key, value in pattern.items()):
                self._waiting.remove((pattern, waiter))
                waiter.callback(event)

    def matching(self, **pattern: Any) -> list[dict[str, Any]]:
        """The events so far that match ``pattern``."""
        return [event for event in self.events if all(event.get(key) == value for key, value in pattern.items())]

    def next(self, **pattern: Any) -> Any:
        """A Deferred firing with the next event matching ``pattern`` (ignoring past ones)."""
        from twisted.internet.defer import Deferred

        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((pattern, waiter))
        return waiter

    def wait_for(self, **pattern: Any) -> Any:
        """A Deferred firing with the first event matching ``pattern``."""
        from twisted.internet.defer import Deferred, succeed

        for event in self.events:
            if all(event.get(key) == value for key, value in pattern.items()):
                return succeed(event)
        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((pattern, waiter))
        return waiter


def agent_listen(host: str) -> str:
    """A server endpoint description on ``host`` (IPv4 or IPv6 literal), any free port."""
    if ":" in host:
        return "tcp6:0:interface=" + host.replace(":", "\\:")
    return f"tcp:0:interface={host}"


async def start_agent(
    testcase: TestCase,
    registry: RunningRegistry,
    user: EnrolledUser,
    *,
    listen: tuple[str, ...] | list[str] = ("127.0.0.1",),
    path: str | None = None,
    clock: Any = None,
    **settings: Any,
) -> tuple[Any, EventCollector]:
    """Start a SixChat agent for ``user`` of ``registry`` on loopback; stop it at cleanup.

    ``listen`` holds hosts (or full endpoint descriptions); ``path`` reuses a profile folder
    (made with :func:`make_profile` when it does not exist yet); ``clock`` replaces the
    reactor's clock for timers (sockets stay real); other keywords are AgentSettings.
    """
    from sixchat.agent.service import Agent, AgentSettings

    if path is None:
        path = os.path.join(os.path.abspath(testcase.mktemp()), user.username)
    if not os.path.exists(os.path.join(path, "config.json")):
        make_profile(registry, user, path)
    descriptions = [item if item.startswith(("tcp", "unix")) else agent_listen(item) for item in listen]
    settings.setdefault("control", False)
    agent = Agent(AgentSettings(profile_dir=path, listen=descriptions, **settings), global_reactor, clock=clock)
    collector = EventCollector(agent)
    agent.startService()
    testcase.addCleanup(lambda: agent.stopService() if agent.running else None)
    await agent.ready
    return agent, collector


def fake_clock_now() -> Any:
    """A fake clock (``twisted.internet.task.Clock``) set to the real time now, so that
    certificates, CRLs and registry records read as current."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(global_reactor.seconds())  # type: ignore[attr-defined]
    return clock


class BareOwner:
    """A SixChat :class:`~sixchat.peer.protocol.ConnectionOwner` with no agent behind it: it
    accepts every authenticated peer (unless ``verdict`` says otherwise) and records what
    happens. It is what an attacker's own implementation would run, and a test's handle on
    single connections.
    """

    def __init__(self, credentials: Any, *, clock: Any = None, limits: Any = None, verdict: Any = None) -> None:
        from twisted.internet.defer import Deferred

        from sixchat.peer.protocol import ConnectionLimits

        self.credentials = credentials
        self.clock = clock if clock is not None else global_reactor
        self.limits = limits if limits is not None else ConnectionLimits()
        #: ``verdict(identity, chain)`` returns the Deferred verify_peer returns (default:
        #: accept at once).
        self.verdict = verdict
        self.verified: list[Any] = []
        self.started: list[Any] = []
        self.established: list[Any] = []
        self.messages: list[Any] = []
        self.ended: list[tuple[Any, Any]] = []
        self.first_end: Deferred[tuple[Any, Any]] = Deferred()

    def verify_peer(self, connection: Any, identity: Any, chain: Any) -> Any:
        from twisted.internet.defer import succeed

        self.verified.append(identity)
        return succeed(None) if self.verdict is None else self.verdict(identity, chain)

    def connection_started(self, connection: Any) -> None:
        self.started.append(connection)

    def session_established(self, connection: Any) -> None:
        self.established.append(connection)

    def message_received(self, connection: Any, message: Any) -> None:
        self.messages.append(message)

    def connection_ended(self, connection: Any, error: Any) -> None:
        self.ended.append((connection, error))
        if not self.first_end.called:
            self.first_end.callback((connection, error))


def credentials_of(user: EnrolledUser, registry: RunningRegistry) -> Any:
    """SixChat LocalCredentials of an enrolled user."""
    from sixchat.handshake import LocalCredentials

    return LocalCredentials(Identity(user.username, registry.domain), user.certificate, [registry.ca.issuing_certificate], user.key)


async def dial_bare(owner: BareOwner, host: str, port: int, peer: Identity) -> Any:
    """Open a SixChat connection to ``host``/``port`` as the initiator calling ``peer``,
    driven by ``owner``; returns the PeerConnection once TCP is up."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
    from twisted.internet.protocol import Factory

    from sixchat.handshake import Role
    from sixchat.peer.protocol import PeerConnection

    connection = PeerConnection(owner, Role.INITIATOR, expected_peer=peer)
    endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    await endpoint_class(global_reactor, host, port).connect(Factory.forProtocol(lambda: connection))
    return connection


async def listen_bare(testcase: TestCase, make_owner: Any, host: str = "127.0.0.1") -> Any:
    """Listen on loopback as a SixChat responder; each connection gets ``make_owner()``.
    Returns the listening port (closed at cleanup)."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    from sixchat.handshake import Role
    from sixchat.peer.protocol import PeerConnection

    def build() -> Any:
        return PeerConnection(make_owner(), Role.RESPONDER)

    port = await serverFromString(global_reactor, agent_listen(host)).listen(Factory.forProtocol(build))
    testcase.addCleanup(port.stopListening)
    return port


class RawPeer:
    """A raw TCP client: writes what it is told, keeps every byte received, and fires
    ``closed`` with them when the connection ends."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()
        self.transport: Any = None

    def protocol(self) -> Any:
        """The Twisted protocol of this peer."""
        from twisted.internet.protocol import Protocol

        peer = self

        class _Raw(Protocol):
            def connectionMade(self) -> None:
                peer.transport = self.transport

            def dataReceived(self, data: bytes) -> None:
                peer.received += data

            def connectionLost(self, reason: Any = None) -> None:
                peer.closed.callback(bytes(peer.received))

        return _Raw()

    async def connect(self, host: str, port: int) -> RawPeer:
        """Connect to ``host``/``port``."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
        from twisted.internet.protocol import Factory

        endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        await endpoint_class(global_reactor, host, port).connect(Factory.forProtocol(self.protocol))
        return self


def frames_of(data: bytes) -> list[bytes]:
    """The payloads of the length-prefixed frames in ``data`` (a partial last frame is
    dropped)."""
    payloads = []
    while len(data) >= 4:
        length = int.from_bytes(data[:4], "big")
        if len(data) < 4 + length:
            break
        payloads.append(data[4 : 4 + length])
        data = data[4 + length :]
    return payloads


async def closed_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port where nothing listens (one just closed)."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Protocol

    from common.factory import QuietFactory

    port = await serverFromString(global_reactor, agent_listen(host)).listen(QuietFactory.forProtocol(Protocol))
    number: int = port.getHost().port
    await port.stopListening()
    return number


@dataclass(frozen=True)
class CommandResult:
    """What a command run in a child process did."""

    code: int
    out: str
    err: str


class _CommandProtocol(ProcessProtocol):
    """Writes ``stdin`` to the child, closes it, and collects what the child prints."""

    def __init__(self, stdin: bytes) -> None:
        from twisted.internet.defer import Deferred

        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[CommandResult] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(
            CommandResult(
                -1 if code is None else code,
                b"".join(self.out).decode("utf-8", "replace"),
                b"".join(self.err).decode("utf-8", "replace"),
            )
        )


def run_module(module: str, arguments: Sequence[str], *, home: str, stdin: bytes = b"") -> Any:
    """Run ``python -m MODULE ARGUMENTS`` in ``home`` (also its $HOME), with this source
    tree on the path; fires with a :class:`CommandResult` (without blocking the reactor)."""
    return run_python(["-m", module, *arguments], home=home, stdin=stdin)


@contextmanager
def taken_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that another socket holds (listening) while the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run_twistd(arguments: Sequence[str], *, home: str) -> Any:
    """Run ``twistd ARGUMENTS`` as :func:`run_module` runs a module (this source tree's
    plugins); fires with a :class:`CommandResult`."""
    return run_python(["-c", "from twisted.scripts.twistd import run; run()", *arguments], home=home)


def run_python(arguments: Sequence[str], *, home: str, stdin: bytes = b"") -> Any:
    """Run ``python ARGUMENTS`` in ``home`` (also its $HOME), with this source tree on the
    path; fires with a :class:`CommandResult`."""
    environment = {
        "PYTHONPATH": REPOSITORY,
        "HOME": home,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    protocol = _CommandProtocol(stdin)
    global_reactor.spawnProcess(  # type: ignore[attr-defined]
        protocol, sys.executable, [sys.executable, *arguments], env=environment, path=home
    )
    return protocol.done


# -- metrics endpoints -------------------------------------------------------------------

#: A metrics sample's key: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


async def http_get(url: str, method: bytes = b"GET") -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """Status, headers and body of one real HTTP request."""
    from twisted.web.client import Agent, readBody

    response = await Agent(global_reactor).request(method, url.encode("ascii"))
    body = await readBody(response)
    return response.code, dict(response.headers.getAllRawHeaders()), body


def metric_samples(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus exposition text (parsed with the client library's
    parser) by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(port: int, host: str = "127.0.0.1") -> dict[SampleKey, float]:
    """The samples served at http://HOST:PORT/metrics (asserting a 200 in the
    exposition format)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    code, headers, body = await http_get(f"http://{host}:{port}/metrics")
    assert code == 200, (code, body)
    assert headers[b"Content-Type"] == [CONTENT_TYPE_LATEST.encode("ascii")], headers
    return metric_samples(body.decode("utf-8"))


def sample(samples: dict[SampleKey, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter appears at its first count)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
