"""Who may do what: every operation against every kind of caller, over real TLS.

:data:`TABLE` is the authorisation matrix: one row per operation (some operations have a
second row for a variant with different rules), one column per caller kind, each cell the
expected outcome: ``ok`` or the wire name of the error. One test method is generated per
row; it starts a registry, sets up every kind of caller on its own connection, acting on its
own objects (so that no cell disturbs another), sends the row's request once per kind and
compares the whole row at once. A refused request must also leave its target exactly as it
was.

The caller kinds:

``anonymous``    connected, not logged in; acts on a user's objects;
``password``     logged in with a password; acts on their own objects;
``certificate``  logged in with a client certificate; acts on their own objects;
``other``        logged in (certificate), acting on *another* user's objects;
``admin``        the administrator (password), acting on a user's objects;
``disabled``     logged in with a password, after which password login was disabled for
                 them; acts on their own objects;
``revoked``      connected with a certificate that has been revoked; acts on their own
                 objects (public operations and password login still work for them:
                 only what needs a login fails, with certificate-rejected).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.cli import make_csr
from irp.client import RegistryClient
from irp.server.ca import generate_key
from irp.wire.elements import pem_text
from test import pki
from test.helpers import DEFAULT_PASSWORD, EnrolledUser, RunningRegistry
from test.irp.server.helpers import make_registry

KINDS = ("anonymous", "password", "certificate", "other", "admin", "disabled", "revoked")

OK = "ok"
NA = "not-authenticated"
FB = "forbidden"
NF = "not-found"
LF = "login-failed"
IA = "invalid-argument"
BR = "bad-request"
PD = "password-login-disabled"
CR = "certificate-rejected"

NEW_PASSWORD = "a brand new password"


@dataclass(frozen=True)
class Context:
    """What one cell's request is about."""

    #: The logged-in caller (None for anonymous) and the password they know.
    caller: str | None
    caller_password: str
    #: The user whose objects the request acts on, and those objects.
    target: str
    serial: int
    pkcs12_id: int
    domain: str
    fingerprint: str

    def external_pem(self) -> str:
        """A certificate from another CA naming the target (for upload-certificate)."""
        return _external_pem(f"{self.target}@{self.domain}")


@functools.cache
def _external_pem(identity: str) -> str:
    partner = pki.make_ca("partner.example")
    certificate, _ = pki.build_certificate(
        partner.issuing_certificate,
        partner.issuing_key,
        subject=x509.Name([]),
        san=[x509.UniformResourceIdentifier(f"irp:{identity}")],
    )
    return pem_text(certificate)


def op(tag: str, attributes: dict[str, str] | None = None, children: tuple[tuple[str, str], ...] = ()) -> Element:
    element = make_element(tag, attributes)
    for child, text in children:
        sub_element(element, child, None, text)
    return element


def _csr() -> str:
    return make_csr(generate_key("p256")).decode("ascii")


@functools.cache
def _pkcs12() -> str:
    credentials = pki.issue_user(pki.make_ca("partner.example"), "someone")
    data = pkcs12.serialize_key_and_certificates(
        b"x", credentials.key, credentials.certificate, None, serialization.BestAvailableEncryption(b"passphrase")
    )
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Row:
    """One operation (or variant): its request and the expected outcome per caller kind."""

    name: str
    request: Callable[[Context], Element]
    expected: tuple[str, ...]
    #: Whether an allowed request changes the target's stored state.
    changes: bool = False

    def __post_init__(self) -> None:
        assert len(self.expected) == len(KINDS), self.name


