"""Request handling for the IRP registry: authorisation and every operation.

:class:`Registry` takes a parsed request and the connection's :class:`Session` and fires
with the result elements, or fails with an :class:`~irp.errors.IRPError`. It knows nothing
of sockets or framing (the Twisted protocol in :mod:`irp.server.protocol` is a thin adapter); it
does know the store, the CA and the password hasher.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from common.caches import VersionedCache
from common.identity import Identity, InvalidIdentity, check_username, identity_from_certificate
from common.limits import FailureLimiter, LimitExceeded
from common.limits import address_key as limited_address
from common.pki.certificates import UnusableCertificate, load_certificate
from common.pki.keyfiles import fingerprint
from common.pki.revocation import RevocationChecker
from common.wire.xmlcodec import Element, make_element, serialize, sub_element
from irp import errors
from irp.server.ca import (
    DEFAULT_ROOT_CRL_LIFETIME,
    REVOCATION_REASONS,
    CertificateAuthority,
    RevokedEntry,
    check_public_key,
)
from irp.server.dispatch import check_children, check_present
from irp.server.passwords import PasswordHasher, check_password_policy
from irp.server.store import Account, RegistryStore
from irp.wire.elements import (
    AccountView,
    addresses_element,
    certificate_element,
    pem_text,
    pkcs12_element,
    user_element,
)
from irp.wire.messages import (
    PROTOCOL_VERSION,
    Request,
    Result,
    bool_text,
    check_fields,
    child_text,
    decode_base64,
    optional_bool,
    optional_int,
    parse_serial,
    required,
)
from irp.wire.records import (
    MAX_ENDPOINTS,
    CertificateInfo,
    Endpoint,
    check_attributes,
    check_email,
    check_presence,
    check_text_field,
)

T = TypeVar("T")

#: A certificate fingerprint on the wire: SHA-256 of the DER, lower-case hex.
_FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")

log = Logger()

ThreadRunner = Callable[..., Deferred[Any]]

KEY_TYPES = ("p384", "p256", "ed25519")

#: How many serialised look-up answers a registry keeps (about 600 bytes each).
ANSWER_CACHE_SIZE = 20_000
#: How many certificates presented at login are remembered (see :meth:`Registry.certificate`).
CERTIFICATE_CACHE_SIZE = 20_000
#: Names as callers write them ("alice", "alice@example.org") mapped to valid local user
#: names; only the first ones met are kept (the check is cheap, the cache only saves it).
USERNAMES_CACHED = 20_000



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


@dataclass
class Session:
    """Who is on the other end of one connection."""

    peer_host: str
    identity: Identity | None = None
    method: str = "none"  # "certificate" or "password" once authenticated
    certificate_serial: int | None = None
    #: When the login certificate expires (POSIX seconds): the session ends then.
    certificate_not_after: int | None = None
    #: The password version a password login was checked against: when it changes (the
    #: password was changed or reset, not merely rehashed) the session ends.
    password_version: int | None = None
    #: The security generation the session was last validated at.
    generation: int = 0
    #: Why a presented client certificate was refused, when it was: every request that
    #: needs a login then fails with a new CertificateRejected saying so (public ones
    #: still work). A message, not an exception: one exception object raised again for
    #: every request would keep every traceback it was ever raised through.
    rejected: str | None = None
    #: True for a user of another, federated domain (read-only directory access).
    federated: bool = False

    @property
    def username(self) -> str:
        """The logged-in local user's name (NotAuthenticated when anonymous, Forbidden for
        a user of another domain)."""
        if self.identity is None:
            raise errors.NotAuthenticated()
        if self.federated:
            raise errors.Forbidden(f"{self.identity} is not a user of this registry: only look-ups are allowed")
        return self.identity.username


Handler = Callable[[Session, Element], Coroutine[Any, Any, list[Result]]]
#: Answers a request at once when it can (a cached answer), else None: the handler runs.
ImmediateHandler = Callable[[Session, Element], "list[Result] | None"]


#: Who may call an operation: anyone (even before login), any logged-in user including
#: users of federated domains, or only logged-in users of this domain.
ACCESS_LEVELS = ("anyone", "user", "local")


@dataclass(frozen=True)
class Operation:
    """One operation: its handler, who may call it, and the fields it takes.

    ``required`` names the attributes and child elements that must be present;
    ``one_of`` names fields of which exactly one must be. Both are checked, with the
    unknown fields, before the caller's login (see :meth:`Registry.check_fields`).
    """

    handler: Handler
    access: str
    attributes: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    #: Tried before ``handler``, without a coroutine or a Deferred (see Registry.handle).
    immediate: ImmediateHandler | None = None

    @property
    def needs_login(self) -> bool:
        """Whether an anonymous caller is refused."""
        return self.access != "anyone"


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
    #: Serialised look-up answers by user name, with the data version they were read at.
    _answers: VersionedCache[str, bytes] = field(init=False, default_factory=lambda: VersionedCache(ANSWER_CACHE_SIZE))
    #: Certificates presented at login, by fingerprint, as the store last had them.
    _certificates: VersionedCache[str, CertificateInfo] = field(
        init=False, default_factory=lambda: VersionedCache(CERTIFICATE_CACHE_SIZE)
    )
    _usernames: dict[str, str] = field(init=False, default_factory=dict, repr=False)
    #: Grows whenever a revocation or account change may end existing sessions.
    generation: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.user_limiter = FailureLimiter(
            self.clock,
            max_failures=self.config.login_failures_per_user,
            window=self.config.login_failure_window,
            lockout=self.config.login_lockout,
            max_lockout=self.config.login_lockout_max,
        )
        self.address_limiter = FailureLimiter(
            self.clock,
            max_failures=self.config.login_failures_per_address,
            window=self.config.login_failure_window,
            lockout=self.config.login_lockout,
            max_lockout=self.config.login_lockout_max,
        )
        self.operations = self._operation_table()
        # Argon2id is memory-hard: only a few hashes run at once (each takes the memory
        # cost), the rest wait their turn in order.
        self._hashing = DeferredSemaphore(self.config.concurrent_hashes)

    @property
    def domain(self) -> str:
        """The domain this registry serves."""
        return self.config.domain

    # -- dispatch ---------------------------------------------------------------------

    def _operation_table(self) -> dict[str, Operation]:
        op = Operation
        return {
            "capabilities": op(self.capabilities, "anyone"),
            "login": op(self.login, "anyone", ("user",), ("password",), ("user", "password")),
            "logout": op(self.logout, "anyone"),
            "whoami": op(self.whoami, "anyone"),
            "get-user": op(self.get_user, "user", ("user",), required=("user",)),
            "update-user": op(self.update_user, "local", ("user", "display-name", "email"), ("attribute", "attributes")),
            "list-users": op(self.list_users, "local", ("offset", "limit", "prefix")),
            "register-address": op(self.register_address, "local", ("presence", "ttl"), ("endpoint",)),
            "lookup": op(self.lookup, "user", ("user",), required=("user",), immediate=self.cached_lookup),
            "request-certificate": op(self.request_certificate, "local", ("user",), ("csr",), ("csr",)),
            "generate-key": op(self.generate_key, "local", ("user", "key-type", "label"), ("passphrase",), ("passphrase",)),
            "list-certificates": op(self.list_certificates, "local", ("user",)),
            "get-certificate": op(self.get_certificate, "user", ("serial", "fingerprint"), one_of=("serial", "fingerprint")),
            "user-certificates": op(self.user_certificates, "user", ("user",), required=("user",)),
            "upload-certificate": op(self.upload_certificate, "local", (), ("pem",), ("pem",)),
            "list-pkcs12": op(self.list_pkcs12, "local", ("user",)),
            "get-pkcs12": op(self.get_pkcs12, "local", ("id",), required=("id",)),
            "upload-pkcs12": op(self.upload_pkcs12, "local", ("label",), ("data",), ("data",)),
            "renew": op(self.renew, "local", ("serial",), ("csr",), ("serial",)),
            "revoke": op(self.revoke, "local", ("serial", "reason"), required=("serial",)),
            "get-crl": op(self.get_crl, "anyone"),
            "certificate-status": op(self.certificate_status, "anyone", ("serial",), ("pem",), one_of=("serial", "pem")),
            "ca-chain": op(self.ca_chain, "anyone"),
            "create-user": op(
                self.create_user, "local", ("user", "display-name", "email", "admin", "password-login"), ("password",), ("user",)
            ),
            "set-password": op(self.set_password, "local", ("user",), ("password", "current-password"), ("password",)),
            "set-password-login": op(self.set_password_login, "local", ("user", "enabled"), required=("enabled",)),
            "set-admin": op(self.set_admin, "local", ("user", "enabled"), required=("user", "enabled")),
            "delete-user": op(self.delete_user, "local", ("user",), required=("user",)),
        }

    def handle(self, session: Session, request: Request) -> Deferred[list[Result]]:
        """Run one request for ``session``; fire with the result elements."""
        result = self.handle_now(session, request)
        return result if isinstance(result, Deferred) else succeed(result)

    def handle_now(self, session: Session, request: Request) -> list[Result] | Deferred[list[Result]]:
        """Run one request for ``session``: the result elements at once when the operation
        can answer without waiting (a cached look-up answer: no coroutine, no Deferred),
        else a Deferred that fires with them. Every refusal goes through the Deferred."""
        operation = self.operations.get(request.operation)
        if operation is not None and operation.immediate is not None:
            try:
                revalidate = self._check_request(session, request, operation)
                answer = None if revalidate else operation.immediate(session, request.element)
            except errors.IRPError:
                return fail()
            if answer is not None:
                return answer
            return Deferred.fromCoroutine(self._run(session, request, operation, revalidate))
        return Deferred.fromCoroutine(self._handle(session, request))

    async def _handle(self, session: Session, request: Request) -> list[Result]:
        operation = self.operations.get(request.operation)
        if operation is None:
            raise errors.UnknownOperation(f"unknown operation <{request.operation}>")
        return await self._run(session, request, operation, self._check_request(session, request, operation))

    async def _run(self, session: Session, request: Request, operation: Operation, revalidate: bool) -> list[Result]:
        """Run a checked request (re-validating the session first when told to)."""
        if revalidate:
            await self._revalidate(session)
        return await operation.handler(session, request.element)

    def _check_request(self, session: Session, request: Request, operation: Operation) -> bool:
        """Check the request's fields and the caller's right to call ``operation``; raise
        the refusal, or return whether the session must be re-validated first (security
        changes happened since it was last checked)."""
        self.check_fields(request.element, operation)
        if not operation.needs_login:
            return False
        if session.rejected is not None:
            raise errors.CertificateRejected(session.rejected)
        if session.identity is None:
            raise errors.NotAuthenticated()
        if operation.access == "local" and session.federated:
            raise errors.Forbidden(f"users of other domains may only look users of {self.domain} up")
        self._check_certificate_current(session)
        return session.generation != self.generation

    @staticmethod
    def check_fields(element: Element, operation: Operation) -> None:
        """Check an operation element's fields against the operation's declaration:
        unknown, missing, repeated and mutually exclusive attributes and child elements
        are ``bad-request``. The one field check of every operation, made before the
        access check; the values are the operation's to check."""
        check_fields(element, operation.attributes, operation.children)
        check_children(element)
        check_present(element, operation.required)
        if operation.one_of:
            given = [name for name in operation.one_of if element.get(name) is not None or element.find(name) is not None]
            if len(given) != 1:
                names = " or ".join(operation.one_of)
                raise errors.BadRequest(f"<{element.tag}> needs exactly one of {names}")

    async def _check_session(self, session: Session) -> None:
        """Before a request that needs a login: end a certificate session whose certificate
        has expired, and re-validate a session after security changes."""
        self._check_certificate_current(session)
        if session.generation != self.generation:
            await self._revalidate(session)

    def _check_certificate_current(self, session: Session) -> None:
        """End a certificate session whose certificate has expired."""
        if session.certificate_not_after is not None and self._now() > session.certificate_not_after:
            self._end_session(session)
            raise errors.CertificateRejected("your certificate has expired: connect with a current one")

    @staticmethod
    def _end_session(session: Session) -> None:
        """Make ``session`` anonymous."""
        session.identity = None
        session.method = "none"
        session.certificate_serial = None
        session.certificate_not_after = None
        session.password_version = None

    async def _revalidate(self, session: Session) -> None:
        """Re-check a session after revocations or account changes anywhere."""
        generation = self.generation
        if session.federated:
            # A user of another domain: nothing of theirs is stored here; their own
            # registry's CRL is checked when fetched again (see common.pki.revocation).
            session.generation = generation
            return
        account = await self.store.get_account(session.username)
        failure: errors.IRPError | None = None
        if account is None:
            failure = errors.NotAuthenticated("your account no longer exists")
        elif session.method == "certificate" and session.certificate_serial is not None:
            info = await self.store.get_certificate(session.certificate_serial)
            if info is None or info.status(self.clock.seconds()) != "good":
                failure = errors.CertificateRejected("your certificate has been revoked or has expired")
        elif session.method == "password" and not account.password_login:
            failure = errors.PasswordLoginDisabled()
        elif session.method == "password" and account.password_version != session.password_version:
            failure = errors.NotAuthenticated("your password was changed: log in again")
        if failure is not None:
            self._end_session(session)
            raise failure
        session.generation = generation

    def security_changed(self) -> None:
        """Make every session re-check itself before its next request."""
        self.generation += 1

    # -- helpers ----------------------------------------------------------------------

    async def _password_work(self, function: Callable[..., T], *args: Any) -> T:
        """Run a password hash (``self.hasher.hash`` or ``verify``) in the thread pool, in
        its turn among at most ``concurrent_hashes``, within ``hash_timeout`` seconds
        (waiting included). Past the timeout the request fails with Unavailable; its turn
        is given up, so other requests go on (a computation already under way finishes
        in its thread, its result unused)."""
        work: Deferred[T] = self._hashing.run(self.run_in_thread, function, *args)
        work.addTimeout(self.config.hash_timeout, self.clock)
        try:
            return await work
        except defer.TimeoutError:
            log.warn(
                "A password hash took more than {seconds} s (waiting included): the request was refused",
                seconds=self.config.hash_timeout,
            )
            raise errors.Unavailable("checking the password took too long; try again later") from None

    def _now(self) -> float:
        return self.clock.seconds()

    async def _account(self, username: str) -> Account:
        account = await self.store.get_account(username)
        if account is None:
            raise errors.NotFound(f"no user {username}@{self.domain}")
        return account

    async def _caller_is_admin(self, session: Session) -> bool:
        if session.federated or session.identity is None:
            return False
        account = await self.store.get_account(session.username)
        return account is not None and account.is_admin

    async def _require_admin(self, session: Session) -> None:
        if not await self._caller_is_admin(session):
            raise errors.Forbidden("only administrators may do this")

    def _target_user(self, element: Element, session: Session) -> str:
        """The user an operation is about: the ``user`` attribute, or the caller."""
        name = element.get("user")
        if name is None:
            return session.username
        return self._local_username(name)

    def _local_username(self, name: str) -> str:
        """Accept ``alice`` or ``alice@<our domain>``; refuse other domains."""
        known = self._usernames.get(name)
        if known is not None:
            return known
        username = self._parse_local_username(name)
        if len(self._usernames) < USERNAMES_CACHED:
            self._usernames[name] = username
        return username

    def _parse_local_username(self, name: str) -> str:
        try:
            if "@" in name:
                identity = Identity.parse(name)
                if identity.domain != self.domain:
                    raise errors.NotFound(f"{name} is not a user of {self.domain}")
                return identity.username
            return check_username(name)
        except InvalidIdentity as error:
            raise errors.InvalidArgument(str(error)) from None

    async def _self_or_admin(self, session: Session, username: str) -> None:
        if username != session.username:
            await self._require_admin(session)

    def _account_view(self, account: Account) -> AccountView:
        return AccountView(
            is_admin=account.is_admin,
            password_login=account.password_login,
            has_password=account.password_hash is not None,
            created_at=account.created_at,
            updated_at=account.updated_at,
        )

    def _session_element(self, session: Session, is_admin: bool) -> Element:
        return make_element(
            "session",
            {
                "user": None if session.identity is None else str(session.identity),
                "method": session.method,
                "admin": bool_text(is_admin),
            },
        )

    def _certificate_element(self, info: CertificateInfo, with_pem: bool) -> Element:
        return certificate_element(info, self.domain, self._now(), with_pem=with_pem)

    # -- sessions ---------------------------------------------------------------------

    async def capabilities(self, session: Session, element: Element) -> list[Element]:
        """What this server supports."""
        result = make_element(
            "capabilities",
            {
                "domain": self.domain,
                "versions": PROTOCOL_VERSION,
                "max-request": str(self.config.max_request),
                "idle-timeout": str(int(self.config.idle_timeout)),
            },
        )
        for method in ("certificate", "password"):
            sub_element(result, "auth", {"method": method})
        for name in self.operations:
            sub_element(result, "operation", {"name": name})
        return [result]

    async def authenticate_certificate(
        self, session: Session, certificate: x509.Certificate, chain: Sequence[x509.Certificate] = ()
    ) -> None:
        """Log ``session`` in with a client certificate whose chain was verified.

        A certificate of this domain must be one this registry issued (known
        fingerprint), good now, and its owner must exist. A certificate of a federated
        domain (its root trusted by the operator) must not be on that domain's current
        CRL; it gives read-only look-ups. Otherwise the session is marked rejected.
        """
        info = await self.certificate(fingerprint(certificate))
        if info is not None and info.origin == "issued":
            self.login_with_issued_certificate(session, info)
            return
        try:
            named = identity_from_certificate(certificate)
        except InvalidIdentity:
            named = None
        if named is not None and named.domain != self.domain:
            await self._authenticate_federated(session, named, certificate, chain)
            return
        self.refuse_certificate(session, "the client certificate was not issued by this registry")

    def cached_certificate(self, digest: str) -> CertificateInfo | None:
        """The stored certificate with this fingerprint, if remembered from a login since
        the database last changed; else None (ask :meth:`certificate`)."""
        return self._certificates.get(digest, self.store.data_version())

    async def certificate(self, digest: str) -> CertificateInfo | None:
        """The stored certificate with this SHA-256 fingerprint, or None."""
        version = self.store.data_version()
        info = self._certificates.get(digest, version)
        if info is None:
            info = await self.store.get_certificate_by_fingerprint(digest)
            if info is not None:
                self._certificates.put(digest, version, info)
        return info

    def login_with_issued_certificate(self, session: Session, info: CertificateInfo) -> None:
        """Log ``session`` in with a certificate this registry issued (``info``, found by
        the exact fingerprint of the certificate the client presented), if it is good now."""
        # The exact certificate this registry issued (same DER): it names its owner, and
        # deleting an owner revokes their certificates, so the status says it all.
        status = info.status(self._now())
        if status != "good":
            self.refuse_certificate(session, f"the client certificate is {status}")
            return
        session.identity = Identity(info.username, self.domain)
        session.method = "certificate"
        session.certificate_serial = info.serial
        session.certificate_not_after = info.not_after
        session.password_version = None
        session.generation = self.generation
        log.info("{user} logged in with certificate {serial:x} from {host}", user=str(session.identity), serial=info.serial, host=session.peer_host)

    @staticmethod
    def refuse_certificate(session: Session, problem: str) -> None:
        """Mark ``session`` refused: every request it makes answers CertificateRejected."""
        log.warn("Refused client certificate from {host}: {problem}", host=session.peer_host, problem=problem)
        session.rejected = problem

    async def _authenticate_federated(
        self, session: Session, identity: Identity, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> None:
        problem: str | None = None
        if self.revocation is None or identity.domain not in self.federated_domains or len(chain) < 2:
            problem = f"users of {identity.domain} are not accepted here"
        else:
            try:
                await self.revocation.check(identity.domain, certificate, chain[1])
            except errors.CertificateRejected as error:
                problem = error.message
        if problem is not None:
            log.warn("Refused client certificate of {user} from {host}: {problem}", user=str(identity), host=session.peer_host, problem=problem)
            session.rejected = problem
            return
        session.identity = identity
        session.method = "certificate"
        session.federated = True
        session.certificate_serial = None
        session.certificate_not_after = int(certificate.not_valid_after_utc.timestamp())
        session.password_version = None
        session.generation = self.generation
        log.info("{user} (a federated domain) logged in from {host}", user=str(identity), host=session.peer_host)

    async def login(self, session: Session, element: Element) -> list[Element]:
        """Username/password login (UPA)."""
        username = self._local_username(required(element, "user"))
        password = child_text(element, "password", limit=1024) or ""
        user_key = ("user", username)
        address_key = ("address", limited_address(session.peer_host))
        try:
            self.address_limiter.check(address_key)
            self.user_limiter.check(user_key)
        except LimitExceeded as limited:
            # A tarpit: the refusal comes late, and the connection's later requests wait
            # behind it, so refused guesses cannot keep the server busy.
            await deferLater(self.clock, self.config.login_refusal_delay)
            raise errors.RateLimited(limited.message) from None
        self.address_limiter.begin(address_key)
        self.user_limiter.begin(user_key)
        try:
            account = await self.store.get_account(username)
            stored_hash = account.password_hash if account is not None else None
            valid = await self._password_work(self.hasher.verify, password, stored_hash)
        except BaseException:
            self.address_limiter.end(address_key)
            self.user_limiter.end(user_key)
            raise
        if not valid or account is None:
            self.user_limiter.record_failure(user_key)
            self.address_limiter.record_failure(address_key)
            log.warn("Failed password login for {user} from {host}", user=username, host=session.peer_host)
            raise errors.LoginFailed()
        self.address_limiter.end(address_key)
        if not account.password_login:
            # No verdict on the password either way: the user's attempt ends uncounted
            # (else refusals would pile up as attempts in flight and lock the user out).
            self.user_limiter.end(user_key)
            log.warn("Refused password login for {user} from {host}: disabled", user=username, host=session.peer_host)
            raise errors.PasswordLoginDisabled()
        # Only the user's count is cleared: the address's failures stand, or one account of
        # one's own would reset the budget for guessing other users' passwords.
        self.user_limiter.record_success(user_key)
        if account.password_hash is not None and self.hasher.needs_rehash(account.password_hash):
            # The same password with the current parameters: not a new password (the
            # version stays, so no session of the user ends).
            try:
                new_hash = await self._password_work(self.hasher.hash, password)
            except errors.Unavailable:
                pass  # the upgrade waits for the next login; this one stands
            else:
                await self.store.rehash_password(username, account.password_hash, new_hash)
        # The password login replaces whatever the connection was before: a refused
        # client certificate, a federated user's session or another login.
        self._end_session(session)
        session.rejected = None
        session.federated = False
        session.identity = Identity(username, self.domain)
        session.method = "password"
        session.password_version = account.password_version
        session.generation = self.generation
        log.info("{user} logged in with a password from {host}", user=str(session.identity), host=session.peer_host)
        return [self._session_element(session, account.is_admin)]

    async def logout(self, session: Session, element: Element) -> list[Element]:
        """End the login (a certificate login ends too, until the next connection)."""
        self._end_session(session)
        return [self._session_element(session, False)]

    async def whoami(self, session: Session, element: Element) -> list[Element]:
        """Who the session is logged in as (a refused certificate is reported)."""
        if session.identity is None and session.rejected is not None:
            raise errors.CertificateRejected(session.rejected)
        if session.identity is not None:
            await self._check_session(session)
        is_admin = session.identity is not None and await self._caller_is_admin(session)
        return [self._session_element(session, is_admin)]

    # -- directory --------------------------------------------------------------------

    async def get_user(self, session: Session, element: Element) -> list[Element]:
        """A user's signed public entry (with account settings for self and admins)."""
        username = self._local_username(required(element, "user"))
        account = await self._account(username)
        private = (not session.federated and username == session.username) or await self._caller_is_admin(session)
        return [user_element(account.record, self._account_view(account) if private else None)]

    async def update_user(self, session: Session, element: Element) -> list[Element]:
        """Change one's display name, email or free attributes (admins: anyone's)."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        display_name = element.get("display-name")
        email = element.get("email")
        if display_name is not None:
            check_text_field("display-name", display_name)
        if email is not None:
            check_email(email)
        attributes = None
        groups = element.findall("attributes")
        loose = element.findall("attribute")
        if loose:
            raise errors.BadRequest("put <attribute> elements inside one <attributes> element")
        if len(groups) > 1:
            raise errors.BadRequest("more than one <attributes> element")
        if groups:
            check_fields(groups[0], (), ("attribute",))
            pairs = []
            for child in groups[0]:
                check_fields(child, ("name",), text=True)
                pairs.append((required(child, "name"), child.text or ""))
            attributes = check_attributes(pairs)
        account = await self.store.update_user(
            username, display_name=display_name, email=email, attributes=attributes
        )
        return [user_element(account.record, self._account_view(account))]

    async def list_users(self, session: Session, element: Element) -> list[Element]:
        """One page of users' public entries, by user name."""
        offset = optional_int(element, "offset", 0, 0, 10**9)
        limit = optional_int(element, "limit", 50, 1, self.config.page_size_max)
        prefix = element.get("prefix", "")
        if len(prefix) > 63:
            raise errors.InvalidArgument("the prefix is too long")
        prefix = prefix.lower()  # user names are lower case
        total, accounts = await self.store.list_users(offset, limit, prefix)
        result = make_element("users", {"total": str(total), "offset": str(offset)})
        for account in accounts:
            result.append(user_element(account.record))
        return [result]

    # -- addresses --------------------------------------------------------------------

    async def register_address(self, session: Session, element: Element) -> list[Element]:
        """Replace one's current addresses and presence (signed, with an expiry)."""
        presence = check_presence(element.get("presence", "online"))
        ttl = optional_int(
            element,
            "ttl",
            self.config.address_ttl_default,
            self.config.address_ttl_min,
            self.config.address_ttl_max,
        )
        endpoints: list[Endpoint] = []
        for child in element:
            check_fields(child, ("address", "port"))
            endpoints.append(Endpoint.parse(required(child, "address"), required(child, "port")))
        if len(endpoints) > MAX_ENDPOINTS:
            raise errors.InvalidArgument(f"at most {MAX_ENDPOINTS} endpoints may be registered")
        if len(set(endpoints)) != len(endpoints):
            raise errors.InvalidArgument("an endpoint is listed twice")
        if presence == "offline":
            endpoints = []
        record = await self.store.put_addresses(session.username, presence, tuple(endpoints), ttl)
        return [addresses_element(record)]

    def cached_lookup(self, session: Session, element: Element) -> list[Result] | None:
        """The look-up's answer if it is cached and still current, else None."""
        version = self.store.data_version()
        if version is None:
            return None
        cached = self._answers.get(self._local_username(required(element, "user")), version)
        return None if cached is None else [cached]

    async def lookup(self, session: Session, element: Element) -> list[Result]:
        """A user's signed addresses and presence."""
        username = self._local_username(required(element, "user"))
        version = self.store.data_version()  # before the read: a commit in between retires it
        cached = self._answers.get(username, version)
        if cached is not None:
            return [cached]
        record = await self.store.get_addresses(username)
        if record is None:
            raise errors.NotFound(f"no user {username}@{self.domain}")
        answer = serialize(addresses_element(record))
        self._answers.put(username, version, answer)
        return [answer]

    # -- certificates -----------------------------------------------------------------

    async def _issue_and_store(
        self, username: str, make: Callable[[int], x509.Certificate], replacing: int | None = None
    ) -> CertificateInfo:
        """Issue with fresh random serials until one is unused, then store the certificate.

        The store refuses it with QuotaExceeded (a conflict) when the user already holds
        ``max_certificates_per_user`` current certificates, not counting ``replacing``
        (revoked and expired ones do not count): checked in the transaction that stores
        it, so concurrent requests cannot overshoot."""
        most = self.config.max_certificates_per_user
        for _attempt in range(3):
            serial = x509.random_serial_number()
            certificate = make(serial)
            try:
                info = await self.store.add_certificate(
                    username, certificate, fingerprint(certificate), most=most, replacing=replacing
                )
            except errors.QuotaExceeded:
                raise
            except errors.Conflict:
                continue
            log.info("Issued certificate {serial:x} to {user}", serial=serial, user=username)
            return info
        raise errors.InternalError("could not find an unused serial number")

    async def request_certificate(self, session: Session, element: Element) -> list[Element]:
        """Sign a CSR; the certificate names the target user, whatever the CSR says."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        csr = (child_text(element, "csr", limit=16384) or "").encode("ascii", "replace")
        identity = Identity(username, self.domain)
        validity = self.config.certificate_validity
        info = await self._issue_and_store(
            username, lambda serial: self.ca.issue_from_csr(csr, identity, validity=validity, serial=serial)
        )
        return [self._certificate_element(info, with_pem=True)]

    async def generate_key(self, session: Session, element: Element) -> list[Element]:
        """Generate a key pair here and return it with a new certificate as PKCS#12."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        key_type = element.get("key-type", "p384")
        if key_type not in KEY_TYPES:
            raise errors.InvalidArgument(f"key-type must be one of {', '.join(KEY_TYPES)}")
        label = check_text_field("label", element.get("label", "generated key"), 64)
        passphrase = child_text(element, "passphrase", limit=1024) or ""
        if len(passphrase) < 8:
            raise errors.InvalidArgument("the PKCS#12 passphrase must have at least 8 characters")
        identity = Identity(username, self.domain)
        validity = self.config.certificate_validity
        certificate, pkcs12 = await self.run_in_thread(
            self.ca.generate_pkcs12, identity, passphrase.encode("utf-8"), key_type=key_type, validity=validity
        )
        try:
            # Both quotas are checked in the transaction that stores both.
            info, stored = await self.store.add_generated_key(
                username,
                certificate,
                fingerprint(certificate),
                label,
                pkcs12,
                most_certificates=self.config.max_certificates_per_user,
                most_pkcs12=self.config.max_pkcs12_per_user,
            )
        except errors.QuotaExceeded:
            raise
        except errors.Conflict:
            raise errors.InternalError("a generated certificate collided with a stored one; retry") from None
        stored_with_data = replace(stored, data=pkcs12)
        log.info("Generated a key and certificate {serial:x} for {user}", serial=info.serial, user=username)
        return [pkcs12_element(stored_with_data, self.domain), self._certificate_element(info, with_pem=True)]

    async def list_certificates(self, session: Session, element: Element) -> list[Element]:
        """All certificates of a user (self or admin), newest first."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        infos = await self.store.list_certificates(username)
        result = make_element("certificates", {"user": f"{username}@{self.domain}"})
        for info in infos:
            result.append(self._certificate_element(info, with_pem=False))
        return [result]

    async def _certificate_by_serial(self, element: Element) -> CertificateInfo:
        serial = parse_serial(required(element, "serial"))
        info = await self.store.get_certificate(serial)
        if info is None:
            raise errors.NotFound(f"no certificate issued here with serial {serial:x}")
        return info

    async def get_certificate(self, session: Session, element: Element) -> list[Element]:
        """Download one certificate (certificates are public): one this registry issued, by
        serial, or any stored one (uploaded ones too), by fingerprint."""
        digest = element.get("fingerprint")
        if (digest is None) == (element.get("serial") is None):
            raise errors.BadRequest("give either a serial or a fingerprint attribute")
        if digest is None:
            info = await self._certificate_by_serial(element)
        else:
            if not _FINGERPRINT.match(digest):
                raise errors.BadRequest("a fingerprint is 64 lower-case hex digits (SHA-256 of the DER)")
            found = await self.store.get_certificate_by_fingerprint(digest)
            if found is None:
                raise errors.NotFound(f"no certificate with fingerprint {digest}")
            info = found
        return [self._certificate_element(info, with_pem=True)]

    async def user_certificates(self, session: Session, element: Element) -> list[Element]:
        """A user's currently good certificates issued here, newest first, with PEM."""
        username = self._local_username(required(element, "user"))
        await self._account(username)
        now = self._now()
        infos = [
            info
            for info in await self.store.list_certificates(username)
            if info.origin == "issued" and info.status(now) == "good"
        ]
        result = make_element("certificates", {"user": f"{username}@{self.domain}"})
        for info in infos:
            result.append(self._certificate_element(info, with_pem=True))
        return [result]

    async def upload_certificate(self, session: Session, element: Element) -> list[Element]:
        """Publish a certificate from another issuer that names the caller."""
        text = child_text(element, "pem", limit=16384) or ""
        certificate = _untrusted_certificate(text)
        now = self._now()
        if not certificate.not_valid_before_utc.timestamp() <= now <= certificate.not_valid_after_utc.timestamp():
            raise errors.InvalidArgument("the certificate is expired or not yet valid")
        check_public_key(certificate.public_key())
        if certificate.issuer == self.ca.issuing_certificate.subject:
            raise errors.Conflict("certificates of this registry's CA are stored when issued; no upload is needed")
        account = await self._account(session.username)
        if not self._names_user(certificate, account):
            raise errors.InvalidArgument(
                "the certificate must name you: an irp: URI with your identity or your registered email"
            )
        info = await self.store.add_certificate(
            session.username,
            certificate,
            fingerprint(certificate),
            origin="external",
            most=self.config.max_certificates_per_user,
        )
        return [self._certificate_element(info, with_pem=False)]

    def _names_user(self, certificate: x509.Certificate, account: Account) -> bool:
        try:
            return identity_from_certificate(certificate) == account.record.identity
        except InvalidIdentity:
            pass
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
            return False
        emails = [value.lower() for value in san.value.get_values_for_type(x509.RFC822Name)]
        return bool(account.record.email) and account.record.email.lower() in emails

    # -- PKCS#12 files ----------------------------------------------------------------

    async def list_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """A user's stored PKCS#12 files (self or admin), without their contents."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        result = make_element("pkcs12-files", {"user": f"{username}@{self.domain}"})
        for info in await self.store.list_pkcs12(username):
            result.append(pkcs12_element(info, self.domain))
        return [result]

    async def get_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """Download a stored PKCS#12 file (its owner or an administrator)."""
        required(element, "id")
        file_id = optional_int(element, "id", 0, 1, 2**62)
        info = await self.store.get_pkcs12(file_id)
        if info is None:
            raise errors.NotFound(f"no PKCS#12 file {file_id}")
        if info.username != session.username and not await self._caller_is_admin(session):
            # Do not tell other users that the file exists.
            raise errors.NotFound(f"no PKCS#12 file {file_id}")
        return [pkcs12_element(info, self.domain)]

    async def upload_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """Escrow a passphrase-protected PKCS#12 file (stored as opaque bytes)."""
        label = check_text_field("label", element.get("label", "uploaded"), 64)
        text = child_text(element, "data", limit=self.config.max_pkcs12_size * 2) or ""
        data = decode_base64(text, "PKCS#12 data")
        if len(data) > self.config.max_pkcs12_size:
            raise errors.InvalidArgument(f"PKCS#12 files may have at most {self.config.max_pkcs12_size} bytes")
        if not looks_like_pkcs12(data):
            raise errors.InvalidArgument("the data is not a DER-encoded PKCS#12 (PFX version 3) file")
        info = await self.store.add_pkcs12(
            session.username, label, "uploaded", data, None, most=self.config.max_pkcs12_per_user
        )
        return [pkcs12_element(info, self.domain)]

    # -- renewal and revocation -------------------------------------------------------

    async def renew(self, session: Session, element: Element) -> list[Element]:
        """Issue a successor to a good certificate (same key, or a new CSR); the old one is
        revoked as superseded."""
        old = await self._certificate_by_serial(element)  # issued here: serials name no other
        await self._self_or_admin(session, old.username)
        status = old.status(self._now())
        if status != "good":
            raise errors.InvalidArgument(f"only good certificates can be renewed; this one is {status}")
        csr_text = child_text(element, "csr", required_child=False, limit=16384)
        identity = Identity(old.username, self.domain)
        validity = self.config.certificate_validity
        if csr_text is not None:
            csr = csr_text.encode("ascii", "replace")

            def make(serial: int) -> x509.Certificate:
                return self.ca.issue_from_csr(csr, identity, validity=validity, serial=serial)
        else:
            public_key = old.certificate.public_key()

            def make(serial: int) -> x509.Certificate:
                return self.ca.issue_user_certificate(identity, public_key, validity=validity, serial=serial)  # type: ignore[arg-type]

        info = await self._issue_and_store(old.username, make, replacing=old.serial)
        try:
            await self.store.revoke_certificate(old.serial, "superseded")
        except errors.Conflict:
            pass
        self.security_changed()
        return [self._certificate_element(info, with_pem=True)]

    async def revoke(self, session: Session, element: Element) -> list[Element]:
        """Revoke a certificate (its owner or an administrator), with a reason."""
        info = await self._certificate_by_serial(element)
        await self._self_or_admin(session, info.username)
        reason = element.get("reason", "unspecified")
        if reason not in REVOCATION_REASONS:
            raise errors.InvalidArgument(f"reason must be one of {', '.join(sorted(REVOCATION_REASONS))}")
        revoked = await self.store.revoke_certificate(info.serial, reason)
        self.security_changed()
        log.info("{caller} revoked certificate {serial:x} of {user} ({reason})", caller=str(session.identity), serial=info.serial, user=info.username, reason=reason)
        return [self._certificate_element(revoked, with_pem=False)]

    async def current_crls(self) -> list[tuple[str, int, int, bytes]]:
        """The issuing CA's and the root's current CRLs: (issuer, number, next update, DER).

        The issuing CRL lives ``crl_lifetime``, the root's (always empty)
        :data:`~irp.server.ca.DEFAULT_ROOT_CRL_LIFETIME`; each is rebuilt in the last quarter of
        its life (and the issuing one after every revocation).
        """
        lifetime = self.config.crl_lifetime
        refresh_before = int(lifetime.total_seconds() // 4)

        def build_issuing(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            from common.timeutil import to_datetime

            revoked = [
                RevokedEntry(serial, to_datetime(at), REVOCATION_REASONS.get(reason or "unspecified"))
                for serial, at, reason in entries
            ]
            crl = self.ca.build_crl(revoked, number, next_update_after=lifetime)
            return crl.public_bytes(Encoding.DER), int(crl.next_update_utc.timestamp())  # type: ignore[union-attr]

        def build_root(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            # The root CRL only ever lists nothing (the issuing CA is never revoked): it
            # lives longer than the issuing CA's.
            crl = self.ca.build_root_crl(number, next_update_after=DEFAULT_ROOT_CRL_LIFETIME)
            return crl.public_bytes(Encoding.DER), int(crl.next_update_utc.timestamp())  # type: ignore[union-attr]

        issuing = await self.store.refresh_crl("issuing", build_issuing, refresh_before)
        root_refresh_before = int(DEFAULT_ROOT_CRL_LIFETIME.total_seconds() // 4)
        root = await self.store.refresh_crl("root", build_root, root_refresh_before)
        return [
            (stored.issuer, stored.crl_number, stored.next_update, stored.der) for stored in (issuing, root)
        ]

    async def get_crl(self, session: Session, element: Element) -> list[Element]:
        """The current CRLs of the issuing CA and the root, PEM-encoded."""
        result = make_element("crls")
        from common.timeutil import format_timestamp

        for issuer, number, next_update, der in await self.current_crls():
            crl = x509.load_der_x509_crl(der)
            crl_element = sub_element(
                result,
                "crl",
                {"issuer": issuer, "number": str(number), "next-update": format_timestamp(next_update)},
            )
            sub_element(crl_element, "pem", None, crl.public_bytes(Encoding.PEM).decode("ascii"))
        return [result]

    async def certificate_status(self, session: Session, element: Element) -> list[Element]:
        """good, revoked, expired, not-yet-valid or unknown, by serial or by PEM."""
        pem = child_text(element, "pem", required_child=False, limit=16384)
        serial_text = element.get("serial")
        if (pem is None) == (serial_text is None):
            raise errors.BadRequest("give either a serial attribute or a <pem> element")
        info: CertificateInfo | None
        if pem is not None:
            certificate = _untrusted_certificate(pem)
            serial = certificate.serial_number
            info = await self.store.get_certificate_by_fingerprint(fingerprint(certificate))
        else:
            serial = parse_serial(serial_text or "")
            info = await self.store.get_certificate(serial)
        from common.timeutil import format_timestamp

        if info is None or info.origin != "issued":
            return [make_element("status", {"serial": format(serial, "x"), "state": "unknown"})]
        attributes = {
            "serial": format(info.serial, "x"),
            "state": info.status(self._now()),
            "user": f"{info.username}@{self.domain}",
            "not-after": format_timestamp(info.not_after),
        }
        if info.revoked_at is not None:
            attributes["revoked"] = format_timestamp(info.revoked_at)
            attributes["reason"] = info.revocation_reason or "unspecified"
        return [make_element("status", attributes)]

    async def ca_chain(self, session: Session, element: Element) -> list[Element]:
        """The CA certificates and the record-signing certificate."""
        result = make_element("ca-chain", {"domain": self.domain, "root-fingerprint": fingerprint(self.ca.root_certificate)})
        for role, certificate in (
            ("root", self.ca.root_certificate),
            ("issuing", self.ca.issuing_certificate),
            ("record-signing", self.signing_certificate),
        ):
            sub_element(result, "ca", {"role": role}, pem_text(certificate))
        return [result]

    # -- administration ---------------------------------------------------------------

    async def create_user(self, session: Session, element: Element) -> list[Element]:
        """Create a user (administrators only)."""
        await self._require_admin(session)
        return [await self.add_user(
            self._local_username(required(element, "user")),
            display_name=check_text_field("display-name", element.get("display-name", "")),
            email=check_email(element.get("email", "")),
            is_admin=bool(optional_bool(element, "admin", False)),
            password=child_text(element, "password", required_child=False, limit=1024),
            password_login=bool(optional_bool(element, "password-login", True)),
        )]

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
        password_hash = None
        if password is not None:
            check_password_policy(password)
            password_hash = await self._password_work(self.hasher.hash, password)
        account = await self.store.create_user(
            username,
            display_name=display_name,
            email=email,
            is_admin=is_admin,
            password_hash=password_hash,
            password_login=password_login,
        )
        log.info("Created user {user} (admin: {admin})", user=username, admin=is_admin)
        return user_element(account.record, self._account_view(account))

    async def set_password(self, session: Session, element: Element) -> list[Element]:
        """Set a password: one's own (with the current one after a password login), or
        anyone's for administrators."""
        username = self._target_user(element, session)
        new_password = child_text(element, "password", limit=1024) or ""
        check_password_policy(new_password)
        is_admin = await self._caller_is_admin(session)
        if username != session.username and not is_admin:
            raise errors.Forbidden("only administrators may set other users' passwords")
        account = await self._account(username)
        if username == session.username and session.method == "password" and not is_admin:
            current = child_text(element, "current-password", required_child=False, limit=1024)
            if current is None or not await self._password_work(self.hasher.verify, current, account.password_hash):
                raise errors.LoginFailed("the current password is wrong")
        new_hash = await self._password_work(self.hasher.hash, new_password)
        account = await self.store.set_password_hash(username, new_hash)
        if username == session.username and session.method == "password":
            # The caller stays logged in; other password sessions of the user end.
            session.password_version = account.password_version
        self.security_changed()
        log.info("Password of {user} set by {caller}", user=username, caller=str(session.identity))
        return [user_element(account.record, self._account_view(account))]

    async def set_password_login(self, session: Session, element: Element) -> list[Element]:
        """Enable or disable password login for a user. Users may disable their own;
        only administrators may enable it."""
        username = self._target_user(element, session)
        enabled = optional_bool(element, "enabled")
        if enabled is None:
            raise errors.BadRequest("<set-password-login> needs enabled='true' or 'false'")
        if enabled or username != session.username:
            await self._require_admin(session)
        account = await self.store.set_password_login(username, enabled)
        self.security_changed()
        log.info("Password login of {user} {state} by {caller}", user=username, state="enabled" if enabled else "disabled", caller=str(session.identity))
        return [user_element(account.record, self._account_view(account))]

    async def set_admin(self, session: Session, element: Element) -> list[Element]:
        """Grant or withdraw administrator rights (never from the last administrator)."""
        await self._require_admin(session)
        username = self._local_username(required(element, "user"))
        enabled = optional_bool(element, "enabled")
        if enabled is None:
            raise errors.BadRequest("<set-admin> needs enabled='true' or 'false'")
        account = await self._account(username)
        if account.is_admin and not enabled and await self.store.count_admins() <= 1:
            raise errors.Conflict("the last administrator cannot lose administrator rights")
        account = await self.store.set_admin(username, enabled)
        self.security_changed()
        return [user_element(account.record, self._account_view(account))]

    async def delete_user(self, session: Session, element: Element) -> list[Element]:
        """Delete a user and revoke their certificates (administrators only)."""
        await self._require_admin(session)
        username = self._local_username(required(element, "user"))
        account = await self._account(username)
        if account.is_admin and await self.store.count_admins() <= 1:
            raise errors.Conflict("the last administrator cannot be deleted")
        revoked = await self.store.delete_user(username)
        self.security_changed()
        log.info("{caller} deleted user {user}, revoking {count} certificates", caller=str(session.identity), user=username, count=revoked)
        return [make_element("deleted", {"user": f"{username}@{self.domain}", "revoked": str(revoked)})]



def looks_like_pkcs12(data: bytes) -> bool:
    """True if ``data`` is a DER SEQUENCE spanning all of it whose first element is
    INTEGER 3 (a PKCS#12 PFX). The contents stay opaque: the passphrase is not ours."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_byte = data[1]
    if length_byte < 0x80:
        length, offset = length_byte, 2
    else:
        count = length_byte & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return False
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    return offset + length == len(data) and data[offset : offset + 3] == b"\x02\x01\x03"


def _untrusted_certificate(pem: str) -> x509.Certificate:
    """A PEM certificate from a request, fully readable, or InvalidArgument."""
    if not pem.lstrip().startswith("-----BEGIN"):
        raise errors.InvalidArgument("<pem> does not hold a PEM certificate")
    try:
        return load_certificate(pem.encode("ascii", "replace"))
    except UnusableCertificate as error:
        raise errors.InvalidArgument(f"<pem> does not hold a usable certificate: {error}") from None
