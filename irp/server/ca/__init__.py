"""A domain's certificate authority: a root, an issuing CA, and everything they sign.

Each IRP domain runs its own two-level CA:

* the **root** (self-signed, CA:TRUE pathlen 1, 20 years) only signs the issuing CA and its
  own, normally empty, CRL;
* the **issuing CA** (CA:TRUE pathlen 0, 10 years) signs user, server and record-signing
  certificates and the CRL of revoked user certificates. An operator may rotate it
  (:mod:`~irp.server.ca.rotation`): the new one is ``CN=<domain> IRP Issuing CA 2`` (then
  3, ...), and the old one is *retired*, still signing its CRL until it expires.

The root key may be kept offline (the CA then loads without it); the CA keys may be
encrypted with one passphrase.

Both are ECDSA P-384 with SHA-384 unless another key type is chosen (see :data:`KEY_TYPES`).
Subjects are ``O=<domain>, CN=<domain> IRP Root CA`` and ``O=<domain>, CN=<domain> IRP
Issuing CA``; the ``O`` attribute is what :mod:`common.pki.trust` reads as the root's domain. Every
certificate carries subject and authority key identifiers.

A user certificate names its holder ``CN=<username>, O=<domain>`` and, authoritatively, with
exactly one subjectAltName URI ``irp:<username>@<domain>`` (see :mod:`common.identity`).

Times come from an injectable clock; ``notBefore`` is set five minutes in the past so a peer
whose clock is slightly behind still accepts a fresh certificate. A certificate never outlives
the issuing CA: its ``notAfter`` is cut to the issuing CA's.

The package: :mod:`~irp.server.ca.authority` (the CA object, kept on disk),
:mod:`~irp.server.ca.issuance` (certificate contents), :mod:`~irp.server.ca.crl`,
:mod:`~irp.server.ca.pkcs12` and :mod:`~irp.server.ca.keys` (the key policy with IRP's
errors), :mod:`~irp.server.ca.ondisk` (the CA folder: loading, creating) and
:mod:`~irp.server.ca.rotation` (the operator's changes to it). It does no I/O outside those
two modules (and :meth:`CertificateAuthority.load_or_create`, which uses the first), and no
Twisted.
"""

from __future__ import annotations

from common.pki.keys import (
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    MIN_RSA_BITS,
    AcceptedPublicKey,
    signature_hash,
)
from irp.server.ca.authority import (
    ISSUING_CERTIFICATE_FILE,
    ISSUING_KEY_FILE,
    ROOT_CERTIFICATE_FILE,
    ROOT_KEY_FILE,
    CertificateAuthority,
    CertificateAuthorityError,
    Clock,
)
from irp.server.ca.crl import (
    DEFAULT_CRL_LIFETIME,
    DEFAULT_ROOT_CRL_LIFETIME,
    REVOCATION_REASON_NAMES,
    REVOCATION_REASONS,
    RevokedEntry,
    revocation_reason,
)
from irp.server.ca.issuance import (
    CLOCK_SKEW_ALLOWANCE,
    DEFAULT_SERVER_VALIDITY,
    DEFAULT_USER_VALIDITY,
    ISSUING_VALIDITY,
    MAX_CSR_SIZE,
    MAX_SERIAL_BITS,
    ROOT_VALIDITY,
)
from irp.server.ca.keys import check_public_key, generate_key
from irp.server.ca.pkcs12 import (
    DEFAULT_PKCS12_KDF_ROUNDS,
    MIN_PKCS12_PASSPHRASE_LENGTH,
)
from irp.wire.records import RECORD_SIGNING_OID

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "DEFAULT_CRL_LIFETIME",
    "DEFAULT_KEY_TYPE",
    "DEFAULT_PKCS12_KDF_ROUNDS",
    "DEFAULT_ROOT_CRL_LIFETIME",
    "DEFAULT_SERVER_VALIDITY",
    "DEFAULT_USER_VALIDITY",
    "ISSUING_CERTIFICATE_FILE",
    "ISSUING_KEY_FILE",
    "ISSUING_VALIDITY",
    "KEY_TYPES",
    "MAX_CSR_SIZE",
    "MAX_SERIAL_BITS",
    "MIN_PKCS12_PASSPHRASE_LENGTH",
    "MIN_RSA_BITS",
    "RECORD_SIGNING_OID",
    "REVOCATION_REASONS",
    "REVOCATION_REASON_NAMES",
    "ROOT_CERTIFICATE_FILE",
    "ROOT_KEY_FILE",
    "ROOT_VALIDITY",
    "AcceptedPublicKey",
    "CertificateAuthority",
    "CertificateAuthorityError",
    "Clock",
    "RevokedEntry",
    "check_public_key",
    "generate_key",
    "revocation_reason",
    "signature_hash",
]
