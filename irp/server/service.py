"""The registry as a Twisted service: credentials, store, listeners and housekeeping."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from common.pki import keyfiles
from common.pki.trust import TrustStore
from common.startup import EarlyPorts, describe_port, describe_start_failure
from common.tls import ServerTLS, make_server_context
from common.version import describe_version
from irp import errors
from irp.server import ca_host
from irp.server.admission import AdmittingTLSFactory
from irp.server.audit.host import start_audit, stop_audit
from irp.server.audit.recorder import AuditRecorder
from irp.server.ca import CertificateAuthorityError
from irp.server.credentials import (
    RENEW_BEFORE,
    ServerCredentials,
    foreign_certificate_warning,
    load_or_create_credentials,
    with_given_server_certificate,
)
from irp.server.federation import FederatedRegistries, federated_roots
from irp.server.http.host import HTTPHost, publication_of
from irp.server.metrics import RegistryMetricsHost
from irp.server.passwords import Argon2Parameters, PasswordHasher
from irp.server.protocol import ConnectionLimits, RegistryServerFactory
from irp.server.registry import Registry, RegistryConfig
from irp.server.sixid_host import build_sixid_server, signer_chain
from irp.server.store import RegistryStore, open_store
from irp.wire.records import RecordSigner
from sixid.server.service import AnonymousServerTLS, SixidServer, SixidSettings

log = Logger()

ADMIN_PASSWORD_FILE = "admin-password"
#: Seconds sixid's connections have to close when the registry stops.
SIXID_CLOSE_GRACE = 2.0


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
    #: How often to renew the server and record-signing certificates that are within
    #: RENEW_BEFORE of their end (a long-running registry must not serve expired ones).
    renew_interval: float = 86400.0
    #: Root CAs of other domains whose users may look users of this domain up: each a
    #: (domain, root) pair binding the root to that one domain, or a bare root whose
    #: ``O`` attribute names its domain (the older form).
    federated_roots: list[x509.Certificate | tuple[str, x509.Certificate]] = field(default_factory=list)
    #: Registries of those domains (domain -> (host, port)); others are found by DNS SRV.
    registries: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: twisted.names resolver for DNS SRV look-ups of those registries (None: the system's).
    resolver: Any = None
    #: A TLS certificate (PEM, with its chain) and key the operator gives, instead of the
    #: server certificate the domain's CA issues for ``hostnames``.
    tls_certificate: str | None = None
    tls_key: str | None = None
    #: Listening sockets inherited from the main process, as (file descriptor, address
    #: family), instead of binding ``listen`` then ``sixid_listen`` (a worker process: see
    #: irp.server.workers): the first ``len(listen)`` are IRP's, the others sixid's.
    adopted: list[tuple[int, int]] = field(default_factory=list)
    #: Serve sixid (issue 13) with these settings on ``sixid_listen``; None: not served.
    sixid: SixidSettings | None = None
    sixid_listen: list[str] = field(default_factory=lambda: ["tcp6:4606:interface=\\:\\:"])
    #: Decrypts the CA's keys (--key-passphrase-file); None: they are not encrypted.
    key_passphrase: bytes | None = field(default=None, repr=False)
    #: Serve Prometheus metrics over HTTP on these endpoints (none: not served).
    metrics_listen: list[str] = field(default_factory=list)
    #: Serve CRLs, CA certificates and OCSP over HTTP on these (main process only), and
    #: name ``http_url`` (the public base URL) in every certificate issued (issue 14).
    http_listen: list[str] = field(default_factory=list)
    http_url: str | None = None

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
        self.early_ports: EarlyPorts | None = None
        #: sixid's listening ports and server (``settings.sixid``).
        self.sixid_ports: list[IListeningPort] = []
        self.sixid_early_ports: EarlyPorts | None = None
        self.sixid: SixidServer | None = None
        #: The TLS connection creator of sixid's listeners (no client certificate asked).
        self.sixid_tls: AnonymousServerTLS | None = None
        self.loops: list[LoopingCall] = []
        self.ready: Deferred[RegistryService] = Deferred()
        self._last_security_events: int | None = None
        #: The TLS connection creator of every listener: holds the current context.
        self.tls: ServerTLS | None = None
        self.audit: AuditRecorder | None = None  # the audit trail's recorder
        self.metrics = RegistryMetricsHost(reactor, settings.metrics_listen)
        self.http = HTTPHost(settings, reactor) if settings.http_listen and not settings.adopted else None

    def prepare_credentials(self, expected_root: str | None = None) -> ServerCredentials:
        """Load or create the CA, server and signing credentials (synchronous); with
        ``expected_root`` (the database's CA), no CA is created and another is refused."""
        settings = self.settings
        if self.credentials is None:
            credentials = load_or_create_credentials(
                settings.data_dir, settings.domain, settings.hostnames, key_type=settings.key_type,
                passphrase=settings.key_passphrase, expected_root=expected_root,
                publication=publication_of(settings),
            )
            ca_host.log_ca_state(credentials, at_start=True)
            self.credentials = self._given_tls(credentials)
        return self.credentials

    def _given_tls(self, credentials: ServerCredentials) -> ServerCredentials:
        """Use the operator's TLS certificate and key, when given (re-read at every renewal
        check, so a certificate renewed on disk is picked up)."""
        settings = self.settings
        if settings.tls_certificate is None or settings.tls_key is None:
            return credentials
        given = with_given_server_certificate(credentials, settings.tls_certificate, settings.tls_key)
        warning = foreign_certificate_warning(given, settings.tls_certificate)
        if warning is not None:
            log.critical("{message}", message=warning)
        return given

    def privilegedStartService(self) -> None:
        """Bind the listening ports (before the reactor runs, so a port in use is found
        before anything is created and a daemonizing twistd hears of it)."""
        super().privilegedStartService()
        self.early_ports = self._bind()
        self.sixid_early_ports = self._bind_sixid()
        self.metrics.bind()
        if self.http is not None:
            self.http.bind()

    def _bind(self) -> EarlyPorts:
        settings = self.settings
        adopted = settings.adopted[: len(settings.listen)]
        return EarlyPorts(self.reactor, settings.listen, "IRP registry", adopted=adopted)

    def _bind_sixid(self) -> EarlyPorts | None:
        settings = self.settings
        if settings.sixid is None:
            return None
        adopted = settings.adopted[len(settings.listen) :]
        return EarlyPorts(self.reactor, settings.sixid_listen, "sixid", adopted=adopted)

    @property
    def every_early_ports(self) -> list[EarlyPorts | None]:
        """Every listener's ports bound before the reactor ran, not served yet (IRP's,
        sixid's, the HTTP endpoint's), which a daemonizing ``twistd`` reports when one
        could not be bound (see :class:`common.startup.ReportingParent`)."""
        return [self.early_ports, self.sixid_early_ports, None if self.http is None else self.http.early]

    @property
    def all_ports(self) -> list[IListeningPort]:
        """Every listening port, IRP's then sixid's (in the order workers adopt them)."""
        return [*self.ports, *self.sixid_ports]

    def startService(self) -> None:
        """Start in the background; ``ready`` fires when listening (or fails)."""
        super().startService()
        log.info("Starting {version}", version=describe_version("irp"))
        started = Deferred.fromCoroutine(self._start())
        started.addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        # The caller (twistd irp: irp.tap) stops the process; the ports bound are let go.
        if failure.check(errors.IRPError, keyfiles.KeyFileError, OSError, RuntimeError, CannotListenError, CertificateAuthorityError):
            log.critical("The registry could not start: {why}", why=describe_start_failure(failure.value))
        else:
            log.failure("The registry could not start", failure)
        for port in self.all_ports:
            port.stopListening()
        self.ports.clear()
        self.sixid_ports.clear()
        for early in (self.early_ports, self.sixid_early_ports):
            if early is not None:
                early.release()
        self.early_ports = self.sixid_early_ports = None
        if self.sixid is not None:
            self.sixid.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        self.metrics.stop()
        if self.http is not None:
            self.http.release()
        self.ready.errback(failure)

    async def _start(self) -> RegistryService:
        settings = self.settings
        # Bind first: a port in use must be found before a CA or data folder is created.
        early = self.early_ports or self._bind()
        self.early_ports = None
        sixid_early = self.sixid_early_ports or self._bind_sixid()
        self.sixid_early_ports = None
        gate = early.gate
        try:
            self.ports.extend(await early.ports())
            if sixid_early is not None:
                self.sixid_ports.extend(await sixid_early.ports())
            if self.http is not None:
                await self.http.listen()
        except BaseException:
            if sixid_early is not None:
                sixid_early.release()
            raise
        await self.metrics.listen()
        # The store first: the database names its CA (see irp.server.ca_host); the
        # record signer is set once the CA is loaded (nothing signs before).
        self.store = await open_store(
            settings.database_url,
            domain=settings.domain,
            signer=None,
            now=self.reactor.seconds,
            reactor=self.reactor,
        )
        credentials = await ca_host.agreed_credentials(self.store, self.prepare_credentials)
        ca = credentials.ca
        self.store.signer = RecordSigner(credentials.signing_key, credentials.signing_certificate)
        config = settings.config or RegistryConfig(domain=settings.domain)
        config.max_request = settings.limits.max_request
        config.idle_timeout = settings.limits.idle_timeout
        hasher = PasswordHasher(settings.argon2)
        # Checking a password of an unknown user costs one hash of a dummy hash, computed
        # once: now, in a thread, rather than during the first such login (which would then
        # cost two hashes, and tell that the user does not exist).
        await self._run_in_thread(hasher.verify, "", None)
        self.registry = Registry(
            config=config,
            store=self.store,
            ca=ca,
            signing_certificate=credentials.signing_certificate,
            hasher=hasher,
            clock=self.reactor,
            run_in_thread=self._run_in_thread,
            revocation=FederatedRegistries(self.federated_roots, settings.registries, settings.resolver, self.reactor).revocation_checker(),
            federated_domains=frozenset(self.federated_roots),
        )
        self.audit = start_audit(self.registry, self.reactor)
        await self._bootstrap_admin()
        # Each root certifies exactly the domain it is trusted for: ours only ours.
        trust = TrustStore(anchors=[(settings.domain, ca.root_certificate), *self.federated_roots.items()])
        for domain, root in sorted(self.federated_roots.items()):
            log.info(
                "Users of {domain} may look users up (their root CA {fingerprint})",
                domain=domain,
                fingerprint=keyfiles.format_fingerprint(keyfiles.fingerprint(root)),
            )
        if config.no_cache:
            log.info(
                "Running without the caches: {names} (each look-up goes to the database)",
                names=", ".join(sorted(config.no_cache)),
            )
        self.factory = RegistryServerFactory(
            self.registry, trust, self.reactor, settings.limits, known_intermediates=ca_host.known_intermediates(ca)
        )
        self.tls = ServerTLS(self._server_context(credentials))
        gate.open(AdmittingTLSFactory(self.tls, False, self.factory))
        for port in self.ports:
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
        if sixid_early is not None:
            self._start_sixid(credentials, sixid_early)
        self.metrics.watch(self)
        self._start_loop(self._sweep, settings.sweep_interval)
        # The baseline: later changes made through other processes end sessions here.
        self._last_security_events = await self.store.security_generation()
        self._start_loop(self._sync_generation, settings.sync_interval)
        self._start_loop(self._daily_renewal, settings.renew_interval)
        if self.http is not None:
            await self.http.start(self.registry)
        return self

    def _start_sixid(self, credentials: ServerCredentials, early: EarlyPorts) -> None:
        """Serve sixid on its ports: the registry's server certificate, no client
        certificate asked for (see :mod:`irp.server.sixid_host`)."""
        settings = self.settings.sixid
        assert settings is not None and self.registry is not None
        self.sixid = build_sixid_server(self.registry, credentials, settings, self.reactor)
        self.sixid_tls = AnonymousServerTLS(self._server_context(credentials))
        # The connection creator is kept: a renewed server certificate then reaches new
        # sixid connections too (see renew_credentials).
        early.gate.open(self.sixid.factory(self.sixid_tls))
        self.sixid.start()
        endpoints = ", ".join(describe_port(port) for port in self.sixid_ports)
        log.info("sixid serving on {endpoints} (policy {policy})", endpoints=endpoints, policy=settings.policy)

    @staticmethod
    def _server_context(credentials: ServerCredentials) -> SSL.Context:
        ca = credentials.ca
        return make_server_context(
            credentials.server_key,
            credentials.server_certificate,
            list(credentials.server_chain) or [ca.issuing_certificate],
            client_ca_names=[ca.root_certificate],
        )

    async def _daily_renewal(self) -> None:
        # A failure (a full disk, say) is logged and tried again the next day, rather
        # than ending the loop.
        try:
            await self.renew_credentials()
        except Exception:  # noqa: BLE001 - logged with its traceback
            log.failure("Renewing the registry's certificates failed; trying again in a day")

    async def renew_credentials(self, renew_before: timedelta = RENEW_BEFORE) -> None:
        """Renew the server and record-signing certificates that end within
        ``renew_before`` (the daily check), and put renewed ones to use.

        A new server certificate serves new connections (open ones keep theirs); a new
        record-signing certificate (for the same key) is served by ``ca-chain`` and signs
        from now on. Another process of the domain may have renewed them already: what is
        on disk is loaded either way.
        """
        assert self.credentials is not None and self.registry is not None and self.store is not None
        settings = self.settings
        old = self.credentials
        loaded: ServerCredentials = await self._run_in_thread(
            load_or_create_credentials,
            settings.data_dir,
            settings.domain,
            settings.hostnames,
            key_type=settings.key_type,
            renew_before=renew_before,
            passphrase=settings.key_passphrase,
            expected_root=old.ca.root_fingerprint,
            publication=publication_of(settings),
        )
        if ca_host.keeps_running_ca(old.ca, loaded):
            return
        # The CA in use stays (it is never renewed here; the same one is on disk).
        new = self._given_tls(
            ServerCredentials(old.ca, loaded.server_key, loaded.server_certificate, loaded.signing_key, loaded.signing_certificate)
        )
        if new.server_certificate != old.server_certificate:
            if self.tls is not None:
                self.tls.context = self._server_context(new)
            if self.sixid_tls is not None:
                self.sixid_tls.context = self._server_context(new)
            log.info(
                "Renewed the TLS server certificate; new connections get the one valid until {until}",
                until=new.server_certificate.not_valid_after_utc.isoformat(),
            )
        if new.signing_certificate != old.signing_certificate:
            self.store.signer = RecordSigner(new.signing_key, new.signing_certificate)
            self.registry.signing_certificate = new.signing_certificate
            if self.sixid is not None:
                self.sixid.set_signer(new.signing_key, signer_chain(new))
            log.info(
                "Renewed the record-signing certificate, valid until {until}",
                until=new.signing_certificate.not_valid_after_utc.isoformat(),
            )
        self.credentials = new

    @property
    def federated_roots(self) -> dict[str, x509.Certificate]:
        """The federated domains' roots, by the one domain each is trusted for (see
        :func:`irp.server.federation.federated_roots`)."""
        return federated_roots(self.settings.federated_roots, self.settings.domain)

    def _run_in_thread(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args, **kwargs)

    def _start_loop(self, function: Any, interval: float) -> None:
        async def step() -> None:
            with contextlib.suppress(errors.Unavailable):  # the store logs an outage once
                await function()

        loop = LoopingCall(step)
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
        if self.audit is not None:
            self.audit.registry_event("create-user", f"{username}@{self.settings.domain}", {"admin": "true"})
        path = os.path.join(self.settings.data_dir, ADMIN_PASSWORD_FILE)
        keyfiles.write_bytes_private(path, (password + "\n").encode("ascii"))
        log.warn(
            "Created the administrator {user!r}; its password is in {path} (readable only by"
            " this account). Change it with irp passwd (logged in as {user}), then delete the file",
            user=username,
            path=path,
        )

    async def _sweep(self) -> None:
        assert self.store is not None
        count = await self.store.expire_addresses()
        if count:
            log.debug("Expired {count} address records", count=count)

    async def _sync_generation(self) -> None:
        """Notice changes that may end sessions (revocations, new passwords, password
        login and administrator changes, deleted users) made by other processes sharing
        the database."""
        assert self.store is not None and self.registry is not None
        events = await self.store.security_generation()
        if self._last_security_events is not None and events != self._last_security_events:
            self.registry.security_changed()
        self._last_security_events = events

    def stopService(self) -> Deferred[None]:
        """Stop listening and housekeeping, then close the database."""
        super().stopService()
        for loop in self.loops:
            if loop.running:
                loop.stop()
        self.loops.clear()
        stopping = [port.stopListening() for port in self.all_ports] + [self.metrics.stop()]
        self.ports.clear()
        self.sixid_ports.clear()
        sixid = self.sixid
        if sixid is not None:
            sixid.stop()
            stopping.append(sixid.close_connections(SIXID_CLOSE_GRACE))
            self.sixid = None
        if self.http is not None:
            stopping.append(self.http.stop())

        async def finish() -> None:
            for waiting in stopping:
                if waiting is not None:
                    await waiting
            if self.audit is not None:
                await stop_audit(self.audit, self.reactor)
            if self.store is not None:
                self.store.close()
                self.store = None

        return Deferred.fromCoroutine(finish())
