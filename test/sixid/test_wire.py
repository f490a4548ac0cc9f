"""sixid's codec: every message both ways, the padding rule, every refusal, hostile XML."""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from sixid import errors
from sixid.ids import SixId
from sixid.wire import (
    MAX_CERTIFICATES,
    MAX_FRAME,
    PAD_UNIT,
    Changed,
    ErrorAnswer,
    Gone,
    Lookup,
    Ping,
    Pong,
    RecordResult,
    Refused,
    Register,
    Request,
    Response,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    Watching,
    encode_error,
    encode_gone_push,
    encode_push,
    encode_record_push,
    encode_record_response,
    encode_request,
    encode_response,
    encode_watching_response,
    match_lookup,
    pad_length,
    parse_answer,
    parse_request,
    record_base64,
)
from test.sixid.helpers import KEY_TYPES, address_of, signed_record, signed_registration

SIXID = address_of("p256").sixid
ID_TEXT = str(SIXID)


def refusal(payload: bytes) -> Refused:
    """The refusal ``payload`` gets."""
    try:
        parse_request(payload)
    except Refused as refused:
        return refused
    raise AssertionError(f"{payload[:200]!r} was accepted")


def operations() -> list[object]:
    """One of every operation (a registration of every key type, with certificates too)."""
    registrations = [Register(signed_registration(key_type)) for key_type in KEY_TYPES]
    certified = signed_registration("p384")
    import dataclasses

    with_chain = dataclasses.replace(certified, certificates=(b"leaf" * 100, b"ca" * 50, b"x", b"y"))
    return [*registrations, Register(with_chain), Lookup(SIXID), Watch(SIXID), Unwatch(SIXID), Signer(), Ping()]


def results() -> list[object]:
    record = signed_record("rsa3072").to_bytes()
    return [RecordResult(record), Watching(record), Watching(None), Unwatched(), SignerChain((b"a" * 300, b"b" * 400, b"c")), Pong()]


class RoundTripTests(TestCase):
    """What one side encodes, the other parses back."""

    def test_requests(self) -> None:
        for number, operation in enumerate(operations(), 1):
            request = Request(number, operation)  # type: ignore[arg-type]
            self.assertEqual(parse_request(encode_request(request)), request)

    def test_registration_fields(self) -> None:
        signed = signed_registration("ed25519")
        parsed = parse_request(encode_request(Request(1, Register(signed)))).operation
        assert isinstance(parsed, Register)
        self.assertEqual(parsed.registration.registration_bytes, signed.registration_bytes)
        self.assertEqual(parsed.registration.spki, signed.spki)
        self.assertEqual(parsed.registration.signature, signed.signature)
        self.assertEqual(parsed.registration.verify(), signed.registration)

    def test_results(self) -> None:
        for result in results():
            self.assertEqual(parse_answer(encode_response(2**31 - 1, result)), Response(2**31 - 1, result))  # type: ignore[arg-type]

    def test_events(self) -> None:
        for event in (Changed(signed_record("p521").to_bytes()), Gone(SIXID)):
            self.assertEqual(parse_answer(encode_push(event)), event)

    def test_errors(self) -> None:
        for error_class in (errors.UnknownId, errors.Replayed, errors.Stale, errors.BadSignature, errors.NotAllowed,
                            errors.TooManyWatches, errors.CertificateRejected, errors.MalformedMessage, errors.Unavailable):
            answer = parse_answer(encode_error(4, error_class("why & <how>")))
            assert isinstance(answer, ErrorAnswer)
            self.assertEqual(answer.id, 4)
            self.assertIs(type(answer.error), error_class)
            self.assertEqual(answer.error.message, "why & <how>")
        final = parse_answer(encode_error(None, errors.Timeout()))
        assert isinstance(final, ErrorAnswer)
        self.assertIsNone(final.id)
        self.assertIsInstance(final.error, errors.Timeout)

    def test_exact_documents(self) -> None:
        """The documents as the specification writes them (attribute order included)."""
        self.assertEqual(encode_request(Request(3, Lookup(SIXID))), f'<request v="1" id="3"><lookup sixid="{ID_TEXT}"/></request>'.encode())
        self.assertEqual(encode_request(Request(3, Ping())), b'<request v="1" id="3"><ping/></request>')
        self.assertEqual(encode_response(3, Unwatched()), b'<response id="3"><unwatched/></response>')
        self.assertEqual(encode_response(3, Watching(None)), b'<response id="3"><watching/></response>')
        self.assertEqual(encode_error(3, errors.UnknownId("none")), b'<error id="3" code="404" name="unknown-id">none</error>')
        record = signed_record("p256").to_bytes()
        document = encode_record_response(3, record_base64(record))
        self.assertTrue(document.startswith(b'<response id="3" pad="'))
        self.assertTrue(document.endswith(b'"><record>' + base64.b64encode(record) + b"</record></response>"))


