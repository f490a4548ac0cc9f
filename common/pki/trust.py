"""Verifying user certificates against the IRP roots we trust.

A :class:`TrustStore` holds the self-signed roots of one or more IRP domains. Verifying a user
certificate builds a path from it, through the intermediates the peer presented, to one of
those roots, checks the path as RFC 5280 asks, and then checks the user's identity:

* every link is signed by the next certificate (matched by name and key identifier) with an
  accepted algorithm (no SHA-1 or MD5); the path ends at a root whose DER is in the store;
* every certificate, the root included, is valid at the given time;
* every issuer is a CA (basicConstraints CA:TRUE), may sign certificates (keyUsage
  keyCertSign, required), allows the path below it (pathLenConstraint), and, if it restricts
  extended key usages, allows clientAuth; there are at most ``max_chain_depth`` intermediates;
* the user certificate is not a CA, has keyUsage digitalSignature (required, without
  keyCertSign or cRLSign) and extendedKeyUsage clientAuth (required);
* no certificate carries a critical extension we do not process;
* every key passes :func:`common.pki.keys.check_public_key`;
* the certificate names exactly one valid ``irp:user@domain`` identity, and that domain is the
  domain the root the path ended at was trusted for: each root is bound to exactly one
  domain when it is added (:meth:`TrustStore.add_root`), so a root trusted for one domain
  never certifies users of another, whatever names its certificate carries.

Any failure raises :class:`common.pki.errors.CertificateInvalid` whose ``reason`` is one word
from :data:`common.pki.errors.CERTIFICATE_REJECTION_REASONS`.

This is our own path validation rather than ``cryptography.x509.verification``: that
verifier handles our URI-only subjectAltNames, but it applies the Web PKI profile, which
forbids Ed25519 keys and signatures (one of our key types), and it reports failures as
free text, not as reasons a peer can be told. The tests cross-check both verifiers on the
certificates both can judge.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from common.caches import RecentCache
from common.identity import (
    Identity,
    InvalidIdentity,
    check_domain,
    identity_from_certificate,
)
from common.pki.certificates import certificate_der as _der
from common.pki.errors import CertificateInvalid, WeakKey
from common.pki.keyfiles import fingerprint
from common.pki.keys import check_public_key

DEFAULT_MAX_CHAIN_DEPTH = 2
#: How many verified certificate-to-issuer signatures a trust store remembers.
VERIFIED_LINKS_CACHED = 10_000
#: A peer presenting more intermediates than this is refused before any path building.
MAX_PRESENTED_INTERMEDIATES = 8
#: How many verified paths (leaf and presented intermediates) a trust store remembers.
VERIFIED_PATHS_CACHED = 4096
#: Bound on the signature checks spent building paths, against crafted intermediates.
_MAX_PATH_BUILDING_STEPS = 64

_Extension = TypeVar("_Extension", bound=x509.ExtensionType)

_ACCEPTED_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
#: Critical extensions this module understands and checks; any other critical one is refused.
_PROCESSED_CRITICAL_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


@dataclass(frozen=True)
class VerifiedUser:
    """A user certificate that verified, and what it proves."""

    identity: Identity
    certificate: x509.Certificate
    #: The verified path: the user certificate, its issuers, and the trusted root last.
    chain: tuple[x509.Certificate, ...]
    #: SHA-256 fingerprint (64 lowercase hex digits) of the root the path ends at.
    root_fingerprint: str


class TrustStore:
    """The IRP roots we trust, possibly of several domains, and the verifier using them."""

    def __init__(
        self,
        roots: Sequence[x509.Certificate] = (),
        *,
        anchors: Iterable[tuple[str, x509.Certificate]] = (),
        max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH,
    ) -> None:
        """Trust ``anchors``, pairs of (domain, root) each bound to the domain it names,
        and ``roots``, each bound to the domain its own ``O`` attribute names (for roots
        whose domain nobody stated separately, such as a registry's own root)."""
        if max_chain_depth < 0:
            raise ValueError("max_chain_depth must not be negative")
        self._max_chain_depth = max_chain_depth
        self._roots: dict[bytes, x509.Certificate] = {}
        self._verified_links: RecentCache[tuple[bytes, bytes], bool] = RecentCache(VERIFIED_LINKS_CACHED)
        #: (leaf DER, presented intermediates' DER) -> the verified result and the time
        #: window in which every certificate of its path is valid: everything else the
        #: verification checks is a property of the exact bytes and of the roots.
        self._verified_paths: RecentCache[
            tuple[bytes, tuple[bytes, ...]], tuple[VerifiedUser, datetime.datetime, datetime.datetime]
        ] = RecentCache(VERIFIED_PATHS_CACHED)
        self._root_domains: dict[bytes, str] = {}
        #: Each root's SHA-256 fingerprint, computed once when it is trusted.
        self._root_fingerprints: dict[bytes, str] = {}
        for root in roots:
            self.add_root(root)
        for domain, root in anchors:
            self.add_root(root, domain)

    @classmethod
    def from_pem(
        cls, data: bytes, *, max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH
    ) -> TrustStore:
        """A store trusting every root in ``data`` (concatenated PEM certificates)."""
        return cls(x509.load_pem_x509_certificates(data), max_chain_depth=max_chain_depth)

    def add_root(self, certificate: x509.Certificate, domain: str | None = None) -> None:
        """Trust ``certificate`` as the root of ``domain``, and of that domain only.

        The domain is the one the root was trusted for (what the user or operator named);
        the certificate's own ``O`` attribute is not consulted then. With no ``domain``,
        the root's ``O`` attribute names it (use that only for roots whose domain is
        known to match, such as a registry's own). Raises :class:`ValueError` unless it is
        a self-signed CA certificate with an accepted key, and if the same root is already
        trusted for another domain (one root, one domain).
        """
        der = _der(certificate)
        if domain is None:
            domain = _root_domain(certificate)
        else:
            try:
                domain = check_domain(domain)
            except InvalidIdentity as problem:
                raise ValueError(str(problem)) from None
        bound = self._root_domains.get(der)
        if bound is not None and bound != domain:
            raise ValueError(
                f"this root is already trusted for {bound}; a root certifies one domain only"
            )
        try:
            certificate.verify_directly_issued_by(certificate)
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            check_public_key(certificate.public_key())
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, WeakKey):
            raise ValueError("a trusted root must be a self-signed CA certificate") from None
        except x509.ExtensionNotFound:
            raise ValueError("a trusted root must have basicConstraints CA:TRUE") from None
        if not constraints.value.ca:
            raise ValueError("a trusted root must have basicConstraints CA:TRUE")
        self._roots[der] = certificate
        self._root_domains[der] = domain
        self._root_fingerprints[der] = fingerprint(certificate)
        self._verified_paths.clear()  # a new root may offer another path

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trusted roots, in the order they were added."""
        return tuple(self._roots.values())

    def domain_of(self, root: x509.Certificate) -> str | None:
        """The domain ``root`` is trusted for, or None if it is not trusted."""
        return self._root_domains.get(_der(root))

    @property
    def domains(self) -> frozenset[str]:
        """The domains whose users this store can verify."""
        return frozenset(self._root_domains.values())

    @property
    def max_chain_depth(self) -> int:
        """The most intermediates allowed between a user certificate and its root."""
        return self._max_chain_depth

    def verify_user_certificate(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        *,
        now: datetime.datetime,
    ) -> VerifiedUser:
        """Verify a user certificate presented with ``intermediates``, at the time ``now``.

        Returns the verified identity and path; raises
        :class:`common.pki.errors.CertificateInvalid` with the reason for the first problem found.
        If several paths are possible, the first that passes every check wins, and if none
        does, the problem of the first complete path is reported.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        if len(intermediates) > MAX_PRESENTED_INTERMEDIATES:
            raise CertificateInvalid(
                "chain-too-long",
                f"more than {MAX_PRESENTED_INTERMEDIATES} intermediate certificates were"
                " presented",
            )
        leaf_der = _der(leaf)
        intermediates_der = tuple(_der(intermediate) for intermediate in intermediates)
        key = (leaf_der, intermediates_der)
        cached = self._verified_paths.get(key)
        if cached is not None and cached[1] <= now <= cached[2]:
            return cached[0]
        extensions = _ExtensionValues()
        extensions.of(leaf)
        builder = _PathBuilder(
            self._roots, intermediates, self._verified_links, extensions, intermediates_der=intermediates_der
        )
        first_failure: CertificateInvalid | None = None
        for path, root_der in builder.paths(leaf, leaf_der):
            try:
                verified = self._verify_path(path, root_der, now, extensions)
            except CertificateInvalid as failure:
                first_failure = first_failure or failure
                continue
            valid_from = max(certificate.not_valid_before_utc for certificate in verified.chain)
            valid_until = min(certificate.not_valid_after_utc for certificate in verified.chain)
            self._verified_paths.put(key, (verified, valid_from, valid_until))
            return verified
        if first_failure is not None:
            raise first_failure
        raise builder.failure()

    def _verify_path(
        self,
        path: tuple[x509.Certificate, ...],
        root_der: bytes,
        now: datetime.datetime,
        extensions: _ExtensionValues,
    ) -> VerifiedUser:
        leaf, issuers = path[0], path[1:]
        if len(issuers) - 1 > self._max_chain_depth:
            raise CertificateInvalid(
                "chain-too-long",
                f"the certificate is {len(issuers) - 1} intermediates away from its root;"
                f" at most {self._max_chain_depth} are allowed",
            )
        for certificate in path:
            _check_validity(certificate, now)
        for position, issuer in enumerate(issuers):
            _check_issuer(issuer, extensions, intermediates_below=position)
        _check_leaf_usage(leaf, extensions)
        for certificate in path:
            _check_key(certificate)
        identity = _check_identity(leaf, self._root_domains[root_der])
        return VerifiedUser(
            identity=identity,
            certificate=leaf,
            chain=path,
            root_fingerprint=self._root_fingerprints[root_der],
        )


