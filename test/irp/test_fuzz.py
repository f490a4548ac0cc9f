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
import copy
import functools
import os
import random
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
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


def _notes(error: BaseException) -> list[str]:
    found = [f"{type(error).__name__}: {error}", *getattr(error, "__notes__", ())]
    for inner in getattr(error, "exceptions", ()):
        found.extend(_notes(inner))
    return found


def readable(test: Callable[..., None]) -> Callable[..., None]:
    """Re-raise a hypothesis failure with its falsifying example(s) in the message."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except Exception as error:
            notes = _notes(error)
            if len(notes) > 1:
                raise AssertionError("\n".join(notes)) from error
            raise

    return wrapper


# ---------------------------------------------------------------------------------------
# Known open defects and exception signatures


@dataclass(frozen=True)
class Defect:
    """An open defect: what it looks like, where it is, and its regression test."""

    key: str
    exception: str
    #: The innermost functions of irp/ or sixchat/ the exception escapes from.
    functions: tuple[str, ...]
    description: str


#: Open defects found by this campaign, by signature. Each has a ``todo`` regression test.
KNOWN_DEFECTS: tuple[Defect, ...] = ()
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
    "docs/schema/irp.rng (serial-out: <= 20 octets) refuses and irp.wire.messages.parse_serial "
    "refuses in the client: the user's certificate list can no longer be read. Should be: "
    "refuse such certificates with invalid-argument."
)


def todo(key: str) -> str:
    """The ``todo`` reason of the regression test of open defect ``key``."""
    [defect] = [defect for defect in KNOWN_DEFECTS if defect.key == key]
    return f"defect {key}: {defect.description}"


def code_signature(error: BaseException) -> tuple[str, str]:
    """(exception type, innermost function of irp/ or sixchat/ it passed through)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [
        frame
        for frame in frames
        if re.search(r"[/\\](irp|sixchat)[/\\]", frame.filename) and not frame.name.startswith("<")
    ]
    where = ours[-1].name if ours else (frames[-1].name if frames else "?")
    return type(error).__name__, where


def known_defect(error: BaseException) -> Defect | None:
    """The open defect ``error`` is an instance of, if any."""
    kind, where = code_signature(error)
    for defect in KNOWN_DEFECTS:
        if defect.exception == kind and where in defect.functions:
            return defect
    return None


@dataclass
class Findings:
    """What a campaign found: new violations (a failure) and hits of open defects."""

    new: list[str] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    #: How inputs ended (e.g. refused by the parser, error, ok): is the fuzz reaching deep?
    outcomes: dict[str, int] = field(default_factory=dict)
    #: The inputs of the new violations (data, context), for minimisation.
    failing: list[tuple[bytes, str]] = field(default_factory=list)

    def outcome(self, name: str) -> None:
        """Count one input's outcome."""
        self.outcomes[name] = self.outcomes.get(name, 0) + 1

    def error(self, error: BaseException, what: str) -> None:
        """An exception that breaks the contract: known defect or a new violation."""
        defect = known_defect(error)
        if defect is not None:
            self.known[defect.key] = self.known.get(defect.key, 0) + 1
            return
        kind, where = code_signature(error)
        detail = "".join(traceback.format_exception(error)[-6:])
        self.new.append(f"{what}\n  raised {kind} in {where}: {error}\n{detail}")

    def violation(self, what: str) -> None:
        """A property violation that is not an exception."""
        self.new.append(what)


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
# Mutation engine (bytes, XML structure, ASN.1), shared with test_fuzz_sixchat and fuzz/

#: One mutation: (kind, a, b); a and b pick positions and values.
Op = tuple[int, int, int]

