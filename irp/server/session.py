"""Who is on the other end of one registry connection, and the rule that keeps it true.

A :class:`Session` is in one of the :class:`SessionState` states; the login methods of
:mod:`irp.server.auth` move it between them. :class:`SessionRules` holds the security
generation and the revalidation rule: a session whose certificate has expired ends, and
after any revocation or account change (anywhere: see :meth:`SessionRules.security_changed`)
each session is checked again against the store before its next request that needs a login.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from common.identity import Identity
from irp import errors
from irp.server.store import RegistryStore


class SessionState(enum.Enum):
    """The states of a session."""

    #: Not logged in (a new connection without a client certificate, or after logout).
    ANONYMOUS = "anonymous"
    #: Logged in with a client certificate this registry issued.
    CERTIFICATE = "certificate"
    #: Logged in with a user name and password.
    PASSWORD = "password"
    #: A user of a federated domain, by their certificate: look-ups only.
    FEDERATED = "federated"
    #: The client certificate presented was refused: requests that need a login are
    #: refused with the reason (public ones still work); a password login leaves it.
    REJECTED = "rejected"


#: The login method the wire reports for each state (``<session method=...>``).
_METHODS = {
    SessionState.ANONYMOUS: "none",
    SessionState.CERTIFICATE: "certificate",
    SessionState.PASSWORD: "password",
    SessionState.FEDERATED: "certificate",
    SessionState.REJECTED: "none",
}


@dataclass(slots=True)
class Session:
    """Who is on the other end of one connection (slotted: one per held connection)."""

    peer_host: str
    state: SessionState = SessionState.ANONYMOUS
    #: Who is logged in (set in the logged-in states only).
    identity: Identity | None = None
    #: The serial of the login certificate (issued here) of a CERTIFICATE session.
    certificate_serial: int | None = None
    #: When the login certificate expires (POSIX seconds): the session ends then.
    certificate_not_after: int | None = None
    #: The password version a password login was checked against: when it changes (the
    #: password was changed or reset, not merely rehashed) the session ends.
    password_version: int | None = None
    #: The security generation the session was last validated at.
    generation: int = 0
    #: Why the client certificate was refused (REJECTED). A message, not an exception:
    #: one exception object raised again for every request would keep every traceback
    #: it was ever raised through.
    rejection: str | None = None

    def is_anonymous(self) -> bool:
        """Whether nobody is logged in (not even a refused certificate's owner)."""
        return self.identity is None

    @property
    def logged_in(self) -> bool:
        """Whether someone is logged in (local or federated)."""
        return self.identity is not None and self.state in (
            SessionState.CERTIFICATE,
            SessionState.PASSWORD,
            SessionState.FEDERATED,
        )

    @property
    def method(self) -> str:
        """The login method as the wire names it: none, certificate or password."""
        return _METHODS[self.state]

    @property
    def federated(self) -> bool:
        """True for a user of another, federated domain (read-only directory access)."""
        return self.state is SessionState.FEDERATED

    @property
    def rejected(self) -> str | None:
        """Why the presented client certificate was refused, when it was."""
        return self.rejection if self.state is SessionState.REJECTED else None

    @property
    def username(self) -> str:
        """The logged-in local user's name (NotAuthenticated when anonymous, Forbidden for
        a user of another domain)."""
        if self.identity is None or not self.logged_in:
            raise errors.NotAuthenticated()
        if self.federated:
            raise errors.Forbidden(f"{self.identity} is not a user of this registry: only look-ups are allowed")
        return self.identity.username

    def _enter(self, state: SessionState, identity: Identity | None, generation: int) -> None:
        self.state = state
        self.identity = identity
        self.certificate_serial = None
        self.certificate_not_after = None
        self.password_version = None
        self.rejection = None
        self.generation = generation

    def log_in_certificate(self, identity: Identity, serial: int, not_after: int, generation: int) -> None:
        """Logged in with the certificate ``serial`` this registry issued."""
        self._enter(SessionState.CERTIFICATE, identity, generation)
        self.certificate_serial = serial
        self.certificate_not_after = not_after

    def log_in_federated(self, identity: Identity, not_after: int, generation: int) -> None:
        """Logged in as a user of a federated domain, by a certificate valid until ``not_after``."""
        self._enter(SessionState.FEDERATED, identity, generation)
        self.certificate_not_after = not_after

    def log_in_password(self, identity: Identity, password_version: int, generation: int) -> None:
        """Logged in with a password (whatever the session was before)."""
        self._enter(SessionState.PASSWORD, identity, generation)
        self.password_version = password_version

    def reject(self, problem: str) -> None:
        """The presented client certificate was refused, for ``problem``."""
        self._enter(SessionState.REJECTED, None, self.generation)
        self.rejection = problem

    def end(self) -> None:
        """End the login: the session is anonymous again (a refused certificate stays
        refused: nobody was logged in)."""
        if self.state is SessionState.REJECTED:
            return
        self._enter(SessionState.ANONYMOUS, None, self.generation)


class StoreAndClock(Protocol):
    """Where the rules read the store and the time (the registry: read at each use, so a
    store replaced on it is the one used)."""

    store: RegistryStore
    clock: IReactorTime


class SessionRules:
    """The security generation and the revalidation rule of every session."""

    def __init__(self, parts: StoreAndClock) -> None:
        self.parts = parts
        #: Grows whenever a revocation or account change may end existing sessions.
        self.generation = 0

    def security_changed(self) -> None:
        """Make every session re-check itself before its next request."""
        self.generation += 1

    def is_stale(self, session: Session) -> bool:
        """Whether security changes happened since ``session`` was last validated."""
        return session.generation != self.generation

    def check_certificate_current(self, session: Session) -> None:
        """End a certificate session whose certificate has expired."""
        if session.certificate_not_after is not None and self.parts.clock.seconds() > session.certificate_not_after:
            session.end()
            raise errors.CertificateRejected("your certificate has expired: connect with a current one")

    async def check(self, session: Session) -> None:
        """Before a request that needs a login: end a certificate session whose certificate
        has expired, and re-validate a session after security changes."""
        self.check_certificate_current(session)
        if self.is_stale(session):
            await self.revalidate(session)

    async def revalidate(self, session: Session) -> None:
        """Re-check a session after revocations or account changes anywhere."""
        generation = self.generation
        if session.federated:
            # A user of another domain: nothing of theirs is stored here; their own
            # registry's CRL is checked when fetched again (see common.pki.revocation).
            session.generation = generation
            return
        account = await self.parts.store.get_account(session.username)
        failure: errors.IRPError | None = None
        if account is None:
            failure = errors.NotAuthenticated("your account no longer exists")
        elif session.state is SessionState.CERTIFICATE and session.certificate_serial is not None:
            info = await self.parts.store.get_certificate(session.certificate_serial)
            if info is None or info.status(self.parts.clock.seconds()) != "good":
                failure = errors.CertificateRejected("your certificate has been revoked or has expired")
        elif session.state is SessionState.PASSWORD and not account.password_login:
            failure = errors.PasswordLoginDisabled()
        elif session.state is SessionState.PASSWORD and account.password_version != session.password_version:
            failure = errors.NotAuthenticated("your password was changed: log in again")
        if failure is not None:
            session.end()
            raise failure
        session.generation = generation
