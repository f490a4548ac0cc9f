"""Loading certificates and CSRs that come from the network, safely.

cryptography parses lazily: a certificate that loads can still raise when a field is read
(an empty RDN in a name, an unknown key algorithm or curve, a duplicated or garbled
extension), and it raises exception types other than ValueError for some inputs
(``InvalidVersion``, ``UnsupportedAlgorithm``, ``DuplicateExtension``). Every untrusted
certificate and CSR is loaded here, every field the code relies on is read once, and any
failure becomes one :class:`UnusableCertificate` (a ValueError) with a readable reason.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

#: The largest serial number RFC 5280 allows (20 octets, positive).
MAX_SERIAL = 2**159 - 1

#: Certificates loaded recently are kept, parsed and checked, by their exact bytes: peers
#: present the same chains again and again (the handshakes of one contact, the issuing CA
#: in every chain), and a certificate object never changes. Only certificates up to
#: ``_CACHED_CERTIFICATE_BYTES`` are kept, so the cache holds at most a few MiB whatever
#: peers send; failures are never cached.
LOADED_CERTIFICATES_CACHED = 256
_CACHED_CERTIFICATE_BYTES = 16 * 1024

_PARSE_FAILURES = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension)


class UnusableCertificate(ValueError):
    """A certificate or CSR that cannot be parsed or read completely."""


def _readable(certificate: x509.Certificate) -> x509.Certificate:
    try:
        certificate.subject  # noqa: B018 - parsing the names is the check
        certificate.issuer  # noqa: B018
        certificate.not_valid_before_utc  # noqa: B018 - reading is the check
        certificate.not_valid_after_utc  # noqa: B018
        certificate.public_key()
        for extension in certificate.extensions:
            extension.value  # noqa: B018
    except _PARSE_FAILURES as error:
        raise UnusableCertificate(f"the certificate cannot be read: {error}") from None
    serial = certificate.serial_number
    if not 0 < serial <= MAX_SERIAL:
        raise UnusableCertificate("the certificate's serial number is not a positive number of at most 20 octets")
    return certificate


def load_certificate(data: bytes) -> x509.Certificate:
    """Load one PEM or DER certificate and check that every field can be read.

    The same bytes give the same (immutable) certificate object while it stays among the
    :data:`LOADED_CERTIFICATES_CACHED` most recently loaded.
    """
    if len(data) <= _CACHED_CERTIFICATE_BYTES:
        return _load_certificate_cached(bytes(data))
    return _load_certificate(data)


@functools.lru_cache(maxsize=LOADED_CERTIFICATES_CACHED)
def _load_certificate_cached(data: bytes) -> x509.Certificate:
    return _load_certificate(data)


def _load_certificate(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except _PARSE_FAILURES as error:
        raise UnusableCertificate(f"not a certificate: {error}") from None
    return _readable(certificate)


@functools.lru_cache(maxsize=2 * LOADED_CERTIFICATES_CACHED)
def certificate_der(certificate: x509.Certificate) -> bytes:
    """The certificate's DER encoding (kept for recently used certificates: path building
    asks for it several times per chain)."""
    return certificate.public_bytes(serialization.Encoding.DER)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Load a PEM or DER certificate signing request and check its key can be read."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        csr.public_key()
        csr.subject  # noqa: B018
        for extension in csr.extensions:
            extension.value  # noqa: B018
    except _PARSE_FAILURES as error:
        raise UnusableCertificate(f"not a certificate signing request: {error}") from None
    return csr


def issuing_crl_name(issuer: x509.Certificate) -> str:
    """The name IRP's get-crl (and the HTTP CRL paths) give the CRL of the issuing CA
    ``issuer``: ``issuing-`` and the first 16 hex digits of its subject key identifier
    (of its key's SHA-1 when it has none)."""
    try:
        digest = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        digest = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest  # type: ignore[arg-type]
    return "issuing-" + digest.hex()[:16]
