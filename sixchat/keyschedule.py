"""The SixChat 1 key schedule: TLS 1.3's (RFC 8446 section 7) with SHA-384 and own labels.

::

    early_secret     = HKDF-Extract(salt = 0^48, IKM = 0^48)
    handshake_secret = HKDF-Extract(salt = Derive-Secret(early_secret, "derived", ""),
                                    IKM = mlkem768_shared_secret || x25519_shared_secret)
    i_hs = Derive-Secret(handshake_secret, "i hs traffic", TH_reply)
    r_hs = Derive-Secret(handshake_secret, "r hs traffic", TH_reply)
    master_secret    = HKDF-Extract(salt = Derive-Secret(handshake_secret, "derived", ""),
                                    IKM = 0^48)
    i_ap = Derive-Secret(master_secret, "i ap traffic", TH_final)
    r_ap = Derive-Secret(master_secret, "r ap traffic", TH_final)
    exp  = Derive-Secret(master_secret, "exp master", TH_final)

    key  = HKDF-Expand-Label(traffic_secret, "key", "", 32)
    iv   = HKDF-Expand-Label(traffic_secret, "iv", "", 12)
    finished_key = HKDF-Expand-Label(handshake_traffic_secret, "finished", "", 48)
    next traffic secret = HKDF-Expand-Label(traffic_secret, "traffic upd", "", 48)

HKDF-Expand-Label is TLS 1.3's with the label prefix ``"sixchat1 "`` instead of ``"tls13 "``.
Derive-Secret takes the transcript hash directly. HKDF is HMAC-SHA384 from the standard
library (one call per output block): the handshake runs about twenty of them, and the
``cryptography`` objects cost more to build than the HMAC itself. The tests check these
functions against ``cryptography``'s HKDF.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

HASH_NAME: Final = "sha384"
HASH_LENGTH: Final = 48
KEY_LENGTH: Final = 32
IV_LENGTH: Final = 12
LABEL_PREFIX: Final = b"sixchat1 "

_ZEROS: Final = bytes(HASH_LENGTH)
_EMPTY_HASH: Final = hashlib.sha384(b"").digest()

#: Transcript item types for the contents of the sealed ``<auth>`` messages (the values of
#: the TLS 1.3 handshake types Certificate, CertificateVerify and Finished).
ITEM_CERTIFICATE: Final = 0x0B
ITEM_CERTIFICATE_VERIFY: Final = 0x0F
ITEM_FINISHED: Final = 0x14

#: Receives (name, value) for every secret derived and every transcript hash taken, like
#: an SSLKEYLOGFILE; for debugging and known-answer vectors only, never in production.
Trace = Callable[[str, bytes], None]


def hkdf_extract(salt: bytes, input_key_material: bytes) -> bytes:
    """HKDF-Extract with SHA-384 (RFC 5869); an empty salt means 48 zero bytes."""
    return hmac.digest(salt or _ZEROS, input_key_material, HASH_NAME)


def hkdf_expand(pseudorandom_key: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-384 (RFC 5869)."""
    if not 0 < length <= 255 * HASH_LENGTH:
        raise ValueError(f"cannot expand to {length} bytes")
    if length <= HASH_LENGTH:
        return hmac.digest(pseudorandom_key, info + b"\x01", HASH_NAME)[:length]
    blocks: list[bytes] = []
    previous = b""
    counter = 1
    while HASH_LENGTH * len(blocks) < length:
        previous = hmac.digest(pseudorandom_key, previous + info + bytes((counter,)), HASH_NAME)
        blocks.append(previous)
        counter += 1
    return b"".join(blocks)[:length]


def hkdf_label(label: str, context: bytes, length: int) -> bytes:
    """The HkdfLabel structure: uint16 length, opaque label<7..255>, opaque context<0..255>."""
    full_label = LABEL_PREFIX + label.encode("ascii")
    if not 7 <= len(full_label) <= 255 or len(context) > 255 or not 0 < length < 65536:
        raise ValueError("label, context or length out of range")
    return (
        struct.pack(">HB", length, len(full_label))
        + full_label
        + bytes((len(context),))
        + context
    )


