"""RELAX NG schemas of the IRP messages, published with the specification in ``docs/schema/``.

``docs/schema/irp.rng`` describes every IRP v1 request and response (see ``docs/irp.rst``).
The server does not validate against it at run time (its hand-written checks in
:mod:`irp.wire.messages` and :mod:`irp.server.registry` are the enforcement); the schema is the
machine-readable form of the specification, and the test suite checks every message the
server and the client produce against it.
"""

from __future__ import annotations

import functools
import os

from lxml import etree

from test.helpers import REPOSITORY

__all__ = ["load_schema", "validate"]


@functools.cache
def load_schema(name: str) -> etree.RelaxNG:
    """Load (once) and return the RELAX NG schema ``docs/schema/<name>``."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid schema name {name!r}")
    with open(os.path.join(REPOSITORY, "docs", "schema", name), "rb") as schema_file:
        data = schema_file.read()
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
