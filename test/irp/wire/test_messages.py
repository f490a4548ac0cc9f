"""Tests for :mod:`irp.wire.messages`: request and response envelopes."""

from __future__ import annotations

from twisted.trial import unittest

from common.wire.xmlcodec import make_element, parse_document, sub_element
from irp import errors
from irp.wire.fields import (
    optional_int,
)
from irp.wire.messages import (
    MAX_REQUEST_ID,
    MAX_RESPONSE_ELEMENTS,
    PROTOCOL_VERSION,
    Response,
    build_request,
    error_response,
    ok_response,
    parse_request,
    parse_response,
    parse_xml,
    request_id_of,
)
from test.irp.wire.observe import start_observing


def _element(data: bytes):  # type: ignore[no-untyped-def]
    return parse_document(data)


class ParseRequestTests(unittest.SynchronousTestCase):
    """parse_request."""

    def test_valid(self) -> None:
        """A request yields its id, operation name and operation element."""
        request = parse_request(b'<request v="1" id="7"><lookup user="bob"/></request>')
        self.assertEqual((request.id, request.operation), (7, "lookup"))
        self.assertEqual(request.element.get("user"), "bob")

    def test_round_trip(self) -> None:
        """build_request output parses back to the same request."""
        operation = make_element("whoami")
        request = parse_request(build_request(42, operation))
        self.assertEqual((request.id, request.operation), (42, "whoami"))

    def test_whitespace_around_operation(self) -> None:
        """Indentation around the operation is allowed."""
        request = parse_request(b'<request v="1" id="1">\n  <whoami/>\n</request>')
        self.assertEqual(request.operation, "whoami")

    def assertRequestError(self, data: bytes, error_type: type[errors.IRPError]) -> errors.IRPError:
        error = self.assertRaises(errors.IRPError, parse_request, data)
        self.assertIs(type(error), error_type, f"{data!r}: {error!r}")
        return error

    def test_wrong_root(self) -> None:
        """The root must be <request>; another document has no request id to answer, so
        it is fatal (answered with id 0)."""
        error = self.assertRequestError(b'<response v="1" id="1"><whoami/></response>', errors.MalformedMessage)
        self.assertTrue(error.fatal)
        self.assertEqual(request_id_of(error), 0)

    def test_namespaced_root(self) -> None:
        """A namespaced <request> is not <request>."""
        self.assertRequestError(b'<request xmlns="urn:x" v="1" id="1"><whoami/></request>', errors.MalformedMessage)

    def test_unsupported_version(self) -> None:
        """Another version (or none) is unsupported-version, which is fatal."""
        for data in (b'<request v="2" id="1"><whoami/></request>', b'<request id="1"><whoami/></request>'):
            error = self.assertRequestError(data, errors.UnsupportedVersion)
            self.assertTrue(error.fatal)
            self.assertIn(PROTOCOL_VERSION, error.message)

    def test_bad_ids(self) -> None:
        """Ids are ASCII decimal integers from 1 to 2**31-1. A request whose id cannot be
        read is fatal: an answer with id 0 would read as the end of the connection."""
        for raw in ("", "abc", "-1", "0", "1.5", str(MAX_REQUEST_ID + 1), "99999999999", " 1", "\u00b2", "\u0663", "\uff17"):
            error = self.assertRequestError(
                f'<request v="1" id="{raw}"><whoami/></request>'.encode(), errors.MalformedMessage
            )
            self.assertTrue(error.fatal)
            self.assertEqual(request_id_of(error), 0)
        self.assertEqual(parse_request(f'<request v="1" id="{MAX_REQUEST_ID}"><whoami/></request>'.encode()).id, MAX_REQUEST_ID)

    def test_missing_id(self) -> None:
        """A request without an id is refused fatally, even when its operation has an id
        attribute of its own."""
        for data in (b'<request v="1"><whoami/></request>', b'<request v="1"><get-pkcs12 id="5"/></request>'):
            error = self.assertRequestError(data, errors.MalformedMessage)
            self.assertEqual(request_id_of(error), 0)

    def test_refusals_carry_the_request_id(self) -> None:
        """Non-fatal refusals of a request whose id was read carry that id."""
        for data in (
            b'<request v="1" id="12" x="y"><whoami/></request>',
            b'<request v="1" id="12"/>',
            b'<request v="1" id="12">x<whoami/></request>',
        ):
            error = self.assertRequestError(data, errors.BadRequest)
            self.assertFalse(error.fatal)
            self.assertEqual(request_id_of(error), 12)

    def test_unknown_envelope_attribute(self) -> None:
        """Attributes other than v and id on <request> are refused (not fatally)."""
        error = self.assertRequestError(b'<request v="1" id="1" x="y"><whoami/></request>', errors.BadRequest)
        self.assertIn("'x'", error.message)
        self.assertFalse(error.fatal)

    def test_operation_count(self) -> None:
        """Exactly one operation element."""
        self.assertRequestError(b'<request v="1" id="1"/>', errors.BadRequest)
        self.assertRequestError(b'<request v="1" id="1"><whoami/><whoami/></request>', errors.BadRequest)

    def test_stray_text(self) -> None:
        """Text beside the operation is refused."""
        self.assertRequestError(b'<request v="1" id="1">x<whoami/></request>', errors.BadRequest)
        self.assertRequestError(b'<request v="1" id="1"><whoami/>x</request>', errors.BadRequest)

    def test_malformed_is_fatal(self) -> None:
        """Bytes that are not well-formed XML are malformed-message, fatal."""
        error = self.assertRequestError(b"<request", errors.MalformedMessage)
        self.assertTrue(error.fatal)
        self.assertEqual(error.name, "malformed-message")

    def test_forbidden_markup_is_fatal(self) -> None:
        """A DTD, comment or processing instruction is forbidden-markup, fatal."""
        for data in (
            b'<!DOCTYPE request><request v="1" id="1"><whoami/></request>',
            b'<request v="1" id="1"><!-- x --><whoami/></request>',
            b'<request v="1" id="1"><?pi?><whoami/></request>',
        ):
            error = self.assertRequestError(data, errors.ForbiddenMarkup)
            self.assertTrue(error.fatal)
            self.assertEqual(error.name, "forbidden-markup")


