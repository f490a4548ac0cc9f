"""Fixtures the intermediary's tests share: one of every message, and prekey documents as
part A encodes them."""

from __future__ import annotations

import base64
import secrets

from common.identity import Identity
from intermediary.wire import (
    Accept,
    Accepted,
    Ack,
    Acked,
    CircuitOffer,
    Delivery,
    Deposit,
    Deposited,
    Event,
    FetchPrekey,
    Operation,
    Ping,
    Pong,
    PrekeyCount,
    PrekeyData,
    PublishPrekeys,
    Reserve,
    Reserved,
    Result,
    Subscribe,
    Subscribed,
    Superseded,
)

BOB = Identity("bob", "example.org")
HEX = "0123456789abcdef0123456789abcdef"

OPERATIONS: list[Operation] = [
    PublishPrekeys((b"one", b"two")),
    FetchPrekey(BOB),
    Deposit(BOB, 2_000_000_000, None, b"sealed bytes"),
    Deposit(BOB, 2_000_000_000, 1_900_000_000, b"\x00" * 1000),
    Subscribe(),
    Ack(HEX),
    Reserve(),
    Accept(HEX),
    Ping(),
]

RESULTS: list[Result] = [
    PrekeyCount(20, True),
    PrekeyCount(0, False),
    PrekeyData(b"prekey"),
    Deposited(HEX, 3),
    Subscribed(7),
    Acked(),
    Reserved("2001:db8::5", 46051, 2_000_000_000),
    Accepted(),
    Pong(),
]

EVENTS: list[Event] = [Delivery(HEX, Identity("alice", "other.example"), 1_700_000_000, b"envelope"), Superseded(), CircuitOffer(HEX, "2001:db8::9 50000")]


def prekey_bytes(
    owner: Identity | str,
    *,
    kind: str = "one-time",
    created: int = 1_000,
    expires: int = 10**10,
    prekey_id: str | None = None,
) -> bytes:
    """A prekey element with the attributes the intermediary reads (random key material;
    the intermediary does not check the signature)."""
    x25519 = base64.b64encode(secrets.token_bytes(32)).decode()
    mlkem = base64.b64encode(secrets.token_bytes(1184)).decode()
    signature = base64.b64encode(secrets.token_bytes(64)).decode()
    return (
        f'<prekey id="{prekey_id or secrets.token_hex(16)}" kind="{kind}" owner="{owner}" created="{created}"'
        f' expires="{expires}" algorithm="ecdsa-p256-sha256" x25519="{x25519}" mlkem="{mlkem}"'
        f' signature="{signature}"/>'
    ).encode()
