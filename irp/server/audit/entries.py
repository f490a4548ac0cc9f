"""Which of the registry's events the audit trail records, and what their entries say
(sans I/O: an event in, an :class:`~irp.wire.audit_chain.EntryDraft` or None out).

An entry's ``details`` hold only the named, non-secret fields listed in
:data:`REQUEST_DETAILS` (attributes of the request) and the serial numbers the results
name; never a password, passphrase, PKCS#12 file, key or certificate request (those are
child elements, which are never read here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from common.wire.xmlcodec import Element
from irp.server.events import LoginDone, RequestDone
from irp.wire.audit_chain import REGISTRY_ACTOR, EntryDraft, make_draft

#: The operations recorded, each with the request attributes its entry keeps.
REQUEST_DETAILS: Final[dict[str, tuple[str, ...]]] = {
    "create-user": ("admin", "password-login"),
    "update-user": (),
    "delete-user": (),
    "set-admin": ("enabled",),
    "set-password": (),
    "set-password-login": ("enabled",),
    "request-certificate": (),
    "upload-certificate": (),
    "renew": ("serial",),
    "revoke": ("serial", "reason"),
    "generate-key": ("key-type", "label"),
    "get-pkcs12": ("id",),
    "upload-pkcs12": ("label",),
    "sixid-allow": ("note",),
    "sixid-disallow": (),
    "audit-list": ("event", "actor", "subject", "since", "until", "after-id", "limit"),
    "audit-checkpoints": ("after-id", "limit"),
}

#: Operations whose subject is a user (the ``user`` attribute, else the caller).
_USER_SUBJECT: Final = frozenset(
    {"create-user", "update-user", "delete-user", "set-admin", "set-password", "set-password-login",
     "request-certificate", "upload-certificate", "generate-key", "get-pkcs12", "upload-pkcs12"}
)

#: The events of the registry itself.
REGISTRY_START: Final = "registry-start"
REGISTRY_STOP: Final = "registry-stop"


def microseconds(seconds: float) -> int:
    """A POSIX time in seconds as the trail's integer microseconds."""
    return round(seconds * 1_000_000)


def _user(name: str, domain: str) -> str:
    return name if "@" in name else f"{name}@{domain}"


def _issued_serials(results: Sequence[Element]) -> list[str]:
    return [str(element.get("serial")) for element in results if element.tag == "certificate" and element.get("serial")]


def request_draft(event: RequestDone, at: int, domain: str) -> EntryDraft | None:
    """The entry of a request, or None when the trail does not record the operation."""
    names = REQUEST_DETAILS.get(event.operation)
    if names is None:
        return None
    element = event.element
    actor = str(event.session.identity) if event.session.identity is not None else ""
    details: dict[str, Any] = {name: element.get(name) for name in names if element.get(name) is not None}
    results = list(event.results)
    serials = _issued_serials(results)
    subject = ""
    if event.operation in _USER_SUBJECT:
        target = element.get("user")
        subject = _user(target, domain) if target is not None else actor
    elif event.operation in ("sixid-allow", "sixid-disallow"):
        subject = element.get("sixid") or ""
    elif event.operation in ("revoke", "renew"):
        owners = [str(result.get("user")) for result in results if result.tag == "certificate" and result.get("user")]
        subject = owners[0] if owners else ""
    if event.operation == "revoke":
        serials = []
    if event.operation == "update-user":
        details["fields"] = sorted(
            {name for name in ("display-name", "email") if element.get(name) is not None}
            | ({"attributes"} if element.find("attributes") is not None else set())
        )
    if event.operation == "delete-user":
        deleted = [result for result in results if result.tag == "deleted"]
        if deleted and deleted[0].get("revoked") is not None:
            details["revoked"] = deleted[0].get("revoked")
    if serials:
        details["issued"] = serials[0]
    return make_draft(at, event.operation, event.outcome, actor, subject, event.session.peer_host, details)


def login_draft(event: LoginDone, at: int) -> EntryDraft:
    """The entry of a login decided (by certificate, password or federation)."""
    details: dict[str, Any] = {"method": event.method}
    if event.reason:
        details["reason"] = event.reason
    actor = event.user if event.outcome == "ok" else ""
    return make_draft(at, "login", event.outcome, actor, event.user, event.address, details)


def registry_draft(event: str, at: int, details: dict[str, Any], subject: str = "") -> EntryDraft:
    """An entry of the registry itself (``registry-start``, ``registry-stop``, the first
    administrator's ``create-user``)."""
    return make_draft(at, event, "ok", REGISTRY_ACTOR, subject, "", details)
