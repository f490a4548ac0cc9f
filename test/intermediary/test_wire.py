"""The intermediary's codec: every message both ways, every refusal, hostile XML."""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from intermediary import errors
from intermediary.joinframes import encode_join, encode_joined, parse_join, parse_join_answer
from intermediary.wire import (
    MAX_ENVELOPE,
    Deposit,
    ErrorAnswer,
    Refused,
    Request,
    Reserved,
    Response,
    encode_error,
    encode_push,
    encode_request,
    encode_response,
    parse_prekey_info,
    parse_request,
    parse_server_message,
)
from test.intermediary.helpers import BOB, EVENTS, HEX, OPERATIONS, RESULTS, prekey_bytes


def refusal(payload: bytes) -> Refused:
    """The refusal ``payload`` gets."""
    try:
        parse_request(payload)
    except Refused as refused:
        return refused
    raise AssertionError(f"{payload!r} was accepted")


class RoundTripTests(TestCase):
    """What one side encodes, the other parses back."""

    def test_requests(self) -> None:
        for number, operation in enumerate(OPERATIONS, 1):
            request = Request(number, operation)
            self.assertEqual(parse_request(encode_request(request)), request)

    def test_results(self) -> None:
        for result in RESULTS:
            self.assertEqual(parse_server_message(encode_response(9, result)), Response(9, result))

    def test_events(self) -> None:
        for event in EVENTS:
            self.assertEqual(parse_server_message(encode_push(event)), event)

    def test_errors(self) -> None:
        answer = parse_server_message(encode_error(4, errors.QuotaExceeded("full")))
        assert isinstance(answer, ErrorAnswer)
        self.assertEqual(answer.id, 4)
        self.assertIsInstance(answer.error, errors.QuotaExceeded)
        self.assertEqual(answer.error.message, "full")
        fatal = parse_server_message(encode_error(None, errors.MalformedMessage("bad <xml> & more")))
        assert isinstance(fatal, ErrorAnswer)
        self.assertIsNone(fatal.id)
        self.assertEqual((fatal.error.name, fatal.error.code, fatal.error.message), ("malformed-message", 400, "bad <xml> & more"))

    def test_exact_bytes(self) -> None:
        self.assertEqual(
            encode_request(Request(1, Deposit(BOB, 10, 5, b"ab"))),
            b'<request v="1" id="1"><deposit to="bob@example.org" expires="10" deliver-at="5">YWI=</deposit></request>',
        )
        self.assertEqual(encode_error(3, errors.UnknownUser("no")), b'<error id="3" code="404" name="unknown-user">no</error>')
        self.assertEqual(
            encode_response(2, Reserved("2001:db8::5", 46051, 1700000000, 46049)),
            b'<response id="2"><reserved address="2001:db8::5" port="46051" join-port="46049" expires="1700000000"/></response>',
        )

    def test_error_codes_unique(self) -> None:
        from common.errors import subclasses_of

        classes: list[type[errors.IntermediaryError]] = [errors.IntermediaryError, *subclasses_of(errors.IntermediaryError)]
        wire = {(cls.name, cls.code) for cls in classes if cls.code}
        codes = [code for _, code in wire]
        self.assertEqual(len(codes), len(set(codes)))


