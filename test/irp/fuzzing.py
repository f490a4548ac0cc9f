"""The fuzzing library of the IRP fuzz tests, shared with the sixchat and PKI fuzz tests: known defects and findings, byte, XML and ASN.1 mutations, certificates with crafted defects."""

from __future__ import annotations

import base64
import copy
import functools
import random
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import strategies as st
from lxml import etree

from test import pki


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


DOMAIN = "example.org"


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
        from test.irp.wire.helpers import external_certificate

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
