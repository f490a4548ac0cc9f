"""What the CA's certificates say: names, validity periods, key usages, and their builders.

Subjects are ``O=<domain>, CN=...``; every certificate carries subject and authority key
identifiers; ``notBefore`` is :data:`CLOCK_SKEW_ALLOWANCE` in the past. No I/O.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from common.identity import InvalidIdentity, check_domain
from common.pki.certificates import issuing_crl_name, load_csr
from common.pki.keyfiles import PrivateKey
from common.pki.keys import AcceptedPublicKey, signature_hash
from irp.errors import InvalidArgument
from irp.server.ca.keys import check_public_key

ROOT_VALIDITY = datetime.timedelta(days=7305)  # 20 years
ISSUING_VALIDITY = datetime.timedelta(days=3653)  # 10 years
DEFAULT_USER_VALIDITY = datetime.timedelta(days=365)
DEFAULT_SERVER_VALIDITY = datetime.timedelta(days=397)
#: How far ``notBefore`` (and a CRL's ``thisUpdate``) is set in the past.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)

#: Largest CSR accepted, PEM or DER.
MAX_CSR_SIZE = 16 * 1024
#: Largest serial number and CRL number: RFC 5280 allows 20 octets, positive.
MAX_SERIAL_BITS = 159


def common_name(text: str, fallback: str) -> str:
    """``text`` if it fits a CN (64 characters), else ``fallback``; O carries the domain."""
    return text if len(text) <= 64 else fallback


def subject_name(domain: str, common_name: str) -> x509.Name:
    """The name ``O=<domain>, CN=<common_name>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def subject_key_identifier(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    """The certificate's subject key identifier (computed from its key if it has none)."""
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())


def check_serial(serial: int) -> int:
    """``serial`` if it is a serial number RFC 5280 allows, else ValueError."""
    if not 0 < serial < 2**MAX_SERIAL_BITS:
        raise ValueError(f"serial numbers must be positive and at most {MAX_SERIAL_BITS} bits")
    return serial


def check_validity(validity: datetime.timedelta) -> None:
    """Refuse a validity period that is not positive (InvalidArgument)."""
    if validity <= datetime.timedelta(0):
        raise InvalidArgument("the validity period must be positive")


def aware_utc(moment: datetime.datetime, what: str) -> datetime.datetime:
    """``moment`` in UTC; ValueError, naming it ``what``, if it has no time zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(datetime.UTC)


def ca_certificates(
    domain: str,
    root_key: PrivateKey,
    issuing_key: PrivateKey,
    moment: datetime.datetime,
    publication: PublicationURLs | None = None,
) -> tuple[x509.Certificate, x509.Certificate]:
    """A new root (CA:TRUE pathlen 1) and the issuing CA it signs (CA:TRUE pathlen 0);
    with ``publication``, both name the root's CRL, and the issuing CA the root's
    certificate."""
    not_before = moment - CLOCK_SKEW_ALLOWANCE
    root_name = subject_name(domain, common_name(f"{domain} IRP Root CA", "IRP Root CA"))
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root_builder = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(moment + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(root_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
    )
    if publication is not None:
        # The root names its own CRL: checkers of the whole chain (openssl verify
        # -crl_check_all) look the trust anchor's CRL up too.
        root_builder = root_builder.add_extension(root_crl_distribution_point(publication), critical=False)
    root_certificate = root_builder.sign(root_key, signature_hash(root_key))
    issuing_certificate = issuing_ca_certificate(
        domain, root_certificate, root_key, issuing_key, moment, publication=publication
    )
    return root_certificate, issuing_certificate


def root_crl_distribution_point(publication: PublicationURLs) -> x509.CRLDistributionPoints:
    """The distribution point of the root's CRL: ``<base>crl/root.crl``."""
    location = x509.UniformResourceIdentifier(publication.crl("root"))
    return x509.CRLDistributionPoints([x509.DistributionPoint([location], None, None, None)])


def issuing_ca_name(domain: str, generation: int = 1) -> x509.Name:
    """The subject of the domain's ``generation``-th issuing CA: ``CN=<domain> IRP Issuing
    CA`` for the first, ``... IRP Issuing CA 2`` and so on after each rotation (distinct
    subjects, so chain building never mistakes one for another)."""
    suffix = "" if generation == 1 else f" {generation}"
    return subject_name(domain, common_name(f"{domain} IRP Issuing CA{suffix}", f"IRP Issuing CA{suffix}"))


