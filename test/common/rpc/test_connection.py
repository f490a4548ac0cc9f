"""The generic connection core (common.rpc.connection) with a toy codec: events in,
actions out, whatever protocol it speaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import TestCase

from common.rpc.connection import (
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
    State,
)
from common.wire.framing import encode_frame
from test.helpers import frames_of


class ToyError(Exception):
    fatal = False
    name = "toy-error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)


class Errors:
    """The toy protocol's error classes."""

    class MalformedMessage(ToyError):
        fatal = True
        name = "malformed"

    class TooLargeFrame(ToyError):
        fatal = True
        name = "too-large"

    class Timeout(ToyError):
        fatal = True
        name = "timeout"

    class InternalError(ToyError):
        name = "internal"

    class Unexpected(ToyError):
        name = "unexpected"

    class TooManyConnections(ToyError):
        fatal = True
        name = "too-many"


@dataclass(frozen=True)
class Request:
    id: int
    operation: str


class Refused(Exception):
    def __init__(self, request_id: int, error: ToyError) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


class ToyCodec:
    """``<id> <op>`` requests; answers ``R <id> <result>``, ``E <id|-> <name>``, ``P <event>``."""

    Refused = Refused

    @staticmethod
    def parse_request(payload: bytes) -> Request:
        head, _, op = payload.decode("ascii", "replace").partition(" ")
        if not head.isdigit() or not op:
            raise Refused(0, Errors.MalformedMessage("not a request"))
        if op not in ("ping", "slow"):
            raise Refused(int(head), Errors.Unexpected(f"unknown {op}"))
        return Request(int(head), op)

    @staticmethod
    def encode_response(request_id: int, result: Any) -> bytes:
        return f"R {request_id} {result}".encode()

    @staticmethod
    def encode_error(request_id: int | None, error: ToyError) -> bytes:
        return f"E {request_id or '-'} {error.name}".encode()

    @staticmethod
    def encode_push(event: Any) -> bytes:
        return f"P {event}".encode()


def frame(request_id: int, op: str = "ping") -> bytes:
    return encode_frame(f"{request_id} {op}".encode())


def sent(actions: list[Action]) -> list[str]:
    return [payload.decode() for action in actions if isinstance(action, Send) for payload in frames_of(action.data)]


def dispatched(actions: list[Action]) -> list[Request]:
    return [action.request for action in actions if isinstance(action, Dispatch)]


