"""Request dispatch for the IRP registry: the operation table, who may call what, the
checks of an operation element's fields, and running a request.

:data:`OPERATIONS` declares every operation: its access level (see :data:`ACCESS_LEVELS`,
checked in one place, :func:`check_access`) and its fields. :class:`Dispatcher` runs a
request: the field checks, then the access check, then (after security changes) the
session's revalidation, then the operation's handler (from :mod:`irp.server.ops`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from common.wire.xmlcodec import Element
from irp import errors
from irp.server.events import OK, RegistryEvents, RequestDone, outcome_of
from irp.server.session import Session, SessionRules
from irp.wire.fields import check_fields
from irp.wire.messages import Request, Result

Handler = Callable[[Session, Element], Coroutine[Any, Any, list[Result]]]
#: Answers a request at once when it can (a cached answer), else None: the handler runs.
ImmediateHandler = Callable[[Session, Element], "list[Result] | None"]

#: Who may call an operation: anyone (even before login), any logged-in user including
#: users of federated domains, or only logged-in users of this domain.
ACCESS_LEVELS = ("anyone", "user", "local")


@dataclass(frozen=True)
class OperationSpec:
    """What an operation takes and who may call it (see :class:`Operation`)."""

    access: str
    attributes: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    #: The name of the handlers' method that may answer at once (see Operation.immediate).
    immediate: str | None = None


_ = OperationSpec
#: Every operation, in the order ``capabilities`` lists them. The handler of ``a-b`` is
#: the method ``a_b`` of one of the handler groups in :mod:`irp.server.ops`.
OPERATIONS: dict[str, OperationSpec] = {
    "capabilities": _("anyone"),
    "login": _("anyone", ("user",), ("password",), ("user", "password")),
    "logout": _("anyone"),
    "whoami": _("anyone"),
    "get-user": _("user", ("user",), required=("user",)),
    "update-user": _("local", ("user", "display-name", "email"), ("attribute", "attributes")),
    "list-users": _("local", ("offset", "limit", "prefix")),
    "register-address": _("local", ("presence", "ttl"), ("endpoint",)),
    "lookup": _("user", ("user",), required=("user",), immediate="cached_lookup"),
    "request-certificate": _("local", ("user",), ("csr",), ("csr",)),
    "generate-key": _("local", ("user", "key-type", "label"), ("passphrase",), ("passphrase",)),
    "list-certificates": _("local", ("user",)),
    "get-certificate": _("user", ("serial", "fingerprint"), one_of=("serial", "fingerprint")),
    "user-certificates": _("user", ("user",), required=("user",)),
    "upload-certificate": _("local", (), ("pem",), ("pem",)),
    "list-pkcs12": _("local", ("user",)),
    "get-pkcs12": _("local", ("id",), required=("id",)),
    "upload-pkcs12": _("local", ("label",), ("data",), ("data",)),
    "renew": _("local", ("serial",), ("csr",), ("serial",)),
    "revoke": _("local", ("serial", "reason"), required=("serial",)),
    "get-crl": _("anyone", ("issuer",)),
    "certificate-status": _("anyone", ("serial",), ("pem",), one_of=("serial", "pem")),
    "ca-chain": _("anyone"),
    "create-user": _("local", ("user", "display-name", "email", "admin", "password-login"), ("password",), ("user",)),
    "set-password": _("local", ("user",), ("password", "current-password"), ("password",)),
    "set-password-login": _("local", ("user", "enabled"), required=("enabled",)),
    "set-admin": _("local", ("user", "enabled"), required=("user", "enabled")),
    "delete-user": _("local", ("user",), required=("user",)),
    "sixid-allow": _("local", ("sixid", "note"), required=("sixid",)),
    "sixid-disallow": _("local", ("sixid",), required=("sixid",)),
    "sixid-list": _("local", ("offset", "limit")),
    "audit-list": _("local", ("event", "actor", "subject", "since", "until", "after-id", "limit")),
    "audit-checkpoints": _("local", ("after-id", "limit")),
}
del _


@dataclass(frozen=True)
class Operation:
    """One operation: its handler, who may call it, and the fields it takes.

    ``required`` names the attributes and child elements that must be present;
    ``one_of`` names fields of which exactly one must be. Both are checked, with the
    unknown fields, before the caller's login (see :func:`check_operation_fields`).
    """

    handler: Handler
    access: str
    attributes: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    #: Tried before ``handler``, without a coroutine or a Deferred (see Dispatcher.handle_now).
    immediate: ImmediateHandler | None = None

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"unknown access level {self.access!r}")

    @property
    def needs_login(self) -> bool:
        """Whether an anonymous caller is refused."""
        return self.access != "anyone"


def bind_operations(groups: Sequence[object]) -> dict[str, Operation]:
    """The operations of :data:`OPERATIONS` with their handlers: for ``a-b``, the method
    ``a_b`` of the one group in ``groups`` that has it."""
    operations: dict[str, Operation] = {}
    for name, spec in OPERATIONS.items():
        method = name.replace("-", "_")
        [group] = [group for group in groups if callable(getattr(group, method, None))]
        operations[name] = Operation(
            getattr(group, method),
            spec.access,
            spec.attributes,
            spec.children,
            spec.required,
            spec.one_of,
            None if spec.immediate is None else getattr(group, spec.immediate),
        )
    return operations


def check_access(session: Session, access: str, domain: str) -> None:
    """Refuse ``session`` an operation of level ``access`` (see :data:`ACCESS_LEVELS`)
    when it may not call it."""
    if access == "anyone":
        return
    if session.rejected is not None:
        raise errors.CertificateRejected(session.rejected)
    if not session.logged_in:
        raise errors.NotAuthenticated()
    if access == "local" and session.federated:
        raise errors.Forbidden(f"users of other domains may only look users of {domain} up")


class Dispatcher:
    """Runs requests against the operation table, for the sessions of one registry."""

    def __init__(
        self,
        operations: Mapping[str, Operation],
        sessions: SessionRules,
        domain: str,
        events: RegistryEvents | None = None,
    ) -> None:
        #: The table itself (not a copy): what is added to it is dispatched.
        self.operations = operations
        self.sessions = sessions
        self.domain = domain
        #: Told of every request run (metrics, the audit trail).
        self.events = events if events is not None else RegistryEvents()

    def handle(self, session: Session, request: Request) -> Deferred[list[Result]]:
        """Run one request for ``session``; fire with the result elements."""
        result = self.handle_now(session, request)
        return result if isinstance(result, Deferred) else succeed(result)

    def handle_now(self, session: Session, request: Request) -> list[Result] | Deferred[list[Result]]:
        """Run one request for ``session``: the result elements at once when the operation
        can answer without waiting (a cached look-up answer: no coroutine, no Deferred),
        else a Deferred that fires with them. Every refusal goes through the Deferred.

        The listeners of :attr:`events` are told of the outcome; when one of them asks,
        the answer waits for it (a Deferred then, even for a cached answer)."""
        if not self.events.listeners:
            return self._handle_now(session, request)
        started = perf_counter()
        result = self._handle_now(session, request)
        if isinstance(result, Deferred):
            return result.addBoth(self._reported, session, request, started)
        held = self._report(session, request, OK, started, result)
        return result if held is None else held.addCallback(lambda _: result)

    def _reported(
        self, outcome: list[Result] | Failure, session: Session, request: Request, started: float
    ) -> list[Result] | Failure | Deferred[list[Result]]:
        if isinstance(outcome, Failure):
            held = self._report(session, request, outcome_of(outcome), started, ())
        else:
            held = self._report(session, request, OK, started, outcome)
        if held is None:
            return outcome
        return held.addCallback(lambda _: outcome)

    def _report(
        self, session: Session, request: Request, outcome: str, started: float, results: Sequence[Result]
    ) -> Deferred[None] | None:
        event = RequestDone(request.operation, session, request.element, outcome, perf_counter() - started, results)
        return self.events.request_done(event)

    def _handle_now(self, session: Session, request: Request) -> list[Result] | Deferred[list[Result]]:
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
            await self.sessions.revalidate(session)
        return await operation.handler(session, request.element)

    def _check_request(self, session: Session, request: Request, operation: Operation) -> bool:
        """Check the request's fields and the caller's right to call ``operation``; raise
        the refusal, or return whether the session must be re-validated first (security
        changes happened since it was last checked)."""
        check_operation_fields(request.element, operation)
        if not operation.needs_login:
            return False
        check_access(session, operation.access, self.domain)
        self.sessions.check_certificate_current(session)
        return self.sessions.is_stale(session)


def check_operation_fields(element: Element, operation: Operation | OperationSpec) -> None:
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

_TEXT_ONLY: tuple[tuple[str, ...], tuple[str, ...], bool] = ((), (), True)

#: The fields of the elements inside operation elements: their attributes, their child
#: elements and whether they hold text. Checked, with the operation's own, before the login.
CHILD_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "password": _TEXT_ONLY,
    "current-password": _TEXT_ONLY,
    "csr": _TEXT_ONLY,
    "pem": _TEXT_ONLY,
    "data": _TEXT_ONLY,
    "passphrase": _TEXT_ONLY,
    "endpoint": (("address", "port"), (), False),
    "attributes": ((), ("attribute",), False),
    "attribute": (("name",), (), True),
}


#: The attributes the elements inside operation elements must have.
CHILD_REQUIRED: dict[str, tuple[str, ...]] = {"endpoint": ("address", "port"), "attribute": ("name",)}

#: The only child elements that may appear more than once in their parent.
REPEATABLE = frozenset({"endpoint", "attribute"})


def check_children(element: Element) -> None:
    """Check the fields of every element inside an operation element (see
    :data:`CHILD_FIELDS` and :data:`CHILD_REQUIRED`; the operation's own check let only
    known tags through), and that no child other than a :data:`REPEATABLE` one repeats."""
    seen: set[str] = set()
    for child in element:
        tag = child.tag
        if tag in seen and tag not in REPEATABLE:
            raise errors.BadRequest(f"<{element.tag}> has more than one <{tag}>")
        seen.add(tag)
        attributes, children, text = CHILD_FIELDS[tag]
        check_fields(child, attributes, children, text=text)
        check_present(child, CHILD_REQUIRED.get(tag, ()))
        check_children(child)


def check_present(element: Element, names: Sequence[str]) -> None:
    """Refuse ``element`` when one of ``names`` (attributes, or child elements where the
    name is not an attribute's) is absent."""
    for name in names:
        if element.get(name) is None and element.find(name) is None:
            kind = "element" if name in CHILD_FIELDS else "attribute"
            shown = f"<{name}>" if kind == "element" else repr(name)
            raise errors.BadRequest(f"<{element.tag}> needs a {shown} {kind}")
