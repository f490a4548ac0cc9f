"""IRP message envelopes and field access (sans-I/O).

Requests:  ``<request v="1" id="7"><lookup user="bob"/></request>``
Responses: ``<response v="1" id="7" status="ok">...</response>`` or, on failure,
``<response v="1" id="7" status="error"><error code="404" name="not-found">...</error></response>``.

Errors become wire messages only in :func:`error_response`; the client turns them back into
exceptions only in :func:`parse_response`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from irp import errors
from irp.xmlcodec import Element, XMLRejected, make_element, parse_document, serialize

#: Callables given every serialised message (tests use this to check each message against
#: the schema). Empty in production, where it costs one truth test per message.
message_observers: list[Callable[[bytes], None]] = []

PROTOCOL_VERSION = "1"
SUPPORTED_VERSIONS = ("1",)
MAX_REQUEST_ID = 2**31 - 1


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


def _observed(payload: bytes) -> bytes:
    if message_observers:
        for observer in message_observers:
            observer(payload)
    return payload


def parse_xml(payload: bytes) -> Element:
    """Parse untrusted bytes, turning codec failures into IRP errors."""
    try:
        return parse_document(payload)
    except XMLRejected as error:
        if error.forbidden:
            raise errors.ForbiddenMarkup(str(error)) from None
        raise errors.MalformedMessage(str(error)) from None


def _parse_envelope(root: Element, tag: str) -> int:
    if root.tag != tag:
        raise errors.BadRequest(f"expected a <{tag}> document, got <{root.tag}>")
    version = root.get("v")
    if version not in SUPPORTED_VERSIONS:
        raise errors.UnsupportedVersion(
            f"protocol version {version!r} is not supported; this side speaks {', '.join(SUPPORTED_VERSIONS)}"
        )
    raw_id = root.get("id", "")
    if not raw_id.isdigit() or len(raw_id) > 10 or int(raw_id) > MAX_REQUEST_ID:
        raise errors.BadRequest("the id attribute must be an integer from 0 to 2147483647")
    return int(raw_id)


def parse_request(payload: bytes) -> Request:
    """Parse one request frame."""
    root = parse_xml(payload)
    request_id = _parse_envelope(root, "request")
    if request_id == 0:
        raise errors.BadRequest("request ids start at 1")
    extra = set(root.keys()) - {"v", "id"}
    if extra:
        raise errors.BadRequest(f"unknown attribute {sorted(extra)[0]!r} on <request>")
    children = list(root)
    if len(children) != 1 or (root.text or "").strip():
        raise errors.BadRequest("a request holds exactly one operation element")
    operation = children[0]
    if (operation.tail or "").strip():
        raise errors.BadRequest("text outside the operation element")
    return Request(request_id, operation.tag, operation)


def build_request(request_id: int, operation: Element) -> bytes:
    """Serialise a request envelope around ``operation``."""
    root = make_element("request", {"v": PROTOCOL_VERSION, "id": str(request_id)})
    root.append(operation)
    return _observed(serialize(root))


def ok_response(request_id: int, results: Iterable[Element]) -> bytes:
    """Serialise a successful response."""
    root = make_element("response", {"v": PROTOCOL_VERSION, "id": str(request_id), "status": "ok"})
    for element in results:
        root.append(element)
    return _observed(serialize(root))


def error_response(request_id: int, error: errors.IRPError) -> bytes:
    """Serialise an error response: the one place errors become wire messages."""
    root = make_element(
        "response", {"v": PROTOCOL_VERSION, "id": str(request_id), "status": "error"}
    )
    detail = make_element("error", {"code": str(error.code), "name": error.name}, error.message)
    root.append(detail)
    return _observed(serialize(root))


def parse_response(payload: bytes) -> Response:
    """Parse a response frame; an error response raises the matching IRPError.

    The raised error carries the response id in ``request_id``.
    """
    root = parse_xml(payload)
    response_id = _parse_envelope(root, "response")
    status = root.get("status")
    if status == "ok":
        return Response(response_id, list(root))
    if status == "error":
        detail = root.find("error")
        if detail is None:
            raise errors.BadRequest("an error response without an <error> element")
        code = detail.get("code", "500")
        name = detail.get("name", "internal-error")
        cls = errors.error_class_for(name, int(code) if code.isdigit() else 500)
        failure = cls(detail.text or None)
        failure.request_id = response_id  # type: ignore[attr-defined]
        raise failure
    raise errors.BadRequest(f"unknown response status {status!r}")


# -- strict field access ------------------------------------------------------------


def check_fields(
    element: Element, attributes: Sequence[str] = (), children: Sequence[str] = ()
) -> None:
    """Refuse attributes and child elements other than those named."""
    for name in element.keys():
        if name not in attributes:
            raise errors.BadRequest(f"unknown attribute {name!r} on <{element.tag}>")
    for child in element:
        if child.tag not in children:
            raise errors.BadRequest(f"unknown element <{child.tag}> in <{element.tag}>")


def required(element: Element, name: str) -> str:
    """Return a required attribute."""
    value = element.get(name)
    if value is None:
        raise errors.BadRequest(f"<{element.tag}> needs a {name!r} attribute")
    return value


def optional_int(element: Element, name: str, default: int, low: int, high: int) -> int:
    """Return an integer attribute within [low, high], or ``default`` when absent."""
    value = element.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 12:
        raise errors.BadRequest(f"{name!r} must be a non-negative integer")
    number = int(value)
    if not low <= number <= high:
        raise errors.InvalidArgument(f"{name!r} must be between {low} and {high}")
    return number


def optional_bool(element: Element, name: str, default: bool | None = None) -> bool | None:
    """Return a boolean attribute (``true``/``false``), or ``default`` when absent."""
    value = element.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise errors.BadRequest(f"{name!r} must be 'true' or 'false'")
    return value == "true"


def bool_text(value: bool) -> str:
    """The wire form of a boolean."""
    return "true" if value else "false"


def child_text(element: Element, tag: str, *, required_child: bool = True, limit: int = 65536) -> str | None:
    """Return the text of the single child ``tag``."""
    found = element.findall(tag)
    if not found:
        if required_child:
            raise errors.BadRequest(f"<{element.tag}> needs a <{tag}> element")
        return None
    if len(found) > 1:
        raise errors.BadRequest(f"<{element.tag}> has more than one <{tag}>")
    child = found[0]
    if len(child):
        raise errors.BadRequest(f"<{tag}> must hold only text")
    text = child.text or ""
    if len(text) > limit:
        raise errors.MessageTooLarge(f"<{tag}> is longer than {limit} characters")
    return text


def decode_base64(text: str, what: str) -> bytes:
    """Decode strict base64 (whitespace allowed between lines)."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise errors.BadRequest(f"{what} is not valid base64") from None


def encode_base64(data: bytes) -> str:
    """Encode bytes as base64 text."""
    return base64.b64encode(data).decode("ascii")


def parse_serial(text: str) -> int:
    """Parse a certificate serial number in hex."""
    cleaned = text.lower().replace(":", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise errors.BadRequest(f"{text!r} is not a hexadecimal serial number")
    return int(cleaned, 16)
