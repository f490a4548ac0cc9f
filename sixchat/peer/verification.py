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

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from common.identity import Identity
from common.pki.certificates import certificate_der
from common.pki.errors import CertificateInvalid, CertificateRevoked, RevocationUnknown
from common.pki.revocation import RevocationChecker
from common.pki.trust import TrustStore
from sixchat import errors
from sixchat.agent.store import AgentStore

log = Logger()

POLICIES = ("contacts", "domain", "anyone")

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
        except CertificateInvalid as error:
            raise errors.from_pki(error, about=str(identity)) from None
        if verified.identity != identity:
            raise errors.IdentityMismatch(f"the certificate names {verified.identity}, not {identity}")
        try:
            await self.revocation.check(identity.domain, leaf, verified.chain[1])
        except (CertificateRevoked, RevocationUnknown) as error:
            raise errors.from_pki(error) from None
        # The DER the trust store just used is kept: hashing it is the fingerprint,
        # without encoding the certificate again.
        digest = hashlib.sha256(certificate_der(leaf)).hexdigest()
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
