"""The envelope the request/response/push protocols share (the intermediary, sixid).

Every frame holds one XML document. A client sends ``<request v="V" id="N">OP</request>``;
the server answers ``<response id="N">RESULT</response>`` or ``<error id="N" code="C"
name="NAME">text</error>`` (no ``id``: the connection is ending), and pushes
``<push>EVENT</push>``. :class:`Envelope` reads and checks that outer layer strictly and
leaves what is inside (the operation, the result, the event) to the protocol's own
parsers, which it is given per call; it is generic over the protocol's error classes, its
version and the words of its refusals. :func:`encode_error` is the one encoder of
``<error>``: each protocol's ``encode_error`` calls it, so its errors still become wire
bytes in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from common.errors import ProtocolError
from common.integers import parse_decimal
from common.wire.fields import Base64Rule, FieldMessages, StrictFields
from common.wire.xmlcodec import Element, serialize_leaf

#: Request ids: 1 .. 2^31 - 1.
MAX_REQUEST_ID: Final = 2**31 - 1
#: The longest error text a client keeps of an ``<error>``.
MAX_ERROR_TEXT: Final = 1000

Op = TypeVar("Op")
R = TypeVar("R")
E = TypeVar("E", bound=ProtocolError)

#: Checks an element's attributes: ``(element, required, optional)``.
AttributeCheck = Callable[[Element, tuple[str, ...], tuple[str, ...]], None]
#: Reads a decimal field: ``(text, what, low, high)``.
DecimalField = Callable[[str, str, int, int], int]


@dataclass(frozen=True)
class Request(Generic[Op]):
    """One request: its id and operation (each protocol names its own, of its operations)."""

    id: int
    operation: Op


@dataclass(frozen=True)
class Response(Generic[R]):
    """A successful answer to request ``id``."""

    id: int
    result: R


@dataclass(frozen=True)
class ErrorAnswer(Generic[E]):
    """A refusal: of request ``id``, or of the connection (``id`` None)."""

    id: int | None
    error: E


class Refused(Exception):
    """A request that cannot be run: ``error`` answers request ``request_id`` (0: the id
    could not be read, and the connection ends)."""

    def __init__(self, request_id: int, error: ProtocolError) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


def request_id_of(root: Element) -> int:
    """The id of a ``<request>`` root if it is a valid one, else 0."""
    value = root.get("id")
    number = None if value is None else parse_decimal(str(value), 10)
    return number if number is not None and 1 <= number <= MAX_REQUEST_ID else 0


def encode_error(request_id: int | None, error: ProtocolError) -> bytes:
    """``<error [id] code name>message</error>`` (no id when ``request_id`` is 0 or None)."""
    attributes = {"code": str(error.code), "name": error.name}
    if request_id:
        attributes = {"id": str(request_id), **attributes}
    return serialize_leaf("error", attributes, error.message)


class Envelope:
    """The outer layer of one protocol's documents (see the module docs).

    ``base_error`` is the root of the protocol's wire errors (what refusals carry),
    ``malformed`` its ``malformed-message``, ``range_error`` what a field out of range
    raises, ``version_error`` what a request of another version is refused with (naming
    ``server_name``), ``error_class_for`` its name/code look-up; ``peer`` names the server
    in the client's complaints. ``check_attributes`` and ``decimal`` read the server's
    outer elements on the client's side (default: the strict fields' check; decimals of at
    most 12 digits, malformed or out of range both ``malformed``).
    """

    def __init__(
        self,
        *,
        protocol: str,
        version: str,
        base_error: type[ProtocolError],
        malformed: type[ProtocolError],
        range_error: type[ProtocolError],
        version_error: type[ProtocolError],
        error_class_for: Callable[[str, int], type[ProtocolError]],
        server_name: str,
        peer: str,
        max_depth: int,
        max_elements: int,
        check_attributes: AttributeCheck | None = None,
        decimal: DecimalField | None = None,
    ) -> None:
        self.version = version
        self.base_error = base_error
        self.malformed = malformed
        self.version_error = version_error
        self.error_class_for = error_class_for
        self.server_name = server_name
        self.peer = peer
        self.max_depth = max_depth
        self.max_elements = max_elements
        #: The strict field reader of the protocol's documents (canonical base64).
        self.fields = StrictFields(
            malformed, protocol=protocol, base64_rule=Base64Rule.CANONICAL, range_error=range_error, messages=FieldMessages()
        )
        self.check_attributes: AttributeCheck = check_attributes or self.fields.check_attributes
        self.decimal: DecimalField = decimal or self._decimal

    def parse(self, payload: bytes) -> Element:
        """The document's root (within the protocol's depth and element caps)."""
        return self.fields.parse(payload, max_depth=self.max_depth, max_elements=self.max_elements)

    # -- the server's side ------------------------------------------------------------------

    def parse_request(self, payload: bytes, parse_operation: Callable[[Element], Op]) -> tuple[int, Op]:
        """``(request id, operation)`` of one request document, the operation read by
        ``parse_operation``; raise :class:`Refused` (with the request's id when it could be
        read) for anything not acceptable."""
        try:
            root = self.parse(payload)
        except self.base_error as error:
            raise Refused(0, error) from None
        if root.tag != "request":
            raise Refused(0, self.malformed(f"expected <request>, not <{root.tag}>"))
        request_id = request_id_of(root)
        try:
            self.fields.check_attributes(root, ("v", "id"))
            if request_id == 0:
                raise self.malformed(f"'id' must be a decimal integer from 1 to {MAX_REQUEST_ID}")
            if root.get("v") != self.version:
                raise self.version_error(f"unsupported protocol version; {self.server_name} speaks v={self.version}")
            children = list(root)
            if len(children) != 1:
                raise self.malformed("<request> must contain exactly one operation")
            self.fields.no_text(root)
            return request_id, parse_operation(children[0])
        except self.base_error as error:
            raise Refused(request_id, error) from None

    # -- the client's side ------------------------------------------------------------------

    def parse_answer(
        self,
        payload: bytes,
        *,
        parse_result: Callable[[Element], Any],
        parse_event: Callable[[Element], Any],
        response: Callable[[int, Any], Any],
        error_answer: Callable[[int | None, Any], Any],
    ) -> Any:
        """What the server sent: ``response(id, parse_result(RESULT))``,
        ``error_answer(id or None, error)`` or ``parse_event(EVENT)``; raise ``malformed``
        for anything else (whatever the protocol's parsers raise becomes ``malformed``)."""
        try:
            root = self.parse(payload)
            if root.tag == "error":
                self.check_attributes(root, ("code", "name"), ("id",))
                if len(root):
                    raise self.malformed("<error> must hold only text")
                code = self.decimal(self.fields.attribute(root, "code"), "code", 0, 999)
                identifier = root.get("id")
                request_id = None if identifier is None else self.decimal(str(identifier), "id", 1, MAX_REQUEST_ID)
                cls = self.error_class_for(self.fields.attribute(root, "name"), code)
                return error_answer(request_id, cls(str(root.text or "")[:MAX_ERROR_TEXT] or None))
            if root.tag == "push":
                self.check_attributes(root, (), ())
                return parse_event(self.only_child(root))
            if root.tag == "response":
                self.check_attributes(root, ("id",), ())
                answered = self.decimal(self.fields.attribute(root, "id"), "id", 1, MAX_REQUEST_ID)
                return response(answered, parse_result(self.only_child(root)))
            raise self.malformed(f"unexpected <{root.tag}> from {self.peer}")
        except self.malformed:
            raise
        except self.base_error as error:
            raise self.malformed(error.message) from None

    def only_child(self, element: Element) -> Element:
        """The one element ``element`` holds (and no text)."""
        children = list(element)
        if len(children) != 1:
            raise self.malformed(f"<{element.tag}> must contain exactly one element")
        self.fields.no_text(element)
        return children[0]

    def _decimal(self, text: str, what: str, low: int, high: int) -> int:
        number = parse_decimal(text, 12)
        if number is None or not low <= number <= high:
            raise self.malformed(f"{what!r} must be a decimal integer from {low} to {high}")
        return number