#: Byte strings that probe or break the XML rules.
XML_TOKENS: tuple[bytes, ...] = (
    b'<!DOCTYPE r [<!ENTITY e "x">]>',
    b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">',
    b'<!ENTITY e SYSTEM "file:///etc/passwd">',
    b'<!ENTITY % p "x">',
    b"&e;",
    b"%p;",
    b"&lol9;",
    b"<!-- c -->",
    b"<!---->",
    b"<![CDATA[x]]>",
    b"<![CDATA[",
    b"<?pi x?>",
    b'<?xml version="1.0"?>',
    b'<?xml version="1.0" encoding="ISO-8859-1"?>',
    b'<?xml version="1.0" encoding="UTF-16"?>',
    b"<?xml-stylesheet href='x'?>",
    b"<?xml",
    b"?>",
    b"&amp;",
    b"&lt;",
    b"&quot;",
    b"&#0;",
    b"&#65;",
    b"&#x41;",
    b"&#x110000;",
    b"&#xD800;",
    b"&#99999999999999999999;",
    b"&",
    b"&#",
    b"\xef\xbb\xbf",
    b"\xfe\xff",
    b"\xff\xfe",
    b"\x00\x00\xfe\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\xe2\x80\xae",
    b"\xc2\xb2",
    b"\xd9\xa3",
    b"\x00",
    b"\x1b",
    b"\x0c",
    b"\r\n",
    b"<",
    b">",
    b'"',
    b"'",
    b"=",
    b"/>",
    b"</x>",
    b"<x>",
    b"</request>",
    b"</response>",
    b' xmlns="urn:x"',
    b' xmlns:a="urn:a" a:b="c"',
    b' xml:lang="en"',
    b" a:b='c'",
    b' extra="1"',
    b' id="1"',
    b' id="2"',
    b' v="1"',
    b' v="2"',
    b"<unknown/>",
    b"<a:b/>",
    b"<request/>",
    b"<x>" * 40 + b"</x>" * 40,
    b"<x>" * 300,
    b' a="' + b"A" * 70000 + b'"',
    b"A" * 5000,
)

#: Interesting single bytes for "set byte".
BYTES: tuple[int, ...] = (0x00, 0x01, 0x09, 0x0A, 0x0D, 0x20, 0x22, 0x26, 0x27, 0x2F, 0x3C, 0x3D, 0x3E, 0x3F, 0x21, 0x7F, 0x80, 0xC0, 0xC2, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xFE, 0xFF)

#: Attribute values and texts that probe the field checks.
VALUES: tuple[str, ...] = (
    "",
    " ",
    "0",
    "1",
    "-1",
    "+1",
    " 1",
    "1 ",
    "01",
    "1.0",
    "1e3",
    "0x10",
    "\u00b2",
    "\u0663",
    "\uff11",
    "\u2167",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775808",
    "99999999999999999999999999999999",
    "9" * 200,
    "true",
    "false",
    "TRUE",
    "yes",
    "admin",
    "alice",
    "admin@example.org",
    "alice@example.org",
    "alice@other.example",
    "@",
    "a@b@c",
    "Alice",
    ".alice",
    "a" * 64,
    "a" * 300,
    "x" * 70000,
    "\u202e\u202d",
    "\ufeff",
    "\u00e9",
    "\U0001f600",
    "\U0010ffff",
    "\t",
    "a\nb",
    "<x/>",
    "&",
    "deadbeef",
    "00",
    "0" * 41,
    "::1",
    "127.0.0.1",
    "::",
    "ff02::1",
    "fe80::1%eth0",
    "::ffff:10.0.0.1",
    "256.1.1.1",
    "65535",
    "65536",
    "online",
    "offline",
    "away",
    "unknown",
    "p384",
    "p256",
    "ed25519",
    "rsa1024",
    "unspecified",
    "key-compromise",
    "superseded",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0000-00-00T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "AAAA",
    "AAA=",
    "====",
    "not base64!",
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "internal-error",
    "malformed-message",
    "ok",
    "error",
)

#: Tags used when adding or renaming elements.
TAGS: tuple[str, ...] = (
    "request",
    "response",
    "error",
    "whoami",
    "login",
    "password",
    "current-password",
    "csr",
    "pem",
    "data",
    "passphrase",
    "attribute",
    "attributes",
    "endpoint",
    "user",
    "account",
    "addresses",
    "certificate",
    "pkcs12",
    "session",
    "users",
    "certificates",
    "unknown",
    "{urn:x}whoami",
    "hello",
    "reply",
    "sealed",
    "auth",
    "signature",
    "finished",
    "alert",
    "message",
    "close",
    "versions",
    "version",
    "suites",
    "suite",
    "random",
)

