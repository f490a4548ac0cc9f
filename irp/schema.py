"""RELAX NG schemas of the IRP messages, shipped as package data in ``irp/schema/``.

``irp/schema/irp.rng`` describes every IRP v1 request and response (see ``docs/irp.rst``).
The server does not validate against it at run time (its hand-written checks in
:mod:`irp.messages` and :mod:`irp.registry` are the enforcement); the schema is the
machine-readable form of the specification, and the test suite checks every message the
server and the client produce against it.
"""

from __future__ import annotations

import functools
from importlib import resources

from lxml import etree

__all__ = ["load_schema", "validate"]


@functools.cache
def load_schema(name: str) -> etree.RelaxNG:
    """Load (once) and return the RELAX NG schema ``irp/schema/<name>``."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid schema name {name!r}")
    data = resources.files("irp").joinpath("schema", name).read_bytes()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.RelaxNG(etree.fromstring(data, parser))


def validate(payload: bytes, name: str = "irp.rng") -> None:
    """Check one serialised message against a schema; raise ValueError if it is invalid.

    The error's message is the validator's error log (one line per problem).
    """
    schema = load_schema(name)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        document = etree.fromstring(payload, parser)
    except etree.XMLSyntaxError as error:
        raise ValueError(f"not well-formed XML: {error}") from None
    if not schema.validate(document):
        log = "\n".join(
            f"line {entry.line}: {entry.message}" for entry in schema.error_log  # type: ignore[attr-defined]
        )
        raise ValueError(log or "the document does not match the schema")
