# mypy: allow-untyped-calls
"""Property-based and fuzz tests of every SixChat parser and state machine.

What is fuzzed, and the property each part must keep:

* :mod:`sixchat.wire.handshake and sixchat.wire.application`: handshake frames, sealed contents, alerts, application messages
  and closes, random or mutated from real ones, give a value or a
  :class:`~sixchat.errors.SixChatError`; what is accepted re-encodes to itself; an unknown
  attribute or element anywhere is refused.
* :class:`sixchat.handshake.Handshake`: frames recorded from a real handshake between two
  in-memory peers (deterministic, see :mod:`test.sixchat_certs`), mutated, duplicated,
  reordered, dropped and cut anywhere, never make ``receive_data`` raise; a failed
  handshake refuses everything after with ``Closed``; only the exact honest frames complete
  it. A malicious *authenticated* peer (one that holds the handshake keys) sealing mutated
  ``<auth>`` contents and crafted certificates makes it fail cleanly, never crash.
* :class:`sixchat.record.Session`: mutated record streams (bit flips, truncation,
  duplicated, dropped and reordered records, length lies, clear alerts) only ever raise a
  ``SixChatError``, deliver nothing that was not sent, in order, and leave a session that
  refuses further input with ``Closed``; nonces never repeat under a key.
* :class:`sixchat.peer.protocol.PeerConnection` over a fake transport and clock, in both roles,
  against a live in-memory attacker whose frames and records are mutated: ``dataReceived``
  never raises, nothing is delivered or written after the end, and every connection ends
  (error or close, reported once to the owner) when its timers run out.

The mutation engine, the open-defect registry (:data:`test.irp.test_fuzz.KNOWN_DEFECTS`,
recognised by signature so that these campaigns stay green on open defects and fail on new
ones) and the certificate crafting are shared with :mod:`test.irp.test_fuzz`. Each open
defect has a regression test marked ``todo``.

Long campaign::

    SIXCHAT_FUZZ_EXAMPLES=100000 PYTHONPATH=. trial test.sixchat.test_fuzz

``SIXCHAT_FUZZ_EXAMPLES`` sets every hypothesis test's examples and every seeded loop's
inputs; ``SIXCHAT_FUZZ_SEED`` changes the seeded loops' seed (default 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from common.identity import Identity
from common.wire.framing import encode_frame
from sixchat import errors
from sixchat.handshake import (
    SEALED_AAD,
    Handshake,
    HandshakeAborted,
    HandshakeComplete,
    PeerNeedsVerification,
    Role,
    SendData,
    State,
)
from sixchat.peer.protocol import ConnectionLimits, PeerConnection
from sixchat.record import (
    AlertReceived,
    CloseReceived,
    DataReceived,
    MessageReceived,
    RecordLimits,
    Session,
    TrafficProtection,
)
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from test.helpers import BareOwner
from test.irp.fuzzing import (
    CRAFTED_DEFECTS,
    Findings,
    crafted_der,
    harvest_values,
    known_defect,
    mutate,
    mutate_once,
    ops_strategy,
    random_ops,
    readable,
)
from test.sixchat_certs import (
    Endpoint,
    connect,
    initiator,
    responder,
    split_frames,
    user,
)

ALICE = Identity("alice", "example.org")
BOB = Identity("bob", "example.org")

_ENV_EXAMPLES = int(os.environ.get("SIXCHAT_FUZZ_EXAMPLES", "0") or 0)
SEED = int(os.environ.get("SIXCHAT_FUZZ_SEED", "1") or 1)


def examples(default: int) -> int:
    """``SIXCHAT_FUZZ_EXAMPLES`` if set, else ``default``."""
    return _ENV_EXAMPLES or default


def fuzz_settings(default: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis settings for ``default`` examples in CI, failures made readable."""
    configured = settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        return readable(configured(test))

    return decorate


def check_findings(testcase: Any, findings: Findings, label: str) -> None:
    """Fail on new violations (naming the seed); print the campaign's counts."""
    print(f"{label}: {findings.inputs} inputs, outcomes {findings.outcomes}, known defects hit: {findings.known or 'none'}")
    if findings.new:
        shown = "\n\n".join(findings.new[:5])
        testcase.fail(f"{label}: {len(findings.new)} violations in {findings.inputs} inputs (SIXCHAT_FUZZ_SEED={SEED}):\n\n{shown}")