class RefusalTests(TestCase):
    """Requests refused, with the request's id when it could be read."""

    def assertRefused(self, payload: bytes, kind: type[errors.IntermediaryError], request_id: int) -> None:
        found = refusal(payload)
        self.assertIsInstance(found.error, kind, str(found.error))
        self.assertEqual(found.request_id, request_id)

    def test_envelope(self) -> None:
        self.assertRefused(b"<nope/>", errors.MalformedMessage, 0)
        self.assertRefused(b'<request v="1" id="0"><ping/></request>', errors.MalformedMessage, 0)
        self.assertRefused(b'<request v="1" id="2147483648"><ping/></request>', errors.MalformedMessage, 0)
        self.assertRefused(b'<request v="1" id="007"><ping/></request>', errors.MalformedMessage, 0)
        self.assertRefused(b'<request v="2" id="5"><ping/></request>', errors.InvalidArgument, 5)
        self.assertRefused(b'<request id="5"><ping/></request>', errors.MalformedMessage, 5)
        self.assertRefused(b'<request v="1" id="5" x="y"><ping/></request>', errors.MalformedMessage, 5)
        self.assertRefused(b'<request v="1" id="5"><ping/><ping/></request>', errors.MalformedMessage, 5)
        self.assertRefused(b'<request v="1" id="5">text<ping/></request>', errors.MalformedMessage, 5)
        self.assertRefused(b'<request v="1" id="5"></request>', errors.MalformedMessage, 5)
        self.assertRefused(b'<request v="1" id="5"><fly/></request>', errors.UnexpectedMessage, 5)

    def test_operations(self) -> None:
        bad = {
            b"<ping>x</ping>": errors.MalformedMessage,
            b'<ping a="b"/>': errors.MalformedMessage,
            b'<fetch-prekey user="not an identity"/>': errors.InvalidArgument,
            b"<fetch-prekey/>": errors.MalformedMessage,
            b'<ack id="ABCDEF0123456789ABCDEF0123456789"/>': errors.MalformedMessage,
            b'<ack id="12"/>': errors.MalformedMessage,
            b'<accept circuit="0123456789abcdef0123456789abcdef"/>': errors.UnexpectedMessage,  # gone in v1
            b'<join circuit="0123456789abcdef0123456789abcdef"/>': errors.UnexpectedMessage,  # join port only
            b'<deposit to="bob@example.org" expires="10"></deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="10">YWI</deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="10">YW I=</deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="10">YWJ=</deposit>': errors.MalformedMessage,  # not canonical
            b'<deposit to="bob@example.org" expires="-1">YWI=</deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="1" deliver-at="01">YWI=</deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="1" when="1">YWI=</deposit>': errors.MalformedMessage,
            b'<deposit to="bob@example.org" expires="1"><x/></deposit>': errors.MalformedMessage,
            b"<publish-prekeys/>": errors.MalformedMessage,
            b"<publish-prekeys><key>YWI=</key></publish-prekeys>": errors.MalformedMessage,
            b"<publish-prekeys><prekey></prekey></publish-prekeys>": errors.MalformedMessage,
            b"<publish-prekeys>" + b"<prekey>YWI=</prekey>" * 101 + b"</publish-prekeys>": errors.MalformedMessage,
        }
        for operation, kind in bad.items():
            self.assertRefused(b'<request v="1" id="8">' + operation + b"</request>", kind, 8)

    def test_envelope_too_large(self) -> None:
        text = base64.b64encode(b"\x00" * (MAX_ENVELOPE + 1))
        self.assertRefused(
            b'<request v="1" id="3"><deposit to="bob@example.org" expires="1">' + text + b"</deposit></request>", errors.TooLarge, 3
        )
        fits = base64.b64encode(b"\x00" * MAX_ENVELOPE)
        parsed = parse_request(b'<request v="1" id="3"><deposit to="bob@example.org" expires="1">' + fits + b"</deposit></request>")
        assert isinstance(parsed.operation, Deposit)
        self.assertEqual(len(parsed.operation.envelope), MAX_ENVELOPE)

    def test_hostile_xml(self) -> None:
        hostile = [
            b'<!DOCTYPE r [<!ENTITY e "x">]><request v="1" id="1"><ping/></request>',
            b'<request v="1" id="1"><ping/>&e;</request>',
            b'<request v="1" id="1"><!-- c --><ping/></request>',
            b'<?xml-stylesheet href="x"?><request v="1" id="1"><ping/></request>',
            b'<request xmlns="urn:x" v="1" id="1"><ping/></request>',
            b'<?xml version="1.0" encoding="latin-1"?><request v="1" id="1"><ping/></request>',
            b"\xef\xbb\xbf<request v=\"1\" id=\"1\"><ping/></request>",
            b'<request v="1" id="1"><ping/>',
            b"\xff\xfe",
            b"<a>" * 20 + b"</a>" * 20,
        ]
        for payload in hostile:
            self.assertRefused(payload, errors.MalformedMessage, 0)

    def test_server_messages_refused(self) -> None:
        for payload in [
            b'<response id="1"><pong/><pong/></response>',
            b'<response id="0"><pong/></response>',
            b'<response id="1"><what/></response>',
            b'<push><deliver id="x" from="a@b.c" deposited="1">YWI=</deliver></push>',
            b'<push a="b"><superseded/></push>',
            b'<error code="x" name="y">z</error>',
            b"<hello/>",
            b'<response id="1"><prekeys one-time="1" last-resort="yes"/></response>',
            b'<response id="1"><reserved address="::1" port="0" join-port="1" expires="1"/></response>',
            b'<response id="1"><reserved address="::1" port="5" expires="1"/></response>',
            b'<response id="1"><reserved address="::1" port="5" join-port="70000" expires="1"/></response>',
            b'<response id="1"><accepted/></response>',
        ]:
            with self.assertRaises(errors.MalformedMessage, msg=payload):
                parse_server_message(payload)

    def test_unknown_error_name_keeps_code_class(self) -> None:
        answer = parse_server_message(b'<error id="2" code="429" name="slow-down">wait</error>')
        assert isinstance(answer, ErrorAnswer)
        self.assertIsInstance(answer.error, errors.RateLimited)


