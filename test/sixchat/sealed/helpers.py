"""Fixtures the sealed-message tests share: credentials of every key type, prekeys, and an
envelope editor that models a malicious intermediary (edits without any key) or a sender
who signs what it likes (edits re-signed with the sender's own key)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from lxml import etree

from common.identity import Identity
from common.pki.keys import sign
from sixchat.credentials import LocalCredentials
from sixchat.sealed import envelope, prekeys
from test.sixchat_certs import user

#: Every leaf key type the handshake supports.
KEY_TYPES = ("p256", "p384", "p521", "ed25519", "rsa3072")

NOW = 1_800_000_000
DAY = 86400
MESSAGE_ID = "00000000-0000-4000-8000-000000000001"
PAYLOAD = b'<message id="00000000-0000-4000-8000-000000000001" sent="2027-01-15T08:00:00Z">Hi</message>'

ALICE = Identity("alice", "example.org")
BOB = Identity("bob", "example.org")
CAROL = Identity("carol", "example.org")


def credentials(name: str, key_type: str = "p256") -> LocalCredentials:
    """Credentials of ``name@example.org`` from the shared test CA (cached)."""
    return user(name, key_type)


def prekey_for(
    owner: LocalCredentials, *, kind: str = prekeys.ONE_TIME, now: int = NOW, lifetime: int = 37 * DAY
) -> tuple[prekeys.Prekey, prekeys.PrekeySecret]:
    """A fresh prekey of ``owner``."""
    return prekeys.make_prekey(owner, kind=kind, now=now, lifetime=lifetime)


def sealed(
    sender: LocalCredentials,
    prekey: prekeys.Prekey,
    *,
    seq: int = 1,
    message_id: str = MESSAGE_ID,
    sent_at: int = NOW,
    expires_at: int = NOW + 7 * DAY,
    payload: bytes = PAYLOAD,
) -> bytes:
    """An envelope from ``sender`` to the prekey's owner."""
    return envelope.seal(
        sender, recipient=prekey.owner, prekey=prekey, payload=payload, message_id=message_id,
        seq=seq, sent_at=sent_at, expires_at=expires_at,
    )


def edit(data: bytes, change: Callable[[etree._Element], object]) -> bytes:
    """The envelope (or prekey) with ``change`` applied to its parsed tree, re-serialised."""
    root = etree.fromstring(data)
    change(root)
    return etree.tostring(root)


def set_attribute(data: bytes, name: str, value: str) -> bytes:
    """The document with one attribute replaced."""
    return edit(data, lambda root: root.set(name, value))


def flip_base64(text: str, index: int = 0) -> str:
    """The base64 of the decoded bytes with one bit of byte ``index`` flipped."""
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def resign(
    data: bytes,
    signer: LocalCredentials,
    prekey: prekeys.Prekey,
    change: Callable[[etree._Element], object],
    *,
    chain: LocalCredentials | None = None,
) -> bytes:
    """Apply ``change``, then sign the result validly with ``signer``'s key: what a sender
    (or a thief of its key) could produce. ``chain`` replaces the chain and ``from``."""
    root = etree.fromstring(data)
    change(root)
    if chain is not None:
        for element in root.findall("chain"):
            root.remove(element)
        for position, der in enumerate(chain.certificates_der):
            element = etree.Element("chain")
            element.text = base64.b64encode(der).decode()
            root.insert(position, element)
        root.set("from", str(chain.identity))
        root.set("algorithm", chain.signature_algorithm)
    chain_der = tuple(base64.b64decode(element.text or "") for element in root.findall("chain"))
    header = envelope.header_bytes(
        sender=Identity.parse(root.get("from", "")),
        recipient=Identity.parse(root.get("to", "")),
        prekey_id=root.get("prekey", ""),
        message_id=root.get("id", ""),
        seq=int(root.get("seq", "")),
        sent_at=int(root.get("sent", "")),
        expires_at=int(root.get("expires", "")),
        ephemeral=base64.b64decode(root.get("ephemeral", "")),
        kem=base64.b64decode(root.get("kem", "")),
        algorithm=root.get("algorithm", ""),
        prekey_x25519=prekey.x25519,
        prekey_mlkem=prekey.mlkem,
        chain=chain_der,
    )
    body = root.find("body")
    assert body is not None
    content = envelope.signed_bytes(
        hashlib.sha384(header).digest(), base64.b64decode(body.text or "")
    )
    root.set("signature", base64.b64encode(sign(signer.private_key, content)).decode())
    return etree.tostring(root)
