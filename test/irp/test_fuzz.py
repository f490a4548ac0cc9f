# mypy: allow-untyped-calls
"""Property-based and fuzz tests of every IRP parser and state machine.

What is fuzzed, and the property each part must keep:

* :mod:`common.wire.xmlcodec`: any bytes give an element or :class:`~common.wire.xmlcodec.XMLRejected`,
  nothing else; what is accepted obeys the markup, depth and count rules.
* :mod:`common.wire.framing`: any byte stream, cut anywhere, gives frames or a ``FrameError``; the
  decoder never holds more than one header plus the cap.
* :mod:`irp.wire.messages` and :mod:`irp.wire.elements`: requests, responses and records, random or
  mutated from valid ones, give a value or an :class:`~irp.errors.IRPError`, nothing else.
* :meth:`irp.server.registry.Registry.handle` over a real SQLite store and a real CA: mutated
  requests (captured from real traffic) end in a result or an ``IRPError`` other than
  ``internal-error``; every answer is schema-valid; the store stays intact.
* :class:`irp.server.protocol.RegistryServerProtocol` over a fake transport with that registry:
  mutated request streams (bit flips, truncations, insertions, duplicated and reordered
  frames, length-prefix lies, any chunking) never raise, every byte written is a valid
  response, nothing is written or read after a close, and every connection ends in an
  error reply and a close once its timers run out.

Mutations start from valid messages: built with the codecs (the sync tests) or recorded
with :func:`test.irp.wire.observe.observing_messages` while the real client drives a real registry
through every operation (the async tests). They are byte mutations (bit flips, bytes,
truncation, deletion, duplication, insertion of hostile tokens: DTDs, entities, comments,
PIs, CDATA, BOMs, invalid UTF-8), XML-structure mutations (unknown, removed, duplicated,
renamed or deeply nested elements, unknown or huge attributes, hostile values, namespaces)
and ASN.1 mutations of embedded certificates (:class:`Asn1Node`).

Open defects: every defect found has a regression test of its own below, marked ``todo``
with the defect's description (see :data:`KNOWN_DEFECTS`). The campaign tests recognise an
open defect by its signature (exception type and the innermost function of ``irp/`` or
``sixchat/`` it escaped from) and stay green on it, so that they keep failing on any *new*
defect. When a defect is fixed, remove its ``todo`` and its entry in ``KNOWN_DEFECTS``.

Counts: each hypothesis test runs a bounded number of examples and each seeded loop a
bounded number of inputs, so the whole module runs in seconds. For a long campaign::

    IRP_FUZZ_EXAMPLES=100000 PYTHONPATH=. trial test.irp.test_fuzz

``IRP_FUZZ_EXAMPLES`` sets every hypothesis test's examples and every seeded loop's inputs;
``IRP_FUZZ_SEED`` changes the seeded loops' seed (default 1; failures print the seed and
the minimised input). Coverage-guided harnesses for atheris are in ``fuzz/``.
"""

from __future__ import annotations

import base64
import functools
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from common.errors import subclasses_of
from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.framing import HEADER_SIZE, FrameDecoder, FrameError, encode_frame
from common.wire.xmlcodec import (
    MAX_DEPTH,
    MAX_ELEMENTS,
    XMLRejected,
    make_element,
    parse_document,
    serialize,
    sub_element,
)
from irp import errors
from irp.server.protocol import ConnectionLimits, RegistryServerFactory, RegistryServerProtocol
from irp.server.registry import Registry, RegistryConfig
from irp.server.session import Session
from irp.wire.elements import (
    AccountView,
    addresses_element,
    certificate_element,
    parse_addresses,
    parse_certificate,
    parse_pkcs12,
    parse_user,
    pkcs12_element,
    user_element,
)
from irp.wire.messages import (
    MAX_REQUEST_ID,
    build_request,
    error_response,
    ok_response,
    parse_request,
    parse_response,
    parse_xml,
)
from irp.wire.records import (
    AddressRecord,
    CertificateInfo,
    Endpoint,
    Pkcs12Info,
    RecordVerifier,
    UserRecord,
)
from test import pki
from test.irp.fuzzing import (
    CRAFTED_DEFECTS,
    DOMAIN,
    KNOWN_DEFECTS,
    XML_TOKENS,
    Findings,
    code_signature,
    crafted_certificate,
    crafted_pem,
    harvest_values,
    known_defect,
    mutate,
    mutate_once,
    ops_strategy,
    random_ops,
    readable,
)
from test.irp.server.store.helpers import check_integrity
from test.irp.wire.observe import observing_messages
from test.irp.wire.schema import validate

# ---------------------------------------------------------------------------------------
# Campaign size

_ENV_EXAMPLES = int(os.environ.get("IRP_FUZZ_EXAMPLES", "0") or 0)
SEED = int(os.environ.get("IRP_FUZZ_SEED", "1") or 1)


def examples(default: int) -> int:
    """The number of examples or inputs: ``IRP_FUZZ_EXAMPLES`` if set, else ``default``."""
    return _ENV_EXAMPLES or default


