"""The registry checks a request's fields before the login (docs/irp.rst, Authorisation).

Unknown, missing and repeated attributes and child elements are ``bad-request`` whoever
asks, anonymous callers included, for every operation: one check, declared per operation
in the registry's operation table (issue 9, item 20). Each case goes over the wire of a
real :class:`~irp.server.protocol.RegistryServerProtocol` on a fake transport.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.wire.framing import encode_frame
from irp.server.dispatch import CHILD_REQUIRED
from irp.server.protocol import ConnectionLimits, RegistryServerFactory, RegistryServerProtocol
from test import pki
from test.irp.server.helpers import CLIENT_HOST, FakeTLSTransport, make_registry, request, responses

FINGERPRINT = "ab" * 32

#: Per operation, requests that lack a required field (or give both of two exclusive ones).
MISSING: dict[str, tuple[str, ...]] = {
    "login": ('<login><password>long enough password</password></login>', '<login user="alice"/>'),
    "get-user": ("<get-user/>",),
    "lookup": ("<lookup/>",),
    "user-certificates": ("<user-certificates/>",),
    "get-certificate": ("<get-certificate/>", f'<get-certificate serial="1a" fingerprint="{FINGERPRINT}"/>'),
    "get-pkcs12": ("<get-pkcs12/>",),
    "renew": ("<renew/>",),
    "revoke": ('<revoke reason="superseded"/>',),
    "create-user": ("<create-user><password>long enough password</password></create-user>",),
    "set-password": ("<set-password/>",),
    "set-password-login": ('<set-password-login user="bob"/>',),
    "set-admin": ('<set-admin enabled="true"/>', '<set-admin user="bob"/>'),
    "delete-user": ("<delete-user/>",),
    "sixid-allow": ("<sixid-allow/>", '<sixid-allow note="a device"/>'),
    "sixid-disallow": ("<sixid-disallow/>",),
    "request-certificate": ('<request-certificate user="bob"/>',),
    "generate-key": ('<generate-key key-type="p256"/>',),
    "upload-certificate": ("<upload-certificate/>",),
    "upload-pkcs12": ('<upload-pkcs12 label="x"/>',),
    "certificate-status": ("<certificate-status/>", '<certificate-status serial="1a"><pem>x</pem></certificate-status>'),
    "register-address": (
        '<register-address><endpoint port="4605"/></register-address>',
        '<register-address><endpoint address="192.0.2.1"/></register-address>',
    ),
    "update-user": ("<update-user><attributes><attribute>no name</attribute></attributes></update-user>",),
}

#: Requests that repeat a child element that may appear once.
REPEATED = (
    "<login user='a'><password>long enough password</password><password>again</password></login>",
    "<set-password><password>long enough password</password><password>again one</password></set-password>",
    "<update-user><attributes/><attributes/></update-user>",
    "<renew serial='1a'><csr>x</csr><csr>y</csr></renew>",
)

#: The same operations with their fields complete: anonymous callers are refused for the
#: login only after the fields passed.
COMPLETE: dict[str, str] = {
    "get-user": '<get-user user="bob"/>',
    "lookup": '<lookup user="bob"/>',
    "get-pkcs12": '<get-pkcs12 id="1"/>',
    "set-admin": '<set-admin user="bob" enabled="true"/>',
    "upload-certificate": "<upload-certificate><pem>x</pem></upload-certificate>",
}


class FieldsBeforeLoginTests(unittest.TestCase):
    """Missing, exclusive and repeated fields are bad-request before the access check."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = make_registry(self.clock)
        self.factory = RegistryServerFactory(self.registry, pki.trust_store(pki.make_ca()), self.clock, ConnectionLimits())

    def answer(self, operation: str) -> tuple[int, str]:
        """The (id, error name or "ok") an anonymous caller gets for ``operation``."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", CLIENT_HOST, 40000))
        assert isinstance(protocol, RegistryServerProtocol)
        transport = FakeTLSTransport(CLIENT_HOST, None)
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        protocol.dataReceived(encode_frame(request(5, operation)))
        [(request_id, name, _detail)] = responses(transport)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        return request_id, name

    def test_every_operation_with_required_fields_is_in_the_table(self) -> None:
        """The table covers each operation that declares required or exclusive fields,
        its own or those of the elements it holds."""
        declared = {
            name
            for name, operation in self.registry.operations.items()
            if operation.required or operation.one_of or set(operation.children) & set(CHILD_REQUIRED)
        }
        self.assertEqual(declared, set(MISSING))

    def test_missing_fields_are_bad_request_before_the_login(self) -> None:
        for operation, cases in MISSING.items():
            for case in cases:
                with self.subTest(operation=operation, request=case):
                    self.assertEqual(self.answer(case), (5, "bad-request"), case)

    def test_repeated_fields_are_bad_request_before_the_login(self) -> None:
        for case in REPEATED:
            with self.subTest(request=case):
                self.assertEqual(self.answer(case), (5, "bad-request"), case)

    def test_complete_requests_reach_the_login_check(self) -> None:
        for operation, case in COMPLETE.items():
            with self.subTest(operation=operation):
                self.assertEqual(self.answer(case), (5, "not-authenticated"), case)