def tolerated(error: BaseException) -> bool:
    """Whether ``error`` is an open defect's (its regression test is marked todo)."""
    return known_defect(error) is not None


# ---------------------------------------------------------------------------------------
# A real handshake, recorded


@dataclasses.dataclass(frozen=True)
class Recording:
    """The frames and secrets of one deterministic handshake (identical on every run)."""

    frames: dict[str, bytes]  # M1, M2, M2b, M3 (length prefix included)
    initiator_trace: dict[str, bytes]
    responder_trace: dict[str, bytes]


#: The frames of one handshake, by (sender role, index of the sender's frame).
FRAME_NAMES = {"M1": (Role.INITIATOR, 0), "M2": (Role.RESPONDER, 0), "M2b": (Role.RESPONDER, 1), "M3": (Role.INITIATOR, 1)}


@functools.cache
def recording() -> Recording:
    """Run one deterministic handshake and record its frames and traced secrets."""
    frames: dict[str, bytes] = {}
    initiator_trace: dict[str, bytes] = {}
    responder_trace: dict[str, bytes] = {}

    def record(sender: Endpoint, index: int, frame: bytes) -> bytes:
        for name, (role, wanted) in FRAME_NAMES.items():
            if sender.handshake.role is role and index == wanted:
                frames[name] = frame
        return frame

    alice, bob = connect(
        initiator(deterministic=True, trace=initiator_trace.__setitem__),
        responder(deterministic=True, trace=responder_trace.__setitem__),
        tamper=record,
    )
    assert alice.completed and bob.completed and set(frames) == set(FRAME_NAMES)
    return Recording(frames, initiator_trace, responder_trace)


def sealed_frame(secret: bytes, plaintext: bytes) -> bytes:
    """A ``<sealed>`` frame of ``plaintext`` under the first nonce of ``secret``: what a
    peer holding the handshake keys can send."""
    protection = TrafficProtection(secret, RecordLimits())
    return encode_frame(wire_handshake.Sealed(protection.seal(plaintext, SEALED_AAD)).to_xml())


@functools.cache
def document_corpus() -> tuple[bytes, ...]:
    """Valid documents of every kind SixChat parses."""
    recorded = recording()
    documents = [frame[4:] for frame in recorded.frames.values()]
    documents += [recorded.initiator_trace["initiator_auth"], recorded.responder_trace["responder_auth"]]
    for cls in errors.error_classes():
        error = cls(reason="revoked") if cls is errors.PeerRejected else cls()
        documents.append(wire_handshake.alert_for(error))
    for message in (
        wire_application.ChatMessage("Hello, Bob! \u00e9\U0001f600"),
        wire_application.Receipt("00000000-0000-4000-8000-000000000001"),
        wire_application.Presence("away"),
        wire_application.Ping(),
        wire_application.Pong(),
    ):
        documents.append(wire_application.encode_application(message))
    documents.append(wire_application.encode_close("bye"))
    return tuple(documents)


@functools.cache
def corpus_values() -> tuple[str, ...]:
    return harvest_values(document_corpus())


def mutated_documents() -> Any:
    return st.tuples(st.integers(0, 10**6), ops_strategy).map(
        lambda chosen: mutate(document_corpus()[chosen[0] % len(document_corpus())], chosen[1], corpus_values())
    )


PARSERS: tuple[Callable[[bytes], Any], ...] = (
    wire_handshake.parse_handshake_frame,
    wire_handshake.parse_sealed_content,
    wire_application.parse_application,
    wire_application.parse_close,
    wire_handshake.parse_alert,
)


def parse_all(testcase: Any, data: bytes) -> None:
    """Every parser: a value or a SixChatError; accepted values re-encode to themselves."""
    for parser in PARSERS:
        try:
            value = parser(data)
        except errors.SixChatError:
            continue
        except Exception as error:
            if tolerated(error):
                continue
            raise
        if parser is wire_handshake.parse_handshake_frame or parser is wire_handshake.parse_sealed_content:
            testcase.assertEqual(parser(value.to_xml()), value)
        elif parser is wire_application.parse_application:
            testcase.assertEqual(wire_application.parse_application(wire_application.encode_application(value[0]))[0], value[0])


