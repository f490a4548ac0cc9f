"""Shared fixtures for the sixchat wire tests: well-formed handshake messages."""

from __future__ import annotations

import os

from common.identity import Identity
from sixchat.wire import handshake as wire_handshake

GOOD_HELLO = wire_handshake.Hello(
    to=Identity("bob", "example.org"),
    random=bytes(range(32)),
    x25519_key=bytes(range(1, 33)),
    mlkem_key=os.urandom(1184),
)
GOOD_REPLY = wire_handshake.Reply(
    random=bytes(32), x25519_key=bytes(range(32)), mlkem_ciphertext=os.urandom(1088)
)
GOOD_AUTH = wire_handshake.Auth(
    certificates=(b"\x30\x03\x02\x01\x01", b"\x30\x00"),
    signature_algorithm="ed25519",
    signature=os.urandom(64),
    finished=os.urandom(48),
)
