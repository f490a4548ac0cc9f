"""The intermediary's messages: one sans-I/O codec for both sides (see docs/intermediary.rst).

Every frame (:mod:`common.wire.framing`) holds one XML document (:mod:`common.wire.xmlcodec`:
no DTD, entities or namespaces). A client sends ``<request v="1" id="N">OP</request>``; the
server answers ``<response id="N">RESULT</response>`` or ``<error id="N" code="C"
name="NAME">text</error>`` (no ``id``: the connection is ending), and pushes
``<push>EVENT</push>``. Parsing is strict: unknown elements or attributes, text where none
belongs, non-canonical base64 or decimals are refused with ``malformed-message`` (the
request's id is kept when it could be read, so the refusal is answered in turn), values out
of range with ``invalid-argument``. Errors become wire bytes only in :func:`encode_error`.

The relay's join port (plain TCP) speaks two more documents with the same framing:
``<join circuit="ID"/>`` from the agent, ``<joined/>`` (or an ``<error>`` without id) back
(:func:`encode_join`, :func:`parse_join`, :func:`encode_joined`, :func:`parse_join_answer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from common.identity import Identity, InvalidIdentity
from common.integers import parse_decimal
from common.rpc import envelope
from common.wire.fields import encode_base64
from common.wire.xmlcodec import Element, make_element, serialize, serialize_leaf, sub_element
from intermediary import PROTOCOL_VERSION, errors

#: The largest frame either side accepts: a 256 KiB envelope in base64 plus its element.
MAX_FRAME: Final = 320 * 1024
#: The largest sealed envelope (decoded).
MAX_ENVELOPE: Final = 256 * 1024
#: The largest published prekey (decoded; an ML-KEM-768 key, an X25519 key, a signature).
MAX_PREKEY: Final = 8 * 1024
#: Prekeys in one ``<publish-prekeys>``.
MAX_PREKEYS_PER_REQUEST: Final = 100
#: Times: Unix seconds, at most 12 decimal digits.
MAX_TIME: Final = 10**12 - 1
MAX_COUNT: Final = 10**9

_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_MAX_DEPTH = 4
_MAX_ELEMENTS = MAX_PREKEYS_PER_REQUEST + 4



def parse_decimal_field(text: str, what: str, low: int, high: int) -> int:
    """A decimal field between ``low`` and ``high`` (malformed or out of range: refused)."""
    number = parse_decimal(text, 12)
    if number is None:
        raise errors.MalformedMessage(f"{what!r} must be a non-negative decimal integer without leading zeros")
    if not low <= number <= high:
        raise errors.InvalidArgument(f"{what!r} must be between {low} and {high}")
    return number


#: Request ids: 1 .. 2^31 - 1.
MAX_REQUEST_ID: Final = envelope.MAX_REQUEST_ID
#: A request that cannot be run (:class:`common.rpc.envelope.Refused`).
Refused = envelope.Refused

#: The outer layer of the intermediary's documents (:mod:`common.rpc.envelope`).
ENVELOPE: Final = envelope.Envelope(
    protocol="intermediary",
    version=PROTOCOL_VERSION,
    base_error=errors.IntermediaryError,
    malformed=errors.MalformedMessage,
    range_error=errors.InvalidArgument,
    version_error=errors.InvalidArgument,
    error_class_for=errors.error_class_for,
    server_name="this intermediary",
    peer="the intermediary",
    max_depth=_MAX_DEPTH,
    max_elements=_MAX_ELEMENTS,
    decimal=parse_decimal_field,
)
FIELDS: Final = ENVELOPE.fields


# -- operations (client -> server) --------------------------------------------------------


@dataclass(frozen=True)
class PublishPrekeys:
    """Store the caller's own signed prekeys (each the exact bytes part A encodes)."""

    prekeys: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class FetchPrekey:
    """Take one prekey of ``user`` (of the intermediary's domain)."""

    user: Identity


@dataclass(frozen=True)
class Deposit:
    """Store a sealed envelope for ``to`` until ``expires``, held until ``deliver_at``."""

    to: Identity
    expires: int
    deliver_at: int | None
    envelope: bytes = field(repr=False)


@dataclass(frozen=True)
class Subscribe:
    """Receive the caller's messages, now and as they come."""


@dataclass(frozen=True)
class Ack:
    """The caller stored message ``message_id``: delete it."""

    message_id: str


@dataclass(frozen=True)
class Reserve:
    """Reserve (or renew) a relay port for the caller."""


