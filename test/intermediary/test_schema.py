# mypy: allow-untyped-calls
"""intermediary.wire against docs/schema/intermediary.rng: everything the codec writes
validates, and malformed documents are refused by both the parser and the schema."""

from __future__ import annotations

import os
from typing import Any

from lxml import etree
from twisted.trial.unittest import TestCase

from intermediary import errors
from intermediary.joinframes import encode_join, encode_joined
from intermediary.wire import (
    Refused,
    Request,
    encode_error,
    encode_push,
    encode_request,
    encode_response,
    parse_prekey_info,
    parse_request,
)
from test.helpers import REPOSITORY
from test.intermediary.helpers import EVENTS, HEX, OPERATIONS, RESULTS, prekey_bytes

SCHEMA_PATH = os.path.join(REPOSITORY, "docs", "schema", "intermediary.rng")
_SCHEMA: list[Any] = []


def schema() -> Any:
    """The compiled schema (once)."""
    if not _SCHEMA:
        _SCHEMA.append(etree.RelaxNG(etree.parse(SCHEMA_PATH)))
    return _SCHEMA[0]


def valid(document: bytes) -> bool:
    return bool(schema().validate(etree.fromstring(document)))


BAD_REQUESTS = [
    b'<request v="2" id="1"><ping/></request>',
    b'<request v="1" id="0"><ping/></request>',
    b'<request v="1" id="1"><ping/><ping/></request>',
    b'<request v="1" id="1"><fly/></request>',
    b'<request v="1" id="1"><ping a="b"/></request>',
    b'<request v="1" id="1"><fetch-prekey user="Bob@example.org"/></request>',
    b'<request v="1" id="1"><ack id="ABC"/></request>',
    b'<request v="1" id="1"><deposit to="bob@example.org" expires="01">YWI=</deposit></request>',
    b'<request v="1" id="1"><deposit to="bob@example.org" expires="1">YWJ=</deposit></request>',
    b'<request v="1" id="1"><publish-prekeys/></request>',
    b'<request v="1" id="1"><accept circuit="0123456789abcdef0123456789abcdef"/></request>',
    b'<request v="1" id="1"><join circuit="0123456789abcdef0123456789abcdef"/></request>',
]


class SchemaTests(TestCase):
    """The codec and the schema agree."""

    def test_everything_written_validates(self) -> None:
        documents = [encode_request(Request(n, op)) for n, op in enumerate(OPERATIONS, 1)]
        documents += [encode_response(7, result) for result in RESULTS]
        documents += [encode_push(event) for event in EVENTS]
        documents += [encode_error(3, errors.QuotaExceeded()), encode_error(None, errors.MalformedMessage())]
        documents += [encode_join(HEX), encode_joined(), encode_error(None, errors.UnknownCircuit())]
        for document in documents:
            self.assertTrue(valid(document), document)

    def test_prekey_documents(self) -> None:
        good = prekey_bytes("bob@example.org")
        parse_prekey_info(good)
        self.assertTrue(valid(good))
        bad = good.replace(b'kind="one-time"', b'kind="always"')
        self.assertFalse(valid(bad))
        with self.assertRaises(errors.InvalidArgument):
            parse_prekey_info(bad)

    def test_join_port_documents(self) -> None:
        for bad in [
            b'<join circuit="0123"/>',
            b"<join/>",
            b'<join circuit="0123456789abcdef0123456789abcdef" user="bob@example.org"/>',
            b"<joined>x</joined>",
            b'<response id="1"><accepted/></response>',
            b'<response id="1"><reserved address="::1" port="46051" expires="1"/></response>',
        ]:
            self.assertFalse(valid(bad), bad)

    def test_bad_requests_refused_by_both(self) -> None:
        for document in BAD_REQUESTS:
            self.assertFalse(valid(document), document)
            with self.assertRaises(Refused, msg=document):
                parse_request(document)
