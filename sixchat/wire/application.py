"""The application messages of SixChat 1 (inside records): message, receipt, presence,
ping, pong, and the close.

Checked as strictly as the handshake messages (:mod:`sixchat.wire.fields`); anything else
raises :class:`~sixchat.errors.MalformedMessage`. ``docs/schema/sixchat.rng`` describes the
same documents in RELAX NG.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeAlias

from lxml import etree

from common.wire.xmlcodec import make_element, serialize, serialize_leaf
from sixchat import errors
from sixchat.wire.fields import Element, attribute, empty, leaf_text, malformed, parse

MAX_TEXT_LENGTH: Final = 16384
MAX_REASON_LENGTH: Final = 256

PRESENCE_STATUSES: Final = ("online", "away", "busy", "offline")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z\Z")

#: Parse limits: an application document is one element.
_APPLICATION_DEPTH: Final = 1

#: An application element's tag, attributes and text (every one is a single element).
Leaf: TypeAlias = tuple[str, dict[str, str | None], str | None]


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
        raise malformed("invalid time stamp: expected RFC 3339 UTC such as 2026-01-02T03:04:05Z")
    try:
        # The pattern fixed the shape (ASCII digits, 1 to 6 fraction digits, "Z");
        # fromisoformat checks the values (a fraction of n digits is n/10**n seconds, "Z"
        # is UTC), about ten times faster than strptime.
        return datetime.fromisoformat(text)
    except ValueError:
        raise malformed("invalid time stamp") from None


def _message_id(text: str) -> str:
    if not _UUID.match(text):
        raise malformed("a message id must be a lower-case UUID")
    return text


@dataclass(frozen=True)
class ChatMessage:
    """``<message id sent>text</message>``: one chat message."""

    text: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent: datetime = field(default_factory=lambda: datetime.now(UTC))

    def leaf(self) -> Leaf:
        """The element's tag, attributes and text."""
        return "message", {"id": self.id, "sent": format_time(self.sent)}, self.text

    @classmethod
    def from_element(cls, root: Element) -> ChatMessage:
        """Check and read a ``<message>`` element."""
        text = leaf_text(root, attributes=("id", "sent"))
        if len(text) > MAX_TEXT_LENGTH:
            raise errors.MessageTooLarge(f"a message text is limited to {MAX_TEXT_LENGTH} characters")
        return cls(
            text=text,
            id=_message_id(attribute(root, "id")),
            sent=parse_time(attribute(root, "sent")),
        )


@dataclass(frozen=True)
class Receipt:
    """``<receipt id/>``: the message with this id was received."""

    id: str

    def leaf(self) -> Leaf:
        """The element's tag, attributes and text."""
        return "receipt", {"id": self.id}, None

    @classmethod
    def from_element(cls, root: Element) -> Receipt:
        """Check and read a ``<receipt>`` element."""
        empty(root, ("id",))
        return cls(_message_id(attribute(root, "id")))


@dataclass(frozen=True)
class Presence:
    """``<presence status/>``: online, away, busy or offline."""

    status: str

    def __post_init__(self) -> None:
        if self.status not in PRESENCE_STATUSES:
            raise ValueError(f"presence status must be one of {', '.join(PRESENCE_STATUSES)}")

    def leaf(self) -> Leaf:
        """The element's tag, attributes and text."""
        return "presence", {"status": self.status}, None

    @classmethod
    def from_element(cls, root: Element) -> Presence:
        """Check and read a ``<presence>`` element."""
        empty(root, ("status",))
        status = attribute(root, "status")
        if status not in PRESENCE_STATUSES:
            raise malformed("unknown presence status")
        return cls(status)


@dataclass(frozen=True)
class Ping:
    """``<ping/>``: asks for a ``<pong/>`` (keep-alive and liveness)."""

    def leaf(self) -> Leaf:
        """The element's tag, attributes and text."""
        return "ping", {}, None

    @classmethod
    def from_element(cls, root: Element) -> Ping:
        """Check a ``<ping>`` element."""
        empty(root)
        return cls()


@dataclass(frozen=True)
class Pong:
    """``<pong/>``: the answer to a ``<ping/>``."""

    def leaf(self) -> Leaf:
        """The element's tag, attributes and text."""
        return "pong", {}, None

    @classmethod
    def from_element(cls, root: Element) -> Pong:
        """Check a ``<pong>`` element."""
        empty(root)
        return cls()


ApplicationMessage: TypeAlias = ChatMessage | Receipt | Presence | Ping | Pong


def to_element(message: ApplicationMessage) -> Element:
    """An application message as an element."""
    return make_element(*message.leaf())

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
        raise malformed("not a SixChat application message")
    if root.nsmap:
        raise malformed("namespaces are not used in SixChat messages")
    return _APPLICATION_TYPES[root.tag].from_element(root)


def parse_application(payload: bytes) -> tuple[ApplicationMessage, Element]:
    """Parse an application message document: (typed message, element)."""
    root = parse(payload, max_depth=_APPLICATION_DEPTH, max_elements=1)
    return read_application_element(root), root


def encode_application(message: ApplicationMessage) -> bytes:
    """The document bytes of an application message (each is one element)."""
    return serialize_leaf(*message.leaf())


# ---------------------------------------------------------------------------------------
# Close


def encode_close(reason: str) -> bytes:
    """The ``<close reason/>`` document of an authenticated close."""
    _check_reason(reason)
    return serialize(make_element("close", {"reason": reason}))


def parse_close(payload: bytes) -> str:
    """Parse a ``<close>`` document and return its reason."""
    root = parse(payload, max_depth=1, max_elements=1)
    if root.tag != "close":
        raise malformed("expected a <close>")
    empty(root, ("reason",))
    reason = attribute(root, "reason")
    try:
        _check_reason(reason)
    except ValueError:
        raise malformed("invalid close reason") from None
    return reason


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LENGTH:
        raise ValueError(f"a close reason is 1 to {MAX_REASON_LENGTH} characters")
