"""The CA of one domain as an object: its root and issuing CA, kept on disk, and what
they sign (see :mod:`irp.server.ca`).

The certificates' contents are built in :mod:`irp.server.ca.issuance`, CRLs in
:mod:`irp.server.ca.crl`, PKCS#12 bundles in :mod:`irp.server.ca.pkcs12`. Only
:meth:`CertificateAuthority.load_or_create` does I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.identity import Identity, check_domain
from common.pki import keyfiles
from common.pki.keyfiles import PrivateKey
from common.pki.keys import DEFAULT_KEY_TYPE, AcceptedPublicKey, signature_hash
from irp.errors import InvalidArgument
from irp.server.ca.crl import (
    DEFAULT_CRL_LIFETIME,
    DEFAULT_ROOT_CRL_LIFETIME,
    RevokedEntry,
    crl_builder,
    with_revoked,
)
from irp.server.ca.issuance import (
    CLOCK_SKEW_ALLOWANCE,
    DEFAULT_SERVER_VALIDITY,
    DEFAULT_USER_VALIDITY,
    PublicationURLs,
    aware_utc,
    ca_certificates,
    check_validity,
    common_name,
    csr_public_key,
    end_entity_builder,
    host_name,
    publication_extensions,
    subject_key_identifier,
    subject_name,
)
from irp.server.ca.keys import check_public_key, generate_key
from irp.server.ca.pkcs12 import (
    DEFAULT_PKCS12_KDF_ROUNDS,
    check_pkcs12_request,
    pkcs12_bundle,
)
from irp.wire.records import RECORD_SIGNING_OID

if TYPE_CHECKING:
    from irp.server.ca.ondisk import RootCRLFile

Clock = Callable[[], datetime.datetime]

ROOT_KEY_FILE = "root.key"
ROOT_CERTIFICATE_FILE = "root.pem"
ISSUING_KEY_FILE = "issuing.key"
ISSUING_CERTIFICATE_FILE = "issuing.pem"


class CertificateAuthorityError(Exception):
    """The CA's files or certificates are missing, inconsistent, or belong to another domain."""


def system_clock() -> datetime.datetime:
    """The time now, in UTC."""
    return datetime.datetime.now(datetime.UTC)