def issuing_ca_certificate(
    domain: str,
    root_certificate: x509.Certificate,
    root_key: PrivateKey,
    issuing_key: PrivateKey,
    moment: datetime.datetime,
    generation: int = 1,
    publication: PublicationURLs | None = None,
) -> x509.Certificate:
    """An issuing CA (CA:TRUE pathlen 0, :data:`ISSUING_VALIDITY`) signed by the root,
    cut to the root's end; with ``publication``, it names the root's CRL (distribution
    point ``<base>crl/root.crl``) and certificate (CA issuers ``<base>ca/root.crt``)."""
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    not_after = min(moment + ISSUING_VALIDITY, root_certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(issuing_ca_name(domain, generation))
        .issuer_name(root_certificate.subject)
        .public_key(issuing_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
    )
    if publication is not None:
        builder = builder.add_extension(root_crl_distribution_point(publication), critical=False).add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(publication.certificate("root")),
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(root_key, signature_hash(root_key))


def end_entity_builder(
    issuer: x509.Name,
    subject: x509.Name,
    public_key: AcceptedPublicKey,
    serial: int | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    extended_key_usage: x509.ExtendedKeyUsage,
) -> x509.CertificateBuilder:
    """An end-entity certificate (CA:FALSE, digitalSignature) for ``public_key``, unsigned
    and without its authority key identifier."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(
            x509.random_serial_number() if serial is None else check_serial(serial)
        )
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(digital_signature_key_usage(), critical=True)
        .add_extension(extended_key_usage, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@dataclass(frozen=True)
class PublicationURLs:
    """Where the registry publishes its CA certificates, CRLs and OCSP responder over
    HTTP (``twistd irp --http-url``): ``base`` is an absolute ``http://`` URL ending in
    ``/`` (see docs/http.rst for the layout)."""

    base: str

    def __post_init__(self) -> None:
        if not self.base.startswith(("http://", "https://")) or not self.base.endswith("/"):
            raise ValueError("the publication base URL must be an http:// URL ending in /")

    def crl(self, label: str) -> str:
        """The URL of the CRL of the issuing CA labelled ``label``."""
        return f"{self.base}crl/{label}.crl"

    def certificate(self, label: str) -> str:
        """The URL of the (DER) certificate of the CA labelled ``label``."""
        return f"{self.base}ca/{label}.crt"

    @property
    def ocsp(self) -> str:
        """The OCSP responder's URL (POST, or GET with the request appended)."""
        return f"{self.base}ocsp"


def publication_extensions(
    urls: PublicationURLs, issuer: x509.Certificate
) -> list[x509.ExtensionType]:
    """The CRL distribution point and authority information access (OCSP responder,
    CA issuers) of a certificate ``issuer`` signs, naming that issuer's own URLs."""
    label = issuing_crl_name(issuer)
    return [
        x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(urls.crl(label))],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        ),
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)
                ),
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(urls.certificate(label)),
                ),
            ]
        ),
    ]


def csr_public_key(csr_data: bytes) -> AcceptedPublicKey:
    """The key of a PEM or DER certificate signing request, once its self-signature
    verifies; :class:`InvalidArgument` if the CSR is too large, malformed or not validly
    signed, :class:`irp.errors.WeakKey` if its key is weak."""
    if not isinstance(csr_data, bytes):
        raise InvalidArgument("the CSR must be bytes")
    if len(csr_data) > MAX_CSR_SIZE:
        raise InvalidArgument(f"the CSR is larger than {MAX_CSR_SIZE // 1024} KiB")
    try:
        csr = load_csr(csr_data)
        public_key: PublicKeyTypes = csr.public_key()
        signed = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidArgument(
            "the CSR is not a valid PEM or DER certificate signing request"
        ) from None
    if not signed:
        raise InvalidArgument(
            "the CSR's signature does not verify: it must be signed with its own key"
        )
    return check_public_key(public_key)


def host_name(hostname: str) -> x509.DNSName | x509.IPAddress:
    """A subjectAltName entry for a DNS name (lower-cased) or an IP address literal."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    try:
        return x509.DNSName(check_domain(hostname))
    except InvalidIdentity:
        raise ValueError(f"invalid host name {hostname!r}") from None


def ca_key_usage() -> x509.KeyUsage:
    """keyCertSign and cRLSign only."""
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def digital_signature_key_usage() -> x509.KeyUsage:
    """digitalSignature only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
