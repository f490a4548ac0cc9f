"""sixid's messages: one sans-I/O codec for both sides (see docs/sixid.rst).

Every frame (:mod:`common.wire.framing`, at most :data:`MAX_FRAME` bytes) holds one XML
document (:mod:`common.wire.xmlcodec`: no DTD, entities, comments, processing instructions
or namespaces; at most 4 levels deep). A client sends ``<request v="1" id="N">OP</request>``;
the server answers ``<response id="N">RESULT</response>`` or ``<error id="N" code="C"
name="NAME">text</error>`` (no ``id``: the connection is ending), and pushes
``<push>EVENT</push>`` about watched IDs. Parsing is strict: unknown elements or
attributes, text where none belongs, non-canonical base64, decimals or IDs are refused with
``malformed-message`` (the request's id is kept when it could be read, so the refusal is
answered in turn). Errors become wire bytes only in :func:`encode_error`.

Padding: a response holding a ``<record>`` and every push carry ``pad="xxx..."`` on their
outer element, 0 to 255 ``x`` so that the document's length is a multiple of
:data:`PAD_UNIT` (:func:`pad_length`). Look-ups are the hot path: :func:`encode_record_response`
and :func:`encode_record_push` build those documents from the record's stored base64
without any tree, and :func:`parse_request` reads a plain look-up without the XML parser
(the documents it reads that way are exactly those the parser would accept as look-ups).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from common.integers import parse_decimal
from common.wire.fields import Base64Rule, FieldMessages, StrictFields, encode_base64
from common.wire.xmlcodec import Element, serialize_leaf
from sixid import PROTOCOL_VERSION, errors
from sixid.ids import InvalidSixId, SixId
from sixid.records import MAX_DEVICE_SIGNATURE, MAX_RECORD, MAX_REGISTRATION, MAX_SPKI, SignedRegistration

#: The largest frame either side accepts.
MAX_FRAME: Final = 32 * 1024
#: Request ids: 1 .. 2^31 - 1.
MAX_REQUEST_ID: Final = 2**31 - 1
#: Requests a client may have outstanding on one connection.
MAX_OUTSTANDING: Final = 32
#: Certificates in a ``<register>`` (leaf first).
MAX_CERTIFICATES: Final = 4
#: The largest certificate (DER) in a ``<register>``.
MAX_CERTIFICATE: Final = 4096
#: Certificates of the ``<signer/>`` answer: record-signing, issuing CA, root.
SIGNER_CERTIFICATES: Final = 3
#: The largest certificate of the signer chain.
MAX_SIGNER_CERTIFICATE: Final = 8192
#: Padded documents are a multiple of this many bytes long.
PAD_UNIT: Final = 256
#: The longest ``pad`` a receiver accepts.
MAX_PAD: Final = 1024

_VERSION = str(PROTOCOL_VERSION)
_MAX_DEPTH = 4
_MAX_ELEMENTS = 3 + 3 + MAX_CERTIFICATES
_PAD = re.compile(r"x*\Z")

FIELDS = StrictFields(
    errors.MalformedMessage,
    protocol="sixid",
    base64_rule=Base64Rule.CANONICAL,
    range_error=errors.MalformedMessage,
    messages=FieldMessages(),
)


class Refused(Exception):
    """A request that cannot be run: ``error`` answers request ``request_id`` (0: the id
    could not be read, and the connection ends)."""

    def __init__(self, request_id: int, error: errors.SixidError) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


# -- operations (client -> server) --------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """Register (or renew, or withdraw) an ID's endpoints."""

    registration: SignedRegistration


@dataclass(frozen=True)
class Lookup:
    """The current record of an ID."""

    sixid: SixId


@dataclass(frozen=True)
class Watch:
    """The current record of an ID, and every later one pushed as it comes."""

    sixid: SixId


@dataclass(frozen=True)
class Unwatch:
    """Stop watching an ID."""

    sixid: SixId


@dataclass(frozen=True)
class Signer:
    """The registry's record-signing certificate chain."""


@dataclass(frozen=True)
class Ping:
    """Keep the connection alive."""


Operation: TypeAlias = Register | Lookup | Watch | Unwatch | Signer | Ping


