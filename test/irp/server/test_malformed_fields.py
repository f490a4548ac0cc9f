"""docs/irp.rst's "Malformed fields" table is what the registry answers (issue 9, item 24).

The test reads the table from the spec itself and sends every row: whole documents (rows
whose example is a ``<request>``) as frames to a server protocol on a fake transport, and
operation elements through a real registry on loopback as its administrator. Each must be
answered with the error the table names: with id 0 exactly when that error is fatal.
"""

from __future__ import annotations

import os
import re

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.errors import subclasses_of
from common.wire.framing import encode_frame
from common.wire.xmlcodec import parse_document
from irp import errors
from irp.server.protocol import ConnectionLimits, RegistryServerFactory, RegistryServerProtocol
from test import pki
from test.helpers import REPOSITORY, RunningRegistry
from test.irp.server.helpers import CLIENT_HOST, FakeTLSTransport, make_registry, responses

SPEC = os.path.join(REPOSITORY, "docs", "irp.rst")

#: Every wire error name, and those that end a connection (docs/irp.rst, Errors).
NAMES = {cls.name for cls in (errors.IRPError, *subclasses_of(errors.IRPError))}
FATAL = {cls.name for cls in subclasses_of(errors.IRPError) if cls.fatal}


def spec_rows() -> list[tuple[str, str, str]]:
    """The (field, example, error) rows of the spec's "Malformed fields" table."""
    with open(SPEC, encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("\nMalformed fields\n----------------\n") :]
    lines = section.splitlines()
    borders = [index for index, line in enumerate(lines) if line.startswith("====")]
    spans = [match.span() for match in re.finditer(r"=+", lines[borders[0]])]
    rows = []
    for line in lines[borders[1] + 1 : borders[2]]:
        field = line[: spans[1][0]].strip()
        example = line[spans[1][0] : spans[2][0]].strip()
        error = line[spans[2][0] :].strip()
        assert example.startswith("``") and example.endswith("``"), line
        rows.append((field, example[2:-2], error))
    return rows


def is_document(example: str) -> bool:
    """Whether a row's example is a whole document (else an operation element)."""
    return re.match(r"<requests?[\s>]", example) is not None


def close_elements(example: str) -> str:
    """Close the elements an example leaves open (the table shows only their start)."""
    stack: list[str] = []
    for match in re.finditer(r"<(/?)([A-Za-z][\w:.-]*)[^>]*?(/?)>", example):
        closing, tag, empty = match.groups()
        if closing:
            stack.pop()
        elif not empty:
            stack.append(tag)
    return example + "".join(f"</{tag}>" for tag in reversed(stack))


class TableTests(unittest.SynchronousTestCase):
    def test_table_is_read(self) -> None:
        rows = spec_rows()
        self.assertGreater(len(rows), 40)
        self.assertEqual(rows[0], ("root element", '<requests v="1" id="5"><whoami/></requests>', "malformed-message"))
        for _field, _example, error in rows:
            self.assertIn(error, NAMES)


class EnvelopeRowTests(unittest.TestCase):
    """Rows that are whole documents, sent as frames."""

    def test_envelope_rows(self) -> None:
        clock = Clock()
        factory = RegistryServerFactory(make_registry(clock), pki.trust_store(pki.make_ca()), clock, ConnectionLimits())
        checked = 0
        for field, example, error in spec_rows():
            if not is_document(example):
                continue
            with self.subTest(field=field):
                protocol = factory.buildProtocol(IPv4Address("TCP", CLIENT_HOST, 40000))
                assert isinstance(protocol, RegistryServerProtocol)
                transport = FakeTLSTransport(CLIENT_HOST, None)
                protocol.makeConnection(transport)
                protocol.handshakeCompleted()
                protocol.dataReceived(encode_frame(close_elements(example).encode("utf-8")))
                [(request_id, name, _detail)] = responses(transport)
                self.assertEqual((request_id, name), (0 if error in FATAL else 5, error), example)
                self.assertEqual(transport.disconnecting, error in FATAL, example)
                protocol.connectionLost(None)  # type: ignore[arg-type]
                checked += 1
        self.assertGreater(checked, 5)


class OperationRowTests(unittest.TestCase):
    """Rows that are operation elements, sent by an administrator to a real registry."""

    async def test_operation_rows(self) -> None:
        registry = await RunningRegistry(self).start()
        issued = await registry.issue("admin", registry.admin_password)
        admin = await registry.admin()
        checked = 0
        for field, example, error in spec_rows():
            if is_document(example):
                continue
            document = close_elements(example.replace("SERIAL", format(issued.serial, "x")))
            try:
                await admin.protocol.request(parse_document(document.encode("utf-8")))
            except errors.IRPError as failure:
                self.assertEqual(failure.name, error, f"{field}: {document}: {failure}")
            else:
                self.fail(f"{field}: {document} was accepted; the spec says {error}")
            checked += 1
        self.assertGreater(checked, 30)
