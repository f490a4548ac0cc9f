"""A domain's certificate authority: a root, an issuing CA, and everything they sign.

Each IRP domain runs its own two-level CA:

* the **root** (self-signed, CA:TRUE pathlen 1, 20 years) only signs the issuing CA and its
  own, normally empty, CRL;
* the **issuing CA** (CA:TRUE pathlen 0, 10 years) signs user, server and record-signing
  certificates and the CRL of revoked user certificates.

Both are ECDSA P-384 with SHA-384 unless another key type is chosen (see :data:`KEY_TYPES`).
Subjects are ``O=<domain>, CN=<domain> IRP Root CA`` and ``O=<domain>, CN=<domain> IRP
Issuing CA``; the ``O`` attribute is what :mod:`common.pki.trust` reads as the root's domain. Every
certificate carries subject and authority key identifiers.

A user certificate names its holder ``CN=<username>, O=<domain>`` and, authoritatively, with
exactly one subjectAltName URI ``irp:<username>@<domain>`` (see :mod:`common.identity`).

Times come from an injectable clock; ``notBefore`` is set five minutes in the past so a peer
whose clock is slightly behind still accepts a fresh certificate. A certificate never outlives
the issuing CA: its ``notAfter`` is cut to the issuing CA's.

This module does no I/O except :meth:`CertificateAuthority.load_or_create`, and no Twisted.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.identity import Identity, InvalidIdentity, check_domain
from common.pki import keyfiles, keys
from common.pki.certificates import load_csr
from common.pki.errors import PKIError
from common.pki.keyfiles import PrivateKey
from common.pki.keys import AcceptedPublicKey
from irp.errors import InvalidArgument, from_pki

Clock = Callable[[], datetime.datetime]

#: Key types the CA can generate, for itself and for server-side generated user keys.
KEY_TYPES = ("p384", "p256", "ed25519")
DEFAULT_KEY_TYPE = "p384"

ROOT_VALIDITY = datetime.timedelta(days=7305)  # 20 years
ISSUING_VALIDITY = datetime.timedelta(days=3653)  # 10 years
DEFAULT_USER_VALIDITY = datetime.timedelta(days=365)
DEFAULT_SERVER_VALIDITY = datetime.timedelta(days=397)
DEFAULT_CRL_LIFETIME = datetime.timedelta(days=1)
DEFAULT_ROOT_CRL_LIFETIME = datetime.timedelta(days=30)
#: How far ``notBefore`` (and a CRL's ``thisUpdate``) is set in the past.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)

#: Largest CSR accepted, PEM or DER.
MAX_CSR_SIZE = 16 * 1024
MIN_PKCS12_PASSPHRASE_LENGTH = 8
#: PBKDF2-SHA256 rounds protecting PKCS#12 files. 100 000 costs about 50 ms per derivation:
#: enough to slow guessing of a decent passphrase while keeping the request cheap for the
#: server. The passphrase, not this number, is the real protection.
DEFAULT_PKCS12_KDF_ROUNDS = 100_000
#: Largest serial number and CRL number: RFC 5280 allows 20 octets, positive.
MAX_SERIAL_BITS = 159

#: The extended key usage of the registry's record-signing certificate (a UUID OID, X.667).
RECORD_SIGNING_OID = x509.ObjectIdentifier("2.25.177770641467619647013171859629156522888")

ROOT_KEY_FILE = "root.key"
ROOT_CERTIFICATE_FILE = "root.pem"
ISSUING_KEY_FILE = "issuing.key"
ISSUING_CERTIFICATE_FILE = "issuing.pem"

#: Wire names of the revocation reasons a user or administrator may give. The CA-level
#: reasons (caCompromise, aACompromise), certificateHold (revocation here is final) and
#: removeFromCRL (delta CRLs only) are deliberately absent.
REVOCATION_REASONS: Mapping[str, x509.ReasonFlags] = MappingProxyType(
    {
        "unspecified": x509.ReasonFlags.unspecified,
        "key-compromise": x509.ReasonFlags.key_compromise,
        "affiliation-changed": x509.ReasonFlags.affiliation_changed,
        "superseded": x509.ReasonFlags.superseded,
        "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
        "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
    }
)
#: The reverse of :data:`REVOCATION_REASONS`.
REVOCATION_REASON_NAMES: Mapping[x509.ReasonFlags, str] = MappingProxyType(
    {flag: name for name, flag in REVOCATION_REASONS.items()}
)


class CertificateAuthorityError(Exception):
    """The CA's files or certificates are missing, inconsistent, or belong to another domain."""


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate, as listed in a CRL."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = None