@dataclass(frozen=True)
class Request:
    """One request: its id and operation."""

    id: int
    operation: Operation


# -- results (server -> client) -----------------------------------------------------------


@dataclass(frozen=True)
class RecordResult:
    """A signed record (answer to ``register`` and ``lookup``)."""

    record: bytes = field(repr=False)


@dataclass(frozen=True)
class Watching:
    """The ID is watched; ``record`` is its current one (None: it has none now)."""

    record: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Unwatched:
    """The ID is not watched (any more)."""


@dataclass(frozen=True)
class SignerChain:
    """The record-signing certificate, its issuing CA and the root (DER)."""

    certificates: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class Pong:
    """Answer to ``ping``."""


Result: TypeAlias = RecordResult | Watching | Unwatched | SignerChain | Pong


@dataclass(frozen=True)
class Response:
    """A successful answer to request ``id``."""

    id: int
    result: Result


@dataclass(frozen=True)
class ErrorAnswer:
    """A refusal: of request ``id``, or of the connection (``id`` None)."""

    id: int | None
    error: errors.SixidError


# -- pushes (server -> client) --------------------------------------------------------------


@dataclass(frozen=True)
class Changed:
    """A watched ID has a new record."""

    record: bytes = field(repr=False)


@dataclass(frozen=True)
class Gone:
    """A watched ID's record expired (no record is current any more)."""

    sixid: SixId


Event: TypeAlias = Changed | Gone
ServerMessage: TypeAlias = Response | ErrorAnswer | Event


# -- padding ----------------------------------------------------------------------------------


def pad_length(unpadded: int) -> int:
    """How many ``x`` make a document of ``unpadded`` bytes (with an empty ``pad=""``) a
    multiple of :data:`PAD_UNIT`: 0 to 255."""
    return -unpadded % PAD_UNIT


_PADS: Final = tuple(b"x" * count for count in range(PAD_UNIT))


def _padded(head: bytes, tail: bytes) -> bytes:
    """``head + pad + tail`` with the pad that makes it a multiple of PAD_UNIT long."""
    return head + _PADS[-(len(head) + len(tail)) % PAD_UNIT] + tail


# -- requests -----------------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    """The document of ``request`` (unframed)."""
    op = request.operation
    head = f'<request v="{_VERSION}" id="{request.id}">'
    if isinstance(op, Lookup | Watch | Unwatch):
        body = f'<{_SIXID_OPS[type(op)]} sixid="{op.sixid}"/>'
    elif isinstance(op, Register):
        signed = op.registration
        body = "".join(
            [
                "<register>",
                f"<registration>{encode_base64(signed.registration_bytes)}</registration>",
                f"<key>{encode_base64(signed.spki)}</key>",
                f"<signature>{encode_base64(signed.signature)}</signature>",
                *(f"<certificate>{encode_base64(der)}</certificate>" for der in signed.certificates),
                "</register>",
            ]
        )
    else:
        body = f"<{_EMPTY_OPS[type(op)]}/>"
    return f"{head}{body}</request>".encode("ascii")


_SIXID_OPS: Final[dict[type, str]] = {Lookup: "lookup", Watch: "watch", Unwatch: "unwatch"}
_EMPTY_OPS: Final[dict[type, str]] = {Signer: "signer", Ping: "ping"}
_REGISTER_TAGS: Final = ("registration", "key", "signature")

#: A plain look-up, exactly as :func:`encode_request` writes it: read without the parser.
_FAST_LOOKUP = re.compile(rb'<request v="1" id="([1-9][0-9]{0,9})"><lookup sixid="([a-z2-7]{32})"/></request>\Z')


def request_id_of(root: Element) -> int:
    """The id of a ``<request>`` root if it is a valid one, else 0."""
    value = root.get("id")
    number = None if value is None else parse_decimal(str(value), 10)
    return number if number is not None and 1 <= number <= MAX_REQUEST_ID else 0