class ResponseTests(unittest.SynchronousTestCase):
    """ok_response, error_response and parse_response."""

    def test_ok_round_trip(self) -> None:
        """An ok response carries its id and result elements."""
        response = parse_response(ok_response(5, [make_element("session", {"method": "none"})]))
        self.assertEqual(response.id, 5)
        self.assertEqual(response.single("session").get("method"), "none")

    def test_empty_ok(self) -> None:
        """An ok response may carry nothing."""
        self.assertEqual(parse_response(ok_response(1, [])).results, [])

    def test_single_wrong_tag(self) -> None:
        """single() refuses an unexpected answer."""
        response = Response(1, [make_element("a")])
        error = self.assertRaises(errors.BadRequest, response.single, "b")
        self.assertIn("got a", error.message)
        self.assertRaises(errors.BadRequest, Response(1, []).single, "b")

    def test_error_round_trip(self) -> None:
        """Every error class comes back as itself (or its wire-name class), message and id kept."""
        for cls in (
            errors.BadRequest,
            errors.MalformedMessage,
            errors.ForbiddenMarkup,
            errors.UnknownOperation,
            errors.NotAuthenticated,
            errors.LoginFailed,
            errors.PasswordLoginDisabled,
            errors.CertificateRejected,
            errors.Forbidden,
            errors.NotFound,
            errors.Timeout,
            errors.Conflict,
            errors.MessageTooLarge,
            errors.InvalidArgument,
            errors.WeakKey,
            errors.RateLimited,
            errors.TooManyConnections,
            errors.InternalError,
            errors.Unavailable,
            errors.UnsupportedVersion,
        ):
            payload = error_response(9, cls("why it failed"))
            raised = self.assertRaises(errors.IRPError, parse_response, payload)
            self.assertEqual(raised.name, cls.name, cls)
            self.assertEqual(raised.code, cls.code, cls)
            self.assertEqual(raised.message, "why it failed")
            self.assertEqual(raised.request_id, 9)  # type: ignore[attr-defined]

    def test_certificate_invalid_travels_as_rejected(self) -> None:
        """A CertificateInvalid goes on the wire as certificate-rejected."""
        payload = error_response(3, errors.CertificateInvalid("expired", "it expired"))
        self.assertIn(b'name="certificate-rejected"', payload)
        raised = self.assertRaises(errors.CertificateRejected, parse_response, payload)
        self.assertEqual(raised.message, "it expired")

    def test_unknown_error_name_falls_back_to_code(self) -> None:
        """An error name this side does not know maps by its code."""
        payload = b'<response v="1" id="2" status="error"><error code="404" name="gone-fishing">x</error></response>'
        raised = self.assertRaises(errors.NotFound, parse_response, payload)
        self.assertEqual(raised.message, "x")

    def test_unknown_name_and_code(self) -> None:
        """Nothing known at all: a plain IRPError."""
        payload = b'<response v="1" id="2" status="error"><error code="x" name="?"/></response>'
        raised = self.assertRaises(errors.IRPError, parse_response, payload)
        self.assertEqual(raised.name, "internal-error")

    def test_non_ascii_digits(self) -> None:
        """Codes and ids of other digits than ASCII (which str.isdigit accepts, and int
        reads or refuses) are not numbers."""
        for code in ("4\u00b2", "\u0664\u0660\u0664"):
            payload = f'<response v="1" id="2" status="error"><error code="{code}" name="gone-fishing">x</error></response>'.encode()
            raised = self.assertRaises(errors.IRPError, parse_response, payload)
            self.assertEqual((raised.name, raised.code), ("internal-error", 500))
        for raw in ("\u00b2", "\u0663"):
            payload = f'<response v="1" id="{raw}" status="ok"/>'.encode()
            raised = self.assertRaises(errors.BadRequest, parse_response, payload)
            self.assertEqual(request_id_of(raised), 0)

    def test_strict_envelope(self) -> None:
        """Unknown attributes or text in a response are refused, with its id."""
        for payload in (
            b'<response v="1" id="4" status="ok" x="y"/>',
            b'<response v="1" id="4" status="ok">text</response>',
            b'<response v="1" id="4" status="error"><error code="404" name="not-found" x="y">z</error></response>',
            b'<response v="1" id="4" status="error"><error code="404" name="not-found">z</error><error code="404" name="not-found">z</error></response>',
        ):
            raised = self.assertRaises(errors.BadRequest, parse_response, payload)
            self.assertEqual(request_id_of(raised), 4)

    def test_large_responses(self) -> None:
        """A response may hold more elements than a request (a full list-users page of
        200 entries with 32 attributes each is 6 602), up to MAX_RESPONSE_ELEMENTS."""
        users = make_element("users", {"total": "200", "offset": "0"})
        for number in range(200):
            entry = sub_element(users, "user", {"id": f"u{number}@example.org"})
            for index in range(32):
                sub_element(entry, "attribute", {"name": f"a{index}"}, "v")
        response = parse_response(ok_response(3, [users]))
        self.assertEqual(sum(1 for _ in response.single("users").iter()), 1 + 200 * 33)
        too_many = make_element("users", {"total": "0", "offset": "0"})
        for _ in range(MAX_RESPONSE_ELEMENTS):
            sub_element(too_many, "user")
        self.assertRaises(errors.MalformedMessage, parse_response, ok_response(3, [too_many]))

    def test_error_without_detail(self) -> None:
        """An error response must hold <error>."""
        self.assertRaises(errors.BadRequest, parse_response, b'<response v="1" id="2" status="error"/>')

    def test_unknown_status(self) -> None:
        """status must be ok or error."""
        self.assertRaises(errors.BadRequest, parse_response, b'<response v="1" id="2" status="maybe"/>')

    def test_response_version(self) -> None:
        """Responses of other versions are refused."""
        self.assertRaises(errors.UnsupportedVersion, parse_response, b'<response v="9" id="2" status="ok"/>')

    def test_response_id_zero_allowed(self) -> None:
        """Connection-level errors use id 0."""
        raised = self.assertRaises(errors.Timeout, parse_response, error_response(0, errors.Timeout()))
        self.assertEqual(raised.request_id, 0)  # type: ignore[attr-defined]

    def test_error_message_escaped(self) -> None:
        """Messages with markup characters survive the round trip."""
        raised = self.assertRaises(errors.IRPError, parse_response, error_response(1, errors.BadRequest("<a> & </b>")))
        self.assertEqual(raised.message, "<a> & </b>")

    def test_observers_see_every_message(self) -> None:
        """observing_messages (a test fixture) receives each serialised message."""
        seen: list[bytes] = []
        start_observing(self, seen.append)
        first = build_request(1, make_element("whoami"))
        second = ok_response(1, [])
        third = error_response(1, errors.NotFound())
        self.assertEqual(seen, [first, second, third])

    def test_parse_xml_maps_errors(self) -> None:
        """parse_xml turns codec failures into IRP errors."""
        self.assertRaises(errors.ForbiddenMarkup, parse_xml, b"<!-- -->")
        self.assertRaises(errors.MalformedMessage, parse_xml, b"<a>")


