"""Loading certificates and CSRs that come from the network, safely.

cryptography parses lazily: a certificate that loads can still raise when a field is read
(an empty RDN in a name, an unknown key algorithm or curve, a duplicated or garbled
extension), and it raises exception types other than ValueError for some inputs
(``InvalidVersion``, ``UnsupportedAlgorithm``, ``DuplicateExtension``). Every untrusted
certificate and CSR is loaded here, every field the code relies on is read once, and any
failure becomes one :class:`UnusableCertificate` (a ValueError) with a readable reason.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

#: The largest serial number RFC 5280 allows (20 octets, positive).
MAX_SERIAL = 2**159 - 1

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
    """Load one PEM or DER certificate and check that every field can be read."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except _PARSE_FAILURES as error:
        raise UnusableCertificate(f"not a certificate: {error}") from None
    return _readable(certificate)


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
