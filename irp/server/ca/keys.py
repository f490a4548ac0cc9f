"""The key policy (:mod:`common.pki.keys`) as the CA uses it: its refusals as IRP errors."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.pki import keys
from common.pki.errors import PKIError
from common.pki.keyfiles import PrivateKey
from common.pki.keys import DEFAULT_KEY_TYPE, AcceptedPublicKey
from irp.errors import from_pki


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Generate a private key of one of :data:`common.pki.keys.KEY_TYPES`; else
    :class:`irp.errors.InvalidArgument`."""
    try:
        return keys.generate_key(key_type)
    except PKIError as error:
        raise from_pki(error) from None


def check_public_key(key: PublicKeyTypes) -> AcceptedPublicKey:
    """Accept EC P-256/P-384/P-521, Ed25519 and RSA of 3072 bits or more; else :class:`WeakKey`.

    The key policy is :func:`common.pki.keys.check_public_key`; this raises its refusal as
    the IRP error :class:`irp.errors.WeakKey`.
    """
    try:
        return keys.check_public_key(key)
    except PKIError as error:
        raise from_pki(error) from None
