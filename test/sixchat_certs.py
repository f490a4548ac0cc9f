"""SixChat test fixtures: credentials from the test CA, forgeries, and an in-memory network.

Credentials come from :mod:`test.pki` (a real CA, cached), wrapped as
:class:`~sixchat.handshake.LocalCredentials`. :func:`forged_credentials` builds what an
attacker's own implementation would use: any certificate chain with any key, skipping the
consistency checks honest credentials get. :class:`Endpoint` and :func:`exchange` run two
handshakes (and then their sessions) against each other, optionally tampering with frames.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, rsa, x25519

from common.identity import Identity
from sixchat import errors
from sixchat.credentials import PrivateKey
from sixchat.handshake import (
    EphemeralKeys,
    Handshake,
    HandshakeAborted,
    HandshakeComplete,
    HandshakeEvent,
    LocalCredentials,
    PeerNeedsVerification,
    Role,
    SendData,
)
from sixchat.record import RecordLimits, Session, SessionEvent
from test import pki

DOMAIN = "example.org"


@functools.cache
def rsa_key(bits: int = 3072) -> rsa.RSAPrivateKey:
    """An RSA key (cached: slow to make)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def user(username: str, key_type: str = "p256") -> LocalCredentials:
    """Credentials for ``username@example.org`` from the shared test CA (cached).

    ``key_type`` is one of p256, p384, p521, ed25519, rsa3072.
    """
    ca = pki.make_ca(DOMAIN)
    identity = Identity(username, DOMAIN)
    if key_type in ("p256", "p384", "ed25519"):
        issued = pki.issue_user(ca, username, key_type=key_type)
        return LocalCredentials(
            identity, issued.certificate, list(issued.intermediates), issued.key
        )
    key: PrivateKey
    if key_type == "p521":
        key = ec.generate_private_key(ec.SECP521R1())
    elif key_type == "rsa3072":
        key = rsa_key(3072)
    else:
        raise ValueError(f"unknown key type {key_type}")
    certificate, _ = pki.build_certificate(
        ca.issuing_certificate,
        ca.issuing_key,
        subject=pki.user_name(identity),
        key=key,
        san=[x509.UniformResourceIdentifier(identity.uri)],
    )
    return LocalCredentials(identity, certificate, list(ca.chain[:-1]), key)


def forged_credentials(
    *,
    identity: Identity,
    certificates: LocalCredentials | list[x509.Certificate],
    private_key: PrivateKey,
    signature_algorithm: str | None = None,
) -> LocalCredentials:
    """Credentials an attacker would use: a chain and a key that need not match."""
    if isinstance(certificates, LocalCredentials):
        chain = [certificates.certificate, *certificates.chain]
    else:
        chain = list(certificates)
    honest = user("alice")
    forged = object.__new__(LocalCredentials)
    der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    values: dict[str, Any] = {
        "identity": identity,
        "certificate": chain[0],
        "chain": chain[1:],
        "private_key": private_key,
        "certificates_der": der,
        "fingerprint": hashlib.sha256(der[0]).hexdigest(),
        "signature_algorithm": signature_algorithm or honest.signature_algorithm,
    }
    for name, value in values.items():
        object.__setattr__(forged, name, value)
    return forged


# ---------------------------------------------------------------------------------------
# Deterministic handshakes (identical bytes on every run within a test process)


@functools.cache
def _fixed_mlkem() -> tuple[mlkem.MLKEM768PrivateKey, bytes, bytes]:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(range(64)))
    shared_secret, ciphertext = key.public_key().encapsulate()
    return key, shared_secret, ciphertext


def deterministic_options(role: Role) -> dict[str, Any]:
    """Handshake keyword arguments that fix every random input."""
    key, shared_secret, ciphertext = _fixed_mlkem()
    fill = 0x11 if role is Role.INITIATOR else 0x22
    options: dict[str, Any] = {
        "entropy": lambda length: bytes([fill]) * length,
        "ephemeral": EphemeralKeys(
            x25519.X25519PrivateKey.from_private_bytes(bytes([fill + 1]) * 32),
            key if role is Role.INITIATOR else None,
        ),
    }
    if role is Role.RESPONDER:
        expected_key = key.public_key().public_bytes_raw()

        def encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
            if encapsulation_key != expected_key:
                # A tampered key: encapsulate for real, as an honest responder would.
                public = mlkem.MLKEM768PublicKey.from_public_bytes(encapsulation_key)
                return public.encapsulate()
            return shared_secret, ciphertext

        options["mlkem_encapsulate"] = encapsulate
    return options


def initiator(
    credentials: LocalCredentials | None = None,
    peer: Identity | str = "bob@example.org",
    *,
    deterministic: bool = False,
    **options: Any,
) -> Handshake:
    """An initiator handshake (alice calling bob by default)."""
    if deterministic:
        options = {**deterministic_options(Role.INITIATOR), **options}
    expected = Identity.parse(peer) if isinstance(peer, str) else peer
    return Handshake(
        Role.INITIATOR, credentials or user("alice"), expected_peer=expected, **options
    )


