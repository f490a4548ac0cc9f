"""Tests of :class:`irp.server.connection.Connection`, the sans-I/O connection core: bytes
and events in, actions out; no sockets, no reactor, no clock."""

from __future__ import annotations

from twisted.trial import unittest

from common.wire.framing import FrameDecoder, encode_frame
from common.wire.xmlcodec import make_element
from irp import errors
from irp.server.connection import (
    TRANSITIONS,
    Abort,
    Action,
    ArmDeadline,
    CancelDeadline,
    Close,
    Connection,
    ConnectionLimits,
    Deadline,
    Dispatch,
    PauseReading,
    Send,
    State,
    ends_connection,
)
from irp.wire.messages import parse_response

LIMITS = ConnectionLimits(max_request=4096, handshake_timeout=20.0, idle_timeout=300.0, frame_timeout=5.0, max_pipelined=2)


def request(request_id: int, operation: str = "<whoami/>") -> bytes:
    return encode_frame(f'<request v="1" id="{request_id}">{operation}</request>'.encode())


def answers(actions: list[Action]) -> list[tuple[int, str]]:
    """(id, "ok" or the error name) of every response sent."""
    found = []
    for action in actions:
        if isinstance(action, Send):
            for frame in FrameDecoder(1 << 20).feed(action.data):
                try:
                    found.append((parse_response(frame).id, "ok"))
                except errors.IRPError as error:
                    found.append((error.request_id, error.name))  # type: ignore[attr-defined]
    return found


def dispatched(actions: list[Action]) -> list[int]:
    return [action.request.id for action in actions if isinstance(action, Dispatch)]


class ConnectionTests(unittest.SynchronousTestCase):
    def open(self, anonymous: bool = True) -> Connection:
        core = Connection(LIMITS, "192.0.2.1", lambda: anonymous)
        self.assertEqual(core.start(), [ArmDeadline(Deadline.IDLE, 20.0)])
        core.handshake_completed()
        return core

    def test_every_transition_is_listed(self) -> None:
        """Any event leaves the connection closed from any state once the transport goes."""
        for state in State:
            self.assertIs(TRANSITIONS[(state, "transport gone")], State.CLOSED)

    def test_the_rule(self) -> None:
        """Fatal errors and errors with id 0 end the connection, no others."""
        self.assertTrue(ends_connection(errors.MalformedMessage(), 5))
        self.assertTrue(ends_connection(errors.BadRequest(), 0))
        self.assertFalse(ends_connection(errors.BadRequest(), 5))

    def test_pipelined_requests_one_at_a_time_in_order(self) -> None:
        """Requests are dispatched one at a time; refusals are answered in their turn."""
        core = self.open()
        actions = core.data_received(request(1) + encode_frame(b'<request v="1" id="2" x="y"><whoami/></request>') + request(3))
        self.assertEqual(dispatched(actions), [1])
        request_1 = next(a.request for a in actions if isinstance(a, Dispatch))
        actions = core.request_answered(request_1, [make_element("session")])
        self.assertEqual(answers(actions), [(1, "ok"), (2, "bad-request")])
        self.assertEqual(dispatched(actions), [3])

    def test_requests_wait_for_the_handshake(self) -> None:
        core = Connection(LIMITS, "h", lambda: True)
        core.start()
        self.assertEqual(dispatched(core.data_received(request(1))), [])
        self.assertEqual(dispatched(core.handshake_completed()), [1])

    def test_fatal_input_after_queued_requests(self) -> None:
        """A broken frame behind a running request: reading pauses, the request is
        answered, then the error with id 0, then close and the close deadline."""
        core = self.open()
        actions = core.data_received(request(1) + b"\x00\x00\x00\x00")
        self.assertIn(PauseReading(), actions)
        self.assertIs(core.state, State.STOPPED)
        self.assertEqual(core.data_received(request(9)), [])  # nothing more is read
        running = next(a.request for a in actions if isinstance(a, Dispatch))
        actions = core.request_answered(running, [])
        self.assertEqual(answers(actions), [(1, "ok"), (0, "malformed-message")])
        self.assertEqual(actions[-2:], [Close(), ArmDeadline(Deadline.CLOSE, 5.0)])
        self.assertTrue(core.closing)
        self.assertEqual(core.deadline_expired(Deadline.CLOSE), [Abort()])

    def test_failed_request(self) -> None:
        """A non-fatal error answers the request; a fatal one ends the connection."""
        core = self.open()
        (dispatch,) = [a for a in core.data_received(request(4) + request(5)) if isinstance(a, Dispatch)]
        actions = core.request_failed(dispatch.request, errors.NotFound())
        self.assertEqual(answers(actions), [(4, "not-found")])
        (dispatch,) = [a for a in actions if isinstance(a, Dispatch)]
        actions = core.request_failed(dispatch.request, errors.Timeout())
        self.assertEqual(answers(actions), [(5, "timeout")])
        self.assertIn(Close(), actions)

    def test_deadlines(self) -> None:
        """Idle and frame deadlines are events; a running request cancels the idle one."""
        core = self.open()
        actions = core.data_received(request(1)[:6])
        self.assertEqual(actions, [ArmDeadline(Deadline.FRAME, 5.0)])
        actions = core.data_received(request(1)[6:])
        self.assertEqual(actions[0], CancelDeadline(Deadline.FRAME))
        self.assertEqual(core.request_running(), [CancelDeadline(Deadline.IDLE)])
        core.data_received(request(2)[:3])
        actions = core.deadline_expired(Deadline.FRAME)
        self.assertEqual(answers(actions), [(0, "timeout")])
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [])  # cancelled: ignored

    def test_no_handshake_in_time(self) -> None:
        """Before TLS is up the idle deadline aborts, saying nothing."""
        core = Connection(LIMITS, "h", lambda: True)
        core.start()
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [Abort()])
        self.assertTrue(core.closing)

    def test_idle_length_follows_the_login(self) -> None:
        """Logged in, the idle deadline is idle_timeout; anonymous, handshake_timeout."""
        core = Connection(LIMITS, "h", lambda: False)
        core.start()
        self.assertEqual(core.handshake_completed(), [ArmDeadline(Deadline.IDLE, 300.0)])

    def test_flow_control(self) -> None:
        """Write back-pressure stops dispatching; the pipelining cap pauses reading."""
        core = self.open()
        self.assertEqual(core.pause_writing(), [PauseReading(), ArmDeadline(Deadline.IDLE, 300.0)])
        self.assertEqual(dispatched(core.data_received(request(1) + request(2) + request(3))), [])
        actions = core.resume_writing()
        self.assertEqual(dispatched(actions), [1])
        self.assertTrue(core.reading_paused)

    def test_connection_lost_cancels_everything(self) -> None:
        core = self.open()
        core.data_received(request(1)[:3])
        actions = core.connection_lost()
        self.assertEqual(set(actions), {CancelDeadline(Deadline.IDLE), CancelDeadline(Deadline.FRAME)})
        self.assertEqual(list(core.pending), [])

    def test_refused_connection(self) -> None:
        core = Connection(LIMITS, "h", lambda: True)
        actions = core.refuse(errors.TooManyConnections())
        self.assertEqual(answers(actions), [(0, "too-many-connections")])
        self.assertEqual(actions[-2:], [Close(), ArmDeadline(Deadline.CLOSE, 5.0)])
        self.assertEqual(core.handshake_completed(), [])  # TLS may still finish

