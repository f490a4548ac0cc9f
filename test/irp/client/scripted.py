"""A registry scripted by hand for client tests: :class:`ClientTestCase` drives
:class:`irp.client.RegistryClientProtocol` over a :class:`StringTransport` with a fake clock,
answering its requests from a table (:class:`ScriptedRegistry`) so that answers can be wrong in
exactly one way.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.framing import FrameDecoder, encode_frame
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.client import RegistryClient, RegistryClientProtocol
from irp.server.ca import CertificateAuthority
from irp.wire.elements import pem_text
from irp.wire.messages import error_response, ok_response, parse_request
from irp.wire.records import (
    AddressRecord,
    Endpoint,
    RecordSigner,
    UserRecord,
)
from test import pki

DOMAIN = "example.org"
NOW = datetime.datetime.now(datetime.UTC)

Answer = Callable[[Element], "list[Element] | errors.IRPError"]


class Registry:
    """What a registry signs with: its CA and an Ed25519 record-signing key."""

    def __init__(self, ca: CertificateAuthority | None = None) -> None:
        self.ca = ca or pki.make_ca(DOMAIN)
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.signing_certificate = self.ca.issue_signing_certificate(self.key.public_key())
        self.signer = RecordSigner(self.key, self.signing_certificate)

    def chain(
        self,
        *,
        domain: str = DOMAIN,
        root: x509.Certificate | None = None,
        issuing: x509.Certificate | None = None,
        signing: x509.Certificate | None = None,
    ) -> Element:
        """A <ca-chain> answer, optionally with one part replaced."""
        root = root or self.ca.root_certificate
        element = make_element("ca-chain", {"domain": domain, "root-fingerprint": fingerprint(root)})
        for role, certificate in (
            ("root", root),
            ("issuing", issuing or self.ca.issuing_certificate),
            ("record-signing", signing or self.signing_certificate),
        ):
            sub_element(element, "ca", {"role": role}, pem_text(certificate))
        return element

    def addresses(self, user: str = "bob", **changes: Any) -> AddressRecord:
        record = AddressRecord(
            Identity(user, DOMAIN), "online", (Endpoint("2001:db8::2", 4605),), 2_000_000_000, 5, 1_900_000_000
        )
        return self.signer.sign(dataclasses.replace(record, **changes))

    def user(self, user: str = "bob") -> UserRecord:
        return self.signer.sign(UserRecord(Identity(user, DOMAIN), "Bob", "bob@example.org", (), 2, 1_900_000_000))


class ScriptedRegistry:
    """Answers the client's requests from a table of answers, as a server would."""

    def __init__(self, protocol: RegistryClientProtocol, transport: StringTransport, answers: dict[str, Answer]) -> None:
        self.protocol = protocol
        self.transport = transport
        self.answers = answers
        self.decoder = FrameDecoder(1 << 24)
        self.seen: list[str] = []

    def pump(self) -> None:
        """Answer every request written so far, and those the answers lead to."""
        while True:
            data = self.transport.value()
            self.transport.clear()
            frames = self.decoder.feed(data)
            if not frames:
                return
            for frame in frames:
                request = parse_request(frame)
                self.seen.append(request.operation)
                answer = self.answers[request.operation](request.element)
                if isinstance(answer, errors.IRPError):
                    payload = error_response(request.id, answer)
                else:
                    payload = ok_response(request.id, answer)
                self.protocol.dataReceived(encode_frame(payload))


class ClientTestCase(unittest.TestCase):
    """A client over a StringTransport with a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.registry = Registry()
        self.protocol = RegistryClientProtocol(self.clock, timeout=10.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.handshakeCompleted()
        self.client = RegistryClient(self.protocol, DOMAIN, [self.registry.ca.root_certificate], self.clock)

    def script(self, **answers: Answer) -> ScriptedRegistry:
        table: dict[str, Answer] = {"ca-chain": lambda element: [self.registry.chain()]}
        table.update({name.replace("_", "-"): answer for name, answer in answers.items()})
        return ScriptedRegistry(self.protocol, self.transport, table)

    def outcome(self, deferred: Deferred[Any], scripted: ScriptedRegistry) -> Any:
        """Answer the requests and return the result (or raise the failure)."""
        scripted.pump()
        results: list[Any] = []
        deferred.addBoth(results.append)
        self.assertEqual(len(results), 1, "the call did not finish")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def assertVerificationFails(self, deferred: Deferred[Any], scripted: ScriptedRegistry) -> errors.IRPError:
        error = self.assertRaises(errors.ServerVerificationFailed, self.outcome, deferred, scripted)
        return error  # type: ignore[no-any-return]
