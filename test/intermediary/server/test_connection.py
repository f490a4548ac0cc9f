"""The sans-I/O connection core: events in, actions out."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from common.wire.framing import encode_frame
from intermediary import errors
from intermediary.server.connection import (
    TRANSITIONS,
    Abort,
    Action,
    ArmDeadline,
    Close,
    Connection,
    ConnectionLimits,
    Deadline,
    Dispatch,
    PauseReading,
    ResumeReading,
    Send,
    Splice,
    State,
)
from intermediary.wire import (
    Accept,
    Accepted,
    ErrorAnswer,
    Ping,
    Pong,
    Request,
    Response,
    Subscribe,
    Superseded,
    encode_request,
    parse_server_message,
)
from test.helpers import frames_of

HEX = "0123456789abcdef0123456789abcdef"


def frame(request_id: int, operation: object = None) -> bytes:
    """A framed request."""
    return encode_frame(encode_request(Request(request_id, operation or Ping())))  # type: ignore[arg-type]


def sent(actions: list[Action]) -> list[object]:
    """The messages the actions send, parsed."""
    return [parse_server_message(payload) for action in actions if isinstance(action, Send) for payload in frames_of(action.data)]


def dispatched(actions: list[Action]) -> list[Request]:
    """The requests the actions run."""
    return [action.request for action in actions if isinstance(action, Dispatch)]


class ConnectionTests(TestCase):
    """Connection life, pipelining, refusals, deadlines, accept."""

    def open(self, limits: ConnectionLimits | None = None) -> Connection:
        core = Connection(limits or ConnectionLimits(), "192.0.2.1")
        self.assertEqual(core.start(), [ArmDeadline(Deadline.IDLE, 15.0)])
        core.handshake_completed()
        return core

    def test_requests_wait_for_the_certificate_check(self) -> None:
        core = Connection(ConnectionLimits(), "192.0.2.1")
        core.start()
        self.assertEqual(core.data_received(frame(1)), [])
        core.handshake_completed()
        self.assertEqual(core.data_received(frame(2)), [])
        actions = core.authenticated(None)
        self.assertEqual([r.id for r in dispatched(actions)], [1, 2])
        self.assertIn(ArmDeadline(Deadline.IDLE, 600.0), actions)

    def test_refused_certificate(self) -> None:
        core = self.open()
        core.data_received(frame(1))
        actions = core.authenticated(errors.CertificateRejected("revoked"))
        (answer,) = sent(actions)
        assert isinstance(answer, ErrorAnswer)
        self.assertIsNone(answer.id)
        self.assertEqual(answer.error.name, "certificate-rejected")
        self.assertIn(Close(), actions)
        self.assertEqual(dispatched(actions), [])
        self.assertEqual(core.state, State.CLOSED)

    def test_answered_in_order_of_completion(self) -> None:
        core = self.open()
        core.authenticated(None)
        first, second = dispatched(core.data_received(frame(1) + frame(2)))
        self.assertEqual(sent(core.request_answered(second, Pong())), [Response(2, Pong())])
        self.assertEqual(sent(core.request_answered(first, Pong())), [Response(1, Pong())])

    def test_outstanding_cap_pauses_reading(self) -> None:
        core = self.open(ConnectionLimits(max_outstanding=2))
        core.authenticated(None)
        actions = core.data_received(frame(1) + frame(2) + frame(3))
        requests = dispatched(actions)
        self.assertEqual([r.id for r in requests], [1, 2])
        self.assertIn(PauseReading(), actions)
        actions = core.request_answered(requests[0], Pong())
        self.assertIn(ResumeReading(), actions)
        self.assertEqual([r.id for r in dispatched(actions)], [3])  # read from what was buffered

    def test_refusal_answers_its_id_and_goes_on(self) -> None:
        core = self.open()
        core.authenticated(None)
        actions = core.data_received(encode_frame(b'<request v="1" id="4"><fly/></request>') + frame(5))
        answers = sent(actions)
        self.assertEqual(len(answers), 1)
        assert isinstance(answers[0], ErrorAnswer)
        self.assertEqual((answers[0].id, answers[0].error.name), (4, "unexpected-message"))
        self.assertEqual([r.id for r in dispatched(actions)], [5])
        self.assertEqual(core.state, State.OPEN)

    def test_duplicate_outstanding_id_ends_connection(self) -> None:
        core = self.open()
        core.authenticated(None)
        actions = core.data_received(frame(1) + frame(1))
        self.assertEqual(len(dispatched(actions)), 1)
        self.assertIn(Close(), actions)

    def test_malformed_and_oversized_frames_end_connection(self) -> None:
        for data, name in [(encode_frame(b"<request"), "malformed-message"), (b"\x00\x10\x00\x00", "too-large"), (b"\x00\x00\x00\x00", "malformed-message")]:
            core = self.open(ConnectionLimits(max_frame=4096))
            core.authenticated(None)
            actions = core.data_received(data)
            (answer,) = sent(actions)
            assert isinstance(answer, ErrorAnswer)
            self.assertEqual((answer.id, answer.error.name), (None, name))
            self.assertIn(Close(), actions)
            self.assertEqual(core.data_received(frame(1)), [])  # nothing more is read

    def test_failed_request_and_fatal_error(self) -> None:
        core = self.open()
        core.authenticated(None)
        first, second = dispatched(core.data_received(frame(1) + frame(2)))
        (answer,) = sent(core.request_failed(first, errors.QuotaExceeded()))
        assert isinstance(answer, ErrorAnswer)
        self.assertEqual(answer.id, 1)
        actions = core.request_failed(second, errors.Timeout())
        self.assertIn(Close(), actions)
        self.assertEqual(core.state, State.CLOSED)

    def test_push_only_while_open(self) -> None:
        core = self.open()
        self.assertEqual(core.push(Superseded()), [])  # not authenticated yet
        core.authenticated(None)
        self.assertEqual(sent(core.push(Superseded())), [Superseded()])
        core.connection_lost()
        self.assertEqual(core.push(Superseded()), [])

    def test_deadlines(self) -> None:
        core = self.open()
        core.authenticated(None)
        (request,) = dispatched(core.data_received(frame(1)))
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [ArmDeadline(Deadline.IDLE, 600.0)])  # still running
        core.request_answered(request, Pong())
        self.assertEqual(core.set_kept(True), [ArmDeadline(Deadline.IDLE, 180.0)])
        actions = core.deadline_expired(Deadline.IDLE)
        (answer,) = sent(actions)
        assert isinstance(answer, ErrorAnswer)
        self.assertEqual(answer.error.name, "timeout")
        self.assertIn(ArmDeadline(Deadline.CLOSE, 30.0), actions)
        self.assertEqual(core.deadline_expired(Deadline.CLOSE), [Abort()])

    def test_slow_frame(self) -> None:
        core = self.open()
        core.authenticated(None)
        actions = core.data_received(frame(1)[:5])
        self.assertIn(ArmDeadline(Deadline.FRAME, 30.0), actions)
        self.assertIn(Close(), core.deadline_expired(Deadline.FRAME))

    def test_no_tls_in_time(self) -> None:
        core = Connection(ConnectionLimits(), "192.0.2.1")
        core.start()
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [Abort()])

    def test_accept_splices_the_rest(self) -> None:
        core = self.open()
        core.authenticated(None)
        actions = core.data_received(frame(1, Accept(HEX)) + b"raw bytes")
        (request,) = dispatched(actions)
        self.assertEqual(core.state, State.ACCEPTING)
        self.assertEqual(core.data_received(b" and more"), [])  # held: not framing any more
        actions = core.request_answered(request, Accepted())
        self.assertEqual(sent(actions[:1]), [Response(1, Accepted())])
        self.assertEqual(actions[-1], Splice(b"raw bytes and more"))
        self.assertEqual(core.state, State.SPLICED)

    def test_refused_accept_goes_back_to_frames(self) -> None:
        core = self.open()
        core.authenticated(None)
        (request,) = dispatched(core.data_received(frame(1, Accept(HEX))))
        core.request_failed(request, errors.UnknownCircuit())
        self.assertEqual(core.state, State.OPEN)
        self.assertEqual([r.id for r in dispatched(core.data_received(frame(2)))], [2])

    def test_accept_must_be_alone(self) -> None:
        core = self.open()
        core.authenticated(None)
        actions = core.data_received(frame(1, Subscribe()) + frame(2, Accept(HEX)))
        self.assertEqual([r.id for r in dispatched(actions)], [1])
        (answer,) = sent(actions)
        assert isinstance(answer, ErrorAnswer)
        self.assertEqual((answer.id, answer.error.name), (2, "unexpected-message"))

    def test_transition_table_is_complete_for_loss(self) -> None:
        for state in State:
            self.assertEqual(TRANSITIONS[(state, "transport gone")], State.CLOSED)

    def test_bytes_before_authentication_are_capped(self) -> None:
        core = Connection(ConnectionLimits(max_frame=100), "192.0.2.1")
        core.start()
        core.handshake_completed()
        self.assertEqual(core.data_received(frame(1) + frame(2) + frame(3)), [PauseReading()])
        actions = core.authenticated(None)
        self.assertIn(ResumeReading(), actions)
        self.assertEqual(len(dispatched(actions)), 3)