class MessageFuzzTests(SynchronousTestCase):
    """sixchat.wire.handshake and sixchat.wire.application on random and mutated documents."""

    @fuzz_settings(300)
    @given(st.binary(max_size=400))
    def test_random_bytes(self, data: bytes) -> None:
        parse_all(self, data)

    @fuzz_settings(600)
    @given(mutated_documents())
    def test_mutated_documents(self, data: bytes) -> None:
        """Mutated real documents: a value or a SixChatError, from every parser."""
        parse_all(self, data)

    @fuzz_settings(300)
    @given(st.integers(0, 10**6), st.integers(0, 2**32 - 1), st.booleans())
    def test_unknown_attribute_or_element_refused(self, which: int, where: int, element: bool) -> None:
        """docs/sixchat.rst: the structure check is exact: an unknown attribute or child
        element anywhere in a valid message makes it malformed."""
        data = document_corpus()[which % len(document_corpus())]
        op = (11, where, 23) if element else (8, where, (32 << 8))  # TAGS[23]: {urn:x}whoami / ATTRIBUTES[32]: unknown
        changed = mutate_once(data, op)
        self.assertNotEqual(changed, data)
        for parser in PARSERS:
            try:
                parser(data)
            except errors.SixChatError:
                continue
            with self.assertRaises(errors.MalformedMessage, msg=changed[:300]):
                parser(changed)


# ---------------------------------------------------------------------------------------
# The handshake


class Driver:
    """Feeds bytes to one handshake as an adapter does (accepting every verified peer),
    recording what it did and what escaped."""

    def __init__(self, handshake: Handshake) -> None:
        self.handshake = handshake
        self.fed = b""
        self.events: list[Any] = []
        self.completed: HandshakeComplete | None = None
        self.aborted: HandshakeAborted | None = None
        self.consumed: bytes | None = None  # the bytes the handshake used, once complete

    def feed(self, data: bytes) -> None:
        if self.completed is not None or self.aborted is not None:
            return
        self.fed += data
        self.handle(self.handshake.receive_data(data))

    def handle(self, events: list[Any]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, PeerNeedsVerification):
                self.handle(self.handshake.accept_peer())
            elif isinstance(event, HandshakeComplete):
                self.completed = event
                self.consumed = self.fed[: len(self.fed) - len(event.leftover)]
            elif isinstance(event, HandshakeAborted):
                self.aborted = event


def fresh(role: Role) -> Driver:
    """A deterministic handshake of ``role`` (alice initiates, bob responds), started."""
    if role is Role.INITIATOR:
        handshake = initiator(deterministic=True)
        handshake.start()
    else:
        handshake = responder(deterministic=True)
    return Driver(handshake)