#: Attribute names used when adding attributes.
ATTRIBUTES: tuple[str, ...] = (
    "v",
    "id",
    "status",
    "user",
    "display-name",
    "email",
    "admin",
    "password-login",
    "offset",
    "limit",
    "prefix",
    "presence",
    "ttl",
    "address",
    "port",
    "key-type",
    "label",
    "serial",
    "reason",
    "enabled",
    "code",
    "name",
    "seq",
    "signed-at",
    "signature",
    "expires",
    "size",
    "to",
    "version",
    "suite",
    "algorithm",
    "sent",
    "unknown",
    "{urn:x}id",
    "{http://www.w3.org/XML/1998/namespace}lang",
)

_MUTATION_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False
)

#: Number of op kinds (op kind is taken modulo this).
OP_KINDS = 20


def _position(data: bytes, a: int) -> int:
    return a % (len(data) + 1)


def mutate(data: bytes, ops: Iterable[Op], values: Sequence[str] = VALUES) -> bytes:
    """Apply each mutation in ``ops`` to ``data`` in turn."""
    for op in ops:
        data = mutate_once(data, op, values)
    return data


def mutate_once(data: bytes, op: Op, values: Sequence[str] = VALUES) -> bytes:
    """One mutation: byte-level (kinds 0-7), XML-structure (8-17) or ASN.1 (18-19)."""
    kind, a, b = op[0] % OP_KINDS, op[1], op[2]
    if kind >= 8:
        changed = (
            _xml_mutation(data, kind, a, b, values) if kind < 18 else _embedded_der_mutation(data, a, b)
        )
        if changed is not None:
            return changed
        kind = 5  # not XML (or no DER inside): insert a token instead
    if not data:
        return XML_TOKENS[b % len(XML_TOKENS)]
    position = a % len(data)
    if kind == 0:  # flip one bit
        changed_bytes = bytearray(data)
        changed_bytes[position] ^= 1 << (b % 8)
        return bytes(changed_bytes)
    if kind == 1:  # set one byte to an interesting value
        return data[:position] + bytes((BYTES[b % len(BYTES)],)) + data[position + 1 :]
    if kind == 2:  # truncate
        return data[:position]
    if kind == 3:  # delete a slice
        return data[:position] + data[position + 1 + b % 32 :]
    if kind == 4:  # duplicate a slice
        end = position + 1 + b % 64
        return data[:end] + data[position:end] + data[end:]
    if kind == 5:  # insert a hostile token
        at = _position(data, a)
        return data[:at] + XML_TOKENS[b % len(XML_TOKENS)] + data[at:]
    if kind == 6:  # insert pseudo-random bytes
        at = _position(data, a)
        noise = random.Random(b).randbytes(1 + b % 16)
        return data[:at] + noise + data[at:]
    # kind 7: move a slice elsewhere (reorder)
    end = position + 1 + b % 64
    piece, rest = data[position:end], data[:position] + data[end:]
    at = (b >> 8) % (len(rest) + 1)
    return rest[:at] + piece + rest[at:]