def fuzz_settings(default: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis settings for a fuzz test of ``default`` examples in CI, and the
    falsifying example in the failure message (trial does not show exception notes)."""
    configured = settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        return readable(configured(test))

    return decorate


# ---------------------------------------------------------------------------------------
# Known open defects and exception signatures


# Fixed (regression tests below): IRP-5 unguarded public_key() of uploaded certificates;
# IRP-6/IRP-7 duplicated or garbled subjectAltName; IRP-8 encoding substring check;
# IRP-9 requests before a framing error dropped; IRP-10 InvalidVersion of certificates
# and CSRs; IRP-11 serials over 20 octets stored; IRP-12 empty RDNs; SIX-1 unknown key
# algorithm in a peer's leaf; SIX-2 authentic records before a bad one lost.


#: Open defects that are not exceptions: found by a property, recognised by a predicate.
SERIAL_OVER_20_OCTETS = re.compile(rb' (?:certificate-)?serial="(-[0-9a-f]*|[0-9a-f]{41,})"')
IRP_11 = (
    "defect IRP-11: irp/registry.py Registry.upload_certificate stores an external "
    "certificate whose serial number is longer than 20 octets (RFC 5280 4.1.2.2) or "
    "negative; every later answer listing it (upload-certificate, list-certificates, "
    "get-certificate...) then carries serial=\"<41+ hex digits>\" or \"-...\", which "
    "docs/schema/irp.rng (serial-out: <= 20 octets) refuses and irp.wire.fields.parse_serial "
    "refuses in the client: the user's certificate list can no longer be read. Should be: "
    "refuse such certificates with invalid-argument."
)


def todo(key: str) -> str:
    """The ``todo`` reason of the regression test of open defect ``key``."""
    [defect] = [defect for defect in KNOWN_DEFECTS if defect.key == key]
    return f"defect {key}: {defect.description}"


def check_findings(testcase: Any, findings: Findings, label: str) -> None:
    """Fail on new violations, naming the seed; report known-defect hits in the log."""
    print(f"{label}: {findings.inputs} inputs, outcomes {findings.outcomes}, known defects hit: {findings.known or 'none'}")
    if findings.new:
        shown = "\n\n".join(findings.new[:5])
        testcase.fail(
            f"{label}: {len(findings.new)} violations in {findings.inputs} inputs"
            f" (IRP_FUZZ_SEED={SEED}); first ones:\n\n{shown}"
        )


def only_errors(call: Callable[[], Any], allowed: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    """Run ``call``; return its result or the ``allowed`` exception it raised.

    Any other exception propagates unless it is an open defect, which is returned too (the
    campaign then stays green on it; its own regression test is marked ``todo``).
    """
    try:
        return call()
    except allowed as error:
        return error
    except Exception as error:
        if known_defect(error) is not None:
            return error
        raise


# ---------------------------------------------------------------------------------------
# Shrinking (the mutation engine is in test.irp.fuzzing, shared with test_fuzz_sixchat and fuzz/)


def shrink(data: bytes, fails: Callable[[bytes], bool], budget: int = 2000) -> bytes:
    """Greedy delta minimisation of ``data`` while ``fails`` holds (at most ``budget`` tries)."""
    size = max(len(data) // 2, 1)
    tries = 0
    while size >= 1 and tries < budget:
        index = 0
        shrunk = False
        while index < len(data) and tries < budget:
            candidate = data[:index] + data[index + size :]
            tries += 1
            if candidate != data and fails(candidate):
                data = candidate
                shrunk = True
            else:
                index += size
        if not shrunk:
            size //= 2
    return data


async def shrink_async(data: bytes, fails: Callable[[bytes], Awaitable[bool]], budget: int = 300) -> bytes:
    """:func:`shrink` for an asynchronous predicate."""
    size = max(len(data) // 2, 1)
    tries = 0
    while size >= 1 and tries < budget:
        index = 0
        shrunk = False
        while index < len(data) and tries < budget:
            candidate = data[:index] + data[index + size :]
            tries += 1
            if candidate != data and await fails(candidate):
                data = candidate
                shrunk = True
            else:
                index += size
        if not shrunk:
            size //= 2
    return data


# ---------------------------------------------------------------------------------------
# Valid messages built with the codecs


@functools.cache
def _certificate_material() -> tuple[str, str, str, CertificateInfo]:
    """A CSR PEM, a certificate PEM, its base64 DER and its CertificateInfo (test CA)."""
    from irp.cli import make_csr
    from irp.server.ca import generate_key

    ca = pki.make_ca(DOMAIN)
    issued = pki.issue_user(ca, "alice")
    certificate = issued.certificate
    der = certificate.public_bytes(Encoding.DER)
    info = CertificateInfo(
        serial=certificate.serial_number,
        fingerprint=fingerprint(certificate),
        username="alice",
        origin="issued",
        not_before=int(certificate.not_valid_before_utc.timestamp()),
        not_after=int(certificate.not_valid_after_utc.timestamp()),
        issued_at=int(certificate.not_valid_before_utc.timestamp()),
        revoked_at=None,
        revocation_reason=None,
        der=der,
    )
    csr = make_csr(generate_key("p256")).decode("ascii")
    pem = certificate.public_bytes(Encoding.PEM).decode("ascii")
    return csr, pem, base64.b64encode(der).decode("ascii"), info


def _operation(tag: str, attributes: dict[str, str] | None = None, *children: tuple[str, dict[str, str] | None, str | None]) -> Any:
    element = make_element(tag, attributes)
    for child_tag, child_attributes, text in children:
        sub_element(element, child_tag, child_attributes, text)
    return element


@functools.cache
def request_corpus() -> tuple[bytes, ...]:
    """One valid request of every IRP operation (see test_corpus_covers_every_operation)."""
    csr, pem, _der, info = _certificate_material()
    serial = format(info.serial, "x")
    pkcs12 = base64.b64encode(b"\x30\x0a\x02\x01\x03" + b"\x00" * 7).decode("ascii")
    update = make_element("update-user", {"display-name": "Alice", "email": "alice@example.org"})
    group = sub_element(update, "attributes")
    sub_element(group, "attribute", {"name": "team"}, "blue")
    operations = [
        _operation("capabilities"),
        _operation("login", {"user": "alice"}, ("password", None, "correct horse battery staple")),
        _operation("logout"),
        _operation("whoami"),
        _operation("get-user", {"user": "alice@example.org"}),
        update,
        _operation("list-users", {"offset": "0", "limit": "50", "prefix": "a"}),
        _operation(
            "register-address",
            {"presence": "online", "ttl": "300"},
            ("endpoint", {"address": "2001:db8::1", "port": "4605"}, None),
            ("endpoint", {"address": "192.0.2.1", "port": "4605"}, None),
        ),
        _operation("lookup", {"user": "bob"}),
        _operation("request-certificate", {"user": "alice"}, ("csr", None, csr)),
        _operation("generate-key", {"key-type": "p256", "label": "laptop"}, ("passphrase", None, "a long passphrase")),
        _operation("list-certificates", {"user": "alice"}),
        _operation("get-certificate", {"serial": serial}),
        _operation("user-certificates", {"user": "alice"}),
        _operation("upload-certificate", None, ("pem", None, pem)),
        _operation("list-pkcs12", {"user": "alice"}),
        _operation("get-pkcs12", {"id": "1"}),
        _operation("upload-pkcs12", {"label": "escrow"}, ("data", None, pkcs12)),
        _operation("renew", {"serial": serial}, ("csr", None, csr)),
        _operation("revoke", {"serial": serial, "reason": "key-compromise"}),
        _operation("get-crl"),
        _operation("certificate-status", {"serial": serial}),
        _operation("certificate-status", None, ("pem", None, pem)),
        _operation("ca-chain"),
        _operation(
            "create-user",
            {"user": "carol", "display-name": "Carol", "email": "carol@example.org", "admin": "false", "password-login": "true"},
            ("password", None, "correct horse battery staple"),
        ),
        _operation("set-password", {"user": "alice"}, ("password", None, "another long passphrase"), ("current-password", None, "correct horse battery staple")),
        _operation("set-password-login", {"user": "alice", "enabled": "false"}),
        _operation("set-admin", {"user": "alice", "enabled": "true"}),
        _operation("delete-user", {"user": "carol"}),
        _operation("sixid-allow", {"sixid": "q3dv-6zka-m4tf-jx2b-7wqp-le5n-yc4h-ur6g", "note": "Alice's phone"}),
        _operation("sixid-list", {"offset": "0", "limit": "100"}),
        _operation("sixid-disallow", {"sixid": "q3dv6zkam4tfjx2b7wqple5nyc4hur6g"}),
        _operation("audit-list", {"event": "login", "since": "2026-01-01T00:00:00Z", "after-id": "1", "limit": "10"}),
        _operation("audit-checkpoints", {"after-id": "0", "limit": "10"}),
    ]
    return tuple(build_request(index + 1, operation) for index, operation in enumerate(operations))


@functools.cache
def record_corpus() -> tuple[bytes, ...]:
    """One serialised ``<user>``, ``<addresses>``, ``<certificate>`` and ``<pkcs12>``."""
    _csr, _pem, _der, info = _certificate_material()
    identity = Identity("alice", DOMAIN)
    user = UserRecord(identity, "Alice", "alice@example.org", (("team", "blue"),), 3, 1_800_000_000, b"\x01" * 64)
    account = AccountView(False, True, True, 1_700_000_000, 1_800_000_000)
    addresses = AddressRecord(
        identity, "online", (Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 4605)), 1_800_000_300, 4, 1_800_000_000, b"\x02" * 64
    )
    pkcs12 = Pkcs12Info(7, "alice", "laptop", "generated", format(info.serial, "x"), 1_800_000_000, 48, b"\x30" * 48)
    elements = [
        user_element(user, account),
        user_element(user),
        addresses_element(addresses),
        certificate_element(info, DOMAIN, 1_800_000_000, with_pem=True),
        certificate_element(info, DOMAIN, 1_800_000_000, with_pem=False),
        pkcs12_element(pkcs12, DOMAIN),
    ]
    return tuple(serialize(element) for element in elements)


@functools.cache
def response_corpus() -> tuple[bytes, ...]:
    """Valid responses: results of several kinds and an error of every class."""
    records = [etree.fromstring(document) for document in record_corpus()]
    users = make_element("users", {"total": "2", "offset": "0"})
    users.append(etree.fromstring(record_corpus()[1]))
    session = make_element("session", {"user": "alice@example.org", "method": "password", "admin": "false"})
    responses = [ok_response(index + 1, [element]) for index, element in enumerate(records)]
    responses.append(ok_response(20, [users]))
    responses.append(ok_response(21, [session]))
    classes = [errors.IRPError, *subclasses_of(errors.IRPError)]
    for index, cls in enumerate(classes):
        if cls.code < 100:  # client-side errors never travel
            continue
        if cls is errors.CertificateInvalid:
            error: errors.IRPError = errors.CertificateInvalid("expired")
        else:
            error = cls()
        # unsupported-version is answered before the id is read: always id 0.
        responses.append(error_response(0 if cls is errors.UnsupportedVersion else 100 + index, error))
    return tuple(responses)


def all_corpus() -> tuple[bytes, ...]:
    """Every valid IRP document of the sync corpus."""
    return request_corpus() + response_corpus() + record_corpus()


@functools.cache
def corpus_values() -> tuple[str, ...]:
    """Interesting values plus those of the corpus."""
    return harvest_values(all_corpus())


def mutated(documents: Callable[[], Sequence[bytes]]) -> Any:
    """A strategy: a document of the corpus with a few mutations (shrinks to fewer)."""
    return st.tuples(st.integers(0, 10**6), ops_strategy).map(
        lambda chosen: mutate(documents()[chosen[0] % len(documents())], chosen[1], corpus_values())
    )


def nested(depth: int, tag: bytes = b"a") -> bytes:
    """A document of ``depth`` nested elements."""
    return b"<" + tag + b">" * 1 + (b"<" + tag + b">") * (depth - 1) + (b"</" + tag + b">") * depth


def depth_of(root: Any) -> int:
    """The element depth of a tree (1 for a lone root)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest


# ---------------------------------------------------------------------------------------
# Sync tests: codecs and framing

#: An entity reference other than the five predefined ones and character references.
_UNKNOWN_ENTITY = re.compile(rb"&(?!lt;|gt;|amp;|quot;|apos;|#)")


class XMLCodecFuzzTests(SynchronousTestCase):
    """common.wire.xmlcodec.parse_document accepts only safe, bounded documents and never crashes."""

    def check_document(self, data: bytes) -> None:
        try:
            root = parse_document(data)
        except XMLRejected as error:
            # (A leading byte-order mark may be refused first, for itself.)
            if (b"<!" in data or _UNKNOWN_ENTITY.search(data)) and not data.startswith(b"\xef\xbb\xbf"):
                self.assertTrue(error.forbidden, f"{data[:200]!r}: {error}")
            return
        self.assertNotIn(b"<!", data)
        self.assertEqual(data.count(b"<?"), 1 if data.startswith(b"<?xml") else 0, data[:200])
        elements = list(root.iter())
        self.assertTrue(all(isinstance(element.tag, str) for element in elements))
        self.assertLessEqual(len(elements), MAX_ELEMENTS)
        self.assertLessEqual(depth_of(root), MAX_DEPTH)
        # What is accepted serialises and parses back to the same tree.
        again = parse_document(serialize(root))
        self.assertEqual(serialize(again), serialize(root))

    @fuzz_settings(300)
    @given(st.binary(max_size=512))
    @example(b"\xef\xbb\xbf<a/>")
    @example(b'\xef\xbb\xbf<?xml version="1.0"?><a/>')
    @example(b"<a>&#x110000;</a>")
    @example(b"<a>&#0;</a>")
    @example(b'<?xml version="1.0" encoding="UTF-16"?><a/>')
    @example(b"<a xmlns:x='u' x:y='1'/>")
    @example(b"<x:a/>")
    @example(b"")
    @example(b"   ")
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes: an acceptable tree or XMLRejected, nothing else."""
        self.check_document(data)

    @fuzz_settings(400)
    @given(mutated(all_corpus))
    def test_mutated_documents(self, data: bytes) -> None:
        """Valid IRP documents mutated: an acceptable tree or XMLRejected."""
        self.check_document(data)

    @fuzz_settings(200)
    @given(st.integers(0, len(XML_TOKENS) - 1), st.integers(0, 10**6), st.integers(0, 10**6))
    def test_forbidden_markup_refused_anywhere(self, token: int, document: int, where: int) -> None:
        """A DTD, entity, comment, CDATA or PI inserted anywhere is forbidden markup."""
        inserted = XML_TOKENS[token]
        if not (b"<!" in inserted or inserted.startswith(b"<?") or _UNKNOWN_ENTITY.search(inserted)):
            return
        data = all_corpus()[document % len(all_corpus())]
        at = 1 + where % len(data)  # after the first byte: "<?xml " at byte 0 is allowed
        changed = data[:at] + inserted + data[at:]
        if inserted.startswith(b"%"):
            return  # parameter entities mean nothing outside a DTD: just text
        with self.assertRaises(XMLRejected) as caught:
            parse_document(changed)
        self.assertTrue(caught.exception.forbidden, changed[:200])

    @fuzz_settings(60)
    @given(st.integers(1, 40), st.integers(0, 3))
    def test_depth_limit_exact(self, depth: int, extra_siblings: int) -> None:
        """Nesting up to MAX_DEPTH is accepted, deeper is refused (not forbidden)."""
        data = nested(depth) if not extra_siblings else b"<r>" + b"<s/>" * extra_siblings + nested(depth - 1 or 1) + b"</r>"
        expected_depth = depth if not extra_siblings else max(depth - 1, 1) + 1
        if expected_depth <= MAX_DEPTH:
            self.assertEqual(depth_of(parse_document(data)), expected_depth)
        else:
            with self.assertRaises(XMLRejected) as caught:
                parse_document(data)
            self.assertFalse(caught.exception.forbidden)

    def test_element_count_limit_exact(self) -> None:
        """MAX_ELEMENTS elements are accepted; one more is refused."""
        at_limit = b"<r>" + b"<e/>" * (MAX_ELEMENTS - 1) + b"</r>"
        self.assertEqual(len(list(parse_document(at_limit).iter())), MAX_ELEMENTS)
        self.assertRaises(XMLRejected, parse_document, b"<r>" + b"<e/>" * MAX_ELEMENTS + b"</r>")

    def test_billion_laughs_and_external_entities(self) -> None:
        """The classic attacks are refused before parsing, as forbidden markup."""
        laughs = (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + b"".join(b'<!ENTITY lol%d "%s">' % (n, b"&lol%d;" % (n - 1) * 10) for n in range(1, 10))
            + b"]><request>&lol9;</request>"
        )
        external = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><request>&x;</request>'
        for data in (laughs, external, b"<request>&x;</request>"):
            with self.assertRaises(XMLRejected) as caught:
                parse_document(data)
            self.assertTrue(caught.exception.forbidden)

    @fuzz_settings(100)
    @given(st.sampled_from(["latin-1", "ISO-8859-1", "UTF-16", "utf-8-sig", "utf-88", "not-utf-8", "x-utf-8", "utf-8 ", "US-ASCII", "UTF8"]))
    def test_declared_encoding_must_be_utf8(self, label: str) -> None:
        """docs/irp.rst, Forbidden markup: a declaration's encoding, if given, MUST be
        UTF-8 (any case); any other label is refused."""
        data = f'<?xml version="1.0" encoding="{label}"?><request v="1" id="1"><whoami/></request>'.encode()
        self.assertRaises(XMLRejected, parse_document, data)


    @fuzz_settings(150)
    @given(st.recursive(
        st.tuples(st.sampled_from(["a", "b", "request", "x-y"]), st.dictionaries(st.sampled_from(["id", "v", "n"]), st.text(max_size=8), max_size=2), st.text(max_size=8)),
        lambda children: st.tuples(st.sampled_from(["a", "b"]), st.just({}), st.lists(children, max_size=4)),
        max_leaves=30,
    ))
    def test_generated_trees_round_trip(self, tree: Any) -> None:
        """Any tree of elements with any text serialises to a document that parses back
        to the same tree (or is refused for its size, never crashes)."""

        def build(node: Any, parent: Any = None) -> Any:
            tag, attributes, content = node
            try:
                element = make_element(tag, attributes) if parent is None else sub_element(parent, tag, attributes)
                if isinstance(content, str):
                    element.text = content
                else:
                    for child in content:
                        build(child, element)
            except ValueError:  # text XML cannot carry (control characters, surrogates)
                return None
            return element

        root = build(tree)
        if root is None:
            return
        try:
            data = serialize(root)
        except ValueError:
            return
        try:
            again = parse_document(data)
        except XMLRejected as error:
            self.assertFalse(error.forbidden, data)
            self.assertGreater(depth_of(root), MAX_DEPTH, f"{data!r} refused: {error}")
            return
        self.assertEqual(etree.tostring(again, method="c14n"), etree.tostring(root, method="c14n"))


class FramingFuzzTests(SynchronousTestCase):
    """common.wire.framing.FrameDecoder on random and lying streams."""

    @fuzz_settings(300)
    @given(st.lists(st.binary(max_size=64), max_size=12), st.integers(1, 64))
    def test_random_streams(self, chunks: list[bytes], cap: int) -> None:
        """Any chunks: frames of 1..cap bytes or a FrameError; never more than one header
        plus the cap held back."""
        decoder = FrameDecoder(cap)
        for chunk in chunks:
            try:
                frames = decoder.feed(chunk)
            except FrameError:
                return
            for frame in frames:
                self.assertTrue(0 < len(frame) <= cap)
            self.assertLessEqual(decoder.pending, cap + HEADER_SIZE)

    @fuzz_settings(300)
    @given(
        st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
        st.integers(0, 5),
        st.integers(0, 2**32 - 1),
        st.lists(st.integers(1, 50), max_size=8),
    )
    def test_length_prefix_lies(self, payloads: list[bytes], liar: int, announced: int, cuts: list[int]) -> None:
        """One frame's header announces a wrong length: the frames before it come out
        intact whatever the chunking; then an error, or frames within the cap."""
        cap = 64
        liar %= len(payloads)
        stream = b"".join(
            (announced.to_bytes(4, "big") + payload) if index == liar else encode_frame(payload)
            for index, payload in enumerate(payloads)
        )
        pieces, position = [], 0
        for cut in cuts:
            pieces.append(stream[position : position + cut])
            position += cut
        pieces.append(stream[position:])
        decoder = FrameDecoder(cap)
        got: list[bytes] = []
        error: FrameError | None = None
        for piece in pieces:
            try:
                got.extend(decoder.feed(piece))
            except FrameError as raised:
                error = raised
                break
        error = error or decoder.error
        for frame in got:
            self.assertTrue(0 < len(frame) <= cap)
        if announced == len(payloads[liar]):  # not a lie after all
            self.assertEqual((got, error), (payloads, None))
            return
        # The frames before the lie come out intact, whatever the chunking: a read that
        # meets a bad header still returns the frames it completed before it.
        self.assertEqual(got[: min(len(got), liar)], payloads[: min(len(got), liar)])
        if announced == 0 or announced > cap:
            self.assertIsInstance(error, FrameError)
            self.assertEqual(got, payloads[:liar])


class MessagesFuzzTests(SynchronousTestCase):
    """irp.wire.messages and irp.wire.elements raise only IRPError on any input."""

    def parse_request_property(self, data: bytes) -> None:
        result = only_errors(lambda: parse_request(data), errors.IRPError)
        if isinstance(result, BaseException):
            return
        self.assertTrue(1 <= result.id <= MAX_REQUEST_ID)
        self.assertIsInstance(result.operation, str)
        # An accepted request is rebuilt to a request that parses the same.
        again = parse_request(build_request(result.id, result.element))
        self.assertEqual((again.id, again.operation), (result.id, result.operation))

    @fuzz_settings(300)
    @given(st.binary(max_size=300))
    def test_random_requests(self, data: bytes) -> None:
        self.parse_request_property(data)

    @fuzz_settings(500)
    @given(mutated(request_corpus))
    def test_mutated_requests(self, data: bytes) -> None:
        """Mutated valid requests: a Request or an IRPError."""
        self.parse_request_property(data)

    @fuzz_settings(400)
    @given(mutated(response_corpus))
    def test_mutated_responses(self, data: bytes) -> None:
        """Mutated valid responses: a Response or an IRPError (the client's parser)."""
        result = only_errors(lambda: parse_response(data), errors.IRPError)
        if isinstance(result, errors.IRPError) and hasattr(result, "request_id"):
            self.assertIsInstance(result.request_id, int)

    @fuzz_settings(500)
    @given(mutated(record_corpus))
    def test_mutated_records(self, data: bytes) -> None:
        """Mutated <user>, <addresses>, <certificate>, <pkcs12>: every parser of
        irp.wire.elements gives a value or an IRPError."""
        root = only_errors(lambda: parse_xml(data), errors.IRPError)
        if isinstance(root, BaseException):
            return
        for parser in (parse_user, parse_addresses, parse_certificate, parse_pkcs12):
            only_errors(lambda parser=parser: parser(root), errors.IRPError)  # type: ignore[misc]

    def test_corpus_is_valid(self) -> None:
        """The seeds are valid: they parse, and match the schema."""
        for data in request_corpus():
            parse_request(data)
            validate(data)
        for data in response_corpus():
            validate(data)
            try:
                parse_response(data)
            except errors.IRPError:
                pass
        for data, parser in zip(record_corpus(), (parse_user, parse_user, parse_addresses, parse_certificate, parse_certificate, parse_pkcs12), strict=True):
            parser(parse_xml(data))


class DefectRegressionTests(SynchronousTestCase):
    """One minimal input per open defect of the sync parsers (marked todo while open)."""

    def test_request_id_unicode_digit(self) -> None:
        """Fixed defect IRP-1: a non-ASCII digit id is refused, not a ValueError."""
        with self.assertRaises(errors.BadRequest):
            parse_request('<request v="1" id="\u00b2"><whoami/></request>'.encode())
        with self.assertRaises(errors.BadRequest):
            parse_request('<request v="1" id="\u0663"><whoami/></request>'.encode())


    def test_optional_int_unicode_digit(self) -> None:
        """Fixed defect IRP-2: optional_int refuses non-ASCII digits."""
        from irp.wire.fields import optional_int

        with self.assertRaises(errors.BadRequest):
            optional_int(make_element("list-users", {"limit": "\u00b2"}), "limit", 50, 1, 200)


    def test_response_code_unicode_digit(self) -> None:
        """Fixed defect IRP-3: a non-ASCII digit error code is an IRPError."""
        payload = '<response v="1" id="1" status="error"><error code="\u00b2" name="x">t</error></response>'.encode()
        with self.assertRaises(errors.IRPError):
            parse_response(payload)


    def test_record_int_unicode_digit(self) -> None:
        """Fixed defect IRP-4: record integers refuse non-ASCII digits."""
        root = parse_xml(record_corpus()[2].replace(b'seq="4"', 'seq="\u00b2"'.encode()))
        with self.assertRaises(errors.BadRequest):
            parse_addresses(root)


    def test_identity_of_certificate_with_two_san_extensions(self) -> None:
        """IRP-6: a certificate with two subjectAltName extensions names no identity."""
        from common.identity import InvalidIdentity, identity_from_certificate

        with self.assertRaises(InvalidIdentity):
            identity_from_certificate(crafted_certificate("duplicate-san"))


    def test_identity_of_certificate_with_garbage_san(self) -> None:
        """IRP-7: a subjectAltName that is not valid DER names no identity."""
        from common.identity import InvalidIdentity, identity_from_certificate

        with self.assertRaises(InvalidIdentity):
            identity_from_certificate(crafted_certificate("garbage-san"))


    def test_parse_certificate_with_bad_version(self) -> None:
        """IRP-10 in the client: a <certificate> whose PEM has version 66 is bad-request."""
        _csr, _pem, _der, info = _certificate_material()
        element = certificate_element(info, DOMAIN, 1_800_000_000, with_pem=True)
        element.find("pem").text = crafted_pem("bad-version")
        with self.assertRaises(errors.BadRequest):
            parse_certificate(parse_xml(serialize(element)))


# ---------------------------------------------------------------------------------------
# Async tests: a real registry (SQLite file, real CA), its handlers and its protocol


class RecordingObserver:
    """A message observer keeping every request and response the real code serialises."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []

    def __call__(self, payload: bytes) -> None:
        if payload.startswith(b"<request"):
            self.requests.append(payload)
        elif payload.startswith(b"<response"):
            self.responses.append(payload)


async def drive_every_operation(running: Any) -> None:
    """Drive a RunningRegistry through every operation with the real client over TLS."""
    from irp.cli import make_csr
    from irp.server.ca import generate_key
    from test.helpers import DEFAULT_PASSWORD

    anonymous = await running.client()
    await anonymous.capabilities()
    await anonymous.whoami()
    await anonymous.ca_chain()
    await anonymous.get_crls()
    await anonymous.certificate_status(serial=0x1234ABCD)
    await anonymous.logout()
    admin = await running.admin()
    await admin.create_user("alice", password=DEFAULT_PASSWORD, display_name="Alice", email="alice@example.org")
    await admin.create_user("bob", password=DEFAULT_PASSWORD, display_name="Bob")
    await admin.create_user("carol")
    alice = await running.client("alice", DEFAULT_PASSWORD)
    await alice.whoami()
    await alice.get_user("bob")
    await alice.update_user(display_name="Alice L.", email="alice@example.org", attributes={"team": "blue"})
    await alice.list_users(0, 10, "a")
    await alice.register_addresses([Endpoint("2001:db8::1", 4605), Endpoint("192.0.2.1", 4605)], ttl=300)
    await alice.lookup("alice")
    entry = await alice.request_certificate(make_csr(generate_key("p256")))
    await alice.list_certificates()
    await alice.get_certificate(entry.serial)
    await alice.user_certificates("alice")
    assert entry.certificate is not None
    await alice.certificate_status(certificate=entry.certificate)
    await alice.generate_key("a long passphrase", key_type="p256", label="laptop")
    files = await alice.list_pkcs12()
    fetched = await alice.get_pkcs12(files[0].id)
    assert fetched.data is not None
    await alice.upload_pkcs12(fetched.data, label="escrow")
    renewed = await alice.renew(entry.serial)
    from test.irp.wire.helpers import external_certificate

    await alice.upload_certificate(external_certificate("alice"))
    await alice.revoke(renewed.serial, "key-compromise")
    await alice.set_password(None, "another long passphrase", DEFAULT_PASSWORD)
    await admin.set_password_login("bob", False)
    await admin.set_admin("bob", True)
    await admin.set_admin("bob", False)
    await admin.delete_user("carol")
    await admin.sixid_allow("q3dv-6zka-m4tf-jx2b-7wqp-le5n-yc4h-ur6g", "Alice's phone")
    await admin.sixid_list()
    await admin.sixid_disallow("q3dv6zkam4tfjx2b7wqple5nyc4hur6g")
    await admin.audit_list(event="login", limit=10)
    await admin.audit_checkpoints()
    await alice.logout()


class FakeTLSTransport(StringTransport):
    """A StringTransport with the TLS handle RegistryServerProtocol asks for (no client
    certificate) and the TCP transport under it."""

    class _Handle:
        def get_peer_certificate(self, as_cryptography: bool = False) -> None:
            return None

        def get_peer_cert_chain(self, as_cryptography: bool = False) -> None:
            return None

    class _TCP(StringTransport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            pass

        def getTcpNoDelay(self) -> bool:
            return True

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.77", 40000))
        self.transport = self._TCP()

    def getHandle(self) -> Any:
        return self._Handle()


FATAL_NAMES = frozenset(
    cls.name for cls in [errors.IRPError, *subclasses_of(errors.IRPError)] if cls.fatal
)


@dataclass
class Answer:
    """One response frame the server wrote, decoded."""

    id: int
    name: str  # "ok" or the error name
    payload: bytes


def count_frames(stream: bytes, cap: int) -> int:
    """How many complete frames ``stream`` holds before its first framing error."""
    count = 0
    while len(stream) >= HEADER_SIZE:
        length = int.from_bytes(stream[:HEADER_SIZE], "big")
        if not 0 < length <= cap or len(stream) < HEADER_SIZE + length:
            break
        count += 1
        stream = stream[HEADER_SIZE + length :]
    return count


def decode_answers(data: bytes) -> list[Answer]:
    """Every response frame in ``data``; raises AssertionError on anything not a response."""
    answers = []
    for frame in FrameDecoder(1 << 26).feed(data):
        try:
            response = parse_response(frame)
        except errors.IRPError as error:
            answers.append(Answer(error.request_id, error.name, frame))  # type: ignore[attr-defined]
        else:
            answers.append(Answer(response.id, "ok", frame))
    return answers


class RegistryFuzzTestCase(TestCase):
    """A real registry (RunningRegistry: TLS service, SQLite file, real CA), traffic from
    the real client through every operation recorded as the corpus, and sessions."""

    timeout = 600 + _ENV_EXAMPLES // 20

    async def setUpRegistry(self) -> None:
        from test.helpers import RunningRegistry

        self.observer = RecordingObserver()
        # No tarpit: the fuzzed requests include many refused logins, and the delay before
        # each refusal (tested on its own in test_registry) would only make the long
        # campaign wait, a second per refusal, on the real reactor.
        config = RegistryConfig(domain="example.org", login_refusal_delay=0.0)
        with observing_messages(self.observer):
            self.running = await RunningRegistry(self, config=config).start()
            await drive_every_operation(self.running)
        self.requests = list(self.observer.requests)
        self.responses = list(self.observer.responses)
        self.values = harvest_values(self.requests + self.responses)
        self.users: dict[str, Any] = {}

    @property
    def registry(self) -> Registry:
        return self.running.registry  # type: ignore[no-any-return]

    async def session(self, kind: str) -> Session:
        """A fresh session: anonymous, or logged in with a good certificate as alice or
        admin (re-created if a fuzzed request revoked or deleted them)."""
        session = Session(peer_host="192.0.2.77")
        if kind == "anonymous":
            return session
        for _attempt in range(3):
            user = self.users.get(kind)
            if user is not None:
                await self.registry.auth.authenticate_certificate(session, user.certificate)
                if session.rejected is None:
                    return session
                session = Session(peer_host="192.0.2.77")
            if await self.running.store.get_account(kind) is None:
                await self.running.add_user(kind)
            self.users[kind] = await self.running.issue(kind)
        return Session(peer_host="192.0.2.77")


class RegistryHandleFuzzTests(RegistryFuzzTestCase):
    """Registry.handle with mutated real requests, over a real SQLite store."""

    def mutated_request(self, rnd: random.Random) -> bytes:
        """A real request mutated: mostly inside its operation element (to reach the
        handlers), sometimes anywhere."""
        original = rnd.choice(self.requests)
        if rnd.random() < 0.3:
            return mutate(original, random_ops(rnd, 3), self.values)
        operation = serialize(parse_request(original).element)
        changed = mutate(operation, random_ops(rnd, 3, structural=0.9), self.values)
        return b'<request v="1" id="%d">' % rnd.randrange(1, 1000) + changed + b"</request>"

    async def handle_once(self, data: bytes, kind: str) -> tuple[str, Any]:
        """Parse and handle ``data`` as ``kind``; (outcome, value) for the properties."""
        try:
            request = parse_request(data)
        except errors.IRPError as error:
            return "refused", error
        session = await self.session(kind)
        try:
            results = await self.registry.handle(session, request)
        except errors.IRPError as error:
            return "error", error
        except Exception as error:  # noqa: BLE001 - the property under test
            return "crash", error
        return "ok", (request, results)

    async def check(self, data: bytes, kind: str, findings: Findings) -> None:
        try:
            outcome, value = await self.handle_once(data, kind)
        except Exception as error:  # noqa: BLE001 - parse_request crashed
            findings.error(error, f"parse_request({data[:300]!r})")
            return
        findings.outcome(outcome if outcome != "error" else f"error:{value.name}")
        if outcome == "crash":
            before = len(findings.new)
            findings.error(value, f"handle as {kind}: {data[:400]!r}")
            if len(findings.new) > before:
                findings.failing.append((data, kind))
        elif outcome == "error":
            if isinstance(value, errors.InternalError) or type(value) is errors.IRPError:
                findings.violation(f"handle as {kind} answered internal-error for {data[:400]!r}: {value}")
            try:
                validate(error_response(1, value))
            except ValueError as invalid:
                findings.violation(f"error response not schema-valid for {data[:300]!r}: {invalid}")
        elif outcome == "ok":
            request, results = value
            # Results are elements, or answers already serialised (cached look-ups).
            if not all(etree.iselement(result) or isinstance(result, bytes) for result in results):
                findings.violation(f"handle returned non-elements for {data[:300]!r}: {results!r}")
                return
            payload = ok_response(request.id, results)
            try:
                validate(payload)
            except ValueError as invalid:
                if SERIAL_OVER_20_OCTETS.search(payload):
                    findings.known["IRP-11"] = findings.known.get("IRP-11", 0) + 1
                    return
                findings.violation(f"response not schema-valid for {data[:300]!r}:\n{payload[:600]!r}\n{invalid}")
            parse_response(payload)

    async def test_mutated_requests(self) -> None:
        """Mutated real requests, as anonymous, alice and admin: a schema-valid result or
        an IRPError other than internal-error; the store stays intact and signed."""
        await self.setUpRegistry()
        operations = {parse_request(data).operation for data in self.requests}
        self.assertEqual(operations, set(self.registry.operations), "drive_every_operation misses operations")
        rnd = random.Random(SEED)
        findings = Findings()
        kinds = ("anonymous", "alice", "admin")
        for _ in range(examples(600)):
            data = self.mutated_request(rnd)
            findings.inputs += 1
            await self.check(data, rnd.choice(kinds), findings)
        # Unmutated requests too (their effects changed the state in between).
        for data in self.requests:
            findings.inputs += 1
            await self.check(data, "admin", findings)
        self.assertEqual(await check_integrity(self.running.store), "ok")
        verifier = RecordVerifier(self.registry.signing_certificate)
        _total, accounts = await self.running.store.list_users(0, 10000, "")
        for account in accounts:
            verifier.verify(account.record)
        await self.minimise_first(findings)
        check_findings(self, findings, "Registry.handle")

    async def minimise_first(self, findings: Findings) -> None:
        """Shrink the first crashing input (same exception signature) into the report."""
        if not findings.failing:
            return
        data, kind = findings.failing[0]
        _outcome, first = await self.handle_once(data, kind)
        signature = code_signature(first)

        async def fails(candidate: bytes) -> bool:
            try:
                outcome, value = await self.handle_once(candidate, kind)
            except Exception as error:  # noqa: BLE001
                return code_signature(error) == signature
            return outcome == "crash" and code_signature(value) == signature

        smallest = await shrink_async(data, fails)
        findings.new.insert(0, f"minimised (as {kind}): {smallest!r} raises {signature[0]} in {signature[1]}")

    async def test_crafted_certificates(self) -> None:
        """Certificates with structural defects (ASN.1 mutations) in upload-certificate,
        certificate-status and request-certificate: an IRPError, never internal-error."""
        await self.setUpRegistry()
        rnd = random.Random(SEED)
        findings = Findings()
        carriers = [data for data in self.requests if b"-----BEGIN" in data]
        self.assertTrue(carriers)
        for _ in range(examples(150)):
            data = rnd.choice(carriers)
            for _step in range(1 + rnd.randrange(3)):
                data = mutate_once(data, (18, rnd.getrandbits(32), rnd.getrandbits(32)))
            findings.inputs += 1
            await self.check(data, rnd.choice(("alice", "admin")), findings)
        for defect in CRAFTED_DEFECTS:
            pem = crafted_pem(defect, external=True)
            for operation in ("upload-certificate", "certificate-status"):
                findings.inputs += 1
                await self.check(build_request(9, _operation(operation, None, ("pem", None, pem))), "alice", findings)
        check_findings(self, findings, "crafted certificates")

    async def test_upload_certificate_with_unknown_key_type(self) -> None:
        """IRP-5: a certificate naming an unknown key algorithm is invalid-argument."""
        await self.setUpRegistry()
        for defect in ("unknown-key", "unknown-curve"):
            pem = crafted_pem(defect, external=True)
            request = parse_request(build_request(9, _operation("upload-certificate", None, ("pem", None, pem))))
            with self.assertRaises(errors.InvalidArgument):
                await self.registry.handle(await self.session("alice"), request)


    async def test_upload_certificate_with_two_san_extensions(self) -> None:
        """IRP-6/IRP-7 through the handler: invalid-argument, not internal-error."""
        await self.setUpRegistry()
        for defect in ("duplicate-san", "garbage-san"):
            pem = crafted_pem(defect, external=True)
            request = parse_request(build_request(9, _operation("upload-certificate", None, ("pem", None, pem))))
            with self.assertRaises(errors.InvalidArgument):
                await self.registry.handle(await self.session("alice"), request)


    async def test_certificate_with_bad_version(self) -> None:
        """IRP-10: a certificate of version 66 is invalid-argument in upload-certificate
        and certificate-status."""
        await self.setUpRegistry()
        pem = crafted_pem("bad-version", external=True)
        for operation in ("upload-certificate", "certificate-status"):
            request = parse_request(build_request(9, _operation(operation, None, ("pem", None, pem))))
            with self.assertRaises(errors.InvalidArgument):
                await self.registry.handle(await self.session("alice"), request)


    async def test_upload_certificate_with_long_serial(self) -> None:
        """IRP-11: a certificate whose serial is over 20 octets, or negative, is refused
        (or else every answer about it is schema-valid and readable by the client)."""
        await self.setUpRegistry()
        for defect in ("long-serial", "negative-serial"):
            pem = crafted_pem(defect, external=True)
            request = parse_request(build_request(9, _operation("upload-certificate", None, ("pem", None, pem))))
            try:
                results = await self.registry.handle(await self.session("alice"), request)
            except errors.InvalidArgument:
                continue
            payload = ok_response(9, results)
            validate(payload)
            parse_certificate(parse_response(payload).single("certificate"))


    async def test_numeric_attribute_unicode_digit(self) -> None:
        """Fixed defect IRP-2 through the handler: bad-request, not internal-error."""
        await self.setUpRegistry()
        request = parse_request('<request v="1" id="5"><list-users limit="\u00b2"/></request>'.encode())
        with self.assertRaises(errors.BadRequest):
            await self.registry.handle(await self.session("alice"), request)


class ServerProtocolFuzzTests(RegistryFuzzTestCase):
    """RegistryServerProtocol with the real registry, fed mutated request streams."""

    limits = ConnectionLimits(
        max_request=96 * 1024, handshake_timeout=20.0, idle_timeout=60.0, frame_timeout=5.0, max_pipelined=8
    )

    def connect(self) -> tuple[RegistryServerProtocol, FakeTLSTransport, Clock]:
        clock = Clock()
        factory = RegistryServerFactory(self.registry, pki.trust_store(self.running.ca), clock, self.limits)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.77", 40000))
        assert isinstance(protocol, RegistryServerProtocol)
        transport = FakeTLSTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport, clock

    def make_stream(self, rnd: random.Random) -> list[bytes]:
        """A stream of chunks: real request frames, mutated, duplicated, reordered, with
        length-prefix lies and garbage, cut anywhere."""
        frames = [encode_frame(rnd.choice(self.requests)) for _ in range(1 + rnd.randrange(6))]
        if rnd.random() < 0.3:  # begin with a real login, to reach the logged-in handlers
            logins = [data for data in self.requests if b"<login" in data]
            frames.insert(0, encode_frame(rnd.choice(logins)))
        for _ in range(rnd.randrange(4)):
            index = rnd.randrange(len(frames))
            choice = rnd.random()
            if choice < 0.4:  # mutate a payload, keeping an honest length prefix
                payload = mutate(frames[index][HEADER_SIZE:], random_ops(rnd, 3), self.values)
                frames[index] = encode_frame(payload) if payload else b"\x00\x00\x00\x00"
            elif choice < 0.55:  # length-prefix lie
                lie = rnd.choice([0, 1, len(frames[index]) - 5, len(frames[index]) + 3, self.limits.max_request + 1, 2**32 - 1, rnd.getrandbits(32)])
                frames[index] = max(lie, 0).to_bytes(4, "big") + frames[index][HEADER_SIZE:]
            elif choice < 0.7:  # duplicate
                frames.insert(index, frames[index])
            elif choice < 0.8:  # reorder
                frames.insert(rnd.randrange(len(frames)), frames.pop(index))
            elif choice < 0.9:  # drop
                if len(frames) > 1:
                    frames.pop(index)
            else:  # raw mutation across frame boundaries
                frames[index] = mutate(frames[index], random_ops(rnd, 2), self.values)
        stream = b"".join(frames)
        if rnd.random() < 0.2:  # a trailing partial frame
            stream += encode_frame(rnd.choice(self.requests))[: rnd.randrange(1, 30)]
        chunks = []
        position = 0
        while position < len(stream):
            size = rnd.choice([1, 3, 7, 64, 500, 5000, len(stream)])
            chunks.append(stream[position : position + size])
            position += size
        return chunks

    async def settle(self, protocol: RegistryServerProtocol) -> None:
        """Wait until no request is running (the store answers in its thread)."""
        core = protocol.core
        assert core is not None
        for _turn in range(5000):
            if core.closing or not (core.busy or core.pending):
                return
            await deferLater(global_reactor, 0.001)
        raise AssertionError("the protocol never became idle")

    async def feed(self, chunks: Sequence[bytes], findings: Findings, *, reactor_model: bool = True) -> tuple[RegistryServerProtocol, FakeTLSTransport, Clock, bool]:
        """Feed ``chunks``; an exception escaping dataReceived is recorded and, as
        Twisted's reactor does, ends the connection. Returns (…, whether one escaped)."""
        protocol, transport, clock = self.connect()
        escaped = False
        for chunk in chunks:
            try:
                protocol.dataReceived(chunk)
            except Exception as error:  # noqa: BLE001 - the property under test
                findings.error(error, f"dataReceived raised on stream {b''.join(chunks)[:400]!r}")
                escaped = True
                if reactor_model:
                    transport.loseConnection()
                    protocol.connectionLost()
                break
            await self.settle(protocol)
        await self.settle(protocol)
        return protocol, transport, clock, escaped

    def check_answers(self, chunks: Sequence[bytes], transport: FakeTLSTransport, findings: Findings) -> list[Answer]:
        stream = b"".join(chunks)
        try:
            answers = decode_answers(transport.value())
        except Exception as error:  # noqa: BLE001
            findings.violation(f"unreadable output for {stream[:300]!r}: {error!r}")
            return []
        for answer in answers:
            try:
                validate(answer.payload)
            except ValueError as invalid:
                if SERIAL_OVER_20_OCTETS.search(answer.payload):
                    findings.known["IRP-11"] = findings.known.get("IRP-11", 0) + 1
                    continue
                findings.violation(f"response not schema-valid for stream {stream[:300]!r}:\n{answer.payload[:400]!r}\n{invalid}")
        fatal = [index for index, answer in enumerate(answers) if answer.name in FATAL_NAMES]
        if fatal and fatal[0] != len(answers) - 1:
            findings.violation(f"answers after a fatal error for {stream[:300]!r}: {[(a.id, a.name) for a in answers]}")
        if transport.disconnecting and not fatal:
            findings.violation(f"closed without a fatal error reply for {stream[:300]!r}: {[(a.id, a.name) for a in answers]}")
        if fatal and not transport.disconnecting:
            findings.violation(f"a fatal error left the connection open for {stream[:300]!r}")
        return answers

    async def test_mutated_streams(self) -> None:
        """Every stream ends in an error reply and a close (after the timers); all output
        is valid responses, at most one per frame, none after a fatal error; a closed
        connection reads and writes nothing more."""
        await self.setUpRegistry()
        rnd = random.Random(SEED)
        findings = Findings()
        valid = encode_frame(build_request(4242, make_element("whoami")))
        for _ in range(examples(300)):
            chunks = self.make_stream(rnd)
            findings.inputs += 1
            protocol, transport, clock, escaped = await self.feed(chunks, findings)
            answers = self.check_answers(chunks, transport, findings)
            if escaped:
                findings.outcome("escaped")
            elif transport.disconnecting:
                findings.outcome(f"closed:{answers[-1].name if answers else 'silently'}")
            else:
                findings.outcome(f"open after {len(answers)} answers")
            frames_in = count_frames(b"".join(chunks), self.limits.max_request)
            if len(answers) > frames_in + 1:
                findings.violation(f"{len(answers)} answers to {frames_in} frames: {b''.join(chunks)[:300]!r}")
            if transport.disconnecting:  # closed: nothing more is read or written
                written = transport.value()
                protocol.dataReceived(valid)
                await self.settle(protocol)
                if transport.value() != written:
                    findings.violation(f"wrote after the close for {b''.join(chunks)[:300]!r}")
            elif not escaped:
                # Still open: a valid request is answered...
                before = len(answers)
                protocol.dataReceived(valid)
                await self.settle(protocol)
                later = decode_answers(transport.value())
                idle = protocol.core is not None and not protocol.core.decoder.in_frame and not protocol.core.reading_stopped
                if idle and (len(later) != before + 1 or later[-1].id != 4242):
                    findings.violation(f"an open connection did not answer a valid request after {b''.join(chunks)[:300]!r}: {[(a.id, a.name) for a in later]}")
            # ...and, however it stands, the timers end it with an error reply and a close.
            for _step in range(4):
                clock.advance(self.limits.idle_timeout + self.limits.handshake_timeout)
                await self.settle(protocol)
            if not escaped:
                answers = self.check_answers(chunks, transport, findings)
                if not transport.disconnecting:
                    findings.violation(f"never closed: {b''.join(chunks)[:300]!r}")
                elif not answers or answers[-1].name not in FATAL_NAMES:
                    findings.violation(f"closed without an error reply: {b''.join(chunks)[:300]!r}")
                elif not transport.disconnected:
                    findings.violation(f"a closed connection was not aborted after the drain time: {b''.join(chunks)[:300]!r}")
            protocol.connectionLost()
        check_findings(self, findings, "RegistryServerProtocol")

    async def test_unreadable_id_is_answered(self) -> None:
        """A request whose id is a non-ASCII digit (fixed defect IRP-1: it raised
        ValueError out of dataReceived) is answered with a fatal error after the request
        before it, and the connection closes."""
        await self.setUpRegistry()
        stream = [encode_frame(build_request(1, make_element("whoami"))), encode_frame('<request v="1" id="\u00b2"><whoami/></request>'.encode())]
        protocol, transport, _clock = self.connect()
        for chunk in stream:
            protocol.dataReceived(chunk)
            await self.settle(protocol)
        answers = [(answer.id, answer.name) for answer in decode_answers(transport.value())]
        self.assertEqual(answers[0], (1, "ok"))
        self.assertEqual(len(answers), 2)
        self.assertEqual(answers[1][0], 0)
        self.assertIn(answers[1][1], FATAL_NAMES)
        self.assertTrue(transport.disconnecting)


    async def test_requests_before_a_framing_error_are_answered(self) -> None:
        """docs/irp.rst, Order, pipelining and fatal errors: requests before a fatal error
        are still answered, then the error, then the close. Framing errors (an empty frame,
        an oversized length) break this: requests in the same read, or still queued behind
        a running one, are dropped unanswered."""
        await self.setUpRegistry()
        rnd = random.Random(SEED)
        problems = []
        for trial in range(examples(40)):
            requests = [rnd.choice([r for r in self.requests if b"<whoami" in r or b"<capabilities" in r or b"<ca-chain" in r or b"<get-crl" in r]) for _ in range(1 + rnd.randrange(4))]
            bad = rnd.choice([b"\x00\x00\x00\x00", (self.limits.max_request + 1).to_bytes(4, "big")])
            stream = b"".join(encode_frame(request) for request in requests) + bad
            chunked = trial % 2 == 1
            protocol, transport, _clock = self.connect()
            if chunked:
                for request in requests:
                    protocol.dataReceived(encode_frame(request))
                protocol.dataReceived(bad)
            else:
                protocol.dataReceived(stream)
            await self.settle(protocol)
            answers = [(answer.id, answer.name) for answer in decode_answers(transport.value())]
            expected_ids = [parse_request(request).id for request in requests]
            if [a[0] for a in answers[:-1]] != expected_ids or not answers or answers[-1][1] not in FATAL_NAMES:
                problems.append(f"{'chunked' if chunked else 'one read'}: {stream[:200]!r} -> {answers}")
            protocol.connectionLost()
        self.assertEqual(problems, [], "\n".join(problems[:5]))

