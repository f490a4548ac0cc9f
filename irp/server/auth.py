"""Authentication, in one place: client certificates (this registry's own and those of
federated domains' users) and password logins with their failure limits and tarpit.

Every login ends in one of the :class:`~irp.server.session.Session` transitions
(``log_in_certificate``, ``log_in_federated``, ``log_in_password``, ``reject``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.limits import FailureLimiter, LimitExceeded
from common.limits import address_key as limited_address
from common.pki import errors as pki_errors
from common.pki.certificates import UnusableCertificate, load_certificate
from common.pki.keyfiles import fingerprint
from common.pki.trust import TrustStore
from irp import errors
from irp.server.events import OK, LoginDone, outcome_of
from irp.server.session import Session
from irp.server.store import Account
from irp.wire.records import CertificateInfo

if TYPE_CHECKING:
    from irp.server.registry import Registry

#: Log lines keep the namespace they had before the registry was split (issue 10).
log = Logger(namespace="irp.server.registry")


class Authenticator:
    """Logs sessions in: by client certificate or by password."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        config = registry.config
        self.user_limiter = FailureLimiter(
            registry.clock,
            max_failures=config.login_failures_per_user,
            window=config.login_failure_window,
            lockout=config.login_lockout,
            max_lockout=config.login_lockout_max,
        )
        self.address_limiter = FailureLimiter(
            registry.clock,
            max_failures=config.login_failures_per_address,
            window=config.login_failure_window,
            lockout=config.login_lockout,
            max_lockout=config.login_lockout_max,
        )

    # -- certificates -----------------------------------------------------------------

    def cached_certificate(self, digest: str) -> CertificateInfo | None:
        """The stored certificate with this fingerprint, if remembered from a login since
        the database last changed; else None (ask :meth:`certificate`)."""
        return self.registry.caches.certificates.get(digest, self.registry.store.data_version())

    async def certificate(self, digest: str) -> CertificateInfo | None:
        """The stored certificate with this SHA-256 fingerprint, or None."""
        store = self.registry.store
        version = store.data_version()
        cache = self.registry.caches.certificates
        info = cache.get(digest, version)
        if info is None:
            info = await store.get_certificate_by_fingerprint(digest)
            if info is not None:
                cache.put(digest, version, info)
        return info

    def authenticate_presented(
        self,
        session: Session,
        leaf_der: bytes,
        intermediates: Callable[[], Sequence[bytes]],
        trust: TrustStore,
        known_intermediates: Sequence[x509.Certificate] = (),
    ) -> Deferred[None] | None:
        """Log the session in with the client certificate ``leaf_der`` (DER, as received);
        None when decided at once, else a Deferred that fires when decided.

        A certificate this registry issued is recognised by its exact fingerprint (no
        path to build: its status and owner say it all). Any other goes through ``trust``
        first (completing the chain with ``known_intermediates``): a user of a federated
        domain, or a refusal with a reason. ``intermediates`` gives the other
        certificates the client presented, when needed.
        """
        digest = hashlib.sha256(leaf_der).hexdigest()
        known = self.cached_certificate(digest)
        if known is not None and known.origin == "issued":
            self.login_with_issued_certificate(session, known)
            return None
        return Deferred.fromCoroutine(
            self._authenticate_presented(session, digest, leaf_der, intermediates, trust, known_intermediates)
        )

    async def _authenticate_presented(
        self,
        session: Session,
        digest: str,
        leaf_der: bytes,
        intermediates: Callable[[], Sequence[bytes]],
        trust: TrustStore,
        known_intermediates: Sequence[x509.Certificate],
    ) -> None:
        try:
            issued = await self.certificate(digest)
        except errors.Unavailable as down:
            # The connection is refused (unavailable); the listeners hear of it too.
            event = LoginDone("certificate", "", down.name, session.peer_host, down.message)
            self.registry.events.login_done(event)
            raise
        if issued is not None and issued.origin == "issued":
            self.login_with_issued_certificate(session, issued)
            return
        try:
            leaf, presented = load_presented(leaf_der, intermediates)
            verified = trust.verify_user_certificate(
                leaf,
                [*presented, *known_intermediates],
                now=datetime.fromtimestamp(self.registry.clock.seconds(), timezone.utc),
            )
        except pki_errors.CertificateInvalid as problem:
            error = errors.from_pki(problem)
            # The session keeps the reason: each request that needs a login is refused
            # with a new certificate-rejected error saying it.
            reason = getattr(error, "reason", None)
            self.refuse_certificate(session, error.message if reason is None else f"{error.message} ({reason})")
            return
        # The fingerprint was looked up above: not a certificate this registry issued.
        await self._authenticate_other(session, leaf, verified.chain)

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
        await self._authenticate_other(session, certificate, chain)

    async def _authenticate_other(
        self, session: Session, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> None:
        """A verified certificate this registry did not issue: a federated user's, or refused."""
        try:
            named = identity_from_certificate(certificate)
        except InvalidIdentity:
            named = None
        if named is not None and named.domain != self.registry.domain:
            await self._authenticate_federated(session, named, certificate, chain)
            return
        self.refuse_certificate(session, "the client certificate was not issued by this registry")

    def login_with_issued_certificate(self, session: Session, info: CertificateInfo) -> None:
        """Log ``session`` in with a certificate this registry issued (``info``, found by
        the exact fingerprint of the certificate the client presented), if it is good now."""
        # The exact certificate this registry issued (same DER): it names its owner, and
        # deleting an owner revokes their certificates, so the status says it all.
        status = info.status(self.registry.clock.seconds())
        identity = Identity(info.username, self.registry.domain)
        if status != "good":
            self.refuse_certificate(session, f"the client certificate is {status}", str(identity))
            return
        session.log_in_certificate(identity, info.serial, info.not_after, self.registry.sessions.generation)
        log.info("{user} logged in with certificate {serial:x} from {host}", user=str(session.identity), serial=info.serial, host=session.peer_host)
        self.registry.events.login_done(LoginDone("certificate", str(identity), OK, session.peer_host))

    def refuse_certificate(self, session: Session, problem: str, user: str = "") -> None:
        """Mark ``session`` refused: every request it makes answers CertificateRejected."""
        log.warn("Refused client certificate from {host}: {problem}", host=session.peer_host, problem=problem)
        session.reject(problem)
        rejected = errors.CertificateRejected.name
        self.registry.events.login_done(LoginDone("certificate", user, rejected, session.peer_host, problem))

    async def _authenticate_federated(
        self, session: Session, identity: Identity, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> None:
        registry = self.registry
        problem: str | None = None
        if registry.revocation is None or identity.domain not in registry.federated_domains or len(chain) < 2:
            problem = f"users of {identity.domain} are not accepted here"
        else:
            try:
                await registry.revocation.check(identity.domain, certificate, chain[1])
            except pki_errors.PKIError as error:
                problem = errors.from_pki(error).message
        if problem is not None:
            log.warn("Refused client certificate of {user} from {host}: {problem}", user=str(identity), host=session.peer_host, problem=problem)
            session.reject(problem)
            rejected = errors.CertificateRejected.name
            registry.events.login_done(LoginDone("federated", str(identity), rejected, session.peer_host, problem))
            return
        not_after = int(certificate.not_valid_after_utc.timestamp())
        session.log_in_federated(identity, not_after, registry.sessions.generation)
        log.info("{user} (a federated domain) logged in from {host}", user=str(identity), host=session.peer_host)
        registry.events.login_done(LoginDone("federated", str(identity), OK, session.peer_host))

    # -- passwords --------------------------------------------------------------------

    async def password_login(self, session: Session, username: str, password: str) -> Account:
        """Log ``session`` in as the local user ``username`` with ``password`` (UPA),
        within the failure limits per user and per address; return the account.

        The outcome, a refusal included, is told to the registry's listeners."""
        user = f"{username}@{self.registry.domain}"
        try:
            account = await self._password_login(session, username, password)
        except Exception as error:
            reason = error.message if isinstance(error, errors.IRPError) else ""
            self.registry.events.login_done(LoginDone("password", user, outcome_of(error), session.peer_host, reason))
            raise
        self.registry.events.login_done(LoginDone("password", user, OK, session.peer_host))
        return account

    async def _password_login(self, session: Session, username: str, password: str) -> Account:
        registry = self.registry
        user_key = ("user", username)
        address_key = ("address", limited_address(session.peer_host))
        try:
            self.address_limiter.check(address_key)
            self.user_limiter.check(user_key)
        except LimitExceeded as limited:
            # A tarpit: the refusal comes late, and the connection's later requests wait
            # behind it, so refused guesses cannot keep the server busy.
            await deferLater(registry.clock, registry.config.login_refusal_delay)
            raise errors.RateLimited(limited.message) from None
        self.address_limiter.begin(address_key)
        self.user_limiter.begin(user_key)
        try:
            account = await registry.store.get_account(username)
            stored_hash = account.password_hash if account is not None else None
            valid = await registry.hashes.run(registry.hasher.verify, password, stored_hash)
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
        if account.password_hash is not None and registry.hasher.needs_rehash(account.password_hash):
            # The same password with the current parameters: not a new password (the
            # version stays, so no session of the user ends).
            try:
                new_hash = await registry.hashes.run(registry.hasher.hash, password)
            except errors.Unavailable:
                pass  # the upgrade waits for the next login; this one stands
            else:
                await registry.store.rehash_password(username, account.password_hash, new_hash)
        # The password login replaces whatever the connection was before: a refused
        # client certificate, a federated user's session or another login.
        session.log_in_password(Identity(username, registry.domain), account.password_version, registry.sessions.generation)
        log.info("{user} logged in with a password from {host}", user=str(session.identity), host=session.peer_host)
        return account


def load_presented(
    leaf_der: bytes, intermediates: Callable[[], Sequence[bytes]]
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The client's certificate and the others it presented, or CertificateInvalid."""
    try:
        return load_certificate(leaf_der), [load_certificate(der) for der in intermediates()]
    except UnusableCertificate as unusable:
        raise pki_errors.CertificateInvalid("malformed", str(unusable)) from None