class PaddingTests(TestCase):
    """Padded documents are a multiple of 256 bytes long, with the fewest ``x``."""

    def test_pad_length(self) -> None:
        self.assertEqual(pad_length(256), 0)
        self.assertEqual(pad_length(255), 1)
        self.assertEqual(pad_length(257), 255)

    def check(self, document: bytes, unpadded: bytes) -> None:
        self.assertEqual(len(document) % PAD_UNIT, 0)
        self.assertEqual(len(document) - len(unpadded), pad_length(len(unpadded)))
        self.assertLess(len(document) - len(unpadded), PAD_UNIT)

    def test_every_size(self) -> None:
        """Records of every length modulo 256 (through the base64's length) pad right, in
        responses, watching answers and pushes; request ids of every length too."""
        for size in range(0, 3 * 256, 3):
            encoded = base64.b64encode(bytes(size))
            for request_id in (1, 12, 123456, 2**31 - 1):
                self.check(encode_record_response(request_id, encoded), b'<response id="%d" pad=""><record>%s</record></response>' % (request_id, encoded))
                self.check(
                    encode_watching_response(request_id, encoded),
                    b'<response id="%d" pad=""><watching><record>%s</record></watching></response>' % (request_id, encoded),
                )
            self.check(encode_record_push(encoded), b'<push pad=""><changed><record>%s</record></changed></push>' % encoded)
        self.check(encode_gone_push(SIXID), f'<push pad=""><gone sixid="{ID_TEXT}"/></push>'.encode())

    def test_hides_key_type(self) -> None:
        """Records of the EC key types fall in few size classes."""
        sizes = {len(encode_record_response(1, record_base64(signed_record(key_type).to_bytes()))) for key_type in ("p256", "p384", "ed25519")}
        self.assertLessEqual(len(sizes), 2)

    def test_pad_accepted_anywhere(self) -> None:
        record = base64.b64encode(signed_record("p256").to_bytes()).decode()
        for document in (
            f'<response id="1" pad="xx"><record pad="x">{record}</record></response>',
            f'<response id="1"><record>{record}</record></response>',
            '<response pad="" id="1"><pong pad="xxx"/></response>',
            f'<push><changed pad="x"><record>{record}</record></changed></push>',
            f'<error id="2" code="404" name="unknown-id" pad="{"x" * 1024}">no</error>',
        ):
            parse_answer(document.encode())

    def test_bad_pad_refused(self) -> None:
        for pad in ("y", "x x", "X", "x" * 1025, "&#120;&#120;z"):
            self.assertRaises(errors.MalformedMessage, parse_answer, f'<response id="1" pad="{pad}"><pong/></response>'.encode())