def responder(
    credentials: LocalCredentials | None = None, *, deterministic: bool = False, **options: Any
) -> Handshake:
    """A responder handshake (bob by default)."""
    if deterministic:
        options = {**deterministic_options(Role.RESPONDER), **options}
    return Handshake(Role.RESPONDER, credentials or user("bob"), **options)


# ---------------------------------------------------------------------------------------
# An in-memory network


def split_frames(data: bytes) -> list[bytes]:
    """Cut a byte string holding whole frames into frames (length prefix kept)."""
    frames = []
    while data:
        length = int.from_bytes(data[:4], "big")
        frames.append(data[: 4 + length])
        data = data[4 + length :]
    return frames


Verdict = Callable[[PeerNeedsVerification], errors.SixChatError | None]


def accept_all(event: PeerNeedsVerification) -> errors.SixChatError | None:
    """The default verdict: accept every authenticated peer."""
    return None


class Endpoint:
    """One side of a connection: a handshake, then its session, as an adapter drives them."""

    def __init__(self, handshake: Handshake, *, verdict: Verdict | None = accept_all) -> None:
        self.handshake = handshake
        #: None leaves PeerNeedsVerification pending (the test decides later).
        self.verdict = verdict
        self.outbox: list[bytes] = []
        self.events: list[HandshakeEvent] = []
        self.verifications: list[PeerNeedsVerification] = []
        self.completed: HandshakeComplete | None = None
        self.error: errors.SixChatError | None = None
        self.session_events: list[SessionEvent] = []
        self.session_error: errors.SixChatError | None = None

    @property
    def session(self) -> Session | None:
        """The session once the handshake completed."""
        return self.completed.session if self.completed else None

    def start(self) -> None:
        """Start the handshake (the initiator queues M1)."""
        self.outbox.extend(self.handshake.start())

    def deliver(self, data: bytes) -> None:
        """Bytes from the peer: to the session if there is one, else to the handshake."""
        if self.session_error is not None or self.error is not None:
            return
        if self.completed is not None:
            try:
                self.session_events.extend(self.completed.session.receive_data(data))
            except errors.SixChatError as error:
                self.session_error = error
            return
        self.handle(self.handshake.receive_data(data))

    def handle(self, events: list[HandshakeEvent]) -> None:
        """Act on handshake events as an adapter would."""
        for event in events:
            self.events.append(event)
            if isinstance(event, SendData):
                self.outbox.extend(split_frames(event.data))
            elif isinstance(event, PeerNeedsVerification):
                self.verifications.append(event)
                if self.verdict is not None:
                    self.decide(self.verdict(event))
            elif isinstance(event, HandshakeComplete):
                self.completed = event
                if event.leftover:
                    self.deliver(event.leftover)
            elif isinstance(event, HandshakeAborted):
                self.error = event.error

    def decide(self, rejection: errors.SixChatError | None) -> None:
        """Accept (None) or reject the pending peer."""
        if rejection is None:
            self.handle(self.handshake.accept_peer())
        else:
            self.handle(self.handshake.reject_peer(rejection))

    def send(self, data: bytes) -> None:
        """Queue session bytes (records) for the peer."""
        self.outbox.extend(split_frames(data))


Tamper = Callable[["Endpoint", int, bytes], "bytes | None"]


def exchange(
    first: Endpoint,
    second: Endpoint,
    *,
    tamper: Tamper | None = None,
    byte_by_byte: bool = False,
    counters: dict[int, int] | None = None,
) -> None:
    """Move queued frames both ways until nothing is left.

    ``tamper(sender, index, frame)`` may change a frame (``index`` counts the sender's
    frames from 0) or drop it (None).
    """
    counts = counters if counters is not None else {}
    for _ in range(100):
        moved = False
        for source, target in ((first, second), (second, first)):
            while source.outbox:
                frame = source.outbox.pop(0)
                index = counts.get(id(source), 0)
                counts[id(source)] = index + 1
                if tamper is not None:
                    changed = tamper(source, index, frame)
                    if changed is None:
                        continue
                    frame = changed
                moved = True
                if byte_by_byte:
                    for position in range(len(frame)):
                        target.deliver(frame[position : position + 1])
                else:
                    target.deliver(frame)
        if not moved:
            return
    raise AssertionError("the endpoints never went quiet")


def connect(
    initiator_handshake: Handshake | None = None,
    responder_handshake: Handshake | None = None,
    **options: Any,
) -> tuple[Endpoint, Endpoint]:
    """Run a handshake between two endpoints; returns (initiator, responder)."""
    alice = Endpoint(initiator_handshake or initiator())
    bob = Endpoint(responder_handshake or responder())
    alice.start()
    exchange(alice, bob, **options)
    return alice, bob


def small_limits(**changes: int) -> RecordLimits:
    """Record limits small enough to reach in a test."""
    values = {
        "rekey_after_records": 3,
        "rekey_after_bytes": 1 << 20,
        "hard_limit_records": 6,
        "hard_limit_bytes": 1 << 22,
    }
    values.update(changes)
    return RecordLimits(**values)
