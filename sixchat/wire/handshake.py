"""The handshake messages of SixChat 1: hello, reply, sealed, auth, and the alerts.

Every message is one XML document without namespace, parsed by
:func:`common.wire.xmlcodec.parse_document` (no DTD, entities, comments, CDATA or processing
instructions) and then checked strictly (:mod:`sixchat.wire.fields`): exact element and
attribute sets, children in a fixed order (white space between elements is ignored),
canonical base64 with padding and exact lengths. Anything else raises
:class:`~sixchat.errors.MalformedMessage`. ``docs/schema/sixchat.rng`` describes the same
documents in RELAX NG.

Errors become ``<alert>`` documents only in :func:`alert_for`, and alerts become errors only
in :func:`error_from_alert` (alerts travel in handshake frames and in records alike).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from common.identity import Identity, InvalidIdentity
from common.wire.xmlcodec import serialize_leaf
from sixchat import errors
from sixchat.wire.fields import (
    Element,
    attribute,
    check_attributes,
    children,
    decode_base64,
    empty,
    leaf_text,
    malformed,
    parse,
    repeated,
    token,
)

#: The one protocol version and the one cipher suite of SixChat 1.
VERSION: Final = "1"
SUITE: Final = "SIXCHAT1-X25519MLKEM768-AES256GCM-SHA384"

RANDOM_LENGTH: Final = 32
X25519_KEY_LENGTH: Final = 32
MLKEM768_KEY_LENGTH: Final = 1184
MLKEM768_CIPHERTEXT_LENGTH: Final = 1088
FINISHED_LENGTH: Final = 48

#: Signature algorithm names (chosen by the type of the signer's leaf key).
SIGNATURE_ALGORITHMS: Final = (
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "ecdsa-p521-sha512",
    "ed25519",
    "rsa-pss-sha384",
)

#: Caps inside the messages (the frame cap bounds them all as well).
MAX_OFFERED: Final = 8
MAX_CERTIFICATES: Final = 6
MAX_CERTIFICATE_LENGTH: Final = 16384
MAX_SIGNATURE_LENGTH: Final = 1024
MAX_SEALED_LENGTH: Final = 65536

_ALERT_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}\Z")
_ALERT_CODE = re.compile(r"[1-9][0-9]{2}\Z")

#: Parse limits: handshake documents are shallow and small.
_HANDSHAKE_DEPTH: Final = 3
_HANDSHAKE_ELEMENTS: Final = 2 * MAX_OFFERED + 8


# ---------------------------------------------------------------------------------------
# Handshake messages


def _base64_leaf(tag: bytes, data: bytes) -> bytes:
    """The bytes lxml writes for ``<tag>`` holding ``data`` in base64: the base64 alphabet
    needs no escaping, so the text is written as :func:`base64.b64encode` gives it."""
    return b"<" + tag + b">" + base64.b64encode(data) + b"</" + tag + b">"


def _document(tag: str, attributes: dict[str, str] | None, *children: bytes) -> bytes:
    """The bytes lxml writes for an element with ``attributes`` and ``children`` (each
    the bytes of one serialised element, or text that needs no escaping), without
    building a tree: the start tag is the one :func:`serialize_leaf` writes for the empty
    element, whose ``/>`` becomes ``>``."""
    if not children:
        return serialize_leaf(tag, attributes)
    return b"".join((serialize_leaf(tag, attributes)[:-2], b">", *children, b"</", tag.encode(), b">"))


@dataclass(frozen=True)
class Hello:
    """M1, initiator to responder, in clear: offers, random, key shares, intended peer."""

    to: Identity
    random: bytes
    x25519_key: bytes
    mlkem_key: bytes
    versions: tuple[str, ...] = (VERSION,)
    suites: tuple[str, ...] = (SUITE,)

    def to_xml(self) -> bytes:
        """The document's bytes."""
        return _document(
            "hello",
            {"to": str(self.to)},
            _document("versions", None, *(serialize_leaf("version", None, v) for v in self.versions)),
            _document("suites", None, *(serialize_leaf("suite", None, suite) for suite in self.suites)),
            _base64_leaf(b"random", self.random),
            _base64_leaf(b"x25519-key", self.x25519_key),
            _base64_leaf(b"mlkem768-key", self.mlkem_key),
        )

    @classmethod
    def from_element(cls, root: Element) -> Hello:
        """Check and read a ``<hello>`` element."""
        check_attributes(root, ("to",))
        text = attribute(root, "to")
        try:
            to = Identity.parse(text)
        except InvalidIdentity:
            raise malformed("<hello to> is not a valid identity") from None
        if str(to) != text:
            raise malformed("<hello to> is not in canonical (lower-case) form")
        versions, suites, random, x25519_key, mlkem_key = children(
            root, ("versions", "suites", "random", "x25519-key", "mlkem768-key")
        )
        check_attributes(versions, ())
        check_attributes(suites, ())
        return cls(
            to=to,
            versions=tuple(
                token(leaf_text(version), "a version")
                for version in repeated(versions, "version", 1, MAX_OFFERED)
            ),
            suites=tuple(
                token(leaf_text(suite), "a suite")
                for suite in repeated(suites, "suite", 1, MAX_OFFERED)
            ),
            random=decode_base64(leaf_text(random), "the random", length=RANDOM_LENGTH),
            x25519_key=decode_base64(
                leaf_text(x25519_key), "the X25519 key", length=X25519_KEY_LENGTH
            ),
            mlkem_key=decode_base64(
                leaf_text(mlkem_key), "the ML-KEM-768 key", length=MLKEM768_KEY_LENGTH
            ),
        )


