"""The sixid figures' requests, made on the load generator's side (no server, no Twisted).

* :class:`UniformLookups`: ``<lookup>`` frames spread evenly over every ID of the data
  (:mod:`bench.sixid_data`), each ID once per pass, in an order unrelated to the
  database's (the IDs are hashes; the order is a fixed stride over the order they were
  made in). Built from two byte templates per request (about a microsecond each), so the
  load generator costs the same for the figure as for its echo baseline.
* :class:`FreshRegistrations`: ``<register>`` frames, each a registration never sent
  before, signed by its device key when the load generator sends it (inside the timed
  window, on the load generator's core: the server's work is what is measured, the
  clients' signing is theirs). Sequence numbers grow per ID, time stamps are the
  current time.
* :func:`frames_of`: split a byte stream into frames (for the few places that read what
  the server answered: the answers' sizes, the watch figure's pushes).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Sequence
from typing import Any

from bench.sixid_data import DIGEST_SIZE, DOMAIN, id_text

_LENGTH = struct.Struct(">I")
#: What every successful answer starts with (errors are ``<error``).
OK = b"<response"
#: Distinct request ids the pre-built templates use (one request outstanding per
#: connection: any id serves; the server matches answers to ids, the load generator
#: counts them).
REQUEST_IDS = 1000


def frame(payload: bytes) -> bytes:
    """``payload`` with its 4-byte length prefix."""
    return _LENGTH.pack(len(payload)) + payload


def frames_of(buffer: bytearray) -> list[bytes]:
    """The complete frames' payloads at the start of ``buffer`` (removed from it)."""
    found = []
    position = 0
    while len(buffer) - position >= 4:
        (length,) = _LENGTH.unpack_from(buffer, position)
        if len(buffer) - position - 4 < length:
            break
        found.append(bytes(buffer[position + 4 : position + 4 + length]))
        position += 4 + length
    del buffer[:position]
    return found


def stride_for(count: int) -> int:
    """A step coprime with ``count`` near ``count`` times the golden ratio's fraction:
    ``index * stride % count`` visits every index once per ``count`` steps, far apart."""
    if count <= 2:
        return 1
    stride = int(count * 0.6180339887498949) | 1
    while math.gcd(stride, count) != 1:
        stride += 2
    return stride


class UniformLookups(Sequence[bytes]):
    """Endless ``<lookup>`` frames over every ID of ``ids`` (joined 20-byte digests).

    Item ``n`` looks up ID number ``(start + n) * stride % size`` (``size`` IDs): every ID
    once in any ``size`` consecutive items. ``issued`` is one past the highest item asked for, so a
    caller can start the next run where this one stopped (``start + issued``).
    """

    def __init__(self, ids: bytes, start: int = 0) -> None:
        if not ids or len(ids) % DIGEST_SIZE:
            raise ValueError("ids must be joined 20-byte digests")
        self.ids = ids
        self.size = len(ids) // DIGEST_SIZE
        self.stride = stride_for(self.size)
        self.start = start
        self.issued = 0
        self.heads = [b'<request v="1" id="%d"><lookup sixid="' % (1 + index) for index in range(REQUEST_IDS)]
        self.tail = b'"/></request>'

    def __len__(self) -> int:
        return 1 << 62

    def position(self, index: int) -> int:
        """Which ID (its index in ``ids``) item ``index`` looks up."""
        return (self.start + index) * self.stride % self.size

    def __getitem__(self, index: Any) -> Any:
        if index >= self.issued:
            self.issued = index + 1
        at = self.position(index) * DIGEST_SIZE
        payload = self.heads[index % REQUEST_IDS] + id_text(self.ids[at : at + DIGEST_SIZE]).encode("ascii") + self.tail
        return _LENGTH.pack(len(payload)) + payload


class FreshRegistrations(Sequence[bytes]):
    """Endless ``<register>`` frames by ``keys`` (Ed25519 device keys) in turn, each made
    and signed when asked for: item ``n`` registers key ``n % len(keys)``'s ID with a
    sequence number above any it sent before (Unix milliseconds, or one more than the
    last), ``signed_at`` now, ``lifetime`` seconds, one IPv6 endpoint that varies."""

    def __init__(self, keys: Sequence[Any], lifetime: int = 3600, port: int = 4605) -> None:
        from sixid.ids import derive_id

        self.keys = list(keys)
        self.ids = [derive_id(key.public_key()) for key in self.keys]
        self.last_seq = [0] * len(self.keys)
        self.lifetime = lifetime
        self.port = port
        self.made = 0

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, index: Any) -> Any:
        return frame(self.payload(index))

    def payload(self, index: int) -> bytes:
        """The document of item ``index``."""
        from common.endpoint import Endpoint
        from sixid.records import Registration, sign_registration
        from sixid.wire import Register, Request, encode_request

        slot = index % len(self.keys)
        now = time.time()
        seq = max(self.last_seq[slot] + 1, int(now * 1000))
        self.last_seq[slot] = seq
        signed_at = int(now)
        endpoint = Endpoint(f"2001:db8:5::{index % 0xFFFF + 1:x}", self.port)
        registration = Registration(DOMAIN, self.ids[slot], seq, signed_at, signed_at + self.lifetime, (endpoint,))
        self.made += 1
        signed = sign_registration(self.keys[slot], registration)
        return encode_request(Request(1 + index % REQUEST_IDS, Register(signed)))


def device_keys(count: int) -> list[Any]:
    """``count`` fresh Ed25519 device keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return [Ed25519PrivateKey.generate() for _ in range(count)]


def id_texts(ids: bytes) -> list[str]:
    """The canonical texts of joined digests."""
    return [id_text(ids[at : at + DIGEST_SIZE]) for at in range(0, len(ids), DIGEST_SIZE)]