class _PathBuilder:
    """Finds candidate paths from a leaf to a trusted root, checking each link's signature."""

    def __init__(
        self,
        roots: dict[bytes, x509.Certificate],
        intermediates: Sequence[x509.Certificate],
        verified_links: RecentCache[tuple[bytes, bytes], bool] | None = None,
        extensions: _ExtensionValues | None = None,
        *,
        intermediates_der: Sequence[bytes] | None = None,
    ) -> None:
        """``intermediates_der``, when the caller has it, is the DER of ``intermediates``."""
        self._roots = roots
        self._extensions = extensions if extensions is not None else _ExtensionValues()
        #: (child DER, issuer DER) pairs whose signature already verified: a signature
        #: check gives the same answer for the same bytes, so it is done once.
        self._verified_links = verified_links if verified_links is not None else RecentCache(VERIFIED_LINKS_CACHED)
        if intermediates_der is None:
            intermediates_der = [_der(intermediate) for intermediate in intermediates]
        self._candidates = [*roots.items(), *zip(intermediates_der, intermediates, strict=True)]
        self._steps = 0
        self._signature_problem: CertificateInvalid | None = None
        self._exhausted = False
        self._malformed_problem: CertificateInvalid | None = None

    def paths(
        self, leaf: x509.Certificate, leaf_der: bytes | None = None
    ) -> Iterator[tuple[tuple[x509.Certificate, ...], bytes]]:
        """Every path from ``leaf`` to a trusted root, depth-first, trusted roots tried
        first, each with the DER of the root it ends at."""
        if leaf_der is None:
            leaf_der = _der(leaf)
        yield from self._extend((leaf,), leaf_der, {leaf_der})

    def _extend(
        self, path: tuple[x509.Certificate, ...], child_der: bytes, used: set[bytes]
    ) -> Iterator[tuple[tuple[x509.Certificate, ...], bytes]]:
        child = path[-1]
        if len(path) > MAX_PRESENTED_INTERMEDIATES + 1:
            self._exhausted = True
            return
        for der, issuer in self._issuers_of(child, child_der, used):
            if der in self._roots:
                yield (*path, issuer), der
            else:
                yield from self._extend((*path, issuer), der, used | {der})

    def _issuers_of(
        self, child: x509.Certificate, child_der: bytes, used: set[bytes]
    ) -> Iterator[tuple[bytes, x509.Certificate]]:
        try:
            _check_signature_hash(child)
        except CertificateInvalid as problem:
            self._signature_problem = self._signature_problem or problem
            return
        seen: set[bytes] = set()
        for der, candidate in self._candidates:
            if der in used or der in seen or candidate.subject != child.issuer:
                continue
            seen.add(der)
            try:
                if not _key_identifiers_match(child, candidate, self._extensions):
                    continue
            except CertificateInvalid as problem:
                self._malformed_problem = self._malformed_problem or problem
                continue
            if self._steps >= _MAX_PATH_BUILDING_STEPS:
                self._exhausted = True
                return
            self._steps += 1
            link = (child_der, der)
            try:
                if link not in self._verified_links:
                    child.verify_directly_issued_by(candidate)
                    self._verified_links.put(link, True)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                self._signature_problem = self._signature_problem or CertificateInvalid(
                    "bad-signature",
                    f"the signature on {_subject_text(child)} does not verify with the key of"
                    f" its issuer {_subject_text(candidate)}",
                )
                continue
            yield der, candidate

    def failure(self) -> CertificateInvalid:
        """Why no path was found."""
        if self._signature_problem is not None:
            return self._signature_problem
        if self._malformed_problem is not None:
            return self._malformed_problem
        if self._exhausted:
            return CertificateInvalid(
                "chain-too-long", "no path to a trusted root within the allowed length"
            )
        return CertificateInvalid(
            "unknown-issuer", "the certificate was not issued by a CA this peer trusts"
        )