class HandshakeFuzzTests(SynchronousTestCase):
    """sixchat.handshake.Handshake against recorded, mutated frames."""

    def check_over(self, driver: Driver) -> None:
        """A finished handshake refuses everything with Closed; a failed one emitted
        nothing after HandshakeAborted, and at most one alert just before it."""
        handshake = driver.handshake
        if driver.aborted is not None:
            self.assertIs(handshake.state, State.FAILED)
            self.assertIs(driver.events[-1], driver.aborted)
            self.assertLessEqual(sum(isinstance(event, SendData) for event in driver.events[-2:]), 1)
            self.assertIsInstance(driver.aborted.error, errors.SixChatError)
        if handshake.state in (State.FAILED, State.COMPLETE):
            self.assertRaises(errors.Closed, handshake.receive_data, b"\x00\x00\x00\x01x")
            self.assertRaises(errors.Closed, handshake.accept_peer)
            self.assertRaises(errors.Closed, handshake.abort, errors.Timeout())

    @fuzz_settings(250)
    @given(st.sampled_from(sorted(FRAME_NAMES)), ops_strategy, st.lists(st.integers(1, 300), max_size=5))
    def test_mutated_frame(self, name: str, ops: list[tuple[int, int, int]], cuts: list[int]) -> None:
        """One recorded frame mutated, the flight cut anywhere: the receiver never raises;
        it completes only on the exact honest bytes, else fails or waits for more."""
        recorded = recording().frames
        changed = mutate(recorded[name], ops)
        role = Role.RESPONDER if name in ("M1", "M3") else Role.INITIATOR
        driver = fresh(role)
        if name == "M3":
            driver.feed(recorded["M1"])
            flight = changed
        elif name == "M1":
            flight = changed
        elif name == "M2":
            flight = changed + recorded["M2b"]
        else:
            flight = recorded["M2"] + changed
        honest = recorded["M1"] + recorded["M3"] if role is Role.RESPONDER else recorded["M2"] + recorded["M2b"]
        position = 0
        try:
            for cut in [*cuts, len(flight)]:
                driver.feed(flight[position : position + cut])
                position += cut
                if position >= len(flight):
                    break
            if name == "M1" and driver.aborted is None:
                driver.feed(recorded["M3"])
        except Exception as error:
            if tolerated(error):
                return
            raise
        if driver.completed is not None:
            self.assertEqual(driver.consumed, honest, "completed on other bytes than the honest ones")
        elif driver.aborted is None:
            self.assertIn(driver.handshake.state, (State.WAIT_HELLO, State.WAIT_INITIATOR_AUTH, State.WAIT_REPLY, State.WAIT_RESPONDER_AUTH))
        self.check_over(driver)

    @fuzz_settings(200)
    @given(st.sampled_from([Role.INITIATOR, Role.RESPONDER]), st.lists(st.tuples(st.integers(0, 9), ops_strategy), min_size=1, max_size=6), st.lists(st.integers(1, 200), max_size=6))
    def test_frame_sequences(self, role: Role, picks: list[Any], cuts: list[int]) -> None:
        """Any sequence of recorded, mutated, misdirected, duplicated or foreign frames and
        garbage, cut anywhere: the handshake completes only if it consumed exactly the
        honest frames, and never raises."""
        recorded = recording().frames
        pool = [
            recorded["M1"],
            recorded["M2"],
            recorded["M2b"],
            recorded["M3"],
            encode_frame(wire_handshake.alert_for(errors.BadFinished())),
            encode_frame(wire_application.encode_application(wire_application.Ping())),
            b"\x00\x00\x00\x00",
            b"\x00\x01\x00\x00",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x05\x17abcd",
        ]
        # A pick with three or more mutations mutates one of the recorded frames.
        stream = b"".join(mutate(pool[index], ops) if index < 4 and len(ops) >= 3 else pool[index] for index, ops in picks)
        driver = fresh(role)
        position = 0
        try:
            for cut in [*cuts, len(stream)]:
                driver.feed(stream[position : position + cut])
                position += cut
                if position >= len(stream):
                    break
        except Exception as error:
            if tolerated(error):
                return
            raise
        if driver.completed is not None:
            honest = recorded["M1"] + recorded["M3"] if role is Role.RESPONDER else recorded["M2"] + recorded["M2b"]
            self.assertEqual(driver.consumed, honest)
        self.check_over(driver)

    def malicious_auth(self, role: Role, plaintext: bytes) -> Driver:
        """The victim of ``role`` receives a valid handshake whose peer seals ``plaintext``
        as its <auth> with the right handshake key."""
        recorded = recording()
        driver = fresh(role)
        if role is Role.INITIATOR:
            secret = recorded.responder_trace["responder_handshake_traffic_secret"]
            driver.feed(recorded.frames["M2"] + sealed_frame(secret, plaintext))
        else:
            secret = recorded.initiator_trace["initiator_handshake_traffic_secret"]
            driver.feed(recorded.frames["M1"])
            driver.feed(sealed_frame(secret, plaintext))
        return driver

    def check_malicious(self, role: Role, plaintext: bytes) -> None:
        recorded = recording()
        honest = recorded.responder_trace["responder_auth"] if role is Role.INITIATOR else recorded.initiator_trace["initiator_auth"]
        try:
            driver = self.malicious_auth(role, plaintext)
        except Exception as error:
            if tolerated(error):
                return
            raise
        verified = [event for event in driver.events if isinstance(event, PeerNeedsVerification)]
        if verified:
            # Accepted: only if it says what the honest <auth> says.
            self.assertEqual(wire_handshake.parse_sealed_content(plaintext), wire_handshake.parse_sealed_content(honest))
        else:
            self.assertIsNotNone(driver.aborted, f"neither verified nor failed: {driver.events}")
        self.check_over(driver)

    @fuzz_settings(300)
    @given(st.sampled_from([Role.INITIATOR, Role.RESPONDER]), ops_strategy)
    def test_malicious_peer_auth(self, role: Role, ops: list[tuple[int, int, int]]) -> None:
        """A peer holding the handshake keys seals a mutated <auth> (XML and ASN.1
        mutations of its certificates): the victim fails cleanly or, if the contents mean
        the same, verifies the same peer."""
        recorded = recording()
        honest = recorded.responder_trace["responder_auth"] if role is Role.INITIATOR else recorded.initiator_trace["initiator_auth"]
        self.check_malicious(role, mutate(honest, ops))

    @fuzz_settings(200)
    @given(st.sampled_from([Role.INITIATOR, Role.RESPONDER]), st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=3))
    def test_malicious_peer_certificates(self, role: Role, der_ops: list[tuple[int, int]]) -> None:
        """The same with ASN.1 mutations only, of the leaf or chain certificates."""
        recorded = recording()
        honest = recorded.responder_trace["responder_auth"] if role is Role.INITIATOR else recorded.initiator_trace["initiator_auth"]
        data = honest
        for a, b in der_ops:
            data = mutate_once(data, (18, a, b))
        self.check_malicious(role, data)

    def auth_with_leaf(self, role: Role, defect: str) -> bytes:
        """The honest <auth> of the peer of ``role`` with its leaf replaced by a crafted
        certificate (same identity)."""
        recorded = recording()
        honest = recorded.responder_trace["responder_auth"] if role is Role.INITIATOR else recorded.initiator_trace["initiator_auth"]
        auth = wire_handshake.parse_sealed_content(honest)
        assert isinstance(auth, wire_handshake.Auth)
        leaf = crafted_der(defect, "bob" if role is Role.INITIATOR else "alice")
        return dataclasses.replace(auth, certificates=(leaf, *auth.certificates[1:])).to_xml()

    def test_crafted_leaf_certificates(self) -> None:
        """Structurally defective leaf certificates: a clean failure or a known defect."""
        findings = Findings()
        for role in (Role.INITIATOR, Role.RESPONDER):
            for defect in CRAFTED_DEFECTS:
                findings.inputs += 1
                try:
                    driver = self.malicious_auth(role, self.auth_with_leaf(role, defect))
                except Exception as error:  # noqa: BLE001 - the property under test
                    findings.error(error, f"{role.value} receiving a leaf with {defect}")
                    continue
                findings.outcome(type(driver.aborted.error).__name__ if driver.aborted else "verified")
                if driver.aborted is None:
                    findings.violation(f"{role.value} accepted a leaf with {defect}")
        check_findings(self, findings, "crafted leaf certificates")

    def crafted_leaf_fails_cleanly(self, defect: str) -> None:
        for role in (Role.INITIATOR, Role.RESPONDER):
            driver = self.malicious_auth(role, self.auth_with_leaf(role, defect))
            self.assertIsNotNone(driver.aborted)
            assert driver.aborted is not None
            self.assertIsInstance(driver.aborted.error, (errors.CertificateInvalid, errors.MalformedMessage))

    def test_leaf_with_two_san_extensions(self) -> None:
        """IRP-6 in the handshake: DuplicateExtension escapes Handshake.receive_data
        (sixchat/handshake.py _on_auth calls identity_from_certificate before checking the
        signature, catching only InvalidIdentity and ValueError). Any TCP peer can do this:
        the handshake keys need no credentials."""
        self.crafted_leaf_fails_cleanly("duplicate-san")


    def test_leaf_with_bad_version(self) -> None:
        """IRP-10 in the handshake: sixchat/handshake.py _load_chain catches only
        ValueError; InvalidVersion escapes Handshake.receive_data."""
        self.crafted_leaf_fails_cleanly("bad-version")


    def test_leaf_with_unknown_key_algorithm(self) -> None:
        """SIX-1."""
        self.crafted_leaf_fails_cleanly("unknown-key")
        self.crafted_leaf_fails_cleanly("unknown-curve")



