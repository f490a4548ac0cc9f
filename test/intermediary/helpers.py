"""Fixtures the intermediary's tests share: prekey documents as part A encodes them."""

from __future__ import annotations

import base64
import secrets

from common.identity import Identity


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