@functools.lru_cache(maxsize=32)
def _fixed_label(label: str, length: int) -> bytes:
    """HkdfLabel with an empty context, computed once per label (key, iv, finished...)."""
    return hkdf_label(label, b"", length)


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label(secret, label, context, length) with the ``sixchat1 `` prefix."""
    info = hkdf_label(label, context, length) if context else _fixed_label(label, length)
    return hkdf_expand(secret, info, length)


def derive_secret(secret: bytes, label: str, transcript_hash: bytes) -> bytes:
    """Derive-Secret, taking the transcript hash (not the messages)."""
    return hkdf_expand_label(secret, label, transcript_hash, HASH_LENGTH)


@dataclass(frozen=True)
class TrafficKeys:
    """The AES-256-GCM key and the 12-byte IV derived from one traffic secret."""

    key: bytes
    iv: bytes


def traffic_keys(traffic_secret: bytes) -> TrafficKeys:
    """Derive the record key and IV of a traffic secret."""
    return TrafficKeys(
        key=hkdf_expand_label(traffic_secret, "key", b"", KEY_LENGTH),
        iv=hkdf_expand_label(traffic_secret, "iv", b"", IV_LENGTH),
    )


def next_traffic_secret(traffic_secret: bytes) -> bytes:
    """The traffic secret after a key update."""
    return hkdf_expand_label(traffic_secret, "traffic upd", b"", HASH_LENGTH)


def finished_key(handshake_traffic_secret: bytes) -> bytes:
    """The HMAC key of a side's Finished MAC."""
    return hkdf_expand_label(handshake_traffic_secret, "finished", b"", HASH_LENGTH)


def finished_mac(handshake_traffic_secret: bytes, transcript_hash: bytes) -> bytes:
    """verify_data = HMAC-SHA384(finished_key, transcript hash)."""
    return hmac.digest(finished_key(handshake_traffic_secret), transcript_hash, HASH_NAME)


def export_keying_material(
    exporter_secret: bytes, label: str, context: bytes, length: int
) -> bytes:
    """A keying-material exporter as TLS 1.3's (RFC 8446 section 7.5)."""
    derived = derive_secret(exporter_secret, label, _EMPTY_HASH)
    return hkdf_expand_label(derived, "exporter", hashlib.sha384(context).digest(), length)


class Transcript:
    """The running SHA-384 over the exact bytes of the handshake.

    The clear messages are hashed as their exact frames (length prefix and XML payload);
    the contents of the sealed ``<auth>`` messages as items: one type byte, a 4-byte
    big-endian length, and the body (see :func:`certificate_item`).
    """

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha384()

    def add(self, data: bytes) -> None:
        """Hash exact bytes (a whole frame, or an encoded item)."""
        self._hash.update(data)

    def add_item(self, item_type: int, body: bytes) -> None:
        """Hash one item: type byte, 4-byte length, body."""
        self._hash.update(struct.pack(">BI", item_type, len(body)))
        self._hash.update(body)

    def digest(self) -> bytes:
        """The transcript hash so far (the running hash continues)."""
        return self._hash.digest()


def certificate_item_body(certificates_der: Sequence[bytes]) -> bytes:
    """The body of a certificate item: each DER certificate with a 4-byte length."""
    return b"".join(struct.pack(">I", len(der)) + der for der in certificates_der)


#: The early secret and its "derived" secret are constants: SixChat has no pre-shared key.
EARLY_SECRET: Final = hkdf_extract(_ZEROS, _ZEROS)
_DERIVED_FROM_EARLY: Final = derive_secret(EARLY_SECRET, "derived", _EMPTY_HASH)


class KeySchedule:
    """The secrets of one handshake, derived in order.

    ``trace``, when given, receives every secret under the names used in the published
    vectors.
    """

    def __init__(self, shared_secret: bytes, trace: Trace | None = None) -> None:
        self._trace = trace
        self.handshake_secret = hkdf_extract(_DERIVED_FROM_EARLY, shared_secret)
        if trace is not None:
            trace("shared_secret", shared_secret)
            trace("early_secret", EARLY_SECRET)
            trace("handshake_secret", self.handshake_secret)

    def _record(self, name: str, value: bytes) -> None:
        if self._trace is not None:
            self._trace(name, value)

    def handshake_traffic_secrets(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(initiator, responder) handshake traffic secrets from TH after the reply."""
        initiator = derive_secret(self.handshake_secret, "i hs traffic", transcript_hash)
        responder = derive_secret(self.handshake_secret, "r hs traffic", transcript_hash)
        self._record("initiator_handshake_traffic_secret", initiator)
        self._record("responder_handshake_traffic_secret", responder)
        return initiator, responder

    def application_traffic_secrets(self, transcript_hash: bytes) -> tuple[bytes, bytes, bytes]:
        """(initiator, responder, exporter) secrets from the final transcript hash."""
        master_secret = hkdf_extract(
            derive_secret(self.handshake_secret, "derived", _EMPTY_HASH), _ZEROS
        )
        initiator = derive_secret(master_secret, "i ap traffic", transcript_hash)
        responder = derive_secret(master_secret, "r ap traffic", transcript_hash)
        exporter = derive_secret(master_secret, "exp master", transcript_hash)
        self._record("master_secret", master_secret)
        self._record("initiator_application_traffic_secret", initiator)
        self._record("responder_application_traffic_secret", responder)
        self._record("exporter_secret", exporter)
        return initiator, responder, exporter