# ---------------------------------------------------------------------------------------
# The record layer


def session_pair(limits: RecordLimits | None = None, receiver_limits: RecordLimits | None = None) -> tuple[Session, Session]:
    """Two sessions with matching keys (as a handshake would leave them): (sender, receiver)."""
    alice, bob = user("alice"), user("bob")
    secrets = (b"\x01" * 48, b"\x02" * 48)

    def make(local: Any, peer: Any, send: bytes, receive: bytes, record_limits: RecordLimits | None) -> Session:
        return Session(
            local=local.identity,
            peer=peer.identity,
            peer_chain=[peer.certificate],
            peer_fingerprint=peer.fingerprint,
            send_secret=send,
            receive_secret=receive,
            exporter_secret=b"\x03" * 48,
            transcript_hash=b"\x04" * 48,
            limits=record_limits,
        )

    return make(alice, bob, secrets[0], secrets[1], limits), make(bob, alice, secrets[1], secrets[0], receiver_limits or limits)


#: What a sender does: (kind, argument).
sends = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.text(max_size=40)),
        st.tuples(st.just("data"), st.binary(max_size=64)),
        st.tuples(st.just("ping"), st.none()),
        st.tuples(st.just("presence"), st.sampled_from(wire_application.PRESENCE_STATUSES)),
        st.tuples(st.just("update"), st.none()),
    ),
    min_size=1,
    max_size=8,
)