class ConnectionTests(TestCase):
    """Connection life, pipelining, refusals, deadlines."""

    def core(self, limits: ConnectionLimits | None = None) -> Connection:
        return Connection(limits or ConnectionLimits(), "192.0.2.1", ToyCodec(), Errors)  # type: ignore[arg-type]

    def open(self, limits: ConnectionLimits | None = None) -> Connection:
        core = self.core(limits)
        self.assertEqual(core.start(), [ArmDeadline(Deadline.IDLE, 15.0)])
        core.handshake_completed()
        core.authenticated(None)
        return core

    def test_requests_wait_for_authentication(self) -> None:
        core = self.core()
        core.start()
        self.assertEqual(core.data_received(frame(1)), [])
        core.handshake_completed()
        self.assertEqual(core.data_received(frame(2)), [])
        actions = core.authenticated(None)
        self.assertEqual([r.id for r in dispatched(actions)], [1, 2])
        self.assertIn(ArmDeadline(Deadline.IDLE, 300.0), actions)

    def test_refused_peer(self) -> None:
        core = self.core()
        core.start()
        core.handshake_completed()
        core.data_received(frame(1))
        actions = core.authenticated(Errors.TooManyConnections())
        self.assertEqual(sent(actions), ["E - too-many"])
        self.assertEqual(dispatched(actions), [])
        self.assertEqual(core.state, State.CLOSED)

    def test_answered_in_order_of_completion(self) -> None:
        core = self.open()
        first, second = dispatched(core.data_received(frame(1) + frame(2)))
        self.assertEqual(sent(core.request_answered(second, "pong")), ["R 2 pong"])
        self.assertEqual(sent(core.request_answered(first, "pong")), ["R 1 pong"])
        self.assertEqual(core.request_answered(first, "pong"), [])  # answered already

    def test_outstanding_cap_pauses_reading(self) -> None:
        core = self.open(ConnectionLimits(max_outstanding=2))
        actions = core.data_received(frame(1) + frame(2) + frame(3))
        requests = dispatched(actions)
        self.assertEqual([r.id for r in requests], [1, 2])
        self.assertIn(PauseReading(), actions)
        actions = core.request_answered(requests[0], "pong")
        self.assertIn(ResumeReading(), actions)
        self.assertEqual([r.id for r in dispatched(actions)], [3])

    def test_refusal_answers_its_id_and_goes_on(self) -> None:
        core = self.open()
        actions = core.data_received(frame(4, "fly") + frame(5))
        self.assertEqual(sent(actions), ["E 4 unexpected"])
        self.assertEqual([r.id for r in dispatched(actions)], [5])
        self.assertEqual(core.state, State.OPEN)

    def test_duplicate_outstanding_id_ends_connection(self) -> None:
        core = self.open()
        actions = core.data_received(frame(1) + frame(1))
        self.assertEqual(len(dispatched(actions)), 1)
        self.assertEqual(sent(actions), ["E - malformed"])
        self.assertIn(Close(), actions)

    def test_malformed_and_oversized_frames_end_connection(self) -> None:
        for data, name in [(encode_frame(b"junk"), "malformed"), (b"\x00\x10\x00\x00", "too-large"), (b"\x00\x00\x00\x00", "malformed")]:
            core = self.open(ConnectionLimits(max_frame=4096))
            actions = core.data_received(data)
            self.assertEqual(sent(actions), [f"E - {name}"])
            self.assertIn(Close(), actions)
            self.assertEqual(core.data_received(frame(1)), [])

    def test_failed_request_and_fatal_error(self) -> None:
        core = self.open()
        first, second = dispatched(core.data_received(frame(1) + frame(2)))
        self.assertEqual(sent(core.request_failed(first, Errors.Unexpected())), ["E 1 unexpected"])
        actions = core.request_failed(second, Errors.Timeout())
        self.assertEqual(sent(actions), ["E 2 timeout"])
        self.assertIn(Close(), actions)

    def test_push_only_while_open(self) -> None:
        core = self.core()
        core.start()
        self.assertEqual(core.push("x"), [])
        core.handshake_completed()
        core.authenticated(None)
        self.assertEqual(sent(core.push("x")), ["P x"])
        core.connection_lost()
        self.assertEqual(core.push("x"), [])

    def test_deadlines(self) -> None:
        core = self.open()
        (request,) = dispatched(core.data_received(frame(1)))
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [ArmDeadline(Deadline.IDLE, 300.0)])  # still running
        core.request_answered(request, "pong")
        self.assertEqual(core.set_kept(True), [ArmDeadline(Deadline.IDLE, 180.0)])
        actions = core.deadline_expired(Deadline.IDLE)
        self.assertEqual(sent(actions), ["E - timeout"])
        self.assertIn(ArmDeadline(Deadline.CLOSE, 30.0), actions)
        self.assertEqual(core.deadline_expired(Deadline.CLOSE), [Abort()])

    def test_slow_frame(self) -> None:
        core = self.open()
        actions = core.data_received(frame(1)[:5])
        self.assertIn(ArmDeadline(Deadline.FRAME, 30.0), actions)
        self.assertEqual(sent(core.deadline_expired(Deadline.FRAME)), ["E - timeout"])

    def test_no_tls_in_time(self) -> None:
        core = self.core()
        core.start()
        self.assertEqual(core.deadline_expired(Deadline.IDLE), [Abort()])

    def test_writes_paused(self) -> None:
        core = self.open()
        self.assertEqual(core.pause_writing(), [PauseReading()])
        core.data_received(b"")
        actions = core.resume_writing()
        self.assertIn(ResumeReading(), actions)

    def test_internal_failure(self) -> None:
        core = self.open()
        self.assertEqual(sent(core.internal_failure()), ["E - internal"])

    def test_transition_table_is_complete_for_loss(self) -> None:
        for state in State:
            self.assertEqual(TRANSITIONS[(state, "transport gone")], State.CLOSED)

    def test_bytes_before_authentication_are_capped(self) -> None:
        core = self.core(ConnectionLimits(max_frame=10))
        core.start()
        core.handshake_completed()
        self.assertEqual(core.data_received(frame(1) + frame(2) + frame(3)), [PauseReading()])
        actions = core.authenticated(None)
        self.assertIn(ResumeReading(), actions)
        self.assertEqual(len(dispatched(actions)), 3)
