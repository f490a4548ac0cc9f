"""The keys the CA makes and accepts, with IRP's errors (the policy is :mod:`common.pki.keys`)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.pki import keys
from common.pki.errors import PKIError
from common.pki.keyfiles import PrivateKey
from common.pki.keys import AcceptedPublicKey
from irp.errors import InvalidArgument, from_pki

#: Key types the CA can generate, for itself and for server-side generated user keys.
KEY_TYPES = ("p384", "p256", "ed25519")
DEFAULT_KEY_TYPE = "p384"


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Generate a private key of one of :data:`KEY_TYPES`."""
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise InvalidArgument(
        f"unknown key type {key_type!r}; use one of: {', '.join(KEY_TYPES)}"
    )


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The hash a certificate signed by ``key`` uses: matched to the curve, none for EdDSA."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    return hashes.SHA256()


def check_public_key(key: PublicKeyTypes) -> AcceptedPublicKey:
    """Accept EC P-256/P-384/P-521, Ed25519 and RSA of 3072 bits or more; else :class:`WeakKey`.

    The key policy is :func:`common.pki.keys.check_public_key`; this raises its refusal as
    the IRP error :class:`irp.errors.WeakKey`.
    """
    try:
        return keys.check_public_key(key)
    except PKIError as error:
        raise from_pki(error) from None
