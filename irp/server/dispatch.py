"""Request dispatch for the IRP registry: the checks of an operation element's fields.

The first piece split out of :mod:`irp.server.registry` (issue 10); the operation table,
the access check and ``handle``/``handle_now`` are to follow.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.wire.xmlcodec import Element
from irp import errors
from irp.wire.messages import check_fields

_TEXT_ONLY: tuple[tuple[str, ...], tuple[str, ...], bool] = ((), (), True)

#: The fields of the elements inside operation elements: their attributes, their child
#: elements and whether they hold text. Checked, with the operation's own, before the login.
CHILD_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "password": _TEXT_ONLY,
    "current-password": _TEXT_ONLY,
    "csr": _TEXT_ONLY,
    "pem": _TEXT_ONLY,
    "data": _TEXT_ONLY,
    "passphrase": _TEXT_ONLY,
    "endpoint": (("address", "port"), (), False),
    "attributes": ((), ("attribute",), False),
    "attribute": (("name",), (), True),
}


#: The attributes the elements inside operation elements must have.
CHILD_REQUIRED: dict[str, tuple[str, ...]] = {"endpoint": ("address", "port"), "attribute": ("name",)}

#: The only child elements that may appear more than once in their parent.
REPEATABLE = frozenset({"endpoint", "attribute"})


def check_children(element: Element) -> None:
    """Check the fields of every element inside an operation element (see
    :data:`CHILD_FIELDS` and :data:`CHILD_REQUIRED`; the operation's own check let only
    known tags through), and that no child other than a :data:`REPEATABLE` one repeats."""
    seen: set[str] = set()
    for child in element:
        tag = child.tag
        if tag in seen and tag not in REPEATABLE:
            raise errors.BadRequest(f"<{element.tag}> has more than one <{tag}>")
        seen.add(tag)
        attributes, children, text = CHILD_FIELDS[tag]
        check_fields(child, attributes, children, text=text)
        check_present(child, CHILD_REQUIRED.get(tag, ()))
        check_children(child)


def check_present(element: Element, names: Sequence[str]) -> None:
    """Refuse ``element`` when one of ``names`` (attributes, or child elements where the
    name is not an attribute's) is absent."""
    for name in names:
        if element.get(name) is None and element.find(name) is None:
            kind = "element" if name in CHILD_FIELDS else "attribute"
            shown = f"<{name}>" if kind == "element" else repr(name)
            raise errors.BadRequest(f"<{element.tag}> needs a {shown} {kind}")
