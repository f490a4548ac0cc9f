"""Sealed envelopes: one SixChat application message sealed to a recipient's prekey and
signed by its sender (docs/sealed.rst, "Envelopes").

::

    <sealed v="1" suite="SIXCHAT-SEALED1-X25519MLKEM768-HKDFSHA384-AES256GCM"
            from="alice@example.org" to="bob@example.org" prekey="32 hex" id="uuid" seq="N"
            sent="T" expires="T" ephemeral="B64" kem="B64" algorithm="..." signature="B64">
      <chain>B64 DER (leaf)</chain><chain>B64 DER (issuing CA)</chain>
      <body>B64 AES-256-GCM ciphertext and tag</body>
    </sealed>

The header hash ``HH = SHA-384(header_bytes)`` covers every attribute but the signature,
the recipient prekey's public keys and every certificate of the chain. The shared secret
``ML-KEM-768 ss || X25519 ss`` is extracted with ``HH`` as the salt; the AEAD key and nonce
are expanded from it; the body is encrypted with ``HH`` as associated data; the sender signs
``label || 0x00 || HH || SHA-384(body)``. Everything is pure: the caller brings the clock
(``now``), the prekey secrets and, for vectors, the entropy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.certificates import UnusableCertificate, load_certificate
from common.pki.keys import sign
from common.wire.xmlcodec import serialize_leaf
from sixchat import errors
from sixchat.credentials import (
    LocalCredentials,
    PublicKey,
    encapsulate,
    leaf_public_key,
    signature_algorithm_for,
    verify_signature,
)
from sixchat.keyschedule import Trace, hkdf_expand_label, hkdf_extract
from sixchat.record import certificate_fingerprint
from sixchat.sealed.encoding import (
    FIELDS,
    MAX_TIME,
    encode_base64,
    hex_id_attribute,
    identity_attribute,
    integer_attribute,
    length_prefixed,
    malformed,
    uint64,
)
from sixchat.sealed.prekeys import CLOCK_SKEW, Entropy, Prekey, PrekeySecret, Signer
from sixchat.wire.handshake import (
    MAX_CERTIFICATE_LENGTH,
    MAX_CERTIFICATES,
    MAX_SIGNATURE_LENGTH,
    MLKEM768_CIPHERTEXT_LENGTH,
    SIGNATURE_ALGORITHMS,
    X25519_KEY_LENGTH,
)

VERSION: Final = "1"
SUITE: Final = "SIXCHAT-SEALED1-X25519MLKEM768-HKDFSHA384-AES256GCM"
#: The first field of the header bytes.
HEADER_DOMAIN: Final = b"SIXCHAT-SEALED-V1"
#: The signature context (followed by a zero byte, HH and SHA-384 of the body).
SIGNATURE_LABEL: Final = b"SixChat sealed 1 signature"
#: HKDF-Expand-Label labels (with the "sixchat1 " prefix of sixchat.keyschedule).
KEY_LABEL: Final = "sealed key"
NONCE_LABEL: Final = "sealed iv"
KEY_LENGTH: Final = 32
NONCE_LENGTH: Final = 12
TAG_LENGTH: Final = 16

#: The largest envelope (its encoded bytes), the largest payload, the longest life.
MAX_ENVELOPE_SIZE: Final = 256 * 1024
MAX_PAYLOAD: Final = 64 * 1024
MAX_MESSAGE_LIFETIME: Final = 30 * 86400

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ATTRIBUTES: Final = (
    "v", "suite", "from", "to", "prekey", "id", "seq", "sent", "expires", "ephemeral", "kem",
    "algorithm", "signature",
)


@dataclass(frozen=True)
class Header:
    """The clear fields of an envelope, as :func:`peek` reads them: **not authenticated**
    (use them to find the prekey secret, never to decide anything else)."""

    sender: Identity
    recipient: Identity
    prekey_id: str
    message_id: str
    seq: int
    sent_at: int
    expires_at: int


@dataclass(frozen=True)
class Opened:
    """An envelope opened and checked by :func:`open_sealed`.

    The signature verified with ``chain[0]``, which names ``sender``; the caller still checks
    the chain (trust, revocation, the registry's fingerprints for ``sender``), the sequence
    (:class:`~sixchat.sealed.sequence.SequenceTracker`), and deletes the prekey secret when
    ``one_time``.
    """

    sender: Identity
    chain: list[x509.Certificate]
    sender_fingerprint: str
    message_id: str
    seq: int
    sent_at: int
    expires_at: int
    payload: bytes = field(repr=False)
    prekey_id: str
    one_time: bool


@dataclass(frozen=True)
class _Envelope:
    header: Header
    ephemeral: bytes
    kem: bytes
    algorithm: str
    signature: bytes
    chain: tuple[bytes, ...]
    body: bytes


def header_bytes(
    *,
    sender: Identity,
    recipient: Identity,
    prekey_id: str,
    message_id: str,
    seq: int,
    sent_at: int,
    expires_at: int,
    ephemeral: bytes,
    kem: bytes,
    algorithm: str,
    prekey_x25519: bytes,
    prekey_mlkem: bytes,
    chain: tuple[bytes, ...],
) -> bytes:
    """The canonical header (docs/sealed.rst): length-prefixed fields, in this order."""
    return length_prefixed(
        HEADER_DOMAIN,
        SUITE.encode("ascii"),
        str(sender).encode("ascii"),
        str(recipient).encode("ascii"),
        bytes.fromhex(prekey_id),
        message_id.encode("ascii"),
        uint64(seq),
        uint64(sent_at),
        uint64(expires_at),
        ephemeral,
        kem,
        algorithm.encode("ascii"),
        prekey_x25519,
        prekey_mlkem,
        uint64(len(chain)),
        *chain,
    )


def signed_bytes(header_hash: bytes, body: bytes) -> bytes:
    """What the sender signs: label, a zero byte, HH, SHA-384 of the body ciphertext."""
    return SIGNATURE_LABEL + b"\x00" + header_hash + hashlib.sha384(body).digest()


def derive_key(shared_secret: bytes, header_hash: bytes, trace: Trace | None = None) -> tuple[bytes, bytes]:
    """(AES-256-GCM key, nonce) from the hybrid shared secret and the header hash."""
    pseudorandom_key = hkdf_extract(header_hash, shared_secret)
    key = hkdf_expand_label(pseudorandom_key, KEY_LABEL, b"", KEY_LENGTH)
    nonce = hkdf_expand_label(pseudorandom_key, NONCE_LABEL, b"", NONCE_LENGTH)
    if trace is not None:
        trace("shared_secret", shared_secret)
        trace("pseudorandom_key", pseudorandom_key)
        trace("key", key)
        trace("nonce", nonce)
    return key, nonce


def seal(
    credentials: LocalCredentials,
    *,
    recipient: Identity,
    prekey: Prekey,
    payload: bytes,
    message_id: str,
    seq: int,
    sent_at: int,
    expires_at: int,
    entropy: Entropy = os.urandom,
    mlkem_encapsulate: Callable[[bytes], tuple[bytes, bytes]] | None = None,
    signer: Signer | None = None,
    trace: Trace | None = None,
) -> bytes:
    """Seal ``payload`` (SixChat application message bytes) from ``credentials`` to
    ``recipient``'s ``prekey`` (already checked with
    :func:`~sixchat.sealed.prekeys.verify_prekey`); return the envelope's bytes.

    ValueError for arguments that break the rules: ``prekey`` not the recipient's, a
    message id that is not a lower-case UUID, ``seq`` outside 1 to 10^12 - 1, not
    ``sent_at < expires_at <= min(sent_at + 30 days, prekey.expires)``, a payload over 64
    KiB or an envelope over 256 KiB. ``entropy(32)`` gives the ephemeral X25519 private
    key; ``mlkem_encapsulate``, ``signer`` and ``trace`` are for vectors only.
    """
    if prekey.owner != recipient:
        raise ValueError(f"the prekey belongs to {prekey.owner}, not {recipient}")
    if not _UUID.match(message_id):
        raise ValueError("a message id must be a lower-case UUID")
    if not 1 <= seq <= MAX_TIME:
        raise ValueError(f"the sequence number must be from 1 to {MAX_TIME}")
    if not 0 <= sent_at < expires_at <= min(sent_at + MAX_MESSAGE_LIFETIME, prekey.expires):
        raise ValueError(
            "a message must expire after it is sent, within 30 days and before its prekey"
        )
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a sealed payload is at most {MAX_PAYLOAD} bytes")
    ephemeral_private = entropy(X25519_KEY_LENGTH)
    if len(ephemeral_private) != X25519_KEY_LENGTH:
        raise ValueError("the entropy source returned the wrong length")
    ephemeral_key = x25519.X25519PrivateKey.from_private_bytes(ephemeral_private)
    x25519_secret = _exchange(ephemeral_key, prekey.x25519, "the prekey's X25519 key")
    mlkem_secret, kem = (mlkem_encapsulate or encapsulate)(prekey.mlkem)
    chain = credentials.certificates_der
    ephemeral = ephemeral_key.public_key().public_bytes_raw()
    header = header_bytes(
        sender=credentials.identity, recipient=recipient, prekey_id=prekey.id,
        message_id=message_id, seq=seq, sent_at=sent_at, expires_at=expires_at,
        ephemeral=ephemeral, kem=kem, algorithm=credentials.signature_algorithm,
        prekey_x25519=prekey.x25519, prekey_mlkem=prekey.mlkem, chain=chain,
    )
    header_hash = hashlib.sha384(header).digest()
    if trace is not None:
        trace("ephemeral_private_key", ephemeral_private)
        trace("mlkem_shared_secret", mlkem_secret)
        trace("x25519_shared_secret", x25519_secret)
        trace("header_bytes", header)
        trace("header_hash", header_hash)
    key, nonce = derive_key(mlkem_secret + x25519_secret, header_hash, trace)
    body = AESGCM(key).encrypt(nonce, payload, header_hash)
    content = signed_bytes(header_hash, body)
    signature = signer(content) if signer else sign(credentials.private_key, content)
    if trace is not None:
        trace("signed_bytes", content)
    attributes = {
        "v": VERSION,
        "suite": SUITE,
        "from": str(credentials.identity),
        "to": str(recipient),
        "prekey": prekey.id,
        "id": message_id,
        "seq": str(seq),
        "sent": str(sent_at),
        "expires": str(expires_at),
        "ephemeral": encode_base64(ephemeral),
        "kem": encode_base64(kem),
        "algorithm": credentials.signature_algorithm,
        "signature": encode_base64(signature),
    }
    envelope = b"".join(
        (
            serialize_leaf("sealed", attributes)[:-2],
            b">",
            *(b"<chain>" + encode_base64(der).encode() + b"</chain>" for der in chain),
            b"<body>" + encode_base64(body).encode() + b"</body></sealed>",
        )
    )
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise ValueError(f"the envelope would exceed {MAX_ENVELOPE_SIZE} bytes")
    return envelope


def _exchange(private_key: x25519.X25519PrivateKey, public: bytes, what: str) -> bytes:
    try:
        shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise malformed(f"{what} is invalid (small order)") from None
    if not any(shared):  # pragma: no cover - OpenSSL already refuses it
        raise malformed(f"{what} is invalid (small order)")
    return shared


def _parse(envelope: bytes) -> _Envelope:
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise malformed(f"an envelope is at most {MAX_ENVELOPE_SIZE} bytes")
    root = FIELDS.parse(envelope, max_depth=2, max_elements=MAX_CERTIFICATES + 2)
    if root.tag != "sealed":
        raise malformed("expected a <sealed> envelope")
    FIELDS.check_attributes(root, _ATTRIBUTES)
    if FIELDS.attribute(root, "v") != VERSION or FIELDS.attribute(root, "suite") != SUITE:
        raise malformed(f"only version {VERSION} with {SUITE} is supported")
    count = len(root) - 1
    if not 1 <= count <= MAX_CERTIFICATES:
        raise malformed(f"an envelope carries 1 to {MAX_CERTIFICATES} certificates")
    *chain, body = FIELDS.children(root, ("chain",) * count + ("body",))
    message_id = FIELDS.attribute(root, "id")
    if not _UUID.match(message_id):
        raise malformed("<sealed id> must be a lower-case UUID")
    sent_at = integer_attribute(root, "sent")
    expires_at = integer_attribute(root, "expires")
    if not sent_at < expires_at <= sent_at + MAX_MESSAGE_LIFETIME:
        raise malformed("a message must expire after it is sent, within 30 days")
    algorithm = FIELDS.attribute(root, "algorithm")
    if algorithm not in SIGNATURE_ALGORITHMS:
        raise malformed("unknown signature algorithm")
    ciphertext = FIELDS.decode_base64(
        FIELDS.leaf_text(body), "the body", max_length=MAX_PAYLOAD + TAG_LENGTH
    )
    if len(ciphertext) < TAG_LENGTH:
        raise malformed("the body is shorter than its tag")
    header = Header(
        sender=identity_attribute(root, "from"),
        recipient=identity_attribute(root, "to"),
        prekey_id=hex_id_attribute(root, "prekey"),
        message_id=message_id,
        seq=integer_attribute(root, "seq", low=1),
        sent_at=sent_at,
        expires_at=expires_at,
    )
    return _Envelope(
        header=header,
        ephemeral=FIELDS.decode_base64(
            FIELDS.attribute(root, "ephemeral"), "the ephemeral key", length=X25519_KEY_LENGTH
        ),
        kem=FIELDS.decode_base64(
            FIELDS.attribute(root, "kem"), "the ML-KEM-768 ciphertext",
            length=MLKEM768_CIPHERTEXT_LENGTH,
        ),
        algorithm=algorithm,
        signature=FIELDS.decode_base64(
            FIELDS.attribute(root, "signature"), "the signature", max_length=MAX_SIGNATURE_LENGTH
        ),
        chain=tuple(
            FIELDS.decode_base64(
                FIELDS.leaf_text(element), "a certificate", max_length=MAX_CERTIFICATE_LENGTH
            )
            for element in chain
        ),
        body=ciphertext,
    )


def peek(envelope: bytes) -> Header:
    """The envelope's clear fields (strictly parsed, **not** authenticated): SealedMalformed
    if it breaks the encoding rules."""
    return _parse(envelope).header


def open_sealed(
    envelope: bytes,
    *,
    recipient: Identity,
    secret: PrekeySecret,
    now: int,
    trace: Trace | None = None,
) -> Opened:
    """Open an envelope addressed to ``recipient`` with the prekey secret it names.

    Checks in this order (docs/sealed.rst, "Processing rules"): encoding and limits
    (SealedMalformed), recipient (SealedWrongRecipient), prekey (SealedUnknownPrekey), the
    chain's leaf names the sender and holds an allowed key of the named algorithm, the
    signature (SealedBadSignature), the times against ``now`` and the prekey's expiry
    (SealedExpired), then decryption (SealedDecryptFailed).
    """
    parsed = _parse(envelope)
    header = parsed.header
    if header.recipient != recipient:
        raise errors.SealedWrongRecipient(f"the message is for {header.recipient}, not us")
    prekey = secret.prekey
    if header.prekey_id != prekey.id or prekey.owner != recipient:
        raise errors.SealedUnknownPrekey("the message names another prekey than this secret's")
    chain = _load_chain(parsed.chain)
    public_key = _sender_key(chain[0], header.sender, parsed.algorithm)
    header_hash = hashlib.sha384(
        header_bytes(
            sender=header.sender, recipient=header.recipient, prekey_id=header.prekey_id,
            message_id=header.message_id, seq=header.seq, sent_at=header.sent_at,
            expires_at=header.expires_at, ephemeral=parsed.ephemeral, kem=parsed.kem,
            algorithm=parsed.algorithm, prekey_x25519=prekey.x25519,
            prekey_mlkem=prekey.mlkem, chain=parsed.chain,
        )
    ).digest()
    try:
        verify_signature(public_key, parsed.signature, signed_bytes(header_hash, parsed.body))
    except errors.BadSignature:
        raise errors.SealedBadSignature("the sender's signature does not verify") from None
    if header.expires_at <= now:
        raise errors.SealedExpired("the message has expired")
    if header.sent_at > now + CLOCK_SKEW:
        raise errors.SealedExpired("the message was sent in the future")
    if header.expires_at > prekey.expires:
        raise errors.SealedExpired("the message outlives the prekey it was sealed to")
    x25519_secret = _exchange(secret.x25519_key(), parsed.ephemeral, "the ephemeral key")
    mlkem_secret = secret.mlkem_key().decapsulate(parsed.kem)
    if trace is not None:
        trace("mlkem_shared_secret", mlkem_secret)
        trace("x25519_shared_secret", x25519_secret)
        trace("header_hash", header_hash)
    key, nonce = derive_key(mlkem_secret + x25519_secret, header_hash, trace)
    try:
        payload = AESGCM(key).decrypt(nonce, parsed.body, header_hash)
    except InvalidTag:
        raise errors.SealedDecryptFailed() from None
    return Opened(
        sender=header.sender,
        chain=chain,
        sender_fingerprint=certificate_fingerprint(parsed.chain[0]),
        message_id=header.message_id,
        seq=header.seq,
        sent_at=header.sent_at,
        expires_at=header.expires_at,
        payload=payload,
        prekey_id=prekey.id,
        one_time=prekey.one_time,
    )


def open_with(
    envelope: bytes,
    *,
    recipient: Identity,
    lookup: Callable[[str], PrekeySecret | None],
    now: int,
) -> Opened:
    """:func:`open_sealed` with the secret ``lookup(prekey id)`` finds (the agent's store):
    after the strict parse and the recipient check, SealedUnknownPrekey when it finds none
    (never ours, expired, or a one-time prekey already used)."""
    header = peek(envelope)
    if header.recipient != recipient:
        raise errors.SealedWrongRecipient(f"the message is for {header.recipient}, not us")
    secret = lookup(header.prekey_id)
    if secret is None:
        raise errors.SealedUnknownPrekey()
    return open_sealed(envelope, recipient=recipient, secret=secret, now=now)


def _load_chain(chain_der: tuple[bytes, ...]) -> list[x509.Certificate]:
    certificates = []
    for der in chain_der:
        try:
            certificate = load_certificate(der)
        except UnusableCertificate as error:
            raise malformed(f"a certificate cannot be used: {error}") from None
        if certificate.public_bytes(serialization.Encoding.DER) != der:
            raise malformed("a certificate is not in DER")
        certificates.append(certificate)
    return certificates


def _sender_key(leaf: x509.Certificate, sender: Identity, algorithm: str) -> PublicKey:
    try:
        named = identity_from_certificate(leaf)
    except (InvalidIdentity, ValueError):
        raise errors.SealedBadSignature("the sender's certificate names no identity") from None
    if named != sender:
        raise errors.SealedBadSignature(f"the certificate names {named}, not {sender}")
    try:
        public_key = leaf_public_key(leaf)
        expected = signature_algorithm_for(public_key)
    except errors.CertificateInvalid as error:
        raise errors.SealedBadSignature(error.message) from None
    if expected != algorithm:
        raise errors.SealedBadSignature("the signature algorithm is not the sender's key's")
    return public_key