@dataclass(frozen=True)
class Ping:
    """Keep the connection alive."""


Operation: TypeAlias = PublishPrekeys | FetchPrekey | Deposit | Subscribe | Ack | Reserve | Ping


class Request(envelope.Request[Operation]):
    """One intermediary request: its id and operation."""


# -- results (server -> client) -------------------------------------------------------------


@dataclass(frozen=True)
class PrekeyCount:
    """The caller's prekeys stored now."""

    one_time: int
    last_resort: bool


@dataclass(frozen=True)
class PrekeyData:
    """One prekey, the exact bytes published."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Deposited:
    """The envelope is committed: its server id and the recipient's queue length."""

    message_id: str
    queued: int


@dataclass(frozen=True)
class Subscribed:
    """Subscribed: ``pending`` messages are due now (pushed next)."""

    pending: int


@dataclass(frozen=True)
class Acked:
    """The message is deleted."""


@dataclass(frozen=True)
class Reserved:
    """The relay port reserved for the caller, until ``expires`` (while connected), and the
    relay's join port on the same address (where circuits are joined, see :func:`encode_join`)."""

    address: str
    port: int
    expires: int
    join_port: int


@dataclass(frozen=True)
class Pong:
    """Answer to ``ping``."""


Result: TypeAlias = PrekeyCount | PrekeyData | Deposited | Subscribed | Acked | Reserved | Pong


class Response(envelope.Response[Result]):
    """A successful answer to request ``id``."""


class ErrorAnswer(envelope.ErrorAnswer[errors.IntermediaryError]):
    """A refusal: of request ``id``, or of the connection (``id`` None)."""


# -- pushes (server -> client) ------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A stored message for the subscriber."""

    id: str
    sender: Identity
    deposited_at: int
    envelope: bytes = field(repr=False)


@dataclass(frozen=True)
class Superseded:
    """A newer subscription of the same user ended this one."""


@dataclass(frozen=True)
class CircuitOffer:
    """A dialer connected to the caller's relay port (``source``: "address port")."""

    circuit_id: str
    source: str


Event: TypeAlias = Delivery | Superseded | CircuitOffer
ServerMessage: TypeAlias = Response | ErrorAnswer | Event


# -- small checks ----------------------------------------------------------------------------


def check_hex_id(text: str, what: str) -> str:
    """A 32-digit lowercase hex id (message, circuit, prekey ids)."""
    if not _HEX32.match(text):
        raise errors.MalformedMessage(f"{what} must be 32 lowercase hexadecimal digits")
    return text


def _identity(text: str, what: str) -> Identity:
    try:
        return Identity.parse(text)
    except InvalidIdentity as error:
        raise errors.InvalidArgument(f"{what!r} is not a user identity: {error}") from None