class CertificateAuthority:
    """The CA of one IRP domain, with its keys loaded once and kept in memory.

    Build one with :meth:`create` (in memory) or :meth:`load_or_create` (on disk); the
    constructor takes existing certificates and keys and checks they belong together.
    """

    def __init__(
        self,
        domain: str,
        root_certificate: x509.Certificate,
        root_key: PrivateKey | None,
        issuing_certificate: x509.Certificate,
        issuing_key: PrivateKey,
        *,
        now: Clock | None = None,
        retired: Sequence[tuple[x509.Certificate, PrivateKey]] = (),
    ) -> None:
        self._domain = check_domain(domain)
        self._root_certificate = root_certificate
        self._root_key = root_key
        self._issuing_certificate = issuing_certificate
        self._issuing_key = issuing_key
        self._retired = list(retired)
        self._clock = now or system_clock
        #: Where CRLs, CA certificates and the OCSP responder are published over HTTP:
        #: when set, every end-entity certificate signed from then on names them.
        self.publication: PublicationURLs | None = None
        self._check_consistency()
        self._issuing_hash = signature_hash(issuing_key)
        #: The folder the CA was loaded from (None: made in memory).
        self.directory: str | None = None
        #: The root CRL signed offline (``root.crl``), read when the root key is offline.
        self.root_crl_file: RootCRLFile | None = None
        self._root_authority_key_identifier = (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                subject_key_identifier(root_certificate)
            )
        )
        self._issuing_authority_key_identifier = (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                subject_key_identifier(issuing_certificate)
            )
        )

    def _check_consistency(self) -> None:
        root_domain = certificate_domain(self._root_certificate)
        if root_domain != self._domain:
            raise CertificateAuthorityError(
                f"the CA is for the domain {root_domain!r}, not {self._domain!r}"
            )
        if self._root_key is not None and not same_public_key(self._root_key, self._root_certificate):
            raise CertificateAuthorityError("the root key does not match the root certificate")
        for certificate, key in [(self._issuing_certificate, self._issuing_key), *self._retired]:
            if not same_public_key(key, certificate):
                raise CertificateAuthorityError(
                    f"the key of {certificate.subject.rfc4514_string()} does not match its certificate"
                )
        retired = [certificate for certificate, _key in self._retired]
        for certificate in (self._root_certificate, self._issuing_certificate, *retired):
            try:
                certificate.verify_directly_issued_by(self._root_certificate)
            except (ValueError, TypeError, InvalidSignature):
                raise CertificateAuthorityError(
                    "the CA certificates are not a root and an issuing CA it signed"
                ) from None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        domain: str,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        now: Clock | None = None,
        publication: PublicationURLs | None = None,
    ) -> CertificateAuthority:
        """Create a new CA for ``domain`` in memory: fresh root and issuing keys (the
        issuing CA naming the root's CRL and certificate at ``publication`` when given)."""
        domain = check_domain(domain)
        clock = now or system_clock
        root_key = generate_key(key_type)
        issuing_key = generate_key(key_type)
        moment = aware_utc(clock(), "the clock's time")
        root_certificate, issuing_certificate = ca_certificates(domain, root_key, issuing_key, moment, publication)
        return cls(
            domain, root_certificate, root_key, issuing_certificate, issuing_key, now=now
        )

    @classmethod
    def load_or_create(
        cls,
        directory: str,
        domain: str,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        now: Clock | None = None,
        passphrase: bytes | None = None,
        publication: PublicationURLs | None = None,
    ) -> CertificateAuthority:
        """Load the CA kept in ``directory``, creating it there first if there is none.

        The directory (mode 0700) holds ``root.key``, ``root.pem``, ``issuing.key`` and
        ``issuing.pem`` (``root.key`` may be missing: an offline root), and the retired
        issuing CAs in ``retired/<n>/`` (see :mod:`irp.server.ca.ondisk`); the keys are mode
        0600, and a new CA's keys are encrypted with ``passphrase`` if one is given (an
        encrypted key needs it to load). ``key_type`` and ``publication`` (URLs the new
        issuing CA names, see :meth:`create`) only matter when creating.

        A new CA is written to a private temporary directory next to ``directory`` and
        renamed into place in one step, so a crash never leaves half a CA, and when several
        processes start at once exactly one CA wins and every process loads it. The rename
        succeeds only if ``directory`` is missing or empty, so ``directory`` must be
        dedicated to the CA and its parent writable the first time.

        Raises :class:`CertificateAuthorityError` if the directory holds a CA for another
        domain or an incomplete or inconsistent one, and :class:`common.pki.keyfiles.KeyFileError`
        if a key file is unsafe or the passphrase is wrong.
        """
        from irp.server.ca.ondisk import load_or_create

        return load_or_create(
            directory, domain, key_type=key_type, now=now, passphrase=passphrase, publication=publication
        )

    # -- what the CA is ---------------------------------------------------------------------

    @property
    def domain(self) -> str:
        """The domain whose users this CA certifies."""
        return self._domain

    @property
    def root_certificate(self) -> x509.Certificate:
        """The self-signed root: what peers trust."""
        return self._root_certificate

    @property
    def issuing_certificate(self) -> x509.Certificate:
        """The intermediate that signs user certificates and the CRL."""
        return self._issuing_certificate

    @property
    def chain(self) -> list[x509.Certificate]:
        """The CA certificates above a user certificate: ``[issuing, root]``."""
        return [self._issuing_certificate, self._root_certificate]

    @property
    def root_fingerprint(self) -> str:
        """The root's SHA-256 fingerprint (64 lowercase hex digits)."""
        return keyfiles.fingerprint(self._root_certificate)

    @property
    def root_key(self) -> PrivateKey:
        """The root's private key (for the admin tool and test fixtures; never send it).

        Raises :class:`CertificateAuthorityError` when the root is offline."""
        if self._root_key is None:
            raise CertificateAuthorityError(
                "the root key is offline (not in the CA folder): sign with it offline (irp-ca)"
            )
        return self._root_key

    @property
    def root_key_online(self) -> bool:
        """False when the root key was taken offline (only the issuing key is here)."""
        return self._root_key is not None

    @property
    def retired_issuers(self) -> list[tuple[x509.Certificate, PrivateKey]]:
        """The issuing CAs replaced by rotation that are still valid, newest first: their
        certificates stay good until they expire, so their CRLs are still signed."""
        moment = self.now()
        return [(certificate, key) for certificate, key in self._retired if certificate.not_valid_after_utc > moment]

    @property
    def issuers(self) -> list[tuple[x509.Certificate, PrivateKey]]:
        """The current issuing CA, then :attr:`retired_issuers`."""
        return [(self._issuing_certificate, self._issuing_key), *self.retired_issuers]

    @property
    def issuing_key(self) -> PrivateKey:
        """The issuing CA's private key (for the admin tool and test fixtures)."""
        return self._issuing_key

    def now(self) -> datetime.datetime:
        """The CA clock's current time, in UTC."""
        return aware_utc(self._clock(), "the clock's time")

    # -- issuing ----------------------------------------------------------------------------

    def issue_user_certificate(
        self,
        identity: Identity,
        public_key: PublicKeyTypes,
        *,
        validity: datetime.timedelta = DEFAULT_USER_VALIDITY,
        serial: int | None = None,
    ) -> x509.Certificate:
        """Certify that ``public_key`` belongs to ``identity``, a user of this domain.

        The certificate is for TLS client authentication and signatures only (CA:FALSE,
        digitalSignature, clientAuth) and names the identity in exactly one ``irp:`` URI.
        Raises :class:`InvalidArgument` for a user of another domain and :class:`WeakKey`
        for a key :func:`check_public_key` refuses.
        """
        if identity.domain != self._domain:
            raise InvalidArgument(
                f"this CA certifies users of {self._domain}, not of {identity.domain}"
            )
        builder = self._end_entity_builder(
            subject_name(self._domain, identity.username),
            check_public_key(public_key),
            validity,
            serial,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        ).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
        return self._sign_with_issuing_key(builder)

    def issue_from_csr(
        self,
        csr_data: bytes,
        identity: Identity,
        *,
        validity: datetime.timedelta = DEFAULT_USER_VALIDITY,
        serial: int | None = None,
    ) -> x509.Certificate:
        """Certify the key of a PEM or DER certificate signing request for ``identity``.

        Only the CSR's public key and self-signature (proof that the requester holds the
        private key) are used; its subject and extensions are ignored, since the registry
        decides what the certificate says. Raises :class:`InvalidArgument` if the CSR is too
        large, malformed or not validly signed, and :class:`WeakKey` if its key is weak.
        """
        public_key = csr_public_key(csr_data)
        return self.issue_user_certificate(identity, public_key, validity=validity, serial=serial)

    def generate_pkcs12(
        self,
        identity: Identity,
        passphrase: bytes,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        validity: datetime.timedelta = DEFAULT_USER_VALIDITY,
        kdf_rounds: int = DEFAULT_PKCS12_KDF_ROUNDS,
    ) -> tuple[x509.Certificate, bytes]:
        """Generate a key for ``identity``, certify it, and return it as an encrypted PKCS#12.

        For clients that cannot make keys. The PKCS#12 holds the key, the certificate
        (friendly name ``user@domain``) and the chain (issuing CA, root); it is encrypted
        with PBES2 (PBKDF2-SHA256, AES-256-CBC) and authenticated with HMAC-SHA256, all
        derived from ``passphrase`` with ``kdf_rounds`` rounds, which OpenSSL 3 and current
        browsers and mail clients read. The passphrase must be at least 8 bytes.
        """
        check_pkcs12_request(passphrase, kdf_rounds)
        key = generate_key(key_type)
        certificate = self.issue_user_certificate(identity, key.public_key(), validity=validity)
        bundle = pkcs12_bundle(identity, key, certificate, self.chain, passphrase, kdf_rounds)
        return certificate, bundle

    def issue_server_certificate(
        self,
        hostnames: list[str],
        public_key: PublicKeyTypes,
        *,
        validity: datetime.timedelta = DEFAULT_SERVER_VALIDITY,
    ) -> x509.Certificate:
        """Certify the registry's TLS server key for ``hostnames`` (DNS names or IP literals).

        Names are normalised (DNS names lower-cased, duplicates dropped); the first is also
        the subject's CN when it fits in 64 characters.
        """
        if not hostnames:
            raise ValueError("a server certificate needs at least one host name")
        names = list(dict.fromkeys(host_name(hostname) for hostname in hostnames))
        accepted_key = check_public_key(public_key)
        first = str(names[0].value)
        if len(first) <= 64:
            subject = subject_name(self._domain, first)
        else:
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._domain)])
        builder = self._end_entity_builder(
            subject,
            accepted_key,
            validity,
            None,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ).add_extension(x509.SubjectAlternativeName(names), critical=False)
        return self._sign_with_issuing_key(builder)

    def issue_signing_certificate(
        self,
        public_key: PublicKeyTypes,
        *,
        validity: datetime.timedelta = DEFAULT_SERVER_VALIDITY,
    ) -> x509.Certificate:
        """Certify the registry's record-signing key (EKU :data:`RECORD_SIGNING_OID`)."""
        label = common_name(f"{self._domain} IRP record signing", "IRP record signing")
        builder = self._end_entity_builder(
            subject_name(self._domain, label),
            check_public_key(public_key),
            validity,
            None,
            x509.ExtendedKeyUsage([RECORD_SIGNING_OID]),
        )
        return self._sign_with_issuing_key(builder)

    def _end_entity_builder(
        self,
        subject: x509.Name,
        public_key: AcceptedPublicKey,
        validity: datetime.timedelta,
        serial: int | None,
        extended_key_usage: x509.ExtendedKeyUsage,
    ) -> x509.CertificateBuilder:
        check_validity(validity)
        moment = self.now()
        not_after = min(moment + validity, self._issuing_certificate.not_valid_after_utc)
        if not_after <= moment:
            raise CertificateAuthorityError("the issuing CA certificate has expired")
        builder = end_entity_builder(
            self._issuing_certificate.subject,
            subject,
            public_key,
            serial,
            moment - CLOCK_SKEW_ALLOWANCE,
            not_after,
            extended_key_usage,
        )
        if self.publication is not None:
            for extension in publication_extensions(self.publication, self._issuing_certificate):
                builder = builder.add_extension(extension, critical=False)
        return builder

    def _sign_with_issuing_key(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.add_extension(
            self._issuing_authority_key_identifier, critical=False
        ).sign(self._issuing_key, self._issuing_hash)

    # -- revocation -------------------------------------------------------------------------

    def build_crl(
        self,
        revoked: Iterable[RevokedEntry],
        crl_number: int,
        *,
        next_update_after: datetime.timedelta = DEFAULT_CRL_LIFETIME,
        issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    ) -> x509.CertificateRevocationList:
        """The CRL of revoked user certificates, signed by the issuing CA (or by
        ``issuer``, one of :attr:`issuers`: a retired issuing CA's CRL).

        Entries carry a CRLReason extension unless their reason is unknown or
        ``unspecified`` (RFC 5280, 5.3.1 advises omitting it then).
        """
        certificate, key = issuer or (self._issuing_certificate, self._issuing_key)
        identifier = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            subject_key_identifier(certificate)
        )
        builder = crl_builder(certificate, identifier, crl_number, next_update_after, self.now())
        builder = with_revoked(builder, revoked)
        return builder.sign(key, signature_hash(key))

    def build_root_crl(
        self,
        crl_number: int,
        *,
        next_update_after: datetime.timedelta = DEFAULT_ROOT_CRL_LIFETIME,
    ) -> x509.CertificateRevocationList:
        """The root's own CRL (empty: the issuing CA is never revoked), signed by the root.

        Lets ``openssl verify -crl_check_all`` and other full-chain checkers succeed.
        """
        builder = crl_builder(
            self._root_certificate, self._root_authority_key_identifier, crl_number,
            next_update_after, self.now(),
        )
        return builder.sign(self.root_key, signature_hash(self.root_key))


def same_public_key(key: PrivateKey, certificate: x509.Certificate) -> bool:
    """True if ``key`` is the private key of ``certificate``."""
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, spki) == certificate.public_key().public_bytes(
        encoding, spki
    )


def certificate_domain(certificate: x509.Certificate) -> str | None:
    """The domain a CA certificate names (its one ``O`` attribute), or None."""
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def load_one_certificate(path: str) -> x509.Certificate:
    """The one PEM certificate in ``path`` (:class:`CertificateAuthorityError` otherwise)."""
    certificates = keyfiles.load_certificates(path)
    if len(certificates) != 1:
        raise CertificateAuthorityError(f"{path} must hold exactly one certificate")
    return certificates[0]