def _subject_text(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string()
    except ValueError:
        return "a certificate"


def _processed_extensions(certificate: x509.Certificate) -> x509.Extensions:
    """Parse the extensions, refusing garbled ones and unknown critical ones."""
    try:
        extensions = certificate.extensions
    except (ValueError, x509.DuplicateExtension, UnsupportedAlgorithm):
        raise CertificateInvalid(
            "malformed", f"{_subject_text(certificate)} has unreadable or duplicate extensions"
        ) from None
    for extension in extensions:
        if extension.critical and extension.oid not in _PROCESSED_CRITICAL_EXTENSIONS:
            raise CertificateInvalid(
                "malformed",
                f"{_subject_text(certificate)} has a critical extension this verifier does not"
                f" process ({extension.oid.dotted_string})",
            )
    return extensions


class _ExtensionValues:
    """The extension values of the certificates of one verification, by class: each
    certificate's extensions are read and checked (:func:`_processed_extensions`) once,
    however many checks and candidate links ask for them. A certificate with unreadable
    or unknown critical extensions is refused on every ask, as it is the first time."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        #: id(certificate) -> (the certificate, kept so the id stays its own; its values)
        self._values: dict[int, tuple[x509.Certificate, dict[type[x509.ExtensionType], x509.ExtensionType]]] = {}

    def of(self, certificate: x509.Certificate) -> dict[type[x509.ExtensionType], x509.ExtensionType]:
        """The certificate's extension values by class (CertificateInvalid if unusable)."""
        entry = self._values.get(id(certificate))
        if entry is None:
            values = {type(extension.value): extension.value for extension in _processed_extensions(certificate)}
            entry = self._values[id(certificate)] = (certificate, values)
        return entry[1]

    def get(self, certificate: x509.Certificate, kind: type[_Extension]) -> _Extension | None:
        """The certificate's extension of class ``kind``, or None."""
        return self.of(certificate).get(kind)  # type: ignore[return-value]


def _key_identifiers_match(
    child: x509.Certificate, issuer: x509.Certificate, extensions: _ExtensionValues
) -> bool:
    """False only if both key identifiers are present and differ (a different CA key)."""
    authority = extensions.get(child, x509.AuthorityKeyIdentifier)
    subject = extensions.get(issuer, x509.SubjectKeyIdentifier)
    if authority is None or authority.key_identifier is None or subject is None:
        return True
    return authority.key_identifier == subject.digest


def _check_validity(certificate: x509.Certificate, now: datetime.datetime) -> None:
    if now < certificate.not_valid_before_utc:
        raise CertificateInvalid(
            "not-yet-valid",
            f"{_subject_text(certificate)} is not valid before"
            f" {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    if now > certificate.not_valid_after_utc:
        raise CertificateInvalid(
            "expired",
            f"{_subject_text(certificate)} expired on"
            f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        )


def _check_signature_hash(certificate: x509.Certificate) -> None:
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CertificateInvalid(
            "bad-signature", f"{_subject_text(certificate)} uses an unknown signature algorithm"
        ) from None
    if algorithm is not None and not isinstance(algorithm, _ACCEPTED_SIGNATURE_HASHES):
        raise CertificateInvalid(
            "bad-signature",
            f"{_subject_text(certificate)} is signed with the weak hash {algorithm.name}",
        )


def _check_issuer(
    issuer: x509.Certificate, extensions: _ExtensionValues, *, intermediates_below: int
) -> None:
    constraints = extensions.get(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CertificateInvalid("wrong-usage", f"{_subject_text(issuer)} is not a CA certificate")
    usage = extensions.get(issuer, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise CertificateInvalid("wrong-usage", f"{_subject_text(issuer)} may not sign certificates")
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise CertificateInvalid(
            "chain-too-long",
            f"{_subject_text(issuer)} allows {constraints.path_length} intermediate CAs below"
            f" it, not {intermediates_below}",
        )
    extended_usage = extensions.get(issuer, x509.ExtendedKeyUsage)
    if extended_usage is not None and not _allows_client_auth(extended_usage):
        raise CertificateInvalid(
            "wrong-usage",
            f"{_subject_text(issuer)} may not issue client authentication certificates",
        )


def _allows_client_auth(usage: x509.ExtendedKeyUsage) -> bool:
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage or (
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage
    )


def _check_leaf_usage(leaf: x509.Certificate, extensions: _ExtensionValues) -> None:
    constraints = extensions.get(leaf, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise CertificateInvalid(
            "wrong-usage", "a CA certificate cannot identify a user (basicConstraints CA:TRUE)"
        )
    usage = extensions.get(leaf, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        raise CertificateInvalid(
            "wrong-usage", "the certificate's key usage does not allow digital signatures"
        )
    if usage.key_cert_sign or usage.crl_sign:
        raise CertificateInvalid(
            "wrong-usage", "a user certificate may not sign certificates or CRLs"
        )
    extended_usage = extensions.get(leaf, x509.ExtendedKeyUsage)
    if extended_usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in extended_usage:
        raise CertificateInvalid(
            "wrong-usage", "the certificate is not for client authentication (no clientAuth)"
        )


def _check_key(certificate: x509.Certificate) -> None:
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateInvalid(
            "malformed", f"{_subject_text(certificate)} has an unreadable public key"
        ) from None
    try:
        check_public_key(key)
    except WeakKey as weak:
        raise CertificateInvalid(
            "weak-key", f"{_subject_text(certificate)}: {weak.message}"
        ) from None


def _check_identity(leaf: x509.Certificate, domain: str) -> Identity:
    try:
        identity = identity_from_certificate(leaf)
    except InvalidIdentity as problem:
        raise CertificateInvalid("bad-identity", str(problem)) from None
    if identity.domain != domain:
        raise CertificateInvalid(
            "bad-identity",
            f"the certificate names {identity}, but its CA certifies users of {domain} only",
        )
    return identity


def check_anchor(root: x509.Certificate, domain: str) -> str:
    """Check that ``root`` may be trusted for ``domain``; return the domain (normalised).

    Raises :class:`ValueError`, with a readable reason, unless ``root`` is a self-signed CA
    certificate with an accepted key whose stated domain (its one ``O`` attribute) is
    ``domain``. The store binds a root to the domain it was trusted for whatever it says;
    this check refuses, when a root is first trusted, one that claims another domain.
    """
    try:
        domain = check_domain(domain)
    except InvalidIdentity as problem:
        raise ValueError(str(problem)) from None
    names = [str(value.value) for value in root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if [name.lower() for name in names] != [domain]:
        said = f"says {', '.join(names)}" if names else "names no domain"
        raise ValueError(f"that root CA is not {domain}'s: its O attribute {said}")
    TrustStore(anchors=[(domain, root)])
    return domain


def _root_domain(certificate: x509.Certificate) -> str:
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise ValueError("a trusted root must name its domain in exactly one O attribute")
    try:
        return check_domain(values[0].value)
    except InvalidIdentity:
        raise ValueError(
            f"a trusted root's O attribute must be a domain, not {values[0].value!r}"
        ) from None