def match_lookup(payload: bytes) -> tuple[int, str] | None:
    """``(request id, canonical ID text)`` of a look-up written exactly as
    :func:`encode_request` writes it, read without the XML parser (the server's hot path);
    None for any other document, which :func:`parse_request` then reads (and gives the
    same look-up for any document this matches)."""
    match = _FAST_LOOKUP.match(payload)
    if match is None:
        return None
    number = int(match.group(1))
    if number > MAX_REQUEST_ID:
        return None
    return number, match.group(2).decode("ascii")


def parse_request(payload: bytes) -> Request:
    """Parse one request document; raise :class:`Refused` (with the request's id when it
    could be read) for anything not acceptable."""
    fast = match_lookup(payload)
    if fast is not None:
        return Request(fast[0], Lookup(SixId.from_canonical(fast[1])))
    if len(payload) > MAX_FRAME:
        raise Refused(0, errors.TooLargeFrame(f"a frame may be at most {MAX_FRAME} bytes"))
    try:
        root = FIELDS.parse(payload, max_depth=_MAX_DEPTH, max_elements=_MAX_ELEMENTS)
    except errors.SixidError as error:
        raise Refused(0, error) from None
    if root.tag != "request":
        raise Refused(0, errors.MalformedMessage(f"expected <request>, not <{root.tag}>"))
    request_id = request_id_of(root)
    try:
        FIELDS.check_attributes(root, ("v", "id"))
        if request_id == 0:
            raise errors.MalformedMessage(f"'id' must be a decimal integer from 1 to {MAX_REQUEST_ID}")
        if root.get("v") != _VERSION:
            raise errors.MalformedMessage(f"unsupported protocol version; this server speaks v={_VERSION}")
        children = list(root)
        if len(children) != 1:
            raise errors.MalformedMessage("<request> must contain exactly one operation")
        FIELDS.no_text(root)
        return Request(request_id, _parse_operation(children[0]))
    except errors.SixidError as error:
        raise Refused(request_id, error) from None


def _sixid_attribute(element: Element) -> SixId:
    FIELDS.empty(element, ("sixid",))
    try:
        return SixId.from_canonical(FIELDS.attribute(element, "sixid"))
    except InvalidSixId:
        raise errors.MalformedMessage(f"<{element.tag}>'s sixid must be 32 characters of a-z and 2-7") from None


def _base64_leaf(element: Element, what: str, limit: int) -> bytes:
    text = FIELDS.leaf_text(element)
    # 4 base64 characters per 3 bytes: refuse an oversized one before decoding it.
    if len(text) > (limit + 2) // 3 * 4:
        raise errors.MalformedMessage(f"{what} may be at most {limit} bytes")
    return FIELDS.decode_base64(text, what, max_length=limit)


def _parse_operation(element: Element) -> Operation:
    tag = element.tag
    if tag in ("lookup", "watch", "unwatch"):
        sixid = _sixid_attribute(element)
        return Lookup(sixid) if tag == "lookup" else Watch(sixid) if tag == "watch" else Unwatch(sixid)
    if tag == "register":
        FIELDS.check_attributes(element, ())
        children = list(element)
        tags = tuple(child.tag for child in children)
        certificates = len(children) - len(_REGISTER_TAGS)
        if (
            tags[: len(_REGISTER_TAGS)] != _REGISTER_TAGS
            or not 0 <= certificates <= MAX_CERTIFICATES
            or any(tag != "certificate" for tag in tags[len(_REGISTER_TAGS) :])
        ):
            raise errors.MalformedMessage(
                f"<register> must contain <registration>, <key>, <signature> and 0 to {MAX_CERTIFICATES} <certificate>, in this order"
            )
        FIELDS.no_text(element)
        return Register(
            SignedRegistration(
                _base64_leaf(children[0], "the registration", MAX_REGISTRATION),
                _base64_leaf(children[1], "the key", MAX_SPKI),
                _base64_leaf(children[2], "the signature", MAX_DEVICE_SIGNATURE),
                tuple(_base64_leaf(child, "a certificate", MAX_CERTIFICATE) for child in children[3:]),
            )
        )
    if tag == "signer":
        FIELDS.empty(element)
        return Signer()
    if tag == "ping":
        FIELDS.empty(element)
        return Ping()
    raise errors.UnexpectedMessage(f"unknown operation <{tag}>")


# -- answers and pushes -------------------------------------------------------------------