def revocation_reason(name: str) -> x509.ReasonFlags:
    """Return the reason flag for a wire name such as ``"key-compromise"``."""
    try:
        return REVOCATION_REASONS[name]
    except KeyError:
        known = ", ".join(sorted(REVOCATION_REASONS))
        raise InvalidArgument(
            f"unknown revocation reason {name!r}; use one of: {known}"
        ) from None


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


def _system_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _common_name(text: str, fallback: str) -> str:
    """``text`` if it fits a CN (64 characters), else ``fallback``; O carries the domain."""
    return text if len(text) <= 64 else fallback


def _name(domain: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_key_identifier(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())


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


def _check_serial(serial: int) -> int:
    if not 0 < serial < 2**MAX_SERIAL_BITS:
        raise ValueError(f"serial numbers must be positive and at most {MAX_SERIAL_BITS} bits")
    return serial


def _check_validity(validity: datetime.timedelta) -> None:
    if validity <= datetime.timedelta(0):
        raise InvalidArgument("the validity period must be positive")


def _aware_utc(moment: datetime.datetime, what: str) -> datetime.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(datetime.UTC)


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
        self._clock = now or _system_clock
        self._check_consistency()
        self._root_hash = signature_hash(root_key)
        self._issuing_hash = signature_hash(issuing_key)
        self._root_authority_key_identifier = (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _subject_key_identifier(root_certificate)
            )
        )
        self._issuing_authority_key_identifier = (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _subject_key_identifier(issuing_certificate)
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
        clock = now or _system_clock
        root_key = generate_key(key_type)
        issuing_key = generate_key(key_type)
        moment = _aware_utc(clock(), "the clock's time")
        not_before = moment - CLOCK_SKEW_ALLOWANCE
        root_name = _name(domain, _common_name(f"{domain} IRP Root CA", "IRP Root CA"))
        issuing_name = _name(domain, _common_name(f"{domain} IRP Issuing CA", "IRP Issuing CA"))
        root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
        root_certificate = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(moment + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(root_ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(root_key, signature_hash(root_key))
        )
        issuing_certificate = (
            x509.CertificateBuilder()
            .subject_name(issuing_name)
            .issuer_name(root_name)
            .public_key(issuing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(moment + ISSUING_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(root_key, signature_hash(root_key))
        )
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
        return _aware_utc(self._clock(), "the clock's time")

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
            _name(self._domain, identity.username),
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
        if not isinstance(csr_data, bytes):
            raise InvalidArgument("the CSR must be bytes")
        if len(csr_data) > MAX_CSR_SIZE:
            raise InvalidArgument(f"the CSR is larger than {MAX_CSR_SIZE // 1024} KiB")
        try:
            csr = load_csr(csr_data)
            public_key = csr.public_key()
            signed = csr.is_signature_valid
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InvalidArgument(
                "the CSR is not a valid PEM or DER certificate signing request"
            ) from None
        if not signed:
            raise InvalidArgument(
                "the CSR's signature does not verify: it must be signed with its own key"
            )
        check_public_key(public_key)
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
        if not isinstance(passphrase, bytes):
            raise InvalidArgument("the PKCS#12 passphrase must be bytes")
        if len(passphrase) < MIN_PKCS12_PASSPHRASE_LENGTH:
            raise InvalidArgument(
                f"the PKCS#12 passphrase must be at least {MIN_PKCS12_PASSPHRASE_LENGTH} bytes"
            )
        if kdf_rounds < 1:
            raise ValueError("kdf_rounds must be positive")
        key = generate_key(key_type)
        certificate = self.issue_user_certificate(identity, key.public_key(), validity=validity)
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(kdf_rounds)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase)
        )
        bundle = pkcs12.serialize_key_and_certificates(
            str(identity).encode("utf-8"), key, certificate, self.chain, encryption
        )
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
        names = list(dict.fromkeys(_host_name(hostname) for hostname in hostnames))
        accepted_key = check_public_key(public_key)
        first = str(names[0].value)
        if len(first) <= 64:
            subject = _name(self._domain, first)
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
        common_name = _common_name(f"{self._domain} IRP record signing", "IRP record signing")
        builder = self._end_entity_builder(
            _name(self._domain, common_name),
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
        _check_validity(validity)
        moment = self.now()
        not_after = min(moment + validity, self._issuing_certificate.not_valid_after_utc)
        if not_after <= moment:
            raise CertificateAuthorityError("the issuing CA certificate has expired")
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuing_certificate.subject)
            .public_key(public_key)
            .serial_number(
                x509.random_serial_number() if serial is None else _check_serial(serial)
            )
            .not_valid_before(moment - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_digital_signature_key_usage(), critical=True)
            .add_extension(extended_key_usage, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

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
        builder = self._crl_builder(
            self._issuing_certificate, self._issuing_authority_key_identifier, crl_number,
            next_update_after,
        )
        seen: set[int] = set()
        for entry in revoked:
            if entry.serial in seen:
                raise ValueError(f"serial {entry.serial} is listed twice")
            seen.add(entry.serial)
            builder = builder.add_revoked_certificate(_revoked_certificate(entry))
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
        builder = self._crl_builder(
            self._root_certificate, self._root_authority_key_identifier, crl_number,
            next_update_after,
        )
        return builder.sign(self._root_key, self._root_hash)

    def _crl_builder(
        self,
        issuer: x509.Certificate,
        authority_key_identifier: x509.AuthorityKeyIdentifier,
        crl_number: int,
        next_update_after: datetime.timedelta,
    ) -> x509.CertificateRevocationListBuilder:
        if not 0 <= crl_number < 2**MAX_SERIAL_BITS:
            raise ValueError(
                f"CRL numbers must be non-negative and at most {MAX_SERIAL_BITS} bits"
            )
        if next_update_after <= datetime.timedelta(0):
            raise ValueError("next_update_after must be positive")
        moment = self.now()
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(moment - CLOCK_SKEW_ALLOWANCE)
            .next_update(moment + next_update_after)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(authority_key_identifier, critical=False)
        )


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    if entry.reason is x509.ReasonFlags.remove_from_crl:
        raise ValueError("removeFromCRL is only for delta CRLs")
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(_check_serial(entry.serial))
        .revocation_date(_aware_utc(entry.revoked_at, "revoked_at"))
    )
    if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


def _host_name(hostname: str) -> x509.DNSName | x509.IPAddress:
    """A subjectAltName entry for a DNS name (lower-cased) or an IP address literal."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    try:
        return x509.DNSName(check_domain(hostname))
    except InvalidIdentity:
        raise ValueError(f"invalid host name {hostname!r}") from None


def _ca_key_usage() -> x509.KeyUsage:
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


def _digital_signature_key_usage() -> x509.KeyUsage:
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


def _load_one_certificate(path: str) -> x509.Certificate:
    certificates = keyfiles.load_certificates(path)
    if len(certificates) != 1:
        raise CertificateAuthorityError(f"{path} must hold exactly one certificate")
    return certificates[0]
