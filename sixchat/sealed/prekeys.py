"""Signed prekeys: the keys a recipient publishes at its intermediary so that anyone can seal
a message to it while it is offline (docs/sealed.rst, "Prekeys").

A prekey is an X25519 public key and an ML-KEM-768 encapsulation key, with a random id, a
kind (``one-time``: served once, its secret deleted after the first message opened with it;
``last-resort``: served when no one-time prekey is left, rotated), its owner, a validity
period, and the owner's signature by its certificate key (the signature rules of the SixChat
handshake: :func:`sixchat.credentials.signature_algorithm_for`). Its wire form is one empty
XML element::

    <prekey id="32 hex" kind="one-time" owner="bob@example.org" created="T" expires="T"
            algorithm="ecdsa-p384-sha384" x25519="B64" mlkem="B64" signature="B64"/>

The owner keeps a :class:`PrekeySecret` (both private keys) in its store, serialised with
:meth:`PrekeySecret.to_bytes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.keys import sign
from common.wire.xmlcodec import serialize_leaf
from sixchat import errors
from sixchat.credentials import (
    LocalCredentials,
    leaf_public_key,
    signature_algorithm_for,
    verify_signature,
)
from sixchat.sealed.encoding import (
    FIELDS,
    MAX_TIME,
    encode_base64,
    hex_id_attribute,
    identity_attribute,
    integer_attribute,
    length_prefixed,
    malformed,
    split_fields,
    uint64,
)
from sixchat.wire.handshake import (
    MAX_SIGNATURE_LENGTH,
    MLKEM768_KEY_LENGTH,
    SIGNATURE_ALGORITHMS,
    X25519_KEY_LENGTH,
)

#: The first field of a prekey's signed bytes.
PREKEY_DOMAIN: Final = b"SIXCHAT-PREKEY-V1"
#: The first field of a serialised prekey secret.
SECRET_DOMAIN: Final = b"SIXCHAT-PREKEY-SECRET-V1"

ONE_TIME: Final = "one-time"
LAST_RESORT: Final = "last-resort"
KINDS: Final = (ONE_TIME, LAST_RESORT)

PREKEY_ID_LENGTH: Final = 16
X25519_PRIVATE_LENGTH: Final = 32
MLKEM768_SEED_LENGTH: Final = 64
#: The longest validity of a prekey (expires - created), in seconds: 90 days.
MAX_PREKEY_LIFETIME: Final = 90 * 86400
#: How far in the future a creation or sending time may be (clocks differ), in seconds.
CLOCK_SKEW: Final = 300
#: The largest encoded prekey accepted (an RSA-4096 signature fits well within it).
MAX_PREKEY_SIZE: Final = 4096

#: A source of random bytes: entropy(n) returns n bytes (os.urandom; fixed in vectors).
Entropy = Callable[[int], bytes]
#: Signs bytes with the credentials' key (the default); injectable for RSA-PSS vectors.
Signer = Callable[[bytes], bytes]


def prekey_signed_bytes(
    prekey_id: str,
    kind: str,
    owner: Identity,
    created: int,
    expires: int,
    x25519_key: bytes,
    mlkem_key: bytes,
) -> bytes:
    """What the owner signs: the length-prefixed fields domain, id (16 bytes), kind,
    owner, created, expires (8-byte integers), X25519 key, ML-KEM-768 key."""
    return length_prefixed(
        PREKEY_DOMAIN,
        bytes.fromhex(prekey_id),
        kind.encode("ascii"),
        str(owner).encode("ascii"),
        uint64(created),
        uint64(expires),
        x25519_key,
        mlkem_key,
    )


@dataclass(frozen=True)
class Prekey:
    """A signed prekey as published (see the module documentation)."""

    id: str
    kind: str
    owner: Identity
    created: int
    expires: int
    algorithm: str
    x25519: bytes
    mlkem: bytes
    signature: bytes

    @property
    def one_time(self) -> bool:
        """Whether the prekey is served once (its secret deleted after first use)."""
        return self.kind == ONE_TIME

    def signed_bytes(self) -> bytes:
        """The bytes the owner's signature covers."""
        return prekey_signed_bytes(
            self.id, self.kind, self.owner, self.created, self.expires, self.x25519, self.mlkem
        )