class RequestRefusalTests(TestCase):
    """Every malformed request is refused, keeping its id when it could be read."""

    def test_unknown_operation(self) -> None:
        refused = refusal(b'<request v="1" id="5"><resolve sixid="x"/></request>')
        self.assertEqual(refused.request_id, 5)
        self.assertIsInstance(refused.error, errors.UnexpectedMessage)
        self.assertFalse(refused.error.fatal)

    def test_malformed_keep_id(self) -> None:
        for body in (
            f'<lookup sixid="{ID_TEXT.upper()}"/>',
            f'<lookup sixid="{SIXID.grouped()}"/>',
            f'<lookup sixid="{ID_TEXT[:-1]}"/>',
            f'<lookup sixid="{ID_TEXT}" extra="1"/>',
            f'<lookup sixid="{ID_TEXT}">text</lookup>',
            f'<lookup sixid="{ID_TEXT}"><x/></lookup>',
            "<lookup/>",
            f'<watch sixid=" {ID_TEXT}"/>',
            "<ping>x</ping>",
            '<signer a="b"/>',
            "<ping/><ping/>",
            "",
            "text<ping/>",
            "<register><registration>AAAA</registration><key>AAAA</key></register>",
            "<register><key>AAAA</key><registration>AAAA</registration><signature>AAAA</signature></register>",
            "<register><registration>AAB=</registration><key>AAAA</key><signature>AAAA</signature></register>",  # not canonical
            "<register><registration>AA AA</registration><key>AAAA</key><signature>AAAA</signature></register>",
            "<register><registration></registration><key>AAAA</key><signature>AAAA</signature></register>",
            "<register><registration>AAAA</registration><key>AAAA</key><signature>AAAA</signature>"
            + "<certificate>AAAA</certificate>" * (MAX_CERTIFICATES + 1) + "</register>",
            "<register><registration>" + "A" * 2000 + "</registration><key>AAAA</key><signature>AAAA</signature></register>",
            '<register x="1"><registration>AAAA</registration><key>AAAA</key><signature>AAAA</signature></register>',
        ):
            refused = refusal(f'<request v="1" id="9">{body}</request>'.encode())
            self.assertEqual(refused.request_id, 9, body)
            self.assertIsInstance(refused.error, errors.MalformedMessage, body)

    def test_envelope(self) -> None:
        ping = "<ping/>"
        for document, request_id in (
            (f'<request v="2" id="9">{ping}</request>', 9),
            (f'<request id="9">{ping}</request>', 9),
            (f'<request v="1" id="9" x="1">{ping}</request>', 9),
            (f'<request v="1" id="0">{ping}</request>', 0),
            (f'<request v="1" id="09">{ping}</request>', 0),
            (f'<request v="1" id="2147483648">{ping}</request>', 0),
            (f'<request v="1">{ping}</request>', 0),
            (f'<response id="9">{ping}</response>', 0),
            ("<request", 0),
            ("not xml", 0),
        ):
            refused = refusal(document.encode())
            self.assertEqual(refused.request_id, request_id, document)
            self.assertIsInstance(refused.error, errors.MalformedMessage, document)
        self.assertEqual(refusal(f'<request v="1" id="2147483648"><lookup sixid="{ID_TEXT}"/></request>'.encode()).request_id, 0)

    def test_fast_lookup_equivalent(self) -> None:
        """The look-up read without the parser and with it give the same request."""
        plain = f'<request v="1" id="2147483647"><lookup sixid="{ID_TEXT}"/></request>'.encode()
        spaced = f'<request  v="1" id="2147483647" ><lookup sixid="{ID_TEXT}" /></request>'.encode()
        self.assertEqual(parse_request(plain), parse_request(spaced))
        self.assertEqual(parse_request(b'<?xml version="1.0"?>' + plain), parse_request(plain))
        self.assertEqual(match_lookup(plain), (2**31 - 1, ID_TEXT))
        for other in (spaced, plain.replace(b'"1"', b'"2"', 1), plain.replace(b"2147483647", b"2147483648"), plain + b" ",
                      plain.replace(b"2147483647", b"02147483647")):
            self.assertIsNone(match_lookup(other), other)

    def test_hostile_xml(self) -> None:
        ping = b'<request v="1" id="1"><ping/></request>'
        for document in (
            b'<!DOCTYPE request [<!ENTITY x "y">]>' + ping,
            b'<!DOCTYPE request SYSTEM "http://example.org/x.dtd">' + ping,
            b'<request v="1" id="1"><lookup sixid="&x;"/></request>',
            b'<request v="1" id="1"><!-- c --><ping/></request>',
            b'<request v="1" id="1"><![CDATA[x]]><ping/></request>',
            b'<?xml-stylesheet href="x"?>' + ping,
            b'<?xml version="1.0" encoding="latin-1"?>' + ping,
            b'\xef\xbb\xbf' + ping,
            b'<request xmlns="urn:x" v="1" id="1"><ping/></request>',
            b'<request v="1" id="1"><register><registration><a><b><c/></b></a></registration></register></request>',
            b'<request v="1" id="1">' + b"<ping/>" * 20 + b"</request>",
            b'<request v="1" id="1"><register><registration>' + b"A" * (MAX_FRAME - 200) + b"</registration></register></request>",
            b'<request v="1" id="1"><ping/>',
            b'<request v="1" id="1"><ping/></request><x/>',
            b'\xff\xfe<\x00r\x00',
        ):
            refused = refusal(document)
            self.assertIsInstance(refused.error, errors.MalformedMessage, repr(document[:60]))
            self.assertTrue(refused.error.fatal or refused.request_id, repr(document[:60]))
        oversized = refusal(b'<request v="1" id="1"><ping/></request>' + b" " * MAX_FRAME)
        self.assertIsInstance(oversized.error, errors.TooLargeFrame)
        self.assertTrue(oversized.error.fatal)


