"""PKCS#12 bundles for clients that cannot make keys: key, certificate and chain,
encrypted with a passphrase. No I/O."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from common.identity import Identity
from common.pki.keyfiles import PrivateKey
from irp.errors import InvalidArgument

MIN_PKCS12_PASSPHRASE_LENGTH = 8
#: PBKDF2-SHA256 rounds protecting PKCS#12 files. 100 000 costs about 50 ms per derivation:
#: enough to slow guessing of a decent passphrase while keeping the request cheap for the
#: server. The passphrase, not this number, is the real protection.
DEFAULT_PKCS12_KDF_ROUNDS = 100_000


def check_pkcs12_request(passphrase: bytes, kdf_rounds: int) -> None:
    """Refuse a passphrase that is not bytes or shorter than 8 bytes (InvalidArgument) and
    a non-positive number of rounds (ValueError)."""
    if not isinstance(passphrase, bytes):
        raise InvalidArgument("the PKCS#12 passphrase must be bytes")
    if len(passphrase) < MIN_PKCS12_PASSPHRASE_LENGTH:
        raise InvalidArgument(
            f"the PKCS#12 passphrase must be at least {MIN_PKCS12_PASSPHRASE_LENGTH} bytes"
        )
    if kdf_rounds < 1:
        raise ValueError("kdf_rounds must be positive")


def pkcs12_bundle(
    identity: Identity,
    key: PrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    passphrase: bytes,
    kdf_rounds: int,
) -> bytes:
    """The PKCS#12 of ``key``, ``certificate`` (friendly name ``user@domain``) and ``chain``.

    Encrypted with PBES2 (PBKDF2-SHA256, AES-256-CBC) and authenticated with HMAC-SHA256,
    all derived from ``passphrase`` with ``kdf_rounds`` rounds, which OpenSSL 3 and current
    browsers and mail clients read.
    """
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(kdf_rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    return pkcs12.serialize_key_and_certificates(
        str(identity).encode("utf-8"), key, certificate, list(chain), encryption
    )
