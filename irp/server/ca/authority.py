"""The CA of one domain as an object: its root and issuing CA, kept on disk, and what
they sign (see :mod:`irp.server.ca`).

The certificates' contents are built in :mod:`irp.server.ca.issuance`, CRLs in
:mod:`irp.server.ca.crl`, PKCS#12 bundles in :mod:`irp.server.ca.pkcs12`. Only
:meth:`CertificateAuthority.load_or_create` does I/O.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

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
        root_key: PrivateKey,
        issuing_certificate: x509.Certificate,
        issuing_key: PrivateKey,
        *,
        now: Clock | None = None,
    ) -> None:
        self._domain = check_domain(domain)
        self._root_certificate = root_certificate
        self._root_key = root_key
        self._issuing_certificate = issuing_certificate
        self._issuing_key = issuing_key
        self._clock = now or system_clock
        #: Where CRLs, CA certificates and the OCSP responder are published over HTTP:
        #: when set, every end-entity certificate signed from then on names them.
        self.publication: PublicationURLs | None = None
        self._check_consistency()
        self._root_hash = signature_hash(root_key)
        self._issuing_hash = signature_hash(issuing_key)
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
        root_domain = _certificate_domain(self._root_certificate)
        if root_domain != self._domain:
            raise CertificateAuthorityError(
                f"the CA is for the domain {root_domain!r}, not {self._domain!r}"
            )
        if not _same_public_key(self._root_key, self._root_certificate):
            raise CertificateAuthorityError("the root key does not match the root certificate")
        if not _same_public_key(self._issuing_key, self._issuing_certificate):
            raise CertificateAuthorityError(
                "the issuing CA key does not match the issuing CA certificate"
            )
        for certificate in (self._root_certificate, self._issuing_certificate):
            try:
                certificate.verify_directly_issued_by(self._root_certificate)
            except (ValueError, TypeError, InvalidSignature):
                raise CertificateAuthorityError(
                    "the CA certificates are not a root and an issuing CA it signed"
                ) from None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls, domain: str, *, key_type: str = DEFAULT_KEY_TYPE, now: Clock | None = None
    ) -> CertificateAuthority:
        """Create a new CA for ``domain`` in memory: fresh root and issuing keys."""
        domain = check_domain(domain)
        clock = now or system_clock
        root_key = generate_key(key_type)
        issuing_key = generate_key(key_type)
        moment = aware_utc(clock(), "the clock's time")
        root_certificate, issuing_certificate = ca_certificates(domain, root_key, issuing_key, moment)
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
    ) -> CertificateAuthority:
        """Load the CA kept in ``directory``, creating it there first if there is none.

        The directory (mode 0700) holds ``root.key``, ``root.pem``, ``issuing.key`` and
        ``issuing.pem``; the keys are mode 0600, and ``root.key`` is encrypted with
        ``passphrase`` if one is given. ``key_type`` only matters when creating.

        A new CA is written to a private temporary directory next to ``directory`` and
        renamed into place in one step, so a crash never leaves half a CA, and when several
        processes start at once exactly one CA wins and every process loads it. The rename
        succeeds only if ``directory`` is missing or empty, so ``directory`` must be
        dedicated to the CA and its parent writable the first time.

        Raises :class:`CertificateAuthorityError` if the directory holds a CA for another
        domain or an incomplete or inconsistent one, and :class:`common.pki.keyfiles.KeyFileError`
        if a key file is unsafe or the passphrase is wrong.
        """
        domain = check_domain(domain)
        directory = os.path.abspath(directory)
        if not os.path.exists(os.path.join(directory, ROOT_CERTIFICATE_FILE)):
            created = cls._create_in_place(directory, domain, key_type, now, passphrase)
            if created is not None:
                return created
        return cls._load(directory, domain, now, passphrase)

    @classmethod
    def _create_in_place(
        cls,
        directory: str,
        domain: str,
        key_type: str,
        now: Clock | None,
        passphrase: bytes | None,
    ) -> CertificateAuthority | None:
        """Create a CA in ``directory``; ``None`` if another process got there first."""
        parent = os.path.dirname(directory)
        if not os.path.isdir(parent):
            keyfiles.ensure_private_directory(parent)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.new-", dir=parent)
        try:
            authority = cls.create(domain, key_type=key_type, now=now)
            authority._write(staging, passphrase)
            try:
                os.rename(staging, directory)
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return None
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        keyfiles.fsync_directory(parent)
        return authority

    def _write(self, directory: str, passphrase: bytes | None) -> None:
        keyfiles.write_private_key(
            os.path.join(directory, ROOT_KEY_FILE), self._root_key, passphrase
        )
        keyfiles.write_private_key(os.path.join(directory, ISSUING_KEY_FILE), self._issuing_key)
        keyfiles.write_certificates(
            os.path.join(directory, ROOT_CERTIFICATE_FILE), [self._root_certificate]
        )
        keyfiles.write_certificates(
            os.path.join(directory, ISSUING_CERTIFICATE_FILE), [self._issuing_certificate]
        )

    @classmethod
    def _load(
        cls, directory: str, domain: str, now: Clock | None, passphrase: bytes | None
    ) -> CertificateAuthority:
        for name in (
            ROOT_CERTIFICATE_FILE, ISSUING_CERTIFICATE_FILE, ROOT_KEY_FILE, ISSUING_KEY_FILE
        ):
            if not os.path.exists(os.path.join(directory, name)):
                raise CertificateAuthorityError(
                    f"{directory} is not empty but holds no complete CA: {name} is missing"
                )
        keyfiles.ensure_private_directory(directory)
        root_certificate = _load_one_certificate(os.path.join(directory, ROOT_CERTIFICATE_FILE))
        issuing_certificate = _load_one_certificate(
            os.path.join(directory, ISSUING_CERTIFICATE_FILE)
        )
        root_domain = _certificate_domain(root_certificate)
        if root_domain != domain:
            raise CertificateAuthorityError(
                f"{directory} holds the CA of the domain {root_domain!r}, not {domain!r}"
            )
        root_key = keyfiles.load_private_key(os.path.join(directory, ROOT_KEY_FILE), passphrase)
        issuing_key = keyfiles.load_private_key(os.path.join(directory, ISSUING_KEY_FILE))
        return cls(domain, root_certificate, root_key, issuing_certificate, issuing_key, now=now)

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
        """The root's private key (for the admin tool and test fixtures; never send it)."""
        return self._root_key

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
    ) -> x509.CertificateRevocationList:
        """The CRL of revoked user certificates, signed by the issuing CA.

        Entries carry a CRLReason extension unless their reason is unknown or
        ``unspecified`` (RFC 5280, 5.3.1 advises omitting it then).
        """
        builder = crl_builder(
            self._issuing_certificate, self._issuing_authority_key_identifier, crl_number,
            next_update_after, self.now(),
        )
        builder = with_revoked(builder, revoked)
        return builder.sign(self._issuing_key, self._issuing_hash)

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
        return builder.sign(self._root_key, self._root_hash)


def _same_public_key(key: PrivateKey, certificate: x509.Certificate) -> bool:
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, spki) == certificate.public_key().public_bytes(
        encoding, spki
    )


def _certificate_domain(certificate: x509.Certificate) -> str | None:
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def _load_one_certificate(path: str) -> x509.Certificate:
    certificates = keyfiles.load_certificates(path)
    if len(certificates) != 1:
        raise CertificateAuthorityError(f"{path} must hold exactly one certificate")
    return certificates[0]
