"""The registry as a Twisted service: credentials, store, listeners and housekeeping."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from irp import errors, keyfiles
from irp.credentials import ServerCredentials, load_or_create_credentials
from irp.passwords import Argon2Parameters, PasswordHasher
from irp.protocol import ConnectionLimits, RegistryServerFactory
from irp.records import RecordSigner
from irp.registry import Registry, RegistryConfig
from irp.store import RegistryStore, open_store
from irp.tls import ServerTLS, make_server_context
from irp.trust import TrustStore

log = Logger()

ADMIN_PASSWORD_FILE = "admin-password"


@dataclass
class RegistrySettings:
    """Everything needed to run one registry process."""

    domain: str
    data_dir: str
    listen: list[str] = field(default_factory=lambda: ["tcp6:4604:interface=\\:\\:"])
    hostnames: list[str] = field(default_factory=lambda: ["localhost"])
    database: str | None = None
    key_type: str = "p384"
    admin_username: str = "admin"
    config: RegistryConfig | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    argon2: Argon2Parameters = field(default_factory=Argon2Parameters)
    sweep_interval: float = 15.0
    sync_interval: float = 5.0

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        return self.database or os.path.join(self.data_dir, "registry.sqlite3")


class RegistryService(service.Service):
    """Runs one registry process: starts listening once the store is open."""

    def __init__(self, settings: RegistrySettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self.credentials: ServerCredentials | None = None
        self.store: RegistryStore | None = None
        self.registry: Registry | None = None
        self.factory: RegistryServerFactory | None = None
        self.ports: list[IListeningPort] = []
        self.loops: list[LoopingCall] = []
        self.ready: Deferred[RegistryService] = Deferred()
        self._last_revocations: int | None = None

    def prepare_credentials(self) -> ServerCredentials:
        """Load or create the CA, server and signing credentials (synchronous)."""
        settings = self.settings
        if self.credentials is None:
            self.credentials = load_or_create_credentials(
                settings.data_dir, settings.domain, settings.hostnames, key_type=settings.key_type
            )
        return self.credentials

    def startService(self) -> None:
        """Start in the background; ``ready`` fires when listening (or fails)."""
        super().startService()
        started = Deferred.fromCoroutine(self._start())
        started.addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        if failure.check(errors.IRPError, keyfiles.KeyFileError, OSError, RuntimeError):
            log.critical("The registry could not start: {why}", why=str(failure.value))
        else:
            log.failure("The registry could not start", failure)
        self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _start(self) -> RegistryService:
        settings = self.settings
        credentials = self.prepare_credentials()
        ca = credentials.ca
        signer = RecordSigner(credentials.signing_key, credentials.signing_certificate)
        self.store = await open_store(
            settings.database_url,
            domain=settings.domain,
            signer=signer,
            now=self.reactor.seconds,
            reactor=self.reactor,
        )
        config = settings.config or RegistryConfig(domain=settings.domain)
        config.max_request = settings.limits.max_request
        config.idle_timeout = settings.limits.idle_timeout
        self.registry = Registry(
            config=config,
            store=self.store,
            ca=ca,
            signing_certificate=credentials.signing_certificate,
            hasher=PasswordHasher(settings.argon2),
            clock=self.reactor,
            run_in_thread=self._run_in_thread,
        )
        await self._bootstrap_admin()
        trust = TrustStore([ca.root_certificate])
        self.factory = RegistryServerFactory(
            self.registry, trust, self.reactor, settings.limits, known_intermediates=[ca.issuing_certificate]
        )
        context = make_server_context(
            credentials.server_key,
            credentials.server_certificate,
            [ca.issuing_certificate],
            client_ca_names=[ca.root_certificate],
        )
        tls_factory = TLSMemoryBIOFactory(ServerTLS(context), False, self.factory)
        for description in settings.listen:
            port = await serverFromString(self.reactor, description).listen(tls_factory)
            self.ports.append(port)
            address = port.getHost()
            log.info(
                "IRP registry for {domain} listening on {host} port {port}",
                domain=settings.domain,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )
        log.info(
            "CA root fingerprint: {fingerprint}",
            fingerprint=keyfiles.format_fingerprint(ca.root_fingerprint),
        )
        self._start_loop(self._sweep, settings.sweep_interval)
        # The baseline: later changes made through other processes end sessions here.
        self._last_revocations = await self.store.revocation_generation()
        self._start_loop(self._sync_generation, settings.sync_interval)
        return self

    def _run_in_thread(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args, **kwargs)

    def _start_loop(self, function: Any, interval: float) -> None:
        loop = LoopingCall(function)
        loop.clock = self.reactor
        finished = loop.start(interval, now=False)
        finished.addErrback(lambda failure: log.failure("Housekeeping failed", failure))
        self.loops.append(loop)

    async def _bootstrap_admin(self) -> None:
        """On first start, create an administrator with a random password in a 0600 file."""
        assert self.registry is not None and self.store is not None
        if await self.store.count_admins() > 0:
            return
        password = secrets.token_urlsafe(18)
        username = self.settings.admin_username
        try:
            await self.registry.add_user(username, display_name="Administrator", is_admin=True, password=password)
        except errors.Conflict:
            return  # another process of this domain did it first
        path = os.path.join(self.settings.data_dir, ADMIN_PASSWORD_FILE)
        keyfiles.write_bytes_private(path, (password + "\n").encode("ascii"))
        log.warn(
            "Created the administrator {user!r}; its password is in {path} (readable only by"
            " this account). Log in, then change it with: irp admin set-password {user}",
            user=username,
            path=path,
        )

    async def _sweep(self) -> None:
        assert self.store is not None
        count = await self.store.expire_addresses()
        if count:
            log.debug("Expired {count} address records", count=count)

    async def _sync_generation(self) -> None:
        """Notice revocations made by other processes sharing the database."""
        assert self.store is not None and self.registry is not None
        revocations = await self.store.revocation_generation()
        if self._last_revocations is not None and revocations != self._last_revocations:
            self.registry.security_changed()
        self._last_revocations = revocations

    def stopService(self) -> Deferred[None]:
        """Stop listening and housekeeping, then close the database."""
        super().stopService()
        for loop in self.loops:
            if loop.running:
                loop.stop()
        self.loops.clear()
        stopping = [port.stopListening() for port in self.ports]
        self.ports.clear()

        async def finish() -> None:
            for waiting in stopping:
                if waiting is not None:
                    await waiting
            if self.store is not None:
                self.store.pool.close()

        return Deferred.fromCoroutine(finish())