@dataclass(frozen=True, eq=False)
class PrekeySecret:
    """The owner's half of a prekey: the prekey and both private keys (keep it secret; the
    agent's store file is 0600). ``x25519_private`` is the 32-byte X25519 private key,
    ``mlkem_seed`` the 64-byte ML-KEM-768 seed (``d || z`` of FIPS 203)."""

    prekey: Prekey
    x25519_private: bytes = field(repr=False)
    mlkem_seed: bytes = field(repr=False)

    @property
    def prekey_id(self) -> str:
        """The id of the prekey (how the store finds the secret)."""
        return self.prekey.id

    def x25519_key(self) -> x25519.X25519PrivateKey:
        """The X25519 private key."""
        return x25519.X25519PrivateKey.from_private_bytes(self.x25519_private)

    def mlkem_key(self) -> mlkem.MLKEM768PrivateKey:
        """The ML-KEM-768 decapsulation key."""
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed)

    def to_bytes(self) -> bytes:
        """The serialised secret: length-prefixed domain, encoded prekey, X25519 private
        key, ML-KEM-768 seed."""
        return length_prefixed(
            SECRET_DOMAIN, encode_prekey(self.prekey), self.x25519_private, self.mlkem_seed
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeySecret:
        """Read :meth:`to_bytes`' output; SealedMalformed unless the private keys are the
        prekey's."""
        domain, encoded, x25519_private, mlkem_seed = split_fields(data, 4)
        if domain != SECRET_DOMAIN:
            raise malformed("not a SixChat prekey secret")
        if len(x25519_private) != X25519_PRIVATE_LENGTH or len(mlkem_seed) != MLKEM768_SEED_LENGTH:
            raise malformed("a prekey secret's private key has the wrong length")
        secret = cls(decode_prekey(encoded), x25519_private, mlkem_seed)
        if (
            secret.x25519_key().public_key().public_bytes_raw() != secret.prekey.x25519
            or secret.mlkem_key().public_key().public_bytes_raw() != secret.prekey.mlkem
        ):
            raise malformed("the prekey secret's private keys do not match its prekey")
        return secret


def make_prekey(
    credentials: LocalCredentials,
    *,
    kind: str,
    now: int,
    lifetime: int,
    entropy: Entropy = os.urandom,
    signer: Signer | None = None,
) -> tuple[Prekey, PrekeySecret]:
    """A new prekey of ``kind`` owned by ``credentials``' identity, valid from ``now`` for
    ``lifetime`` seconds, signed by its certificate key.

    ``entropy`` is called three times, in this order: 16 bytes for the id, 32 for the X25519
    private key, 64 for the ML-KEM-768 seed. ``signer`` replaces the signature by the key
    (RSA-PSS vectors fix the salt with it).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prekey kind {kind!r}; use one of {', '.join(KINDS)}")
    if not 0 < lifetime <= MAX_PREKEY_LIFETIME:
        raise ValueError(f"a prekey lives 1 to {MAX_PREKEY_LIFETIME} seconds")
    if not 0 <= now <= MAX_TIME - lifetime:
        raise ValueError("the creation time is out of range")
    prekey_id = _random(entropy, PREKEY_ID_LENGTH).hex()
    x25519_private = _random(entropy, X25519_PRIVATE_LENGTH)
    mlkem_seed = _random(entropy, MLKEM768_SEED_LENGTH)
    x25519_key = x25519.X25519PrivateKey.from_private_bytes(x25519_private)
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
    x25519_public = x25519_key.public_key().public_bytes_raw()
    mlkem_public = mlkem_key.public_key().public_bytes_raw()
    signed = prekey_signed_bytes(
        prekey_id, kind, credentials.identity, now, now + lifetime, x25519_public, mlkem_public
    )
    signature = signer(signed) if signer else sign(credentials.private_key, signed)
    prekey = Prekey(
        id=prekey_id,
        kind=kind,
        owner=credentials.identity,
        created=now,
        expires=now + lifetime,
        algorithm=credentials.signature_algorithm,
        x25519=x25519_public,
        mlkem=mlkem_public,
        signature=signature,
    )
    return prekey, PrekeySecret(prekey, x25519_private, mlkem_seed)


def _random(entropy: Entropy, length: int) -> bytes:
    value = entropy(length)
    if len(value) != length:
        raise ValueError("the entropy source returned the wrong length")
    return value


def encode_prekey(prekey: Prekey) -> bytes:
    """The prekey's wire form: one empty ``<prekey>`` element, attributes in spec order."""
    return serialize_leaf(
        "prekey",
        {
            "id": prekey.id,
            "kind": prekey.kind,
            "owner": str(prekey.owner),
            "created": str(prekey.created),
            "expires": str(prekey.expires),
            "algorithm": prekey.algorithm,
            "x25519": encode_base64(prekey.x25519),
            "mlkem": encode_base64(prekey.mlkem),
            "signature": encode_base64(prekey.signature),
        },
    )


_ATTRIBUTES: Final = (
    "id", "kind", "owner", "created", "expires", "algorithm", "x25519", "mlkem", "signature"
)


def decode_prekey(data: bytes) -> Prekey:
    """Parse and check a prekey's wire form strictly (SealedMalformed on any fault). The
    signature is not verified here: see :func:`verify_prekey`."""
    if len(data) > MAX_PREKEY_SIZE:
        raise malformed(f"a prekey is at most {MAX_PREKEY_SIZE} bytes")
    root = FIELDS.parse(data, max_depth=1, max_elements=1)
    if root.tag != "prekey":
        raise malformed("expected a <prekey>")
    FIELDS.empty(root, _ATTRIBUTES)
    kind = FIELDS.attribute(root, "kind")
    if kind not in KINDS:
        raise malformed("<prekey kind> must be one-time or last-resort")
    algorithm = FIELDS.attribute(root, "algorithm")
    if algorithm not in SIGNATURE_ALGORITHMS:
        raise malformed("unknown signature algorithm")
    created = integer_attribute(root, "created")
    expires = integer_attribute(root, "expires")
    if not created < expires <= created + MAX_PREKEY_LIFETIME:
        raise malformed(
            f"a prekey must expire after its creation, within {MAX_PREKEY_LIFETIME} seconds"
        )
    mlkem_key = FIELDS.decode_base64(
        FIELDS.attribute(root, "mlkem"), "the ML-KEM-768 key", length=MLKEM768_KEY_LENGTH
    )
    try:
        mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_key)
    except ValueError:
        raise malformed("invalid ML-KEM-768 encapsulation key") from None
    return Prekey(
        id=hex_id_attribute(root, "id"),
        kind=kind,
        owner=identity_attribute(root, "owner"),
        created=created,
        expires=expires,
        algorithm=algorithm,
        x25519=FIELDS.decode_base64(
            FIELDS.attribute(root, "x25519"), "the X25519 key", length=X25519_KEY_LENGTH
        ),
        mlkem=mlkem_key,
        signature=FIELDS.decode_base64(
            FIELDS.attribute(root, "signature"), "the signature", max_length=MAX_SIGNATURE_LENGTH
        ),
    )


