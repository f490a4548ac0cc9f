"""Test fixtures: real CAs, user credentials and deliberately bad certificates, made fast.

Typical use::

    from test import pki
    ca = pki.make_ca("example.org")             # cached: the same CA on every call
    alice = pki.issue_user(ca, "alice")         # a fresh key and a good certificate
    store = pki.trust_store(ca)                 # a TrustStore trusting that CA's root
    for defect, reason in pki.BAD_CERTIFICATES.items():
        bad = pki.bad_user(ca, defect)          # fails verification with ``reason``

Keys default to P-256, the fastest to generate and use; pass ``key_type`` for others. CAs are
cached per ``(domain, key_type, label)`` and use the real clock, so certificates are valid
now and for the length of any test run. :func:`build_certificate` makes any other
certificate, good or bad, with one knob per property.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from common.identity import Identity
from common.pki.keyfiles import PrivateKey
from common.pki.trust import TrustStore
from irp.server.ca import CertificateAuthority, generate_key, signature_hash

FAST_KEY_TYPE = "p256"
DEFAULT_DOMAIN = "example.org"

#: Every defect :func:`bad_user` can make, and the reason the trust store gives for it.
BAD_CERTIFICATES: dict[str, str] = {
    "expired": "expired",
    "not-yet-valid": "not-yet-valid",
    "self-signed": "unknown-issuer",
    "other-ca": "unknown-issuer",
    "forged-signature": "bad-signature",
    "no-client-auth": "wrong-usage",
    "no-extended-key-usage": "wrong-usage",
    "no-digital-signature": "wrong-usage",
    "ca-leaf": "wrong-usage",
    "no-identity": "bad-identity",
    "two-identities": "bad-identity",
    "other-domain": "bad-identity",
    "weak-key": "weak-key",
    "long-chain": "chain-too-long",
    "garbled-extension": "malformed",
    "unknown-critical-extension": "malformed",
}


@dataclass(frozen=True)
class UserCredentials:
    """What a user (or a test impersonating one) presents: key, certificate and CA chain."""

    #: The identity the credentials are meant for (a bad certificate may not carry it).
    identity: Identity
    key: PrivateKey
    certificate: x509.Certificate
    #: The CA certificates above ``certificate``, its issuer first and the root last.
    chain: tuple[x509.Certificate, ...]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What a peer sends along with its certificate: the chain without the root."""
        return self.chain[:-1]

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_chain_pem(self) -> bytes:
        """The certificate followed by the intermediates, as PEM (what TLS sends)."""
        return b"".join(
            certificate.public_bytes(serialization.Encoding.PEM)
            for certificate in (self.certificate, *self.intermediates)
        )


@functools.cache
def make_ca(
    domain: str = DEFAULT_DOMAIN, key_type: str = FAST_KEY_TYPE, label: str = ""
) -> CertificateAuthority:
    """A CA for ``domain``, the same object on every call with the same arguments.

    A different ``label`` gives a different CA of the same domain (an impostor).
    """
    return CertificateAuthority.create(domain, key_type=key_type)


def trust_store(*authorities: CertificateAuthority, max_chain_depth: int = 2) -> TrustStore:
    """A trust store holding the roots of ``authorities``."""
    return TrustStore(
        [authority.root_certificate for authority in authorities],
        max_chain_depth=max_chain_depth,
    )


def issue_user(
    ca: CertificateAuthority,
    username: str = "alice",
    *,
    key_type: str = FAST_KEY_TYPE,
    validity: datetime.timedelta = datetime.timedelta(days=30),
) -> UserCredentials:
    """A fresh key for ``username@<ca's domain>`` and a good certificate from ``ca``."""
    identity = Identity(username, ca.domain)
    key = generate_key(key_type)
    certificate = ca.issue_user_certificate(identity, key.public_key(), validity=validity)
    return UserCredentials(identity, key, certificate, tuple(ca.chain))