def honest_stream(actions: list[Any], ending: str, limits: RecordLimits | None = None) -> tuple[list[bytes], Session]:
    """The records a sender writes for ``actions`` then ``ending`` (none, close or alert),
    one per entry (a key update may share one), and a matching fresh receiver."""
    sender, receiver = session_pair(limits)
    records = []
    for kind, argument in actions:
        if kind == "message":
            message = wire_application.ChatMessage(argument, id=f"00000000-0000-4000-8000-{len(records):012d}", sent=SENT)
            try:
                records.append(sender.send_message(message))
            except errors.MalformedMessage:  # text XML cannot carry
                continue
        elif kind == "data":
            records.append(sender.send_data(argument))
        elif kind == "ping":
            records.append(sender.send_message(wire_application.Ping()))
        elif kind == "presence":
            records.append(sender.send_message(wire_application.Presence(argument)))
        else:
            records.append(sender.update_keys())
    if not records:  # every message was text XML cannot carry
        records.append(sender.send_message(wire_application.Ping()))
    if ending == "close":
        records.append(sender.close("bye"))
    elif ending == "alert":
        records.append(sender.abort(errors.PeerRejected(reason="revoked")))
    return records, receiver


SENT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def expected_events(records: list[bytes], limits: RecordLimits | None = None) -> list[Any]:
    """What a receiver delivers for the whole honest stream."""
    _sender, reference = session_pair(limits)
    return [describe(event) for event in reference.receive_data(b"".join(records))]


def describe(event: Any) -> Any:
    """A comparable form of a session event."""
    if isinstance(event, MessageReceived):
        return ("message", event.message)
    if isinstance(event, DataReceived):
        return ("data", bytes(event.data))
    if isinstance(event, CloseReceived):
        return ("close", event.reason)
    if isinstance(event, AlertReceived):
        return ("alert", type(event.error), getattr(event.error, "reason", None))
    raise AssertionError(event)


def receive_all(receiver: Session, chunks: list[bytes]) -> tuple[list[Any], BaseException | None]:
    """Feed ``chunks``; (events delivered, the exception that ended it or None)."""
    delivered: list[Any] = []
    for chunk in chunks:
        try:
            delivered.extend(describe(event) for event in receiver.receive_data(chunk))
        except Exception as error:  # noqa: BLE001 - examined by the caller
            # Records that authenticated before the failure are delivered with it.
            delivered.extend(describe(event) for event in getattr(error, "events_before", []))
            return delivered, error
        if delivered and delivered[-1][0] == "alert":
            break  # the session is over (later calls raise Closed)
    return delivered, None


def cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    chunks, position = [], 0
    for size in cuts:
        chunks.append(stream[position : position + size])
        position += size
    chunks.append(stream[position:])
    return chunks


