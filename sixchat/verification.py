"""Deciding whether an authenticated peer may talk to us.

The handshake core proves the peer holds the key of the certificate it presented. This
module decides the rest, in this order, and raises the matching SixChat error:

1. the chain reaches a root we trust (our domain's, or another domain's trusted explicitly
   by fingerprint), is valid now and names exactly one identity of that root's domain;
2. the certificate is not revoked, by the issuing CA's current CRL (fetched from the
   peer's registry, verified, cached until its next update or for at most ``max_age``; a
   stale CRL is used for a grace period if the registry cannot be reached, and with no
   CRL at all we refuse);
3. for a dialled peer: the certificate is one the peer's registry holds for them now
   (fingerprint), and the identity is the one we dialled;
4. for an incoming peer: it is not blocked, and it is acceptable under our policy
   (``contacts``: only contacts; ``domain``: contacts and users of our domain;
   ``anyone``: anyone with a valid certificate), and if we pinned fingerprints for the
   contact, the certificate is one of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from irp import errors as irp_errors
from irp.identity import Identity
from irp.keyfiles import fingerprint
from irp.trust import TrustStore
from sixchat import errors
from sixchat.store import AgentStore

log = Logger()

POLICIES = ("contacts", "domain", "anyone")

CRLFetcher = Callable[[str], Awaitable[x509.CertificateRevocationList]]


@dataclass
class _CachedCRL:
    crl: x509.CertificateRevocationList
    next_update: datetime
    fetched_at: datetime


class RevocationChecker:
    """Keeps each trusted domain's issuing CRL and answers "is this revoked?".

    A CRL is used until its next update, but fetched again once it is older than
    ``max_age`` (registries publish a new CRL at every revocation, so this bounds how long
    a revocation goes unnoticed); None keeps it until its next update.
    """

    def __init__(
        self,
        fetch: CRLFetcher,
        clock: Any,
        *,
        stale_grace: timedelta = timedelta(days=3),
        max_age: timedelta | None = timedelta(minutes=5),
    ) -> None:
        self.fetch = fetch
        self.clock = clock
        self.stale_grace = stale_grace
        self.max_age = max_age
        self._cache: dict[str, _CachedCRL] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def forget(self, domain: str) -> None:
        """Drop a cached CRL (to force a fetch on the next check)."""
        self._cache.pop(domain, None)

    async def check(self, domain: str, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
        """Raise PeerRejected(revoked) if ``certificate`` is on its CA's CRL."""
        crl = await self._current(domain, issuer)
        if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            raise errors.PeerRejected(
                f"the certificate of {domain} serial {certificate.serial_number:x} is revoked", reason="revoked"
            )

    async def _current(self, domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        now = self._now()
        cached = self._cache.get(domain)
        if cached is not None and now < cached.next_update and (self.max_age is None or now < cached.fetched_at + self.max_age):
            return cached.crl
        try:
            crl = await self.fetch(domain)
        except irp_errors.IRPError as error:
            if cached is not None and now < cached.next_update + self.stale_grace:
                log.warn("Using a stale CRL of {domain}: {error}", domain=domain, error=str(error))
                return cached.crl
            raise errors.PeerRejected(
                f"cannot check revocation: the registry of {domain} is unreachable ({error.message})",
                reason="untrusted-ca",
            ) from None
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise errors.PeerRejected(f"the CRL of {domain} does not verify", reason="untrusted-ca")
        next_update = crl.next_update_utc or (now + timedelta(hours=1))
        self._cache[domain] = _CachedCRL(crl, next_update, now)
        return crl


FingerprintSource = Callable[[Identity], Awaitable[set[str]]]


class PeerVerifier:
    """Everything the agent checks about a peer after the handshake proved its key."""

    def __init__(
        self,
        trust: TrustStore,
        revocation: RevocationChecker,
        store: AgentStore,
        clock: Any,
        *,
        policy: str = "contacts",
        home_domain: str,
        known_intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        self.trust = trust
        self.revocation = revocation
        self.store = store
        self.clock = clock
        self.policy = policy
        self.home_domain = home_domain
        self.known_intermediates = list(known_intermediates)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    async def verify(
        self,
        identity: Identity,
        chain: Sequence[x509.Certificate],
        *,
        dialled: Identity | None = None,
        expected_fingerprints: set[str] | None = None,
    ) -> None:
        """Raise a SixChatError unless the peer may talk to us (see the module docs)."""
        leaf = chain[0]
        try:
            verified = self.trust.verify_user_certificate(
                leaf, [*chain[1:], *self.known_intermediates], now=self._now()
            )
        except irp_errors.CertificateInvalid as error:
            if error.reason == "unknown-issuer":
                raise errors.PeerRejected(f"{identity}: {error.message}", reason="untrusted-ca") from None
            if error.reason == "expired":
                raise errors.PeerRejected(f"{identity}: {error.message}", reason="expired") from None
            raise errors.CertificateInvalid(f"{identity}: {error.message} ({error.reason})") from None
        if verified.identity != identity:
            raise errors.IdentityMismatch(f"the certificate names {verified.identity}, not {identity}")
        await self.revocation.check(identity.domain, leaf, verified.chain[1])
        digest = fingerprint(leaf)
        contact = await self.store.get_contact(identity)
        if contact is not None and contact.fingerprints and digest not in contact.fingerprints:
            raise errors.PeerRejected(
                f"{identity} presented a certificate that is not one you pinned", reason="policy"
            )
        if dialled is not None:
            if identity != dialled:
                raise errors.IdentityMismatch(f"dialled {dialled} but reached {identity}")
            if expected_fingerprints is not None and digest not in expected_fingerprints:
                raise errors.IdentityMismatch(
                    f"{identity} presented a certificate their registry does not hold for them now"
                )
            return
        if contact is not None and contact.blocked:
            raise errors.PeerRejected(f"{identity} is blocked", reason="denied")
        if self.policy == "anyone":
            return
        if contact is not None:
            return
        if self.policy == "domain" and identity.domain == self.home_domain:
            return
        raise errors.PeerRejected(f"{identity} is not a contact", reason="not-a-contact")
