"""The key policy: which keys the PKI accepts, makes, and signs with.

* Accepted public keys (certificates, CSRs, trusted roots): EC P-256, P-384 or P-521,
  Ed25519, or RSA of at least :data:`MIN_RSA_BITS` bits with a public exponent of at least
  65537; any other key is a :class:`~common.pki.errors.WeakKey` (:func:`check_public_key`).
* Generated keys: one of :data:`KEY_TYPES` (:func:`generate_key`).
* Certificates and CRLs signed by a key use the hash matched to its curve, none for EdDSA
  (:func:`signature_hash`).
* Signatures over data (SixChat's transcript signatures): ECDSA with the curve's hash,
  Ed25519, or RSA-PSS with SHA-384 (:func:`signature_algorithm_for`, :func:`sign`,
  :func:`verify_signature`).
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.pki.errors import UnknownKeyType, WeakKey
from common.pki.keyfiles import PrivateKey

#: The public key types :func:`check_public_key` accepts (and the ones that can sign).
AcceptedPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 3072
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

#: Key types :func:`generate_key` makes.
KEY_TYPES = ("p384", "p256", "ed25519")
DEFAULT_KEY_TYPE = "p384"

#: For each accepted curve: the name of its signature algorithm and its hash.
_EC_SIGNATURES: Final[dict[str, tuple[str, type[hashes.HashAlgorithm]]]] = {
    "secp256r1": ("ecdsa-p256-sha256", hashes.SHA256),
    "secp384r1": ("ecdsa-p384-sha384", hashes.SHA384),
    "secp521r1": ("ecdsa-p521-sha512", hashes.SHA512),
}
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
#: The ECDSA signature schemes of each accepted curve (immutable, made once): for
#: :func:`sign` (deterministic, RFC 6979) and for :func:`verify_signature`.
_ECDSA_SIGNING: Final = {
    curve: ec.ECDSA(hash_class(), deterministic_signing=True) for curve, (_, hash_class) in _EC_SIGNATURES.items()
}
_ECDSA_VERIFYING: Final = {curve: ec.ECDSA(hash_class()) for curve, (_, hash_class) in _EC_SIGNATURES.items()}


def check_public_key(key: PublicKeyTypes) -> AcceptedPublicKey:
    """Accept EC P-256/P-384/P-521, Ed25519 and RSA of 3072 bits or more; else :class:`WeakKey`.

    Returns the key, typed as one a CA can certify. The message of the error says what is
    wrong with the key and what would do.
    """
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, _ACCEPTED_CURVES):
            return key
        raise WeakKey(
            f"EC keys must use the curve P-256, P-384 or P-521; this one uses {key.curve.name}"
        )
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(
                f"RSA keys must be at least {MIN_RSA_BITS} bits; this one has {key.key_size}"
            )
        if key.public_numbers().e < 65537:
            raise WeakKey("RSA keys must use a public exponent of at least 65537")
        return key
    if isinstance(key, ed448.Ed448PublicKey):
        kind = "Ed448"
    else:
        kind = type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "this type"
    raise WeakKey(
        f"{kind} keys are not accepted; use EC P-256, P-384 or P-521, Ed25519, or RSA of at"
        f" least {MIN_RSA_BITS} bits"
    )


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Generate a private key of one of :data:`KEY_TYPES`; else :class:`UnknownKeyType`."""
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise UnknownKeyType(
        f"unknown key type {key_type!r}; use one of: {', '.join(KEY_TYPES)}"
    )


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The hash a certificate or CRL signed by ``key`` uses: matched to the curve, none for
    EdDSA, SHA-256 for RSA."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    return hashes.SHA256()


def signature_algorithm_for(public_key: AcceptedPublicKey) -> str:
    """The name of the algorithm a signing key signs data with; :class:`WeakKey` if the key
    may not sign (another curve, RSA under :data:`MIN_RSA_BITS` bits)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        entry = _EC_SIGNATURES.get(public_key.curve.name)
        if entry is not None:
            return entry[0]
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    elif isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= MIN_RSA_BITS:
        return "rsa-pss-sha384"
    raise WeakKey(
        "the leaf key must be ECDSA P-256/P-384/P-521, Ed25519 or RSA of 3072 bits or more"
    )


def sign(private_key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with the scheme the key type implies (ECDSA deterministic, RFC 6979)."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, _ECDSA_SIGNING[private_key.curve.name])
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    return private_key.sign(data, _PSS, hashes.SHA384())


def verify_signature(public_key: AcceptedPublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` verifies with ``public_key`` (the scheme of
    :func:`sign`)."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, _ECDSA_VERIFYING[public_key.curve.name])
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, _PSS, hashes.SHA384())
    except (InvalidSignature, ValueError):
        return False
    return True
