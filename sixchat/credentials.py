"""What one side brings to a SixChat handshake: its role, its credentials (identity,
certificate chain, leaf key) and its ephemeral keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, rsa, x25519

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki import keyfiles, keys
from common.pki.errors import WeakKey
from sixchat import errors
from sixchat.record import certificate_fingerprint

#: Our leaf key (the key policy is :mod:`common.pki.keys`).
PrivateKey: TypeAlias = keyfiles.PrivateKey
#: A peer's leaf key, of a type that can sign.
PublicKey: TypeAlias = keys.AcceptedPublicKey


def signature_algorithm_for(public_key: PublicKey) -> str:
    """The signature algorithm of a leaf key, or CertificateInvalid if it is not allowed."""
    try:
        return keys.signature_algorithm_for(public_key)
    except WeakKey as error:
        raise errors.from_pki(error) from None


def verify_signature(public_key: PublicKey, signature: bytes, data: bytes) -> None:
    """Verify a transcript signature; raise BadSignature if it does not verify."""
    if not keys.verify_signature(public_key, signature, data):
        raise errors.BadSignature()


class Role(Enum):
    """Which end of the connection we are."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


@dataclass(frozen=True, eq=False)
class LocalCredentials:
    """Our identity, leaf certificate, intermediates (leaf's issuer first) and leaf key.

    Checked once here: the certificate must name ``identity`` in its ``irp:`` URI and hold
    the public half of ``private_key``, of an allowed type.
    """

    identity: Identity
    certificate: x509.Certificate
    chain: list[x509.Certificate]
    private_key: PrivateKey
    certificates_der: tuple[bytes, ...] = field(init=False, repr=False)
    fingerprint: str = field(init=False)
    signature_algorithm: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            named = identity_from_certificate(self.certificate)
        except (InvalidIdentity, ValueError) as error:
            raise ValueError(f"the certificate names no usable identity: {error}") from None
        if named != self.identity:
            raise ValueError(f"the certificate names {named}, not {self.identity}")
        if self.private_key.public_key() != self.certificate.public_key():
            raise ValueError("the private key does not belong to the certificate")
        try:
            algorithm = signature_algorithm_for(leaf_public_key(self.certificate))
        except errors.CertificateInvalid as error:
            raise ValueError(error.message) from None
        der = tuple(
            certificate.public_bytes(serialization.Encoding.DER)
            for certificate in [self.certificate, *self.chain]
        )
        object.__setattr__(self, "certificates_der", der)
        object.__setattr__(self, "fingerprint", certificate_fingerprint(der[0]))
        object.__setattr__(self, "signature_algorithm", algorithm)


@dataclass(frozen=True, eq=False)
class EphemeralKeys:
    """The ephemeral keys of one handshake (injectable for known-answer vectors).

    The initiator needs both; the responder only the X25519 key (it encapsulates to the
    initiator's ML-KEM key).
    """

    x25519: x25519.X25519PrivateKey
    mlkem: mlkem.MLKEM768PrivateKey | None = None

    @classmethod
    def generate(cls, role: Role) -> EphemeralKeys:
        """Fresh keys for ``role``."""
        return cls(
            x25519.X25519PrivateKey.generate(),
            mlkem.MLKEM768PrivateKey.generate() if role is Role.INITIATOR else None,
        )


def encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """ML-KEM-768 encapsulation: (shared secret, ciphertext)."""
    shared_secret, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(
        encapsulation_key
    ).encapsulate()
    return shared_secret, ciphertext


def leaf_public_key(certificate: x509.Certificate) -> PublicKey:
    """The certificate's key if it is of a type SixChat signs with."""
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise errors.CertificateInvalid("the certificate key cannot be read") from None
    if isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)):
        return public_key
    raise errors.CertificateInvalid(
        "the leaf key must be ECDSA P-256/P-384/P-521, Ed25519 or RSA of 3072 bits or more"
    )
