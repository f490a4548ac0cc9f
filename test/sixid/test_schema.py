# mypy: allow-untyped-calls
"""sixid.wire against docs/schema/sixid.rng: everything the codec writes validates, and
malformed documents are refused by both the codec and the schema."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lxml import etree
from twisted.trial.unittest import TestCase

from sixid import errors
from sixid.wire import (
    Changed,
    Gone,
    Lookup,
    Ping,
    Pong,
    RecordResult,
    Refused,
    Register,
    Request,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    Watching,
    encode_error,
    encode_push,
    encode_request,
    encode_response,
    parse_answer,
    parse_request,
)
from test.helpers import REPOSITORY
from test.sixid.helpers import KEY_TYPES, address_of, signed_record, signed_registration

SCHEMA_PATH = os.path.join(REPOSITORY, "docs", "schema", "sixid.rng")
_SCHEMA: list[Any] = []
ID_TEXT = str(address_of("p256").sixid)


def schema() -> Any:
    """The compiled schema (once)."""
    if not _SCHEMA:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        _SCHEMA.append(etree.RelaxNG(etree.parse(SCHEMA_PATH, parser)))
    return _SCHEMA[0]


def valid(document: bytes) -> bool:
    return bool(schema().validate(etree.fromstring(document)))


def written() -> list[bytes]:
    """One of every document the codec writes."""
    sixid = address_of("p256").sixid
    certified = dataclasses.replace(signed_registration("p384"), certificates=(b"leaf", b"ca", b"root", b"more"))
    operations: list[object] = [Register(signed_registration(key_type)) for key_type in KEY_TYPES]
    operations += [Register(certified), Lookup(sixid), Watch(sixid), Unwatch(sixid), Signer(), Ping()]
    record = signed_record("ed25519").to_bytes()
    results = [RecordResult(record), Watching(record), Watching(None), Unwatched(), SignerChain((b"a", b"b", b"c")), Pong()]
    documents = [encode_request(Request(number, op)) for number, op in enumerate(operations, 1)]  # type: ignore[arg-type]
    documents += [encode_response(2**31 - 1, result) for result in results]  # type: ignore[arg-type]
    documents += [encode_push(Changed(record)), encode_push(Gone(sixid))]
    documents += [encode_error(3, errors.UnknownId()), encode_error(None, errors.MalformedMessage("bad <x> & y"))]
    return documents


BAD_REQUESTS = [
    b'<request v="2" id="1"><ping/></request>',
    b'<request v="1" id="0"><ping/></request>',
    b'<request v="1" id="1"><ping/><ping/></request>',
    b'<request v="1" id="1"><resolve/></request>',
    b'<request v="1" id="1"><ping a="b"/></request>',
    b'<request v="1" id="1"><lookup sixid="ABCDEFGHABCDEFGHABCDEFGHABCDEFGH"/></request>',
    b'<request v="1" id="1"><lookup sixid="abcd-efgh-abcd-efgh-abcd-efgh-abcd-efgh"/></request>',
    b'<request v="1" id="1"><lookup/></request>',
    b'<request v="1" id="1"><register><registration>YWJ=</registration><key>YWI=</key><signature>YWI=</signature></register></request>',
    b'<request v="1" id="1"><register><registration>YWI=</registration><key>YWI=</key></register></request>',
    b'<request v="1" id="1"><register><registration>YWI=</registration><key>YWI=</key><signature>YWI=</signature>'
    + b"<certificate>YWI=</certificate>" * 5 + b"</register></request>",
    b'<request v="1" id="1" pad="x"><ping/></request>',
]

BAD_ANSWERS = [
    b'<response id="1"><record>YWJ=</record></response>',
    b'<response id="1" pad="y"><pong/></response>',
    b'<response id="1"><signer><certificate>YWI=</certificate></signer></response>',
    b'<response id="1"><watching><record>YWI=</record><record>YWI=</record></watching></response>',
    b'<push><gone sixid="x"/></push>',
    b"<push><changed/></push>",
    b'<error id="1" code="4040" name="x">y</error>',
]


class SchemaTests(TestCase):
    """The codec and the schema agree."""

    def test_everything_written_validates(self) -> None:
        for document in written():
            self.assertTrue(valid(document), document)

    def test_padding_validates_anywhere(self) -> None:
        record = encode_response(1, RecordResult(signed_record("p256").to_bytes()))
        padded = record.replace(b"<record>", b'<record pad="xxx">')
        self.assertTrue(valid(padded))
        parse_answer(padded)
        self.assertTrue(valid(b'<error id="1" code="404" name="unknown-id" pad="xx">no</error>'))

    def test_bad_requests_refused_by_both(self) -> None:
        for document in BAD_REQUESTS:
            self.assertFalse(valid(document), document)
            with self.assertRaises(Refused, msg=document):
                parse_request(document)

    def test_bad_answers_refused_by_both(self) -> None:
        for document in BAD_ANSWERS:
            self.assertFalse(valid(document), document)
            with self.assertRaises(errors.MalformedMessage, msg=document):
                parse_answer(document)