#                                                          anonymous password certificate other admin disabled revoked
TABLE: list[Row] = [
    Row("capabilities", lambda c: op("capabilities"), (OK, OK, OK, OK, OK, OK, OK)),
    Row("login", lambda c: op("login", {"user": c.target}, (("password", c.caller_password),)), (OK, OK, OK, LF, LF, PD, OK)),
    Row("logout", lambda c: op("logout"), (OK, OK, OK, OK, OK, OK, OK)),
    Row("whoami", lambda c: op("whoami"), (OK, OK, OK, OK, OK, PD, CR)),
    Row("get-user", lambda c: op("get-user", {"user": c.target}), (NA, OK, OK, OK, OK, PD, CR)),
    Row("update-user", lambda c: op("update-user", {"user": c.target, "display-name": "Changed"}), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("list-users", lambda c: op("list-users"), (NA, OK, OK, OK, OK, PD, CR)),
    Row("register-address", lambda c: op("register-address", None, ()), (NA, OK, OK, OK, OK, PD, CR)),
    # There is no way to name another user: the attribute does not exist.
    Row("register-address-for", lambda c: op("register-address", {"user": c.target}), (BR, BR, BR, BR, BR, BR, BR)),
    Row("lookup", lambda c: op("lookup", {"user": c.target}), (NA, OK, OK, OK, OK, PD, CR)),
    Row("request-certificate", lambda c: op("request-certificate", {"user": c.target}, (("csr", _csr()),)), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("generate-key", lambda c: op("generate-key", {"user": c.target, "key-type": "p256"}, (("passphrase", "pkcs12 passphrase"),)), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("list-certificates", lambda c: op("list-certificates", {"user": c.target}), (NA, OK, OK, FB, OK, PD, CR)),
    Row("get-certificate", lambda c: op("get-certificate", {"serial": format(c.serial, "x")}), (NA, OK, OK, OK, OK, PD, CR)),
    Row("get-certificate-by-fingerprint", lambda c: op("get-certificate", {"fingerprint": c.fingerprint}), (NA, OK, OK, OK, OK, PD, CR)),
    Row("user-certificates", lambda c: op("user-certificates", {"user": c.target}), (NA, OK, OK, OK, OK, PD, CR)),
    # Uploads are always for oneself: a certificate naming someone else is refused.
    Row("upload-certificate", lambda c: op("upload-certificate", None, (("pem", c.external_pem()),)), (NA, OK, OK, IA, IA, PD, CR), changes=True),
    Row("list-pkcs12", lambda c: op("list-pkcs12", {"user": c.target}), (NA, OK, OK, FB, OK, PD, CR)),
    # Other users' files are not-found, not forbidden: their existence is not revealed.
    Row("get-pkcs12", lambda c: op("get-pkcs12", {"id": str(c.pkcs12_id)}), (NA, OK, OK, NF, OK, PD, CR)),
    Row("upload-pkcs12", lambda c: op("upload-pkcs12", {"label": "escrow"}, (("data", _pkcs12()),)), (NA, OK, OK, OK, OK, PD, CR)),
    Row("renew", lambda c: op("renew", {"serial": format(c.serial, "x")}), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("revoke", lambda c: op("revoke", {"serial": format(c.serial, "x"), "reason": "key-compromise"}), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("get-crl", lambda c: op("get-crl"), (OK, OK, OK, OK, OK, OK, OK)),
    Row("certificate-status", lambda c: op("certificate-status", {"serial": format(c.serial, "x")}), (OK, OK, OK, OK, OK, OK, OK)),
    Row("ca-chain", lambda c: op("ca-chain"), (OK, OK, OK, OK, OK, OK, OK)),
    Row("create-user", lambda c: op("create-user", {"user": f"new-{c.target}"}, (("password", NEW_PASSWORD),)), (NA, FB, FB, FB, OK, PD, CR)),
    Row("set-password", lambda c: op("set-password", {"user": c.target}, (("password", NEW_PASSWORD), ("current-password", c.caller_password))), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    Row("disable-password-login", lambda c: op("set-password-login", {"user": c.target, "enabled": "false"}), (NA, OK, OK, FB, OK, PD, CR), changes=True),
    # Only administrators may turn password login (back) on, even for themselves.
    Row("enable-password-login", lambda c: op("set-password-login", {"user": c.target, "enabled": "true"}), (NA, FB, FB, FB, OK, PD, CR)),
    Row("set-admin", lambda c: op("set-admin", {"user": c.target, "enabled": "true"}), (NA, FB, FB, FB, OK, PD, CR), changes=True),
    Row("delete-user", lambda c: op("delete-user", {"user": c.target}), (NA, FB, FB, FB, OK, PD, CR), changes=True),
    Row("sixid-allow", lambda c: op("sixid-allow", {"sixid": "a" * 32, "note": "a device"}), (NA, FB, FB, FB, OK, PD, CR)),
    Row("sixid-disallow", lambda c: op("sixid-disallow", {"sixid": "a" * 32}), (NA, FB, FB, FB, OK, PD, CR)),
    Row("sixid-list", lambda c: op("sixid-list"), (NA, FB, FB, FB, OK, PD, CR)),
    Row("audit-list", lambda c: op("audit-list", {"subject": c.target}), (NA, FB, FB, FB, OK, PD, CR)),
    Row("audit-checkpoints", lambda c: op("audit-checkpoints"), (NA, FB, FB, FB, OK, PD, CR)),
]


def password_of(name: str) -> str:
    """Every user has their own password (so knowing one's own opens nothing else)."""
    return f"the password of {name}"


@dataclass
class Subject:
    """A user with a certificate and a PKCS#12 file: the objects a cell acts on."""

    name: str
    certificate: EnrolledUser
    pkcs12_id: int

    def context(self, domain: str, caller: str | None, caller_password: str) -> Context:
        """The context of a request by ``caller`` about this user's objects."""
        return Context(
            caller, caller_password, self.name, self.certificate.serial, self.pkcs12_id, domain,
            fingerprint(self.certificate.certificate),
        )


class AuthorisationTests(unittest.TestCase):
    """The matrix; test methods are generated from TABLE below."""

    async def subject(self, registry: RunningRegistry, name: str) -> Subject:
        await registry.add_user(name, password_of(name))
        enrolled = await registry.issue(name, password_of(name))
        info = await registry.store.add_pkcs12(name, "laptop", "uploaded", base64.b64decode(_pkcs12()), None)
        return Subject(name, enrolled, info.id)

    async def state(self, registry: RunningRegistry, name: str) -> tuple[Any, ...]:
        """Everything stored about a user."""
        store = registry.store
        return (
            await store.get_account(name),
            await store.get_addresses(name),
            await store.list_certificates(name),
            await store.list_pkcs12(name),
        )

    async def caller(self, registry: RunningRegistry, kind: str) -> tuple[RegistryClient, Context]:
        """A connection for ``kind`` and the context of its request."""
        domain = registry.domain
        if kind == "anonymous":
            # Someone who may know the user's password but has not logged in.
            target = await self.subject(registry, "target")
            return await registry.client(), target.context(domain, None, password_of(target.name))
        if kind == "other":
            victim = await self.subject(registry, "victim")
            mallory = await self.subject(registry, "mallory")
            client = await registry.client(user=mallory.certificate)
            return client, victim.context(domain, mallory.name, password_of(mallory.name))
        if kind == "admin":
            target = await self.subject(registry, "managed")
            return await registry.admin(), target.context(domain, "admin", registry.admin_password)
        own = await self.subject(registry, kind)
        context = own.context(domain, own.name, password_of(own.name))
        if kind == "password":
            return await registry.client(own.name, password_of(own.name)), context
        if kind == "certificate":
            return await registry.client(user=own.certificate), context
        if kind == "disabled":
            client = await registry.client(own.name, password_of(own.name))
            admin = await registry.admin()
            await admin.set_password_login(own.name, False)
            await admin.close()
            return client, context
        assert kind == "revoked"
        await registry.store.revoke_certificate(own.certificate.serial, "key-compromise")
        return await registry.client(user=own.certificate), context

    async def check_row(self, row: Row) -> None:
        registry = await RunningRegistry(self).start()
        found: list[str] = []
        problems: list[str] = []
        for kind, expected in zip(KINDS, row.expected, strict=True):
            client, context = await self.caller(registry, kind)
            target = context.target
            before = await self.state(registry, target)
            try:
                await client.protocol.request(row.request(context))
            except errors.IRPError as error:
                outcome = error.name
            else:
                outcome = OK
            found.append(outcome)
            if outcome != expected:
                problems.append(f"{kind}: expected {expected}, got {outcome}")
            after = await self.state(registry, target)
            if outcome != OK and after != before:
                problems.append(f"{kind}: the refused request changed {target}'s stored data")
            if outcome == OK and row.changes and after == before:
                problems.append(f"{kind}: the allowed request changed nothing")
            await client.close()
        if problems:
            header = "  ".join(f"{kind}={outcome}" for kind, outcome in zip(KINDS, found, strict=True))
            self.fail(f"<{row.name}>: " + "; ".join(problems) + f"\n  row found: {header}")


def _make_test(row: Row) -> Callable[[AuthorisationTests], Any]:
    async def test(self: AuthorisationTests) -> None:
        await self.check_row(row)

    cells = ", ".join(f"{kind}: {expected}" for kind, expected in zip(KINDS, row.expected, strict=True))
    test.__doc__ = f"<{row.name}>: {cells}."
    return test


for _row in TABLE:
    setattr(AuthorisationTests, "test_" + _row.name.replace("-", "_"), _make_test(_row))
del _row


class TableTests(unittest.SynchronousTestCase):
    """The table itself."""

    def test_every_operation_has_a_row(self) -> None:
        """Every operation the registry offers is in the table, and nothing else."""
        dummy = Context("someone", DEFAULT_PASSWORD, "someone", 1, 1, "example.org", "0" * 64)
        covered = {row.request(dummy).tag for row in TABLE}
        self.assertEqual(covered, set(make_registry(Clock()).operations))
