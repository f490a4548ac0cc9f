"""Strict accessors of XML fields and the base64 rules, shared by IRP and SixChat (sans-I/O).

A protocol makes one :class:`StrictFields` with the factory of its own error (SixChat's
``MalformedMessage``, IRP's ``BadRequest``), its name and its base64 rule; every check then
raises that protocol's error with the same messages.

The two specifications state different base64 rules, so there are two
(:class:`Base64Rule`), decoded by one function:

* ``CANONICAL`` (docs/sixchat.rst): the standard alphabet with padding, no white space,
  unused bits zero (the text must be what :func:`encode_base64` gives back);
* ``LINES`` (docs/irp.rst): RFC 4648 base64 with padding, which requests may break into
  lines: white space anywhere is dropped before decoding; unused bits are not checked.

Both alphabets are the standard one, and :func:`encode_base64` writes the canonical form
(which both rules accept).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable

from common.wire.xmlcodec import Element, XMLRejected, parse_document

#: White space between XML elements (the XML ``S`` production).
XML_SPACE = " \t\r\n"


class Base64Rule(enum.Enum):
    """Which base64 texts a protocol accepts."""

    CANONICAL = "canonical"
    LINES = "lines"


def encode_base64(data: bytes) -> str:
    """Standard base64 with padding, on one line (the canonical form)."""
    return base64.b64encode(data).decode("ascii")


def only_space(text: str | None) -> bool:
    """Whether ``text`` is absent or XML white space only."""
    return text is None or not text.strip(XML_SPACE)


class StrictFields:
    """The strict checks of one protocol, raising its own error.

    ``error`` makes the exception from a message; ``protocol`` names the protocol in
    messages; ``base64_rule`` is the protocol's base64 rule.
    """

    def __init__(
        self,
        error: Callable[[str], Exception],
        *,
        protocol: str,
        base64_rule: Base64Rule = Base64Rule.CANONICAL,
    ) -> None:
        self.error = error
        self.protocol = protocol
        self.base64_rule = base64_rule

    def parse(self, payload: bytes, *, max_depth: int, max_elements: int) -> Element:
        """Parse one document (see :func:`~common.wire.xmlcodec.parse_document`); namespaces
        are refused."""
        root: Element
        try:
            root = parse_document(payload, max_depth=max_depth, max_elements=max_elements)
        except XMLRejected as error:
            raise self.error(f"unacceptable XML: {error}") from None
        if root.nsmap:
            raise self.error(f"namespaces are not used in {self.protocol} messages")
        return root

    def check_attributes(
        self, element: Element, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> None:
        """The element has every ``required`` attribute and no other than ``optional``."""
        names = set(element.attrib.keys())
        missing = [name for name in required if name not in names]
        if missing:
            raise self.error(f"<{element.tag}> lacks the attribute(s) {', '.join(missing)}")
        unknown = names - set(required) - set(optional)
        if unknown:
            raise self.error(
                f"<{element.tag}> has unknown attribute(s) {', '.join(sorted(unknown))}"
            )

    def attribute(self, element: Element, name: str) -> str:
        """An attribute already checked present by :meth:`check_attributes`."""
        value = element.get(name)
        assert value is not None  # checked by check_attributes
        return str(value)

    def children(self, element: Element, tags: tuple[str, ...]) -> list[Element]:
        """The children, which must carry exactly ``tags`` in this order (white space
        between them is ignored, other text refused)."""
        children = list(element)
        if tuple(child.tag for child in children) != tags:
            raise self.error(
                f"<{element.tag}> must contain exactly {', '.join(tags) or 'nothing'}"
            )
        self._no_text_between(element, children)
        return children

    def repeated(self, element: Element, tag: str, low: int, high: int) -> list[Element]:
        """The children: ``low`` to ``high`` elements, all ``<tag>``."""
        children = list(element)
        if not low <= len(children) <= high or any(child.tag != tag for child in children):
            raise self.error(f"<{element.tag}> must contain {low} to {high} <{tag}> elements")
        self._no_text_between(element, children)
        return children

    def _no_text_between(self, element: Element, children: list[Element]) -> None:
        if not only_space(element.text) or not all(only_space(child.tail) for child in children):
            raise self.error(f"<{element.tag}> holds text between its elements")

    def leaf_text(self, element: Element, *, attributes: tuple[str, ...] = ()) -> str:
        """The text of an element that must hold only text (and exactly ``attributes``)."""
        self.check_attributes(element, attributes)
        if len(element):
            raise self.error(f"<{element.tag}> must hold only text")
        return str(element.text or "")

    def empty(
        self, element: Element, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
    ) -> None:
        """The element has no children and no text, and the attributes named."""
        self.check_attributes(element, required, optional)
        if len(element) or element.text:
            raise self.error(f"<{element.tag}> must be empty")

    def decode_base64(
        self, text: str, what: str, *, length: int | None = None, max_length: int | None = None
    ) -> bytes:
        """Decode ``text`` by the protocol's base64 rule; ``length`` is the exact decoded
        length, ``max_length`` the largest (and the data may not be empty)."""
        if self.base64_rule is Base64Rule.LINES:
            try:
                data = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                raise self.error(f"{what} is not valid base64") from None
        else:
            try:
                encoded = text.encode("ascii")
                data = base64.b64decode(encoded, validate=True)
            except (UnicodeEncodeError, binascii.Error, ValueError):
                raise self.error(f"{what} is not valid base64") from None
            if base64.b64encode(data) != encoded:
                raise self.error(f"{what} is not canonical base64")
        if length is not None and len(data) != length:
            raise self.error(f"{what} must be {length} bytes, not {len(data)}")
        if max_length is not None and not 0 < len(data) <= max_length:
            raise self.error(f"{what} must be 1 to {max_length} bytes")
        return data
