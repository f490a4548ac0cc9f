"""The XML messages of SixChat 1: handshake, sealed contents, alerts and application messages.

Every message is one XML document without namespace, parsed by
:func:`common.wire.xmlcodec.parse_document` (no DTD, entities, comments, CDATA or processing
instructions) and then checked strictly: exact element and attribute sets, children in a
fixed order (white space between elements is ignored), canonical base64 with padding and
exact lengths. Anything else raises :class:`~sixchat.errors.MalformedMessage`.
``docs/schema/sixchat.rng`` describes the same documents in RELAX NG.

Errors become ``<alert>`` documents only in :func:`alert_for`, and alerts become errors only
in :func:`error_from_alert`.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeAlias

from lxml import etree

from common.identity import Identity, InvalidIdentity
from common.wire.xmlcodec import (
    XMLRejected,
    make_element,
    parse_document,
    serialize,
    sub_element,
)
from sixchat import errors

#: An lxml element (lxml ships no type information, so this is Any to mypy).
Element: TypeAlias = etree._Element

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
MAX_TEXT_LENGTH: Final = 16384
MAX_REASON_LENGTH: Final = 256

PRESENCE_STATUSES: Final = ("online", "away", "busy", "offline")

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ALERT_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}\Z")
_ALERT_CODE = re.compile(r"[1-9][0-9]{2}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z\Z")
_XML_SPACE = " \t\r\n"

#: Parse limits: handshake documents are shallow and small.
_HANDSHAKE_DEPTH: Final = 3
_HANDSHAKE_ELEMENTS: Final = 2 * MAX_OFFERED + 8
_APPLICATION_DEPTH: Final = 1


# ---------------------------------------------------------------------------------------
# Strict parsing helpers


def _malformed(message: str) -> errors.MalformedMessage:
    return errors.MalformedMessage(message)


def _parse(payload: bytes, *, max_depth: int, max_elements: int) -> Element:
    root: Element
    try:
        root = parse_document(payload, max_depth=max_depth, max_elements=max_elements)
    except XMLRejected as error:
        raise _malformed(f"unacceptable XML: {error}") from None
    if root.nsmap:
        raise _malformed("namespaces are not used in SixChat messages")
    return root


def _check_attributes(
    element: Element, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    names = set(element.attrib.keys())
    missing = [name for name in required if name not in names]
    if missing:
        raise _malformed(f"<{element.tag}> lacks the attribute(s) {', '.join(missing)}")
    unknown = names - set(required) - set(optional)
    if unknown:
        raise _malformed(f"<{element.tag}> has unknown attribute(s) {', '.join(sorted(unknown))}")


def _attribute(element: Element, name: str) -> str:
    value = element.get(name)
    assert value is not None  # checked by _check_attributes
    return str(value)


def _only_space(text: str | None) -> bool:
    return text is None or not text.strip(_XML_SPACE)


def _children(element: Element, tags: tuple[str, ...]) -> list[Element]:
    """Return the children, which must carry exactly ``tags`` in this order."""
    children = list(element)
    if tuple(child.tag for child in children) != tags:
        raise _malformed(f"<{element.tag}> must contain exactly {', '.join(tags) or 'nothing'}")
    if not _only_space(element.text) or not all(_only_space(child.tail) for child in children):
        raise _malformed(f"<{element.tag}> holds text between its elements")
    return children


def _repeated(element: Element, tag: str, low: int, high: int) -> list[Element]:
    children = list(element)
    if not low <= len(children) <= high or any(child.tag != tag for child in children):
        raise _malformed(f"<{element.tag}> must contain {low} to {high} <{tag}> elements")
    if not _only_space(element.text) or not all(_only_space(child.tail) for child in children):
        raise _malformed(f"<{element.tag}> holds text between its elements")
    return children


def _leaf_text(element: Element, *, attributes: tuple[str, ...] = ()) -> str:
    """The text of an element that must hold only text."""
    _check_attributes(element, attributes)
    if len(element):
        raise _malformed(f"<{element.tag}> must hold only text")
    return str(element.text or "")


def _empty(element: Element, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> None:
    _check_attributes(element, required, optional)
    if len(element) or element.text:
        raise _malformed(f"<{element.tag}> must be empty")


def _token(text: str, what: str) -> str:
    if not _TOKEN.match(text):
        raise _malformed(f"{what} is not a valid token")
    return text


def encode_base64(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def decode_base64(
    text: str, what: str, *, length: int | None = None, max_length: int | None = None
) -> bytes:
    """Decode canonical standard base64 (padding required, no white space, zero pad bits)."""
    try:
        encoded = text.encode("ascii")
        data = base64.b64decode(encoded, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _malformed(f"{what} is not valid base64") from None
    if base64.b64encode(data) != encoded:
        raise _malformed(f"{what} is not canonical base64")
    if length is not None and len(data) != length:
        raise _malformed(f"{what} must be {length} bytes, not {len(data)}")
    if max_length is not None and not 0 < len(data) <= max_length:
        raise _malformed(f"{what} must be 1 to {max_length} bytes")
    return data


# ---------------------------------------------------------------------------------------
# Handshake messages


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
        root = make_element("hello", {"to": str(self.to)})
        versions = sub_element(root, "versions")
        for version in self.versions:
            sub_element(versions, "version", text=version)
        suites = sub_element(root, "suites")
        for suite in self.suites:
            sub_element(suites, "suite", text=suite)
        sub_element(root, "random", text=encode_base64(self.random))
        sub_element(root, "x25519-key", text=encode_base64(self.x25519_key))
        sub_element(root, "mlkem768-key", text=encode_base64(self.mlkem_key))
        return serialize(root)

    @classmethod
    def from_element(cls, root: Element) -> Hello:
        """Check and read a ``<hello>`` element."""
        _check_attributes(root, ("to",))
        text = _attribute(root, "to")
        try:
            to = Identity.parse(text)
        except InvalidIdentity:
            raise _malformed("<hello to> is not a valid identity") from None
        if str(to) != text:
            raise _malformed("<hello to> is not in canonical (lower-case) form")
        versions, suites, random, x25519_key, mlkem_key = _children(
            root, ("versions", "suites", "random", "x25519-key", "mlkem768-key")
        )
        _check_attributes(versions, ())
        _check_attributes(suites, ())
        return cls(
            to=to,
            versions=tuple(
                _token(_leaf_text(version), "a version")
                for version in _repeated(versions, "version", 1, MAX_OFFERED)
            ),
            suites=tuple(
                _token(_leaf_text(suite), "a suite")
                for suite in _repeated(suites, "suite", 1, MAX_OFFERED)
            ),
            random=decode_base64(_leaf_text(random), "the random", length=RANDOM_LENGTH),
            x25519_key=decode_base64(
                _leaf_text(x25519_key), "the X25519 key", length=X25519_KEY_LENGTH
            ),
            mlkem_key=decode_base64(
                _leaf_text(mlkem_key), "the ML-KEM-768 key", length=MLKEM768_KEY_LENGTH
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
        root = make_element("reply", {"version": self.version, "suite": self.suite})
        sub_element(root, "random", text=encode_base64(self.random))
        sub_element(root, "x25519-key", text=encode_base64(self.x25519_key))
        sub_element(root, "mlkem768-ciphertext", text=encode_base64(self.mlkem_ciphertext))
        return serialize(root)

    @classmethod
    def from_element(cls, root: Element) -> Reply:
        """Check and read a ``<reply>`` element."""
        _check_attributes(root, ("version", "suite"))
        random, x25519_key, ciphertext = _children(
            root, ("random", "x25519-key", "mlkem768-ciphertext")
        )
        return cls(
            version=_token(_attribute(root, "version"), "the version"),
            suite=_token(_attribute(root, "suite"), "the suite"),
            random=decode_base64(_leaf_text(random), "the random", length=RANDOM_LENGTH),
            x25519_key=decode_base64(
                _leaf_text(x25519_key), "the X25519 key", length=X25519_KEY_LENGTH
            ),
            mlkem_ciphertext=decode_base64(
                _leaf_text(ciphertext),
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
        return serialize(make_element("sealed", text=encode_base64(self.ciphertext)))

    @classmethod
    def from_element(cls, root: Element) -> Sealed:
        """Check and read a ``<sealed>`` element."""
        return cls(
            decode_base64(_leaf_text(root), "the sealed message", max_length=MAX_SEALED_LENGTH)
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
        root = make_element("auth")
        for der in self.certificates:
            sub_element(root, "certificate", text=encode_base64(der))
        sub_element(
            root,
            "signature",
            {"algorithm": self.signature_algorithm},
            encode_base64(self.signature),
        )
        sub_element(root, "finished", text=encode_base64(self.finished))
        return serialize(root)

    @classmethod
    def from_element(cls, root: Element) -> Auth:
        """Check and read an ``<auth>`` element."""
        _check_attributes(root, ())
        children = list(root)
        count = len(children) - 2
        if not 1 <= count <= MAX_CERTIFICATES:
            raise _malformed(f"<auth> must carry 1 to {MAX_CERTIFICATES} certificates")
        *certificates, signature, finished = _children(
            root, ("certificate",) * count + ("signature", "finished")
        )
        algorithm = signature.get("algorithm", "")
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise _malformed("unknown signature algorithm")
        return cls(
            certificates=tuple(
                decode_base64(
                    _leaf_text(certificate), "a certificate", max_length=MAX_CERTIFICATE_LENGTH
                )
                for certificate in certificates
            ),
            signature_algorithm=algorithm,
            signature=decode_base64(
                _leaf_text(signature, attributes=("algorithm",)),
                "the signature",
                max_length=MAX_SIGNATURE_LENGTH,
            ),
            finished=decode_base64(_leaf_text(finished), "the Finished MAC", length=FINISHED_LENGTH),
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
        return serialize(make_element("alert", attributes))

    @classmethod
    def from_element(cls, root: Element) -> Alert:
        """Check and read an ``<alert>`` element."""
        _empty(root, ("code", "name"), ("reason",))
        code = _attribute(root, "code")
        name = _attribute(root, "name")
        reason = root.get("reason")
        if not _ALERT_CODE.match(code) or not _ALERT_NAME.match(name):
            raise _malformed("invalid alert code or name")
        if reason is not None and not _ALERT_NAME.match(reason):
            raise _malformed("invalid alert reason")
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
    root = _parse(payload, max_depth=1, max_elements=1)
    if root.tag != "alert":
        raise _malformed("expected an <alert>")
    return error_from_alert(Alert.from_element(root))


# ---------------------------------------------------------------------------------------
# Handshake frames and sealed contents

HandshakeMessage: TypeAlias = Hello | Reply | Sealed | Alert
SealedContent: TypeAlias = Auth | Alert


def parse_handshake_frame(payload: bytes) -> HandshakeMessage:
    """Parse the payload of a clear handshake frame."""
    root = _parse(payload, max_depth=_HANDSHAKE_DEPTH, max_elements=_HANDSHAKE_ELEMENTS)
    tag = root.tag
    if tag == "hello":
        return Hello.from_element(root)
    if tag == "reply":
        return Reply.from_element(root)
    if tag == "sealed":
        return Sealed.from_element(root)
    if tag == "alert":
        return Alert.from_element(root)
    raise _malformed("not a SixChat handshake message")


def parse_sealed_content(plaintext: bytes) -> SealedContent:
    """Parse the decrypted contents of a ``<sealed>`` message."""
    root = _parse(plaintext, max_depth=2, max_elements=MAX_CERTIFICATES + 3)
    if root.tag == "auth":
        return Auth.from_element(root)
    if root.tag == "alert":
        return Alert.from_element(root)
    raise _malformed("a sealed message must hold <auth> or <alert>")


# ---------------------------------------------------------------------------------------
# Application messages (inside records)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` and only as many fraction digits as needed."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 UTC (``Z`` only, up to microseconds) into an aware datetime."""
    if not _TIMESTAMP.match(text):
        raise _malformed("invalid time stamp: expected RFC 3339 UTC such as 2026-01-02T03:04:05Z")
    seconds, _, fraction = text[:-1].partition(".")
    try:
        # The pattern fixed the shape (ASCII digits only); fromisoformat checks the
        # values, about ten times faster than strptime.
        moment = datetime.fromisoformat(seconds)
    except ValueError:
        raise _malformed("invalid time stamp") from None
    microseconds = int(fraction.ljust(6, "0")) if fraction else 0
    return moment.replace(microsecond=microseconds, tzinfo=UTC)


