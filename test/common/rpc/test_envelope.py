"""The shared envelope (common.rpc.envelope) with a toy protocol: requests read and
refused, answers and pushes read, errors written, whatever protocol it frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import TestCase

from common.errors import ProtocolError
from common.rpc.envelope import MAX_REQUEST_ID, Envelope, Refused, encode_error
from common.wire.xmlcodec import Element


class ToyError(ProtocolError):
    code = 500
    name = "internal-error"


class Malformed(ToyError):
    code = 400
    name = "malformed-message"


class BadVersion(ToyError):
    code = 422
    name = "invalid-argument"


class Unknown(ToyError):
    code = 404
    name = "unknown"


CLASSES = {cls.name: cls for cls in (ToyError, Malformed, BadVersion, Unknown)}


@dataclass(frozen=True)
class Response:
    id: int
    result: Any


@dataclass(frozen=True)
class ErrorAnswer:
    id: int | None
    error: ToyError


def parse_operation(element: Element) -> str:
    if element.tag not in ("ping", "pong", "tick"):
        raise Unknown(f"unknown <{element.tag}>")
    ENVELOPE.fields.empty(element)
    return element.tag


ENVELOPE = Envelope(
    protocol="toy",
    version="1",
    base_error=ToyError,
    malformed=Malformed,
    range_error=BadVersion,
    version_error=BadVersion,
    error_class_for=lambda name, code: CLASSES.get(name, ToyError),
    server_name="this toy",
    peer="the toy server",
    max_depth=3,
    max_elements=4,
)


def refusal(payload: bytes) -> Refused:
    try:
        ENVELOPE.parse_request(payload, parse_operation)
    except Refused as refused:
        return refused
    raise AssertionError(f"{payload!r} was accepted")


def answer(payload: bytes) -> Any:
    return ENVELOPE.parse_answer(payload, parse_result=parse_operation, parse_event=parse_operation, response=Response, error_answer=ErrorAnswer)


class RequestTests(TestCase):
    """The server's side."""

    def test_request(self) -> None:
        self.assertEqual(ENVELOPE.parse_request(b'<request v="1" id="7"><ping/></request>', parse_operation), (7, "ping"))

    def test_refusals_keep_the_id_when_it_was_read(self) -> None:
        for payload, kind, request_id in [
            (b"<nope/>", Malformed, 0),
            (b"<request", Malformed, 0),
            (b'<request v="1" id="0"><ping/></request>', Malformed, 0),
            (f'<request v="1" id="{MAX_REQUEST_ID + 1}"><ping/></request>'.encode(), Malformed, 0),
            (b'<request v="2" id="3"><ping/></request>', BadVersion, 3),
            (b'<request v="1" id="3" x="1"><ping/></request>', Malformed, 3),
            (b'<request v="1" id="3"><ping/><ping/></request>', Malformed, 3),
            (b'<request v="1" id="3">text<ping/></request>', Malformed, 3),
            (b'<request v="1" id="3"><what/></request>', Unknown, 3),
        ]:
            refused = refusal(payload)
            self.assertIsInstance(refused.error, kind, payload)
            self.assertEqual(refused.request_id, request_id, payload)
        self.assertEqual(refusal(b'<request v="2" id="3"><ping/></request>').error.message, "unsupported protocol version; this toy speaks v=1")

    def test_encode_error(self) -> None:
        self.assertEqual(encode_error(5, Unknown("no such")), b'<error id="5" code="404" name="unknown">no such</error>')
        self.assertEqual(encode_error(None, Malformed("bad")), b'<error code="400" name="malformed-message">bad</error>')
        self.assertEqual(encode_error(0, Malformed("bad")), b'<error code="400" name="malformed-message">bad</error>')


class AnswerTests(TestCase):
    """The client's side."""

    def test_answers(self) -> None:
        self.assertEqual(answer(b'<response id="9"><pong/></response>'), Response(9, "pong"))
        self.assertEqual(answer(b"<push><tick/></push>"), "tick")
        error = answer(b'<error id="9" code="404" name="unknown">gone</error>')
        self.assertEqual((error.id, type(error.error), error.error.message), (9, Unknown, "gone"))
        fatal = answer(b'<error code="400" name="malformed-message"></error>')
        self.assertEqual((fatal.id, type(fatal.error)), (None, Malformed))

    def test_everything_wrong_is_malformed(self) -> None:
        for payload, message in [
            (b"<other/>", "unexpected <other> from the toy server"),
            (b'<response id="9"><pong/><pong/></response>', "<response> must contain exactly one element"),
            (b'<response id="0"><pong/></response>', "'id' must be a decimal integer from 1 to 2147483647"),
            (b'<response id="9"><what/></response>', "unknown <what>"),
            (b'<error code="4000" name="x">t</error>', "'code' must be a decimal integer from 0 to 999"),
            (b'<error code="400" name="x"><b/></error>', "<error> must hold only text"),
        ]:
            with self.assertRaises(Malformed, msg=payload) as raised:
                answer(payload)
            self.assertEqual(raised.exception.message, message, payload)
