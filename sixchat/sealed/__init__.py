"""Sealed messages: SixChat messages stored and forwarded by an intermediary (docs/sealed.rst).

* :mod:`sixchat.sealed.prekeys`: signed prekeys (X25519 + ML-KEM-768) a recipient publishes
  and the secrets it keeps;
* :mod:`sixchat.sealed.envelope`: sealing a message to a prekey and opening it;
* :mod:`sixchat.sealed.sequence`: the recipient's replay, reorder and gap rules.

All three are pure: bytes and integers in, bytes and values out; no clock, no I/O.
"""