class RecordFuzzTests(SynchronousTestCase):
    """sixchat.record.Session against mutated record streams."""

    @fuzz_settings(300)
    @given(sends, st.sampled_from(["none", "close", "alert"]), st.lists(st.integers(1, 200), max_size=6))
    def test_honest_streams_any_chunking(self, actions: list[Any], ending: str, cuts: list[int]) -> None:
        """Honest records cut anywhere: every event, in order, no error."""
        limits = RecordLimits(rekey_after_records=2, hard_limit_records=5, rekey_after_bytes=1 << 20, hard_limit_bytes=1 << 22)
        records, receiver = honest_stream(actions, ending, limits)
        expected = expected_events(records, limits)
        delivered, error = receive_all(receiver, cut(b"".join(records), cuts))
        self.assertIsNone(error)
        self.assertEqual(delivered, expected)

    @fuzz_settings(500)
    @given(sends, st.sampled_from(["none", "close", "alert"]), st.integers(0, 6), ops_strategy, st.lists(st.integers(1, 200), max_size=6))
    def test_mutated_streams(self, actions: list[Any], ending: str, how: int, ops: list[tuple[int, int, int]], cuts: list[int]) -> None:
        """Mutated, duplicated, dropped, reordered records, length lies, clear alerts:
        only SixChatErrors; nothing delivered that was not sent, in order; a failed
        session refuses everything after with Closed."""
        records, receiver = honest_stream(actions, ending)
        expected = expected_events(records)
        index = ops[0][1] % len(records)
        changed = list(records)
        if how == 0:  # byte mutations anywhere in the stream
            stream = mutate(b"".join(records), ops)
        else:
            if how == 1:
                changed[index] = mutate(records[index], ops)
            elif how == 2:  # replay
                changed.insert(index, records[index])
            elif how == 3 and len(records) > 1:  # drop
                changed.pop(index)
            elif how == 4 and len(records) > 1:  # reorder
                changed.insert((ops[0][2] % len(records)), changed.pop(index))
            elif how == 5:  # a length lie
                lie = ops[0][2] % (len(records[index]) + 8)
                changed[index] = lie.to_bytes(4, "big") + records[index][4:]
            else:  # a clear alert or a handshake frame where a record belongs
                changed.insert(index, encode_frame(wire_handshake.alert_for(errors.BadFinished())) if ops[0][2] % 2 else recording().frames["M2"])
            stream = b"".join(changed)
        delivered, error = receive_all(receiver, cut(stream, cuts))
        if error is not None and not isinstance(error, errors.SixChatError) and not tolerated(error):
            raise error
        self.assertEqual(delivered, expected[: len(delivered)], "delivered something that was not sent")
        if stream == b"".join(records):
            self.assertEqual((delivered, error), (expected, None))
        if error is not None or any(event[0] == "alert" for event in delivered):
            self.assertRaises(errors.Closed, receiver.receive_data, records[0])
            self.assertFalse(receiver.is_open)

    @fuzz_settings(200)
    @given(sends, st.integers(0, 2**32 - 1))
    def test_authentic_records_before_a_bad_one_are_delivered(self, actions: list[Any], flip: int) -> None:
        """The events delivered do not depend on how TCP cut the stream: authentic records
        followed by a corrupted one give the same events in one read as in several."""
        records, receiver = honest_stream(actions, "none")
        _sender, other = session_pair()
        bad = bytearray(records[-1])
        bad[4 + flip % (len(bad) - 4)] ^= 1 << (flip >> 29)
        stream = [*records[:-1], bytes(bad)]
        one_read, _error = receive_all(receiver, [b"".join(stream)])
        per_record, _error = receive_all(other, stream)
        self.assertEqual(one_read, per_record)


    @fuzz_settings(150)
    @given(st.lists(st.sampled_from(["message", "data", "update"]), min_size=1, max_size=40))
    def test_nonces_never_repeat(self, kinds: list[str]) -> None:
        """With tiny rekey limits: every record uses a fresh (key, sequence) pair, keys
        change before the soft limit, and the receiver (hard limits) takes them all."""
        limits = RecordLimits(rekey_after_records=3, hard_limit_records=4, rekey_after_bytes=1 << 20, hard_limit_bytes=1 << 22)
        sender, receiver = session_pair(limits)
        used: set[tuple[bytes, int]] = set()
        stream = b""
        for kind in kinds:
            protection = sender._sending
            if protection.needs_update:
                pass  # _seal sends a key update under the old key first
            before = {(protection.secret, protection.sequence)}
            if kind == "message":
                stream += sender.send_message(wire_application.Ping())
            elif kind == "data":
                stream += sender.send_data(b"x")
            else:
                stream += sender.update_keys()
            for pair in before:
                self.assertNotIn(pair, used)
                used.add(pair)
            self.assertLessEqual(sender._sending.sequence, limits.rekey_after_records)
        events = receiver.receive_data(stream)
        self.assertEqual(len(events), sum(kind != "update" for kind in kinds))


# ---------------------------------------------------------------------------------------
# The Twisted adapter


LIMITS = ConnectionLimits(handshake_timeout=10.0, idle_timeout=60.0, verification_timeout=5.0)