def leaf_text(element: Element, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> str:
    """An element holding only text (possibly empty) and these attributes."""
    FIELDS.check_attributes(element, required, optional)
    if len(element):
        raise errors.MalformedMessage(f"<{element.tag}> must hold only text")
    return str(element.text or "")


def _bool(text: str, what: str) -> bool:
    if text not in ("true", "false"):
        raise errors.MalformedMessage(f"{what!r} must be 'true' or 'false'")
    return text == "true"


# -- requests ---------------------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    """The document of ``request`` (unframed)."""
    root = make_element("request", {"v": PROTOCOL_VERSION, "id": str(request.id)})
    op = request.operation
    if isinstance(op, PublishPrekeys):
        parent = sub_element(root, "publish-prekeys")
        for prekey in op.prekeys:
            sub_element(parent, "prekey", None, encode_base64(prekey))
    elif isinstance(op, FetchPrekey):
        sub_element(root, "fetch-prekey", {"user": str(op.user)})
    elif isinstance(op, Deposit):
        attributes = {"to": str(op.to), "expires": str(op.expires)}
        if op.deliver_at is not None:
            attributes["deliver-at"] = str(op.deliver_at)
        sub_element(root, "deposit", attributes, encode_base64(op.envelope))
    elif isinstance(op, Ack):
        sub_element(root, "ack", {"id": op.message_id})
    else:
        sub_element(root, _EMPTY_OPS[type(op)])
    return serialize(root)


_EMPTY_OPS: Final[dict[type, str]] = {Subscribe: "subscribe", Reserve: "reserve", Ping: "ping"}


def parse_request(payload: bytes) -> Request:
    """Parse one request document; raise :class:`Refused` (with the request's id when it
    could be read) for anything not acceptable."""
    return Request(*ENVELOPE.parse_request(payload, _parse_operation))


def _parse_operation(element: Element) -> Operation:
    tag = element.tag
    if tag == "publish-prekeys":
        FIELDS.check_attributes(element, ())
        children = FIELDS.repeated(element, "prekey", 1, MAX_PREKEYS_PER_REQUEST)
        return PublishPrekeys(
            tuple(FIELDS.decode_base64(leaf_text(child), "a <prekey>", max_length=MAX_PREKEY) for child in children)
        )
    if tag == "fetch-prekey":
        FIELDS.empty(element, ("user",))
        return FetchPrekey(_identity(FIELDS.attribute(element, "user"), "user"))
    if tag == "deposit":
        text = leaf_text(element, ("to", "expires"), ("deliver-at",))
        deliver = element.get("deliver-at")
        envelope = _envelope(text)
        return Deposit(
            _identity(FIELDS.attribute(element, "to"), "to"),
            parse_decimal_field(FIELDS.attribute(element, "expires"), "expires", 0, MAX_TIME),
            None if deliver is None else parse_decimal_field(str(deliver), "deliver-at", 0, MAX_TIME),
            envelope,
        )
    if tag == "ack":
        FIELDS.empty(element, ("id",))
        return Ack(check_hex_id(FIELDS.attribute(element, "id"), "the message id"))
    for kind, name in _EMPTY_OPS.items():
        if tag == name:
            FIELDS.empty(element)
            return kind()  # type: ignore[no-any-return]
    raise errors.UnexpectedMessage(f"unknown operation <{tag}>")


def _envelope(text: str) -> bytes:
    # 4 base64 characters per 3 bytes: refuse an oversized one before decoding it.
    if len(text) > (MAX_ENVELOPE + 2) // 3 * 4:
        raise errors.TooLarge(f"a sealed message may be at most {MAX_ENVELOPE} bytes")
    if not text:
        raise errors.MalformedMessage("<deposit> holds no sealed message")
    envelope = FIELDS.decode_base64(text, "the sealed message")
    if len(envelope) > MAX_ENVELOPE:
        raise errors.TooLarge(f"a sealed message may be at most {MAX_ENVELOPE} bytes")
    return envelope


# -- answers and pushes -------------------------------------------------------------------


def encode_response(request_id: int, result: Result) -> bytes:
    """``<response id>RESULT</response>``."""
    root = make_element("response", {"id": str(request_id)})
    if isinstance(result, PrekeyCount):
        sub_element(root, "prekeys", {"one-time": str(result.one_time), "last-resort": "true" if result.last_resort else "false"})
    elif isinstance(result, PrekeyData):
        sub_element(root, "prekey", None, encode_base64(result.data))
    elif isinstance(result, Deposited):
        sub_element(root, "deposited", {"id": result.message_id, "queued": str(result.queued)})
    elif isinstance(result, Subscribed):
        sub_element(root, "subscribed", {"pending": str(result.pending)})
    elif isinstance(result, Reserved):
        attributes = {"address": result.address, "port": str(result.port), "join-port": str(result.join_port), "expires": str(result.expires)}
        sub_element(root, "reserved", attributes)
    else:
        sub_element(root, _EMPTY_RESULTS[type(result)])
    return serialize(root)


_EMPTY_RESULTS: Final[dict[type, str]] = {Acked: "acked", Pong: "pong"}


def encode_error(request_id: int | None, error: errors.IntermediaryError) -> bytes:
    """The one place the intermediary's errors become wire bytes: ``<error [id] code
    name>message</error>`` (:func:`common.rpc.envelope.encode_error`)."""
    return envelope.encode_error(request_id, error)


def encode_push(event: Event) -> bytes:
    """``<push>EVENT</push>``."""
    if isinstance(event, Delivery):
        attributes = {"id": event.id, "from": str(event.sender), "deposited": str(event.deposited_at)}
        return b"<push>" + serialize_leaf("deliver", attributes, encode_base64(event.envelope)) + b"</push>"
    if isinstance(event, CircuitOffer):
        return b"<push>" + serialize_leaf("circuit", {"id": event.circuit_id, "from": event.source}) + b"</push>"
    return b"<push><superseded/></push>"


def parse_server_message(payload: bytes) -> ServerMessage:
    """Parse what the server sent (client side); raise MalformedMessage."""
    message: ServerMessage = ENVELOPE.parse_answer(
        payload, parse_result=_parse_result, parse_event=_parse_event, response=Response, error_answer=ErrorAnswer
    )
    return message


def _parse_event(element: Element) -> Event:
    if element.tag == "deliver":
        text = leaf_text(element, ("id", "from", "deposited"))
        return Delivery(
            check_hex_id(FIELDS.attribute(element, "id"), "the message id"),
            _identity(FIELDS.attribute(element, "from"), "from"),
            parse_decimal_field(FIELDS.attribute(element, "deposited"), "deposited", 0, MAX_TIME),
            _envelope(text),
        )
    if element.tag == "circuit":
        FIELDS.empty(element, ("id", "from"))
        return CircuitOffer(check_hex_id(FIELDS.attribute(element, "id"), "the circuit id"), FIELDS.attribute(element, "from"))
    if element.tag == "superseded":
        FIELDS.empty(element)
        return Superseded()
    raise errors.MalformedMessage(f"unknown push <{element.tag}>")


def _parse_result(element: Element) -> Result:
    tag = element.tag
    if tag == "prekeys":
        FIELDS.empty(element, ("one-time", "last-resort"))
        return PrekeyCount(
            parse_decimal_field(FIELDS.attribute(element, "one-time"), "one-time", 0, MAX_COUNT),
            _bool(FIELDS.attribute(element, "last-resort"), "last-resort"),
        )
    if tag == "prekey":
        return PrekeyData(FIELDS.decode_base64(leaf_text(element), "the prekey", max_length=MAX_PREKEY))
    if tag == "deposited":
        FIELDS.empty(element, ("id", "queued"))
        return Deposited(
            check_hex_id(FIELDS.attribute(element, "id"), "the message id"),
            parse_decimal_field(FIELDS.attribute(element, "queued"), "queued", 0, MAX_COUNT),
        )
    if tag == "subscribed":
        FIELDS.empty(element, ("pending",))
        return Subscribed(parse_decimal_field(FIELDS.attribute(element, "pending"), "pending", 0, MAX_COUNT))
    if tag == "reserved":
        FIELDS.empty(element, ("address", "port", "join-port", "expires"))
        return Reserved(
            FIELDS.attribute(element, "address"),
            parse_decimal_field(FIELDS.attribute(element, "port"), "port", 1, 65535),
            parse_decimal_field(FIELDS.attribute(element, "expires"), "expires", 0, MAX_TIME),
            parse_decimal_field(FIELDS.attribute(element, "join-port"), "join-port", 1, 65535),
        )
    for kind, name in _EMPTY_RESULTS.items():
        if tag == name:
            FIELDS.empty(element)
            return kind()  # type: ignore[no-any-return]
    raise errors.MalformedMessage(f"unknown result <{tag}>")


# -- the prekey's public attributes (what the intermediary reads of a prekey) --------------


PREKEY_KINDS: Final = ("one-time", "last-resort")
_PREKEY_ATTRIBUTES: Final = ("id", "kind", "owner", "created", "expires", "algorithm", "x25519", "mlkem", "signature")


@dataclass(frozen=True)
class PrekeyInfo:
    """What the intermediary needs of a published prekey (it reads nothing else)."""

    id: str
    kind: str
    owner: Identity
    created: int
    expires: int


def parse_prekey_info(data: bytes) -> PrekeyInfo:
    """Read a prekey's id, kind, owner, creation and expiry (strict; the key material and
    signature are only checked present). Raises InvalidArgument."""
    try:
        root = FIELDS.parse(data, max_depth=1, max_elements=1)
        if root.tag != "prekey":
            raise errors.MalformedMessage(f"expected <prekey>, not <{root.tag}>")
        FIELDS.empty(root, _PREKEY_ATTRIBUTES)
        kind = FIELDS.attribute(root, "kind")
        if kind not in PREKEY_KINDS:
            raise errors.MalformedMessage(f"a prekey's kind must be one of {', '.join(PREKEY_KINDS)}")
        info = PrekeyInfo(
            check_hex_id(FIELDS.attribute(root, "id"), "the prekey id"),
            kind,
            _identity(FIELDS.attribute(root, "owner"), "owner"),
            parse_decimal_field(FIELDS.attribute(root, "created"), "created", 0, MAX_TIME),
            parse_decimal_field(FIELDS.attribute(root, "expires"), "expires", 0, MAX_TIME),
        )
    except errors.IntermediaryError as error:
        raise errors.InvalidArgument(f"a published prekey is not acceptable: {error.message}") from None
    if info.expires <= info.created:
        raise errors.InvalidArgument("a published prekey expires before it was created")
    return info