def _message_id(text: str) -> str:
    if not _UUID.match(text):
        raise _malformed("a message id must be a lower-case UUID")
    return text


@dataclass(frozen=True)
class ChatMessage:
    """``<message id sent>text</message>``: one chat message."""

    text: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_element(self) -> Element:
        """The message as an element."""
        return make_element(
            "message", {"id": self.id, "sent": format_time(self.sent)}, self.text
        )

    @classmethod
    def from_element(cls, root: Element) -> ChatMessage:
        """Check and read a ``<message>`` element."""
        text = _leaf_text(root, attributes=("id", "sent"))
        if len(text) > MAX_TEXT_LENGTH:
            raise errors.MessageTooLarge(f"a message text is limited to {MAX_TEXT_LENGTH} characters")
        return cls(
            text=text,
            id=_message_id(_attribute(root, "id")),
            sent=parse_time(_attribute(root, "sent")),
        )


@dataclass(frozen=True)
class Receipt:
    """``<receipt id/>``: the message with this id was received."""

    id: str

    def to_element(self) -> Element:
        """The receipt as an element."""
        return make_element("receipt", {"id": self.id})

    @classmethod
    def from_element(cls, root: Element) -> Receipt:
        """Check and read a ``<receipt>`` element."""
        _empty(root, ("id",))
        return cls(_message_id(_attribute(root, "id")))