@dataclass(frozen=True)
class Reply:
    """M2, responder to initiator, in clear: selection, random, key shares."""

    random: bytes
    x25519_key: bytes
    mlkem_ciphertext: bytes
    version: str = VERSION
    suite: str = SUITE

    def to_xml(self) -> bytes:
        """The document's bytes."""
        return _document(
            "reply",
            {"version": self.version, "suite": self.suite},
            _base64_leaf(b"random", self.random),
            _base64_leaf(b"x25519-key", self.x25519_key),
            _base64_leaf(b"mlkem768-ciphertext", self.mlkem_ciphertext),
        )

    @classmethod
    def from_element(cls, root: Element) -> Reply:
        """Check and read a ``<reply>`` element."""
        check_attributes(root, ("version", "suite"))
        random, x25519_key, ciphertext = children(
            root, ("random", "x25519-key", "mlkem768-ciphertext")
        )
        return cls(
            version=token(attribute(root, "version"), "the version"),
            suite=token(attribute(root, "suite"), "the suite"),
            random=decode_base64(leaf_text(random), "the random", length=RANDOM_LENGTH),
            x25519_key=decode_base64(
                leaf_text(x25519_key), "the X25519 key", length=X25519_KEY_LENGTH
            ),
            mlkem_ciphertext=decode_base64(
                leaf_text(ciphertext),
                "the ML-KEM-768 ciphertext",
                length=MLKEM768_CIPHERTEXT_LENGTH,
            ),
        )


@dataclass(frozen=True)
class Sealed:
    """M2b and M3 (or a late handshake alert): AES-256-GCM under a handshake traffic key."""

    ciphertext: bytes

    def to_xml(self) -> bytes:
        """The document's bytes."""
        return _base64_leaf(b"sealed", self.ciphertext)

    @classmethod
    def from_element(cls, root: Element) -> Sealed:
        """Check and read a ``<sealed>`` element."""
        return cls(
            decode_base64(leaf_text(root), "the sealed message", max_length=MAX_SEALED_LENGTH)
        )


@dataclass(frozen=True)
class Auth:
    """The sealed contents of M2b and M3: chain, transcript signature, Finished MAC."""

    certificates: tuple[bytes, ...]
    signature_algorithm: str
    signature: bytes
    finished: bytes

    def to_xml(self) -> bytes:
        """The document's bytes."""
        return _document(
            "auth",
            None,
            *(_base64_leaf(b"certificate", der) for der in self.certificates),
            _document("signature", {"algorithm": self.signature_algorithm}, base64.b64encode(self.signature)),
            _base64_leaf(b"finished", self.finished),
        )

    @classmethod
    def from_element(cls, root: Element) -> Auth:
        """Check and read an ``<auth>`` element."""
        check_attributes(root, ())
        count = len(root) - 2
        if not 1 <= count <= MAX_CERTIFICATES:
            raise malformed(f"<auth> must carry 1 to {MAX_CERTIFICATES} certificates")
        *certificates, signature, finished = children(
            root, ("certificate",) * count + ("signature", "finished")
        )
        algorithm = signature.get("algorithm", "")
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise malformed("unknown signature algorithm")
        return cls(
            certificates=tuple(
                decode_base64(
                    leaf_text(certificate), "a certificate", max_length=MAX_CERTIFICATE_LENGTH
                )
                for certificate in certificates
            ),
            signature_algorithm=algorithm,
            signature=decode_base64(
                leaf_text(signature, attributes=("algorithm",)),
                "the signature",
                max_length=MAX_SIGNATURE_LENGTH,
            ),
            finished=decode_base64(leaf_text(finished), "the Finished MAC", length=FINISHED_LENGTH),
        )


