"""Strict accessors of XML fields and the base64 rules, shared by IRP and SixChat (sans-I/O).

A protocol makes one :class:`StrictFields` with the factory of its own error (SixChat's
``MalformedMessage``, IRP's ``BadRequest``), optionally a second factory for values out of
their range (IRP's ``InvalidArgument``), its name, its base64 rule and the texts of its
refusals (:class:`FieldMessages`); every check then raises that protocol's error with that
protocol's text. The rules are the same for both; only the words differ.

Two styles of message are served by one set of checks:

* fixed shapes (SixChat): :meth:`StrictFields.children`, :meth:`~StrictFields.repeated`,
  :meth:`~StrictFields.leaf_text`, :meth:`~StrictFields.empty`;
* named fields in any order (IRP): :meth:`StrictFields.check_fields`,
  :meth:`~StrictFields.required`, :meth:`~StrictFields.optional_int`,
  :meth:`~StrictFields.optional_bool`, :meth:`~StrictFields.child_text`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.integers import parse_decimal
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


@dataclass(frozen=True)
class FieldMessages:
    """The texts of a protocol's refusals, as :meth:`str.format` templates.

    Each template may use the names listed beside it (unused names are ignored):

    * ``missing_attributes``: ``tag``, ``names`` (comma-separated), ``first`` (the first
      missing one);
    * ``unknown_attributes``: ``tag``, ``names`` (sorted, comma-separated), ``first`` (the
      first unknown one in document order);
    * ``unknown_element``: ``tag``, ``child``;
    * ``text``: ``tag`` (text where only white space between elements may be);
    * ``not_decimal``: ``name``; ``out_of_range``: ``name``, ``low``, ``high``;
    * ``not_boolean``: ``name``;
    * ``missing_child`` and ``repeated_child``: ``tag``, ``child``;
    * ``too_long``: ``child``, ``limit``.

    The defaults are SixChat's texts where SixChat uses the check, IRP's elsewhere.
    """

    missing_attributes: str = "<{tag}> lacks the attribute(s) {names}"
    unknown_attributes: str = "<{tag}> has unknown attribute(s) {names}"
    unknown_element: str = "unknown element <{child}> in <{tag}>"
    text: str = "<{tag}> holds text between its elements"
    not_decimal: str = "{name!r} must be a non-negative integer in decimal, without leading zeros"
    out_of_range: str = "{name!r} must be between {low} and {high}"
    not_boolean: str = "{name!r} must be 'true' or 'false'"
    missing_child: str = "<{tag}> needs a <{child}> element"
    repeated_child: str = "<{tag}> has more than one <{child}>"
    too_long: str = "<{child}> is longer than {limit} characters"


class StrictFields:
    """The strict checks of one protocol, raising its own error.

    ``error`` makes the exception from a message; ``range_error`` makes the exception for a
    well-formed value outside its range (``error`` when not given); ``protocol`` names the
    protocol in messages; ``base64_rule`` is the protocol's base64 rule; ``messages`` holds
    the texts of the refusals.
    """

    def __init__(
        self,
        error: Callable[[str], Exception],
        *,
        protocol: str,
        base64_rule: Base64Rule = Base64Rule.CANONICAL,
        range_error: Callable[[str], Exception] | None = None,
        messages: FieldMessages = FieldMessages(),
    ) -> None:
        self.error = error
        self.range_error = range_error or error
        self.protocol = protocol
        self.base64_rule = base64_rule
        self.messages = messages

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
        present = element.keys()
        if present == list(required):
            return  # the usual case: exactly the required ones, in their order
        missing = [name for name in required if name not in present]
        if missing:
            raise self.error(
                self.messages.missing_attributes.format(
                    tag=element.tag, names=", ".join(missing), first=missing[0]
                )
            )
        allowed = set(required) | set(optional)
        unknown = [name for name in present if name not in allowed]
        if unknown:
            raise self.error(
                self.messages.unknown_attributes.format(
                    tag=element.tag, names=", ".join(sorted(unknown)), first=unknown[0]
                )
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
        self.no_text(element)
        return children

    def repeated(self, element: Element, tag: str, low: int, high: int) -> list[Element]:
        """The children: ``low`` to ``high`` elements, all ``<tag>``."""
        children = list(element)
        if not low <= len(children) <= high or any(child.tag != tag for child in children):
            raise self.error(f"<{element.tag}> must contain {low} to {high} <{tag}> elements")
        self.no_text(element)
        return children

    def no_text(self, element: Element) -> None:
        """Refuse text directly inside ``element`` other than XML white space (space, tab,
        CR, LF) before, between and after its child elements."""
        if not only_space(element.text) or not all(only_space(child.tail) for child in element):
            raise self.error(self.messages.text.format(tag=element.tag))

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

    # -- named fields in any order ---------------------------------------------------

    def check_fields(
        self,
        element: Element,
        attributes: Sequence[str] = (),
        children: Sequence[str] = (),
        *,
        text: bool = False,
    ) -> None:
        """Refuse attributes other than ``attributes`` (the first unknown one in document
        order is named), child elements other than ``children`` (in any order and number;
        the first unknown one is named), and text other than white space between elements
        unless ``text`` is true. Checked in that order."""
        self.check_attributes(element, (), tuple(attributes))
        for child in element:
            if child.tag not in children:
                raise self.error(
                    self.messages.unknown_element.format(tag=element.tag, child=child.tag)
                )
        if not text:
            self.no_text(element)

    def required(self, element: Element, name: str) -> str:
        """The value of the attribute ``name``, which must be present."""
        value = element.get(name)
        if value is None:
            raise self.error(
                self.messages.missing_attributes.format(tag=element.tag, names=name, first=name)
            )
        return str(value)

    def optional_int(
        self, element: Element, name: str, default: int, low: int, high: int
    ) -> int:
        """The attribute ``name`` as an integer from ``low`` to ``high``, or ``default`` when
        absent. The text must be ASCII decimal digits without sign or leading zeros, at most
        12 of them (else ``error``); a number outside the range raises ``range_error``."""
        value = element.get(name)
        if value is None:
            return default
        number = parse_decimal(str(value), 12)
        if number is None:
            raise self.error(self.messages.not_decimal.format(name=name))
        if not low <= number <= high:
            raise self.range_error(
                self.messages.out_of_range.format(name=name, low=low, high=high)
            )
        return number

    def optional_bool(
        self, element: Element, name: str, default: bool | None = None
    ) -> bool | None:
        """The attribute ``name`` as a boolean (exactly ``true`` or ``false``), or
        ``default`` when absent."""
        value = element.get(name)
        if value is None:
            return default
        if value not in ("true", "false"):
            raise self.error(self.messages.not_boolean.format(name=name))
        return value == "true"

    def child_text(
        self, element: Element, tag: str, *, required_child: bool = True, limit: int = 65536
    ) -> str | None:
        """The text of the one child ``<tag>``, which may carry no attributes and no
        elements; None when it is absent and not ``required_child``.

        A second ``<tag>`` is refused; text longer than ``limit`` characters raises
        ``range_error`` (a field's limit is not the frame's).
        """
        found = element.findall(tag)
        if not found:
            if required_child:
                raise self.error(self.messages.missing_child.format(tag=element.tag, child=tag))
            return None
        if len(found) > 1:
            raise self.error(self.messages.repeated_child.format(tag=element.tag, child=tag))
        child = found[0]
        self.check_fields(child, text=True)
        value = str(child.text or "")
        if len(value) > limit:
            raise self.range_error(self.messages.too_long.format(child=tag, limit=limit))
        return value