@dataclass(frozen=True)
class Presence:
    """``<presence status/>``: online, away, busy or offline."""

    status: str

    def __post_init__(self) -> None:
        if self.status not in PRESENCE_STATUSES:
            raise ValueError(f"presence status must be one of {', '.join(PRESENCE_STATUSES)}")

    def to_element(self) -> Element:
        """The presence as an element."""
        return make_element("presence", {"status": self.status})

    @classmethod
    def from_element(cls, root: Element) -> Presence:
        """Check and read a ``<presence>`` element."""
        _empty(root, ("status",))
        status = _attribute(root, "status")
        if status not in PRESENCE_STATUSES:
            raise _malformed("unknown presence status")
        return cls(status)


@dataclass(frozen=True)
class Ping:
    """``<ping/>``: asks for a ``<pong/>`` (keep-alive and liveness)."""

    def to_element(self) -> Element:
        """The ping as an element."""
        return make_element("ping")

    @classmethod
    def from_element(cls, root: Element) -> Ping:
        """Check a ``<ping>`` element."""
        _empty(root)
        return cls()


@dataclass(frozen=True)
class Pong:
    """``<pong/>``: the answer to a ``<ping/>``."""

    def to_element(self) -> Element:
        """The pong as an element."""
        return make_element("pong")

    @classmethod
    def from_element(cls, root: Element) -> Pong:
        """Check a ``<pong>`` element."""
        _empty(root)
        return cls()