class PeerConnectionFuzzTests(SynchronousTestCase):
    """sixchat.peer.protocol.PeerConnection against a live in-memory attacker whose frames and
    records are mutated, in both roles."""

    def attack(self, rnd: random.Random, role: Role, findings: Findings) -> None:
        """One connection: the victim has ``role``; the attacker runs the other side with
        real keys, and mutates, duplicates, drops or reorders what it sends."""
        clock = Clock()
        victim_credentials = user("alice") if role is Role.INITIATOR else user("bob")
        owner = BareOwner(victim_credentials, clock=clock, limits=LIMITS)
        connection = PeerConnection(owner, role, expected_peer=BOB if role is Role.INITIATOR else None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4605))
        attacker = Endpoint(responder() if role is Role.INITIATOR else initiator())
        sent_messages: list[Any] = []
        label = f"{role.value} victim, seed {SEED}"

        def victim_feed(data: bytes) -> None:
            for chunk in cut(data, [rnd.choice([1, 5, 50, 500, 5000]) for _ in range(3)]):
                try:
                    connection.dataReceived(chunk)
                except Exception as error:  # noqa: BLE001 - the property under test
                    findings.error(error, f"{label}: dataReceived raised")
                    # As Twisted's reactor would: the connection is dropped.
                    transport.loseConnection()
                    connection.connectionLost()
                    raise _Escaped() from None

        def attacker_sends(frames: list[bytes]) -> bytes:
            frames = list(frames)
            if frames and rnd.random() < 0.5:
                index = rnd.randrange(len(frames))
                choice = rnd.random()
                if choice < 0.5:
                    frames[index] = mutate(frames[index], random_ops(rnd, 2))
                elif choice < 0.65:
                    frames.insert(index, frames[index])
                elif choice < 0.8:
                    frames.pop(index)
                elif choice < 0.9:
                    frames.insert(rnd.randrange(len(frames) + 1), frames.pop(index))
                else:
                    frames.insert(index, rnd.randbytes(rnd.randrange(1, 40)))
            return b"".join(frames)

        try:
            connection.makeConnection(transport)
            if role is Role.RESPONDER:
                attacker.start()
            for _round in range(4):
                if connection.ended:
                    break
                written = transport.value()
                transport.clear()
                for frame in split_frames(written) if written else []:
                    attacker.deliver(frame)
                outgoing = attacker.outbox
                attacker.outbox = []
                if attacker.session is not None and attacker.session.is_open and _round >= 1:
                    for _ in range(rnd.randrange(4)):
                        message = wire_application.ChatMessage(f"m{len(sent_messages)}")
                        sent_messages.append(message)
                        outgoing.extend(split_frames(attacker.session.send_message(message)))
                    if rnd.random() < 0.2:
                        outgoing.extend(split_frames(attacker.session.close("bye")))
                if outgoing:
                    victim_feed(attacker_sends(outgoing))
        except _Escaped:
            findings.outcome("escaped")
            return
        # Nothing delivered that the attacker did not send, in order.
        if owner.messages != sent_messages[: len(owner.messages)]:
            findings.violation(f"{label}: delivered {owner.messages} but sent {sent_messages}")
        if connection.ended:
            written = transport.value()
            delivered = len(owner.messages)
            try:
                connection.dataReceived(rnd.randbytes(50))
            except Exception as error:  # noqa: BLE001
                findings.error(error, f"{label}: dataReceived after the end raised")
            if transport.value() != written or len(owner.messages) != delivered:
                findings.violation(f"{label}: wrote or delivered after the end")
            if not transport.disconnecting:
                findings.violation(f"{label}: ended without closing the transport")
        # Whatever happened, the timers end it: reported once, transport closed, aborted.
        for _step in range(4):
            clock.advance(LIMITS.handshake_timeout + LIMITS.verification_timeout + LIMITS.idle_timeout)
        if not connection.ended or not transport.disconnecting:
            findings.violation(f"{label}: never ended (session={connection.session is not None})")
        elif len(owner.ended) != 1:
            findings.violation(f"{label}: connection_ended reported {len(owner.ended)} times")
        elif not transport.disconnected:
            findings.violation(f"{label}: a peer that does not read could hold the socket (never aborted)")
        else:
            error = owner.ended[0][1]
            findings.outcome(type(error).__name__ if error is not None else "clean close")
            if connection.session is None and not isinstance(connection.failure, errors.SixChatError):
                findings.violation(f"{label}: ended before a session without a SixChatError: {connection.failure!r}")
        connection.connectionLost()
        if len(owner.ended) != 1:
            findings.violation(f"{label}: connectionLost reported the end again")

    def test_mutated_conversations(self) -> None:
        """Both roles, mutated handshakes and sessions: see :meth:`attack`."""
        rnd = random.Random(SEED)
        findings = Findings()
        for index in range(examples(150)):
            findings.inputs += 1
            self.attack(rnd, Role.RESPONDER if index % 2 else Role.INITIATOR, findings)
        check_findings(self, findings, "PeerConnection")


class _Escaped(Exception):
    """An exception escaped dataReceived (recorded in the findings)."""