class AnswerRefusalTests(TestCase):
    """What a client refuses from a server."""

    def test_refused(self) -> None:
        record = base64.b64encode(signed_record("p256").to_bytes()).decode()
        for document in (
            "<response id=\"1\"><record>AAB=</record></response>",
            "<response id=\"1\"><record></record></response>",
            f'<response id="1"><record x="1">{record}</record></response>',
            f'<response id="0"><record>{record}</record></response>',
            f'<response><record>{record}</record></response>',
            "<response id=\"1\"><pong/><pong/></response>",
            "<response id=\"1\"><pong>x</pong></response>",
            "<response id=\"1\"><watching>x</watching></response>",
            "<response id=\"1\"><signer><certificate>AAAA</certificate></signer></response>",
            "<response id=\"1\"><teapot/></response>",
            "<push><changed/></push>",
            "<push><gone sixid=\"x\"/></push>",
            "<push><ping/></push>",
            '<error id="1" code="4040" name="unknown-id">x</error>',
            '<error id="1" name="unknown-id">x</error>',
            '<error id="1" code="404" name="unknown-id"><b/></error>',
            "<request v=\"1\" id=\"1\"><ping/></request>",
            '<!DOCTYPE x><response id="1"><pong/></response>',
        ):
            self.assertRaises(errors.MalformedMessage, parse_answer, document.encode())

    def test_unknown_error_name(self) -> None:
        answer = parse_answer(b'<error id="1" code="404" name="brand-new">x</error>')
        assert isinstance(answer, ErrorAnswer)
        self.assertIsInstance(answer.error, errors.UnknownId)
        answer = parse_answer(b'<error id="1" code="499" name="brand-new">x</error>')
        assert isinstance(answer, ErrorAnswer)
        self.assertIs(type(answer.error), errors.SixidError)


class ErrorTableTests(TestCase):
    """The codes and names of the specification."""

    def test_table(self) -> None:
        table = {
            errors.MalformedMessage: (400, "malformed-message", True),
            errors.MalformedRecord: (400, "malformed-message", False),
            errors.UnexpectedMessage: (401, "unexpected-message", False),
            errors.InvalidArgument: (402, "invalid-argument", False),
            errors.NotAllowed: (403, "not-allowed", False),
            errors.UnknownId: (404, "unknown-id", False),
            errors.BadSignature: (405, "bad-signature", False),
            errors.Replayed: (406, "replayed", False),
            errors.Stale: (407, "stale", False),
            errors.Timeout: (408, "timeout", True),
            errors.CertificateRejected: (409, "certificate-rejected", False),
            errors.TooLarge: (413, "too-large", False),
            errors.TooLargeFrame: (413, "too-large", True),
            errors.RateLimited: (429, "rate-limited", False),
            errors.TooManyConnections: (429, "rate-limited", True),
            errors.TooManyWatches: (430, "too-many-watches", False),
            errors.InternalError: (500, "internal-error", False),
            errors.Unavailable: (503, "unavailable", False),
            errors.ClientError: (0, "client-error", False),
            errors.VerificationFailed: (0, "verification-failed", False),
            errors.ConnectionLost: (0, "connection-lost", False),
            errors.ServerVerificationFailed: (0, "server-verification-failed", False),
        }
        for cls, (code, name, fatal) in table.items():
            self.assertEqual((cls.code, cls.name, cls.fatal), (code, name, fatal), cls)
        self.assertIs(errors.error_class_for("malformed-message", 400), errors.MalformedMessage)
        self.assertIs(errors.error_class_for("rate-limited", 429), errors.RateLimited)

    def test_from_pki(self) -> None:
        from common.pki import errors as pki_errors

        rejected = errors.from_pki(pki_errors.CertificateInvalid("expired", "the certificate expired"), about="the chain")
        self.assertIsInstance(rejected, errors.CertificateRejected)
        self.assertEqual(rejected.message, "the chain: the certificate expired (expired)")
        self.assertIsInstance(errors.from_pki(pki_errors.CertificateRevoked()), errors.CertificateRejected)
        self.assertIsInstance(errors.from_pki(pki_errors.RevocationUnknown()), errors.Unavailable)
        self.assertIsInstance(errors.from_pki(pki_errors.WeakKey()), errors.InvalidArgument)


class IdTextTests(TestCase):
    """IDs travel in canonical text."""

    def test_canonical_on_wire(self) -> None:
        self.assertIn(ID_TEXT.encode(), encode_request(Request(1, Watch(SixId(SIXID.digest)))))