@functools.cache
def rsa_key(bits: int = 1024) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` bits, cached since RSA keys are slow to make.

    The default size is too weak for the registry.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def user_name(identity: Identity) -> x509.Name:
    """The subject the CA gives ``identity``: ``CN=<username>, O=<domain>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.domain),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.username),
        ]
    )


def build_certificate(
    issuer_certificate: x509.Certificate | None,
    issuer_key: PrivateKey | None,
    *,
    subject: x509.Name,
    key: PrivateKey | None = None,
    san: Sequence[x509.GeneralName] | None = None,
    ca: bool = False,
    path_length: int | None = None,
    key_usage: Iterable[str] | None = ("digital_signature",),
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    not_before: datetime.timedelta = datetime.timedelta(hours=-1),
    not_after: datetime.timedelta = datetime.timedelta(days=30),
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    signing_key: PrivateKey | None = None,
    serial: int | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Build any certificate, returning it and its private key.

    :param issuer_certificate: the issuer; ``None`` (with ``issuer_key`` ``None``) for a
        self-signed certificate.
    :param subject: the subject name (see :func:`user_name`).
    :param key: the subject's key; a fresh P-256 key if ``None``.
    :param san: subjectAltName entries; no extension if ``None``.
    :param ca: basicConstraints CA flag (the extension is always present and critical).
    :param key_usage: names of the :class:`x509.KeyUsage` flags to set, e.g.
        ``("key_cert_sign", "crl_sign")``; no extension if ``None``.
    :param extended_key_usage: EKU OIDs; no extension if ``None``.
    :param not_before: offset from now of notBefore (negative: in the past).
    :param not_after: offset from now of notAfter.
    :param extra_extensions: more ``(extension, critical)`` pairs, added as given.
    :param signing_key: sign with this key instead of ``issuer_key`` (a forgery), keeping
        the issuer's name and key identifier.
    """
    if key is None:
        key = generate_key(FAST_KEY_TYPE)
    now = datetime.datetime.now(datetime.UTC)
    subject_key_identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    if issuer_certificate is None:
        issuer_name, authority_key_identifier = subject, subject_key_identifier
    else:
        issuer_name = issuer_certificate.subject
        authority_key_identifier = issuer_certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
    signer = signing_key or issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(subject_key_identifier, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                authority_key_identifier
            ),
            critical=False,
        )
    )
    if key_usage is not None:
        builder = builder.add_extension(_key_usage(set(key_usage)), critical=True)
    if extended_key_usage is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
        )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, signature_hash(signer)), key


def bad_user(ca: CertificateAuthority, defect: str, username: str = "alice") -> UserCredentials:
    """Credentials for ``username`` of ``ca``'s domain with one defect from BAD_CERTIFICATES.

    Everything else about the certificate is as the CA would issue it.
    """
    if defect not in BAD_CERTIFICATES:
        raise ValueError(f"unknown defect {defect!r}; see BAD_CERTIFICATES")
    identity = Identity(username, ca.domain)
    uri = x509.UniformResourceIdentifier(identity.uri)
    issuer_certificate: x509.Certificate | None = ca.issuing_certificate
    issuer_key: PrivateKey | None = ca.issuing_key
    chain = tuple(ca.chain)
    key: PrivateKey | None = None
    san: list[x509.GeneralName] | None = [uri]
    is_ca = False
    key_usage = ["digital_signature"]
    extended_key_usage: list[x509.ObjectIdentifier] | None = [ExtendedKeyUsageOID.CLIENT_AUTH]
    not_before, not_after = datetime.timedelta(hours=-1), datetime.timedelta(days=30)
    extra_extensions: list[tuple[x509.ExtensionType, bool]] = []
    signing_key: PrivateKey | None = None

    if defect == "expired":
        not_before, not_after = datetime.timedelta(days=-30), datetime.timedelta(days=-1)
    elif defect == "not-yet-valid":
        not_before, not_after = datetime.timedelta(days=1), datetime.timedelta(days=30)
    elif defect == "self-signed":
        issuer_certificate, issuer_key, chain = None, None, ()
    elif defect == "other-ca":
        impostor = make_ca(ca.domain, FAST_KEY_TYPE, label="impostor")
        issuer_certificate, issuer_key = impostor.issuing_certificate, impostor.issuing_key
        chain = tuple(impostor.chain)
    elif defect == "forged-signature":
        signing_key = generate_key(FAST_KEY_TYPE)
    elif defect == "no-client-auth":
        extended_key_usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    elif defect == "no-extended-key-usage":
        extended_key_usage = None
    elif defect == "no-digital-signature":
        key_usage = ["key_encipherment"]
    elif defect == "ca-leaf":
        is_ca, key_usage = True, ["digital_signature", "key_cert_sign"]
    elif defect == "no-identity":
        san = [x509.DNSName(f"{username}.{ca.domain}")]
    elif defect == "two-identities":
        san = [uri, x509.UniformResourceIdentifier(f"irp:mallory@{ca.domain}")]
    elif defect == "other-domain":
        san = [x509.UniformResourceIdentifier(f"irp:{username}@other.example")]
    elif defect == "weak-key":
        key = rsa_key(1024)
    elif defect == "long-chain":
        sub_ca, sub_ca_key = make_sub_ca(ca)
        issuer_certificate, issuer_key, chain = sub_ca, sub_ca_key, (sub_ca, *ca.chain)
    elif defect == "garbled-extension":
        # A subjectAltName whose contents are not DER.
        garbled = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x7f")
        san, extra_extensions = None, [(garbled, False)]
    elif defect == "unknown-critical-extension":
        unknown = x509.UnrecognizedExtension(_UNKNOWN_EXTENSION_OID, b"\x05\x00")
        extra_extensions = [(unknown, True)]

    certificate, key = build_certificate(
        issuer_certificate,
        issuer_key,
        subject=user_name(identity),
        key=key,
        san=san,
        ca=is_ca,
        key_usage=key_usage,
        extended_key_usage=extended_key_usage,
        not_before=not_before,
        not_after=not_after,
        extra_extensions=extra_extensions,
        signing_key=signing_key,
    )
    return UserCredentials(identity, key, certificate, chain)


def make_sub_ca(ca: CertificateAuthority) -> tuple[x509.Certificate, PrivateKey]:
    """A CA below ``ca``'s issuing CA, which forbids it (pathlen 0): a too-long chain."""
    return build_certificate(
        ca.issuing_certificate,
        ca.issuing_key,
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{ca.domain} sub-CA"),
            ]
        ),
        ca=True,
        key_usage=["key_cert_sign", "crl_sign"],
        extended_key_usage=None,
        san=None,
    )


#: A private-enterprise OID nobody processes (1.3.6.1.4.1.32473 is the documentation PEN).
_UNKNOWN_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.32473.1")


def _key_usage(flags: set[str]) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    unknown = flags - set(names)
    if unknown:
        raise ValueError(f"unknown key usage flags: {sorted(unknown)}")
    return x509.KeyUsage(
        **{name: name in flags for name in names}, encipher_only=False, decipher_only=False
    )
