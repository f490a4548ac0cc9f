"""Sealed messages: SixChat messages stored and forwarded by an intermediary (docs/sealed.rst).

* :mod:`sixchat.sealed.prekeys`: signed prekeys (X25519 + ML-KEM-768) a recipient publishes
  and the secrets it keeps;
* :mod:`sixchat.sealed.envelope`: sealing a message to a prekey and opening it;
* :mod:`sixchat.sealed.sequence`: the recipient's replay, reorder and gap rules.

All three are pure: bytes and integers in, bytes and values out; no clock, no I/O.
"""

from sixchat.sealed.envelope import Header, Opened, open_sealed, open_with, peek, seal
from sixchat.sealed.prekeys import (
    LAST_RESORT,
    ONE_TIME,
    Prekey,
    PrekeySecret,
    decode_prekey,
    encode_prekey,
    make_prekey,
    verify_prekey,
)
from sixchat.sealed.sequence import Outcome, SequenceTracker, Verdict

__all__ = [
    "LAST_RESORT",
    "ONE_TIME",
    "Header",
    "Opened",
    "Outcome",
    "Prekey",
    "PrekeySecret",
    "SequenceTracker",
    "Verdict",
    "decode_prekey",
    "encode_prekey",
    "make_prekey",
    "open_sealed",
    "open_with",
    "peek",
    "seal",
    "verify_prekey",
]