_RECORD_HEAD = b'"><record>'
_RECORD_TAIL = b"</record></response>"


def encode_record_response(request_id: int, record_b64: bytes) -> bytes:
    """``<response id="N" pad="..."><record>B64</record></response>`` from the record's
    canonical base64 (no tree: the look-up path)."""
    return _padded(b'<response id="%d" pad="' % request_id, _RECORD_HEAD + record_b64 + _RECORD_TAIL)


def encode_watching_response(request_id: int, record_b64: bytes | None) -> bytes:
    """``<response id="N" pad="..."><watching><record>B64</record></watching></response>``,
    or ``<response id="N"><watching/></response>`` when no record is current."""
    if record_b64 is None:
        return b'<response id="%d"><watching/></response>' % request_id
    return _padded(
        b'<response id="%d" pad="' % request_id,
        b'"><watching><record>' + record_b64 + b"</record></watching></response>",
    )


def encode_record_push(record_b64: bytes) -> bytes:
    """``<push pad="..."><changed><record>B64</record></changed></push>``."""
    return _padded(b'<push pad="', b'"><changed><record>' + record_b64 + b"</record></changed></push>")


def encode_gone_push(sixid: SixId) -> bytes:
    """``<push pad="..."><gone sixid="ID"/></push>``."""
    return _padded(b'<push pad="', b'"><gone sixid="' + str(sixid).encode("ascii") + b'"/></push>')


def record_base64(record: bytes) -> bytes:
    """The canonical base64 of a signed record, as the fast encoders take it."""
    return encode_base64(record).encode("ascii")


def encode_response(request_id: int, result: Result) -> bytes:
    """``<response id>RESULT</response>`` (padded when it holds a record)."""
    if isinstance(result, RecordResult):
        return encode_record_response(request_id, record_base64(result.record))
    if isinstance(result, Watching):
        return encode_watching_response(request_id, None if result.record is None else record_base64(result.record))
    if isinstance(result, SignerChain):
        certificates = "".join(f"<certificate>{encode_base64(der)}</certificate>" for der in result.certificates)
        return f'<response id="{request_id}"><signer>{certificates}</signer></response>'.encode("ascii")
    tag = "unwatched" if isinstance(result, Unwatched) else "pong"
    return f'<response id="{request_id}"><{tag}/></response>'.encode("ascii")


def encode_error(request_id: int | None, error: errors.SixidError) -> bytes:
    """The one place errors become wire bytes: ``<error [id] code name>message</error>``."""
    attributes = {"code": str(error.code), "name": error.name}
    if request_id:
        attributes = {"id": str(request_id), **attributes}
    return serialize_leaf("error", attributes, error.message)


def encode_push(event: Event) -> bytes:
    """``<push pad="...">EVENT</push>``."""
    if isinstance(event, Changed):
        return encode_record_push(record_base64(event.record))
    return encode_gone_push(event.sixid)


# -- the client's side ------------------------------------------------------------------------


def parse_answer(payload: bytes) -> ServerMessage:
    """Parse what the server sent (client side): a response, an error or a push; raise
    MalformedMessage for anything else."""
    try:
        return _parse_answer(payload)
    except errors.MalformedMessage:
        raise
    except errors.SixidError as error:
        raise errors.MalformedMessage(error.message) from None


