"""IRP message envelopes and field access (sans-I/O).

Requests:  ``<request v="1" id="7"><lookup user="bob"/></request>``
Responses: ``<response v="1" id="7" status="ok">...</response>`` or, on failure,
``<response v="1" id="7" status="error"><error code="404" name="not-found">...</error></response>``.

Errors become wire messages only in :func:`error_response`; the client turns them back into
exceptions only in :func:`parse_response`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.integers import parse_decimal
from common.wire.xmlcodec import (
    MAX_ELEMENTS,
    Element,
    XMLRejected,
    make_element,
    parse_document,
    serialize,
)
from irp import errors
from irp.wire.fields import check_fields, no_text

PROTOCOL_VERSION = "1"
SUPPORTED_VERSIONS = ("1",)
MAX_REQUEST_ID = 2**31 - 1
#: The most elements a response may hold. The largest answer the protocol defines is a
#: full ``list-users`` page: 200 ``<user>`` entries of up to 1 + 32 elements each (the
#: entry and its attributes), plus ``<users>`` and ``<response>``: 6 602 elements. Lists of
#: certificates grow with revoked ones; the cap leaves room for ten times as much, and
#: bounds what a (16 MiB) response can cost to parse.
MAX_RESPONSE_ELEMENTS = 65536


@dataclass(frozen=True)
class Request:
    """A parsed request: its id, operation name and operation element."""

    id: int
    operation: str
    element: Element


@dataclass(frozen=True)
class Response:
    """A parsed successful response: its id and result elements."""

    id: int
    results: list[Element]

    def single(self, tag: str) -> Element:
        """Return the one result element, which must be named ``tag``."""
        if len(self.results) != 1 or self.results[0].tag != tag:
            found = ", ".join(element.tag for element in self.results) or "nothing"
            raise errors.BadRequest(f"expected a <{tag}> answer, got {found}")
        return self.results[0]


def parse_xml(payload: bytes, max_elements: int = MAX_ELEMENTS) -> Element:
    """Parse untrusted bytes, turning codec failures into IRP errors."""
    try:
        return parse_document(payload, max_elements=max_elements)
    except XMLRejected as error:
        if error.forbidden:
            raise errors.ForbiddenMarkup(str(error)) from None
        raise errors.MalformedMessage(str(error)) from None


def _check_version(root: Element) -> None:
    version = root.get("v")
    if version not in SUPPORTED_VERSIONS:
        raise errors.UnsupportedVersion(
            f"protocol version {version!r} is not supported; this side speaks {', '.join(SUPPORTED_VERSIONS)}"
        )


def _message_id(root: Element) -> int | None:
    """The envelope's id, or None when it is missing or not an integer 0 to 2**31-1."""
    number = parse_decimal(root.get("id", ""), 10)
    return None if number is None or number > MAX_REQUEST_ID else number


def request_id_of(error: errors.IRPError) -> int:
    """The id of the request (or response) an error raised while parsing it belongs to;
    0 when the error concerns the connection (the id could not be read)."""
    return int(getattr(error, "request_id", 0))


def parse_request(payload: bytes) -> Request:
    """Parse one request frame.

    A refused request whose id could be read is a non-fatal error that carries the id in
    ``request_id`` (see :func:`request_id_of`), so that it is answered like any other. A
    document whose id cannot be read (not a ``<request>``, no id, or one that is not an
    integer from 1 to 2**31-1) is a fatal ``malformed-message``: its answer could not be
    matched to a request, and id 0 on the wire always means the connection is ending.
    """
    root = parse_xml(payload)
    if root.tag != "request":
        raise errors.MalformedMessage(f"expected a <request> document, got <{root.tag}>")
    _check_version(root)
    request_id = _message_id(root)
    if not request_id:
        raise errors.MalformedMessage("the request has no usable id (an integer from 1 to 2147483647)")
    try:
        for name in root.keys():
            if name not in {"v", "id"}:
                raise errors.BadRequest(f"unknown attribute {name!r} on <request>")
        children = list(root)
        if len(children) != 1:
            raise errors.BadRequest("a request holds exactly one operation element")
        no_text(root)
    except errors.IRPError as error:
        error.request_id = request_id  # type: ignore[attr-defined]
        raise
    return Request(request_id, children[0].tag, children[0])


def build_request(request_id: int, operation: Element) -> bytes:
    """Serialise a request envelope around ``operation``."""
    root = make_element("request", {"v": PROTOCOL_VERSION, "id": str(request_id)})
    root.append(operation)
    return serialize(root)


#: A result: an element, or one already serialised (a cached answer).
Result = Element | bytes


def ok_response(request_id: int, results: Iterable[Result]) -> bytes:
    """Serialise a successful response."""
    parts = [part if isinstance(part, bytes) else serialize(part) for part in results]
    if not parts:
        return f'<response v="{PROTOCOL_VERSION}" id="{request_id}" status="ok"/>'.encode("ascii")
    head = f'<response v="{PROTOCOL_VERSION}" id="{request_id}" status="ok">'.encode("ascii")
    return b"".join((head, *parts, b"</response>"))


def error_response(request_id: int, error: errors.IRPError) -> bytes:
    """Serialise an error response: the one place errors become wire messages."""
    root = make_element(
        "response", {"v": PROTOCOL_VERSION, "id": str(request_id), "status": "error"}
    )
    detail = make_element("error", {"code": str(error.code), "name": error.name}, error.message)
    root.append(detail)
    return serialize(root)


def parse_response(payload: bytes) -> Response:
    """Parse a response frame; an error response raises the matching IRPError.

    The raised error carries the response id in ``request_id`` (see :func:`request_id_of`;
    0 when the id could not be read). Responses may hold up to
    :data:`MAX_RESPONSE_ELEMENTS` elements.
    """
    root = parse_xml(payload, MAX_RESPONSE_ELEMENTS)
    if root.tag != "response":
        raise errors.BadRequest(f"expected a <response> document, got <{root.tag}>")
    _check_version(root)
    response_id = _message_id(root)
    if response_id is None:
        raise errors.BadRequest("the id attribute must be an integer from 0 to 2147483647")
    try:
        status = root.get("status")
        # The result elements are the caller's to check; the envelope holds nothing else.
        check_fields(root, ("v", "id", "status"), [child.tag for child in root])
        if status == "ok":
            return Response(response_id, list(root))
        if status != "error":
            raise errors.BadRequest(f"unknown response status {status!r}")
        if len(root) != 1 or root[0].tag != "error":
            raise errors.BadRequest("an error response holds exactly one <error> element")
        detail = root[0]
        check_fields(detail, ("code", "name"), text=True)
        code = detail.get("code", "500")
        name = detail.get("name", "internal-error")
        cls = errors.error_class_for(name, parse_decimal(code, 3) or 500)
        failure = cls(detail.text or None)
    except errors.IRPError as error:
        error.request_id = response_id  # type: ignore[attr-defined]
        raise
    failure.request_id = response_id  # type: ignore[attr-defined]
    raise failure
