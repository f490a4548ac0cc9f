"""What the registry tells its observers about each request and each login.

The metrics endpoint and the audit trail both watch the registry through one hook:
:class:`RegistryEvents`, a fan-out of :class:`RegistryListener` objects kept by the
registry (``Registry.events``). The dispatcher reports every request it ran
(:class:`RequestDone`: the operation, the caller, the outcome and how long it took) and the
authenticator every login decided (:class:`LoginDone`), whether by certificate at the
connection's start, by password, or for a user of a federated domain.

A listener may return a Deferred from :meth:`RegistryListener.request_done`: the request's
answer then waits for it (the audit trail records an administrator's action before the
administrator hears it was done). A listener that fails is logged and otherwise ignored: an
observer never changes an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.wire.xmlcodec import Element
from irp import errors
from irp.server.session import Session

log = Logger()

#: The outcome of a request or login that succeeded; any other outcome is a wire error
#: code (``bad-request``, ``login-failed``, ...).
OK = "ok"

#: How a login was decided (:attr:`LoginDone.method`).
LOGIN_METHODS = ("certificate", "password", "federated")


@dataclass(frozen=True, slots=True)
class RequestDone:
    """One request the dispatcher ran, answered or refused."""

    #: The operation's name as requested (an unknown one included).
    operation: str
    #: The caller's session: who (``session.identity``), from where (``session.peer_host``).
    session: Session
    #: The operation element as received (for the fields an observer records; secrets such
    #: as passwords are inside it: an observer must name the fields it keeps).
    element: Element
    #: :data:`OK` or the wire error code the caller gets.
    outcome: str
    #: Seconds from the dispatcher's start of the request to its outcome.
    seconds: float
    #: The result elements answered (empty when refused).
    results: Sequence[Element]


@dataclass(frozen=True, slots=True)
class LoginDone:
    """One login decided: a session logged in or refused."""

    #: One of :data:`LOGIN_METHODS`.
    method: str
    #: ``user@domain`` as identified or claimed (empty when the certificate names nobody).
    user: str
    #: :data:`OK`, or the wire error code of the refusal (``login-failed``,
    #: ``certificate-rejected``, ``rate-limited``, ``password-login-disabled``, ...).
    outcome: str
    #: The client's address.
    address: str
    #: Why a login was refused, for people (empty when it succeeded).
    reason: str = ""


class RegistryListener(Protocol):
    """An observer of the registry (see :class:`RegistryEvents`)."""

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        """A request was run; return a Deferred to hold its answer until it fires."""

    def login_done(self, event: LoginDone) -> None:
        """A login was decided."""


def outcome_of(failure: Failure | BaseException) -> str:
    """The wire error code a caller gets for this failure (``internal-error`` for any
    exception that is not an IRP error)."""
    error = failure.value if isinstance(failure, Failure) else failure
    return error.name if isinstance(error, errors.IRPError) else errors.InternalError.name


class RegistryEvents:
    """The registry's listeners, told of every request and login (in the order added)."""

    def __init__(self) -> None:
        self.listeners: list[RegistryListener] = []

    def add(self, listener: RegistryListener) -> None:
        """Tell ``listener`` of every request and login from now on."""
        self.listeners.append(listener)

    def remove(self, listener: RegistryListener) -> None:
        """Stop telling ``listener``."""
        self.listeners.remove(listener)

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        """Tell every listener; a Deferred when some listener asked the answer to wait
        (it never fails: a listener's failure is logged), else None."""
        waiting: list[Deferred[None]] = []
        for listener in self.listeners:
            try:
                held = listener.request_done(event)
            except Exception:  # noqa: BLE001 - an observer never changes an answer
                log.failure("An observer of the registry failed on {op}", op=event.operation)
                continue
            if held is not None:
                waiting.append(held.addErrback(self._listener_failed, event.operation))
        if not waiting:
            return None
        return gatherResults(waiting).addCallback(lambda _: None)

    def login_done(self, event: LoginDone) -> None:
        """Tell every listener (a listener's failure is logged)."""
        for listener in self.listeners:
            try:
                listener.login_done(event)
            except Exception:  # noqa: BLE001 - an observer never changes a login
                log.failure("An observer of the registry failed on a {method} login", method=event.method)

    @staticmethod
    def _listener_failed(failure: Failure, operation: str) -> None:
        log.failure("An observer of the registry failed on {op}", failure, op=operation)
