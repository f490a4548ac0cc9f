"""The key policy: which public keys the PKI accepts.

Keys are EC P-256, P-384 or P-521, Ed25519, or RSA of at least :data:`MIN_RSA_BITS` bits
with a public exponent of at least 65537; any other key is a :class:`WeakKey`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.pki.errors import WeakKey

#: The public key types :func:`check_public_key` accepts.
AcceptedPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 3072
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


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