def _xml_mutation(data: bytes, kind: int, a: int, b: int, values: Sequence[str]) -> bytes | None:
    """A structural mutation of a well-formed document (None if ``data`` is not one; the
    document unchanged if this mutation does not apply to it)."""
    try:
        root = etree.fromstring(data, _MUTATION_PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root is None or not isinstance(root.tag, str):
        return None
    changed = _apply_xml_mutation(root, kind, a, b, values)
    return data if changed is None else changed


def _apply_xml_mutation(root: Any, kind: int, a: int, b: int, values: Sequence[str]) -> bytes | None:
    elements = [element for element in root.iter() if isinstance(element.tag, str)]
    target = elements[a % len(elements)]
    value = values[b % len(values)]
    try:
        if kind == 8:  # add an attribute (unknown or known) with an interesting value
            target.set(ATTRIBUTES[(b >> 8) % len(ATTRIBUTES)], value)
        elif kind == 9:  # change an existing attribute's value
            names = list(target.keys())
            if not names:
                return None
            target.set(names[(b >> 8) % len(names)], value)
        elif kind == 10:  # remove an attribute, or the element itself
            names = list(target.keys())
            if names and b % 2:
                del target.attrib[names[(b >> 8) % len(names)]]
            elif target is not root:
                target.getparent().remove(target)
            else:
                return None
        elif kind == 11:  # add a child element
            child = etree.SubElement(target, TAGS[b % len(TAGS)])
            if (b >> 8) % 2:
                child.text = values[(b >> 9) % len(values)]
        elif kind == 12:  # set the text
            if len(target) and (b >> 16) % 2:
                target[-1].tail = value
            else:
                target.text = value
        elif kind == 13:  # duplicate the element (as its next sibling)
            if target is root:
                return None
            twin = copy.deepcopy(target)
            twin.tail = None
            target.addnext(twin)
        elif kind == 14:  # swap with a sibling (reorder)
            parent = target.getparent()
            if parent is None or len(parent) < 2:
                return None
            other = parent[(b >> 8) % len(parent)]
            if other is target:
                return None
            index_a, index_b = parent.index(target), parent.index(other)
            parent.remove(target)
            parent.insert(index_b if index_b < index_a else index_b - 1, target)
            parent.remove(other)
            parent.insert(index_a, other)
        elif kind == 15:  # wrap in deep nesting
            depth = 1 + b % 24
            parent = target.getparent()
            if parent is None:
                return None
            index = parent.index(target)
            outer = inner = etree.Element("w")
            for _ in range(depth - 1):
                inner = etree.SubElement(inner, "w")
            parent.remove(target)
            inner.append(target)
            parent.insert(index, outer)
        elif kind == 16:  # rename the element
            target.tag = TAGS[b % len(TAGS)]
        else:  # kind 17: a huge attribute or text
            size = (b % 7) * 40000 + 1
            if (b >> 8) % 2:
                target.set(ATTRIBUTES[(b >> 9) % len(ATTRIBUTES)], "A" * size)
            else:
                target.text = "B" * size
    except ValueError:  # a value XML cannot carry (lxml refuses it): no mutation
        return None
    return bytes(etree.tostring(root))


# -- ASN.1 (DER) mutation of certificates and CSRs -------------------------------------


@dataclass
class Asn1Node:
    """A DER TLV: identifier octets and either a primitive value or children."""

    tag: bytes
    value: bytes = b""
    children: list[Asn1Node] | None = None

    def encode(self) -> bytes:
        """The DER bytes (lengths recomputed)."""
        body = self.value if self.children is None else b"".join(child.encode() for child in self.children)
        return self.tag + _der_length(len(body)) + body

    def walk(self) -> list[Asn1Node]:
        """This node and all nodes below it, depth first."""
        found = [self]
        for child in self.children or ():
            found.extend(child.walk())
        return found


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def parse_der(data: bytes, depth: int = 0) -> list[Asn1Node]:
    """Parse DER into nodes (constructed tags and BIT/OCTET STRINGs holding DER are split).

    Raises ValueError for anything that is not a sequence of complete TLVs.
    """
    nodes: list[Asn1Node] = []
    index = 0
    while index < len(data):
        start = index
        first = data[index]
        index += 1
        if first & 0x1F == 0x1F:
            while index < len(data) and data[index] & 0x80:
                index += 1
            index += 1
        tag = data[start:index]
        if index >= len(data):
            raise ValueError("truncated TLV")
        length = data[index]
        index += 1
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4:
                raise ValueError("unsupported length")
            length = int.from_bytes(data[index : index + count], "big")
            index += count
        content = data[index : index + length]
        if len(content) != length:
            raise ValueError("truncated value")
        index += length
        if first & 0x20 and depth < 24:
            nodes.append(Asn1Node(tag, children=parse_der(content, depth + 1)))
        else:
            nodes.append(Asn1Node(tag, value=content))
    return nodes


#: Object identifiers to splice into DER: unknown ones, and real ones in the wrong place.
OIDS: tuple[bytes, ...] = (
    bytes.fromhex("2a0304"),  # 1.2.3.4 (unknown)
    bytes.fromhex("551d11"),  # subjectAltName
    bytes.fromhex("551d13"),  # basicConstraints
    bytes.fromhex("551d0f"),  # keyUsage
    bytes.fromhex("2a8648ce3d0201"),  # id-ecPublicKey
    bytes.fromhex("2b8104000a"),  # secp256k1 (not accepted)
    bytes.fromhex("2b81040022"),  # secp384r1
    bytes.fromhex("2b6570"),  # Ed25519
    bytes.fromhex("2b6571"),  # Ed448
    bytes.fromhex("2b656e"),  # X25519
    bytes.fromhex("2a864886f70d010101"),  # rsaEncryption
    bytes.fromhex("2a8648ce380401"),  # DSA
    bytes.fromhex("2a864886f70d01010a"),  # RSASSA-PSS
    bytes.fromhex("2a8648ce3d040303"),  # ecdsa-with-SHA384
)


def mutate_der(der: bytes, a: int, b: int) -> bytes:
    """One structure-aware mutation of a DER structure (a certificate or CSR)."""
    try:
        roots = parse_der(der)
    except ValueError:
        return der
    nodes = [node for root in roots for node in root.walk()]
    target = nodes[a % len(nodes)]
    kind = b % 8
    parents = [node for node in nodes if node.children and any(child is target for child in node.children)]
    parent = parents[0] if parents else None
    if kind == 0 and parent is not None and parent.children is not None:  # duplicate (e.g. an extension)
        parent.children.insert(parent.children.index(target), Asn1Node(target.tag, target.value, _copy(target.children)))
    elif kind == 1 and parent is not None and parent.children is not None:  # delete
        parent.children.remove(target)
    elif kind == 2:  # replace an OID (or any primitive) by another OID
        oids = [node for node in nodes if node.tag == b"\x06"]
        if oids:
            oids[a % len(oids)].value = OIDS[(b >> 3) % len(OIDS)]
    elif kind == 3 and target.children is None:  # garbage primitive value
        target.value = random.Random(b).randbytes((b >> 3) % 40)
    elif kind == 4 and target.children is None and target.value:  # flip a bit in a value
        value = bytearray(target.value)
        value[(b >> 3) % len(value)] ^= 1 << ((b >> 11) % 8)
        target.value = bytes(value)
    elif kind == 5:  # change a tag
        target.tag = bytes(((target.tag[0] ^ (1 << ((b >> 3) % 8))),)) + target.tag[1:]
    elif kind == 6 and target.children is None:  # wrap a DER value in an OCTET STRING
        target.value = b"\x04" + _der_length(len(target.value)) + target.value
    else:  # empty a constructed node, or a primitive one
        if target.children is not None:
            target.children = []
        else:
            target.value = b""
    return b"".join(root.encode() for root in roots)


def _copy(children: list[Asn1Node] | None) -> list[Asn1Node] | None:
    if children is None:
        return None
    return [Asn1Node(child.tag, child.value, _copy(child.children)) for child in children]


_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----\s*", re.DOTALL)


def _embedded_der_mutation(data: bytes, a: int, b: int) -> bytes | None:
    """Mutate the DER of a PEM block or of long base64 text inside an XML document."""
    try:
        root = etree.fromstring(data, _MUTATION_PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root is None or not isinstance(root.tag, str):
        return None
    holders = [element for element in root.iter() if isinstance(element.tag, str) and len(element.text or "") >= 64]
    if not holders:
        return None
    target = holders[a % len(holders)]
    text = target.text or ""
    match = _PEM.search(text)
    try:
        der = base64.b64decode("".join((match.group(2) if match else text).split()), validate=True)
    except ValueError:
        return None
    changed = mutate_der(der, a >> 4, b)
    encoded = base64.b64encode(changed).decode("ascii")
    if match:
        lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
        target.text = f"-----BEGIN {match.group(1)}-----\n{lines}\n-----END {match.group(1)}-----\n"
    else:
        target.text = encoded
    return bytes(etree.tostring(root))


#: Hypothesis strategy of a few mutations.
ops_strategy = st.lists(
    st.tuples(st.integers(0, OP_KINDS - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=4,
)


def random_ops(rnd: random.Random, most: int = 4, structural: float = 0.0) -> list[Op]:
    """A few random mutations (for seeded loops); ``structural`` is the share of
    XML-structure mutations (which keep documents well-formed, to reach the handlers)."""
    return [
        (
            rnd.randrange(8, 18) if rnd.random() < structural else rnd.randrange(OP_KINDS),
            rnd.getrandbits(32),
            rnd.getrandbits(32),
        )
        for _ in range(1 + rnd.randrange(most))
    ]


def harvest_values(documents: Iterable[bytes]) -> tuple[str, ...]:
    """Attribute values and short texts of valid documents, plus :data:`VALUES`."""
    found: set[str] = set()
    for document in documents:
        try:
            root = etree.fromstring(document, _MUTATION_PARSER)
        except (etree.XMLSyntaxError, ValueError):
            continue
        for element in root.iter():
            found.update(value for value in element.attrib.values() if len(value) < 200)
            if element.text and len(element.text) < 200:
                found.add(element.text)
    return tuple(VALUES) + tuple(sorted(found))


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

DOMAIN = "example.org"


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
        from irp.wire.messages import optional_int

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



CRAFTED_DEFECTS = (
    "duplicate-san",
    "garbage-san",
    "unknown-key",
    "unknown-curve",
    "bad-version",
    "long-serial",
    "negative-serial",
)


def crafted_certificate(defect: str, username: str = "alice", *, external: bool = False) -> x509.Certificate:
    """:func:`crafted_der`, loaded (for the defects cryptography loads)."""
    return x509.load_der_x509_certificate(crafted_der(defect, username, external=external))


def crafted_pem(defect: str, username: str = "alice", *, external: bool = False) -> str:
    """:func:`crafted_der` in PEM."""
    encoded = base64.b64encode(crafted_der(defect, username, external=external)).decode("ascii")
    lines = "\n".join(encoded[index : index + 64] for index in range(0, len(encoded), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def crafted_der(defect: str, username: str = "alice", *, external: bool = False) -> bytes:
    """The DER of a certificate for ``username@example.org`` with one structural defect.

    ``duplicate-san``: two subjectAltName extensions. ``garbage-san``: the SAN value is not
    DER. ``unknown-key``: the key's algorithm is OID 1.2.3.4. ``unknown-curve``: an EC key
    on curve OID 1.2.3.4. ``bad-version``: version 66. ``long-serial``: a 22-octet serial.
    ``negative-serial``: serial -1. The certificate is from the test CA, or self-signed by
    "another issuer" if ``external``. (The signature no longer matches; parsers must not
    care.)
    """
    if external:
        from test.irp.wire.test_schema import external_certificate

        certificate = external_certificate(username)
    else:
        certificate = pki.issue_user(pki.make_ca(DOMAIN), username).certificate
    [root] = parse_der(certificate.public_bytes(Encoding.DER))
    assert root.children is not None
    tbs = root.children[0]
    assert tbs.children is not None
    extensions_wrapper = next(node for node in tbs.children if node.tag == b"\xa3")
    assert extensions_wrapper.children is not None and extensions_wrapper.children[0].children is not None
    extensions = extensions_wrapper.children[0].children
    san = next(node for node in extensions if node.children and node.children[0].value == bytes.fromhex("551d11"))
    spki = tbs.children[6]
    assert spki.children is not None and spki.children[0].children is not None
    if defect == "duplicate-san":
        extensions.append(Asn1Node(san.tag, san.value, _copy(san.children)))
    elif defect == "garbage-san":
        assert san.children is not None
        san.children[-1].value = b"\x30\x03\x86\x05ab"
    elif defect == "unknown-key":
        spki.children[0].children[0].value = bytes.fromhex("2a0304")
    elif defect == "unknown-curve":
        spki.children[0].children[1].value = bytes.fromhex("2a0304")
    elif defect == "bad-version":
        assert tbs.children[0].children is not None
        tbs.children[0].children[0].value = b"\x42"
    elif defect == "long-serial":
        tbs.children[1].value = b"\x41" + bytes(range(1, 22))
    elif defect == "negative-serial":
        tbs.children[1].value = b"\xff"
    else:
        raise ValueError(defect)
    return root.encode()


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
    from test.irp.wire.test_schema import external_certificate

    await alice.upload_certificate(external_certificate("alice"))
    await alice.revoke(renewed.serial, "key-compromise")
    await alice.set_password(None, "another long passphrase", DEFAULT_PASSWORD)
    await admin.set_password_login("bob", False)
    await admin.set_admin("bob", True)
    await admin.set_admin("bob", False)
    await admin.delete_user("carol")
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