def verify_prekey(
    prekey: Prekey, owner_certificate: x509.Certificate, *, owner: Identity, now: int
) -> None:
    """Check a fetched prekey before sealing to it, in this order: it belongs to ``owner``
    (SealedWrongRecipient); ``owner_certificate`` names ``owner`` and its key signed the
    prekey with the algorithm named (SealedBadSignature); it is valid at ``now``
    (SealedExpired).

    The caller checks ``owner_certificate`` itself (chain, revocation, one the registry holds
    for ``owner``); when the registry holds several, the prekey must verify with one.
    """
    if prekey.owner != owner:
        raise errors.SealedWrongRecipient(f"the prekey belongs to {prekey.owner}, not {owner}")
    try:
        named = identity_from_certificate(owner_certificate)
    except (InvalidIdentity, ValueError):
        raise errors.SealedBadSignature("the owner's certificate names no identity") from None
    if named != owner:
        raise errors.SealedBadSignature(f"the certificate names {named}, not {owner}")
    try:
        public_key = leaf_public_key(owner_certificate)
        algorithm = signature_algorithm_for(public_key)
    except errors.CertificateInvalid as error:
        raise errors.SealedBadSignature(error.message) from None
    if algorithm != prekey.algorithm:
        raise errors.SealedBadSignature("the prekey's algorithm is not the owner's key's")
    try:
        verify_signature(public_key, prekey.signature, prekey.signed_bytes())
    except errors.BadSignature:
        raise errors.SealedBadSignature("the prekey's signature does not verify") from None
    if now >= prekey.expires:
        raise errors.SealedExpired("the prekey has expired")
    if prekey.created > now + CLOCK_SKEW:
        raise errors.SealedExpired("the prekey is not valid yet (created in the future)")