# ---------------------------------------------------------------------------------------
# Alerts


@dataclass(frozen=True)
class Alert:
    """An ``<alert>``: the wire form of a :class:`~sixchat.errors.SixChatError`."""

    code: int
    name: str
    reason: str | None = None

    def to_xml(self) -> bytes:
        """The document's bytes."""
        attributes = {"code": str(self.code), "name": self.name}
        if self.reason is not None:
            attributes["reason"] = self.reason
        return serialize_leaf("alert", attributes)

    @classmethod
    def from_element(cls, root: Element) -> Alert:
        """Check and read an ``<alert>`` element."""
        empty(root, ("code", "name"), ("reason",))
        code = attribute(root, "code")
        name = attribute(root, "name")
        reason = root.get("reason")
        if not _ALERT_CODE.match(code) or not _ALERT_NAME.match(name):
            raise malformed("invalid alert code or name")
        if reason is not None and not _ALERT_NAME.match(reason):
            raise malformed("invalid alert reason")
        return cls(int(code), name, reason)


def alert_for(error: errors.SixChatError) -> bytes:
    """The ``<alert>`` document telling the peer about ``error``: the one error-to-wire place.

    Only the code, the name and (for a rejection) the public form of the reason travel:
    never the local message, which may hold details meant for our logs.
    """
    reason = error.wire_reason if isinstance(error, errors.PeerRejected) else None
    return Alert(error.code, error.name, reason).to_xml()


def error_from_alert(alert: Alert) -> errors.SixChatError:
    """The error a received alert reports (unknown names fall back to their code's class)."""
    cls = errors.error_class_for(alert.name, alert.code)
    message = f"The peer reported: {cls.default_message}"
    error: errors.SixChatError
    if cls is errors.PeerRejected:
        reason = alert.reason if alert.reason in errors.PEER_REJECTED_WIRE_REASONS else "policy"
        error = errors.PeerRejected(message, reason=reason or "policy")
    else:
        error = cls(message)
    error.from_peer = True
    return error


def parse_alert(payload: bytes) -> errors.SixChatError:
    """Parse an ``<alert>`` document and return the error it reports."""
    root = parse(payload, max_depth=1, max_elements=1)
    if root.tag != "alert":
        raise malformed("expected an <alert>")
    return error_from_alert(Alert.from_element(root))


# ---------------------------------------------------------------------------------------
# Handshake frames and sealed contents

HandshakeMessage: TypeAlias = Hello | Reply | Sealed | Alert
SealedContent: TypeAlias = Auth | Alert


def parse_handshake_frame(payload: bytes) -> HandshakeMessage:
    """Parse the payload of a clear handshake frame."""
    root = parse(payload, max_depth=_HANDSHAKE_DEPTH, max_elements=_HANDSHAKE_ELEMENTS)
    tag = root.tag
    if tag == "hello":
        return Hello.from_element(root)
    if tag == "reply":
        return Reply.from_element(root)
    if tag == "sealed":
        return Sealed.from_element(root)
    if tag == "alert":
        return Alert.from_element(root)
    raise malformed("not a SixChat handshake message")


def parse_sealed_content(plaintext: bytes) -> SealedContent:
    """Parse the decrypted contents of a ``<sealed>`` message."""
    root = parse(plaintext, max_depth=2, max_elements=MAX_CERTIFICATES + 3)
    if root.tag == "auth":
        return Auth.from_element(root)
    if root.tag == "alert":
        return Alert.from_element(root)
    raise malformed("a sealed message must hold <auth> or <alert>")