class LeadingZeroTests(unittest.SynchronousTestCase):
    """Integers on the wire are ASCII digits without sign or leading zeros (docs/irp.rst,
    Serialisation; the schema's patterns): every integer field refuses ``07`` with the
    error the spec names for a malformed value of that field (issue 9, item 23)."""

    def test_request_id(self) -> None:
        """An id that is not an integer from 1 to 2**31-1 cannot be answered in its own
        name: fatal malformed-message, answered with id 0."""
        for raw in ("07", "00", "0"):
            error = self.assertRaises(
                errors.MalformedMessage, parse_request, f'<request v="1" id="{raw}"><whoami/></request>'.encode()
            )
            self.assertEqual(request_id_of(error), 0)
        self.assertEqual(parse_request(b'<request v="1" id="70"><whoami/></request>').id, 70)

    def test_optional_integer_attributes(self) -> None:
        """offset, limit, ttl and get-pkcs12's id: bad-request, with the request's id."""
        element = make_element("list-users", {"offset": "010"})
        self.assertRaises(errors.BadRequest, optional_int, element, "offset", 0, 0, 10**9)
        self.assertEqual(optional_int(make_element("x", {"n": "0"}), "n", 5, 0, 9), 0)
        self.assertEqual(optional_int(make_element("x", {"n": "10"}), "n", 5, 0, 90), 10)

    def test_response_id(self) -> None:
        """A client refuses a response id with a leading zero."""
        self.assertRaises(errors.BadRequest, parse_response, b'<response v="1" id="07" status="ok"/>')
        self.assertEqual(parse_response(b'<response v="1" id="7" status="ok"/>').id, 7)

    def test_port(self) -> None:
        """An endpoint's port: invalid-argument when registering, bad-request in a
        received record."""
        from common.endpoint import Endpoint, InvalidEndpoint

        self.assertRaises(InvalidEndpoint, Endpoint.parse, "192.0.2.1", "04605")
        self.assertRaises(InvalidEndpoint, Endpoint.received, "192.0.2.1", "04605")
        self.assertEqual(Endpoint.parse("192.0.2.1", "4605").port, 4605)

    def test_record_integers(self) -> None:
        """seq, size, total, number...: a client refuses them with bad-request."""
        from irp.wire.elements import int_attribute

        self.assertRaises(errors.BadRequest, int_attribute, make_element("user", {"seq": "01"}), "seq")
        self.assertEqual(int_attribute(make_element("users", {"total": "0"}), "total"), 0)