class JoinPortTests(TestCase):
    """The join port's two documents: ``<join circuit>`` and ``<joined/>`` (or an error)."""

    def test_exact_bytes_and_round_trip(self) -> None:
        self.assertEqual(encode_join(HEX), b'<join circuit="0123456789abcdef0123456789abcdef"/>')
        self.assertEqual(encode_joined(), b"<joined/>")
        self.assertEqual(parse_join(encode_join(HEX)), HEX)
        parse_join_answer(encode_joined())  # no exception: joined
        with self.assertRaises(errors.MalformedMessage):
            encode_join("not hex")

    def test_join_refused(self) -> None:
        for bad in [
            b'<join circuit="0123456789ABCDEF0123456789ABCDEF"/>',
            b'<join circuit="0123"/>',
            b"<join/>",
            b'<join circuit="0123456789abcdef0123456789abcdef" user="bob@example.org"/>',
            b'<join circuit="0123456789abcdef0123456789abcdef">x</join>',
            b'<join circuit="0123456789abcdef0123456789abcdef"><x/></join>',
            b'<accept circuit="0123456789abcdef0123456789abcdef"/>',
            b'<request v="1" id="1"><ping/></request>',
            b'<!DOCTYPE join [<!ENTITY a "b">]><join circuit="&a;"/>',
            b"not xml",
        ]:
            with self.assertRaises(errors.MalformedMessage, msg=bad):
                parse_join(bad)

    def test_answers(self) -> None:
        with self.assertRaises(errors.UnknownCircuit) as raised:
            parse_join_answer(encode_error(None, errors.UnknownCircuit("no such circuit")))
        self.assertEqual(raised.exception.message, "no such circuit")
        with self.assertRaises(errors.RateLimited):
            parse_join_answer(encode_error(None, errors.RateLimited("slow down")))
        for bad in [b'<error id="1" code="406" name="unknown-circuit">x</error>', b"<joined>x</joined>", b'<joined a="b"/>', b"<accepted/>"]:
            with self.assertRaises(errors.MalformedMessage, msg=bad):
                parse_join_answer(bad)


class PrekeyInfoTests(TestCase):
    """The prekey attributes the intermediary reads."""

    def test_parsed(self) -> None:
        info = parse_prekey_info(prekey_bytes(BOB, kind="last-resort", created=5, expires=50, prekey_id=HEX))
        self.assertEqual((info.id, info.kind, info.owner, info.created, info.expires), (HEX, "last-resort", BOB, 5, 50))

    def test_refused(self) -> None:
        good = prekey_bytes(BOB, prekey_id=HEX).decode()
        for bad in [
            good.replace('kind="one-time"', 'kind="forever"'),
            good.replace(HEX, HEX.upper()),
            good.replace("/>", ' extra="1"/>'),
            good.replace(' algorithm="ecdsa-p256-sha256"', ""),
            good.replace('owner="bob@example.org"', 'owner="bob"'),
            good.replace('expires="10000000000"', 'expires="999"'),  # before created
            good.replace("/>", "><x/></prekey>"),
            "<key/>",
            "not xml",
        ]:
            with self.assertRaises(errors.InvalidArgument, msg=bad):
                parse_prekey_info(bad.encode())


class MutationTests(TestCase):
    """Random corruptions of valid documents are refused with the protocol's errors only."""

    def test_requests(self) -> None:
        import random

        rng = random.Random(12)
        documents = [encode_request(Request(n, op)) for n, op in enumerate(OPERATIONS, 1)]
        for _ in range(3000):
            document = bytearray(rng.choice(documents))
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(document))
                choice = rng.random()
                if choice < 0.4:
                    document[position] = rng.randrange(256)
                elif choice < 0.7:
                    del document[position]
                else:
                    document.insert(position, rng.choice(b'<>/="&;! \x00\xff'))
            try:
                parse_request(bytes(document))
            except Refused as refused:
                self.assertIsInstance(refused.error, errors.IntermediaryError)

    def test_server_messages(self) -> None:
        import random

        rng = random.Random(13)
        documents = [encode_response(1, result) for result in RESULTS] + [encode_push(event) for event in EVENTS]
        for _ in range(3000):
            document = bytearray(rng.choice(documents))
            position = rng.randrange(len(document))
            document[position] = rng.randrange(256)
            try:
                parse_server_message(bytes(document))
            except errors.MalformedMessage:
                pass