def _check_server_attributes(element: Element, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """The attributes named, plus an optional ``pad`` (only ``x``, at most MAX_PAD)."""
    FIELDS.check_attributes(element, required, (*optional, "pad"))
    pad = element.get("pad")
    if pad is not None and (len(pad) > MAX_PAD or not _PAD.match(pad)):
        raise errors.MalformedMessage(f"'pad' must be at most {MAX_PAD} 'x'")


def _decimal(text: str, what: str, low: int, high: int) -> int:
    number = parse_decimal(text, 10)
    if number is None or not low <= number <= high:
        raise errors.MalformedMessage(f"{what!r} must be a decimal integer from {low} to {high}")
    return number


def _only_child(element: Element) -> Element:
    children = list(element)
    if len(children) != 1:
        raise errors.MalformedMessage(f"<{element.tag}> must contain exactly one element")
    FIELDS.no_text(element)
    return children[0]


def _record(element: Element) -> bytes:
    if element.tag != "record":
        raise errors.MalformedMessage(f"expected <record>, not <{element.tag}>")
    _check_server_attributes(element, ())
    if len(element):
        raise errors.MalformedMessage("<record> must hold only text")
    text = str(element.text or "")
    if len(text) > (MAX_RECORD + 2) // 3 * 4:
        raise errors.MalformedMessage(f"a record may be at most {MAX_RECORD} bytes")
    return FIELDS.decode_base64(text, "the record", max_length=MAX_RECORD)


def _parse_answer(payload: bytes) -> ServerMessage:
    if len(payload) > MAX_FRAME:
        raise errors.MalformedMessage(f"a frame may be at most {MAX_FRAME} bytes")
    root = FIELDS.parse(payload, max_depth=_MAX_DEPTH, max_elements=_MAX_ELEMENTS)
    if root.tag == "error":
        _check_server_attributes(root, ("code", "name"), ("id",))
        if len(root):
            raise errors.MalformedMessage("<error> must hold only text")
        code = _decimal(FIELDS.attribute(root, "code"), "code", 0, 999)
        identifier = root.get("id")
        request_id = None if identifier is None else _decimal(str(identifier), "id", 1, MAX_REQUEST_ID)
        cls = errors.error_class_for(FIELDS.attribute(root, "name"), code)
        return ErrorAnswer(request_id, cls(str(root.text or "")[:1000] or None))
    if root.tag == "push":
        _check_server_attributes(root, ())
        return _parse_event(_only_child(root))
    if root.tag == "response":
        _check_server_attributes(root, ("id",))
        request_id = _decimal(FIELDS.attribute(root, "id"), "id", 1, MAX_REQUEST_ID)
        return Response(request_id, _parse_result(_only_child(root)))
    raise errors.MalformedMessage(f"unexpected <{root.tag}> from the sixid server")


def _parse_event(element: Element) -> Event:
    if element.tag == "changed":
        _check_server_attributes(element, ())
        return Changed(_record(_only_child(element)))
    if element.tag == "gone":
        _check_server_attributes(element, ("sixid",))
        if len(element) or element.text:
            raise errors.MalformedMessage("<gone> must be empty")
        try:
            return Gone(SixId.from_canonical(FIELDS.attribute(element, "sixid")))
        except InvalidSixId:
            raise errors.MalformedMessage("<gone>'s sixid must be 32 characters of a-z and 2-7") from None
    raise errors.MalformedMessage(f"unknown push <{element.tag}>")


def _parse_result(element: Element) -> Result:
    tag = element.tag
    if tag == "record":
        return RecordResult(_record(element))
    if tag == "watching":
        _check_server_attributes(element, ())
        if not len(element):
            if element.text:
                raise errors.MalformedMessage("<watching> holds text")
            return Watching(None)
        return Watching(_record(_only_child(element)))
    if tag == "signer":
        _check_server_attributes(element, ())
        children = list(element)
        if len(children) != SIGNER_CERTIFICATES or any(child.tag != "certificate" for child in children):
            raise errors.MalformedMessage(f"<signer> must contain {SIGNER_CERTIFICATES} <certificate> elements")
        FIELDS.no_text(element)
        certificates = []
        for child in children:
            _check_server_attributes(child, ())
            if len(child):
                raise errors.MalformedMessage("<certificate> must hold only text")
            text = str(child.text or "")
            if len(text) > (MAX_SIGNER_CERTIFICATE + 2) // 3 * 4:
                raise errors.MalformedMessage(f"a certificate may be at most {MAX_SIGNER_CERTIFICATE} bytes")
            certificates.append(FIELDS.decode_base64(text, "a certificate", max_length=MAX_SIGNER_CERTIFICATE))
        return SignerChain(tuple(certificates))
    if tag in ("unwatched", "pong"):
        _check_server_attributes(element, ())
        if len(element) or element.text:
            raise errors.MalformedMessage(f"<{tag}> must be empty")
        return Unwatched() if tag == "unwatched" else Pong()
    raise errors.MalformedMessage(f"unknown result <{tag}>")