ApplicationMessage: TypeAlias = ChatMessage | Receipt | Presence | Ping | Pong

_APPLICATION_TYPES: Final[dict[str, type[ApplicationMessage]]] = {
    "message": ChatMessage,
    "receipt": Receipt,
    "presence": Presence,
    "ping": Ping,
    "pong": Pong,
}


def is_element(value: object) -> bool:
    """Whether ``value`` is an lxml element."""
    return bool(etree.iselement(value))


def read_application_element(root: Element) -> ApplicationMessage:
    """Check an application element and return its typed form."""
    if not is_element(root) or not isinstance(root.tag, str) or root.tag not in _APPLICATION_TYPES:
        raise _malformed("not a SixChat application message")
    if root.nsmap:
        raise _malformed("namespaces are not used in SixChat messages")
    return _APPLICATION_TYPES[root.tag].from_element(root)


def parse_application(payload: bytes) -> tuple[ApplicationMessage, Element]:
    """Parse an application message document: (typed message, element)."""
    root = _parse(payload, max_depth=_APPLICATION_DEPTH, max_elements=1)
    return read_application_element(root), root


def encode_application(message: ApplicationMessage) -> bytes:
    """The document bytes of an application message."""
    return serialize(message.to_element())


# ---------------------------------------------------------------------------------------
# Close


def encode_close(reason: str) -> bytes:
    """The ``<close reason/>`` document of an authenticated close."""
    _check_reason(reason)
    return serialize(make_element("close", {"reason": reason}))


def parse_close(payload: bytes) -> str:
    """Parse a ``<close>`` document and return its reason."""
    root = _parse(payload, max_depth=1, max_elements=1)
    if root.tag != "close":
        raise _malformed("expected a <close>")
    _empty(root, ("reason",))
    reason = _attribute(root, "reason")
    try:
        _check_reason(reason)
    except ValueError:
        raise _malformed("invalid close reason") from None
    return reason


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LENGTH:
        raise ValueError(f"a close reason is 1 to {MAX_REASON_LENGTH} characters")
