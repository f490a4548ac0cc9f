"""The IRP registry: its configuration and the composition of its parts.

:class:`Registry` takes a parsed request and the connection's
:class:`~irp.server.session.Session` and fires with the result elements, or fails with an
:class:`~irp.errors.IRPError`. It knows nothing of sockets or framing (the Twisted protocol
in :mod:`irp.server.protocol` is a thin adapter). Its parts, each in a module of its own:

* :mod:`irp.server.dispatch`: the operation table, the access and field checks, running a request;
* :mod:`irp.server.session`: the session states and the revalidation rule;
* :mod:`irp.server.auth`: certificate and password logins, the login failure limits;
* :mod:`irp.server.ops`: the operations' handlers, by group;
* :mod:`irp.server.caching`: the caches, each switchable off (:attr:`RegistryConfig.no_cache`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from common.pki.revocation import RevocationChecker
from common.wire.xmlcodec import Element
from irp.server.auth import Authenticator
from irp.server.ca import CertificateAuthority
from irp.server.caching import RegistryCaches
from irp.server.dispatch import Dispatcher, Operation, bind_operations
from irp.server.events import RegistryEvents
from irp.server.ops.admin import AdminOps
from irp.server.ops.audit import AuditOps
from irp.server.ops.certificates import CertificateOps
from irp.server.ops.directory import DirectoryOps
from irp.server.ops.pkcs12 import Pkcs12Ops
from irp.server.ops.session import SessionOps
from irp.server.ops.sixid import SixidOps
from irp.server.passwords import HashQueue, PasswordHasher
from irp.server.session import Session, SessionRules
from irp.server.store import RegistryStore
from irp.wire.messages import Request, Result

ThreadRunner = Callable[..., Deferred[Any]]


@dataclass
class RegistryConfig:
    """Operator-tunable limits of the registry."""

    domain: str
    certificate_validity: timedelta = timedelta(days=365)
    address_ttl_default: int = 300
    address_ttl_min: int = 30
    address_ttl_max: int = 86400
    page_size_max: int = 200
    max_certificates_per_user: int = 50
    max_pkcs12_per_user: int = 20
    max_pkcs12_size: int = 64 * 1024
    crl_lifetime: timedelta = timedelta(days=1)
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    login_failure_window: float = 600.0
    login_lockout: float = 30.0
    login_lockout_max: float = 900.0
    max_request: int = 256 * 1024
    #: Password hashes computed at once (each needs the Argon2 memory cost).
    concurrent_hashes: int = 2
    #: Seconds a password hash may take, waiting for its turn included: past it, the one
    #: request that asked for it fails with ``unavailable``.
    hash_timeout: float = 30.0
    #: Seconds before a rate-limited login is answered (a tarpit for guessers).
    login_refusal_delay: float = 1.0
    idle_timeout: float = 300.0
    #: The caches to do without (names of :data:`irp.server.caching.CACHE_NAMES`).
    no_cache: frozenset[str] = frozenset()


@dataclass
class Registry:
    """The registry's operations, authorisation and policies."""

    config: RegistryConfig
    store: RegistryStore
    ca: CertificateAuthority
    signing_certificate: x509.Certificate
    hasher: PasswordHasher
    clock: IReactorTime
    run_in_thread: ThreadRunner
    #: Checks certificates of users of federated domains against their CRLs.
    revocation: RevocationChecker | None = None
    #: Domains whose users may look users of this domain up (their roots are trusted).
    federated_domains: frozenset[str] = frozenset()
    operations: dict[str, Operation] = field(init=False)
    events: RegistryEvents = field(init=False)

    def __post_init__(self) -> None:
        #: Told of every request and login: metrics and the audit trail listen here.
        self.events = RegistryEvents()
        self.caches = RegistryCaches.build(self.config.no_cache)
        self.sessions = SessionRules(self)
        self.hashes = HashQueue(self, self.config.concurrent_hashes, lambda: self.config.hash_timeout)
        self.auth = Authenticator(self)
        self.admin = AdminOps(self)
        self.operations = bind_operations(
            [SessionOps(self), DirectoryOps(self), CertificateOps(self), Pkcs12Ops(self), self.admin, SixidOps(self), AuditOps(self)]
        )
        self.dispatcher = Dispatcher(self.operations, self.sessions, self.domain, self.events)

    @property
    def domain(self) -> str:
        """The domain this registry serves."""
        return self.config.domain

    def handle(self, session: Session, request: Request) -> Deferred[list[Result]]:
        """Run one request for ``session``; fire with the result elements."""
        return self.dispatcher.handle(session, request)

    def handle_now(self, session: Session, request: Request) -> list[Result] | Deferred[list[Result]]:
        """Run one request for ``session``: the results at once when they are ready (a
        cached answer), else a Deferred (see :meth:`Dispatcher.handle_now`)."""
        return self.dispatcher.handle_now(session, request)

    def security_changed(self) -> None:
        """Make every session re-check itself before its next request."""
        self.sessions.security_changed()

    async def caller_is_admin(self, session: Session) -> bool:
        """Whether ``session`` is logged in as a local administrator."""
        if session.federated or not session.logged_in:
            return False
        account = await self.store.get_account(session.username)
        return account is not None and account.is_admin

    async def add_user(
        self,
        username: str,
        *,
        display_name: str = "",
        email: str = "",
        is_admin: bool = False,
        password: str | None = None,
        password_login: bool = True,
    ) -> Element:
        """Create a user; used by ``create-user`` and by the first-start bootstrap."""
        return await self.admin.add_user(
            username,
            display_name=display_name,
            email=email,
            is_admin=is_admin,
            password=password,
            password_login=password_login,
        )
