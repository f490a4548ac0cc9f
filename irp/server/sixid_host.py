"""The registry hosting sixid (``twistd irp --sixid``, issue 13): the parts the registry
passes to :class:`sixid.server.service.SixidServer`.

:class:`RegistryCertificateChecker` is the registry's check of a certificate chain a
registration carries: the chain must verify to this domain's own root CA (its issuing CA
completing it), and the leaf must be a certificate this registry issued that is good now
(not revoked, not expired): what a certificate login of this domain's users accepts (see
:mod:`irp.server.auth`). :func:`build_sixid_server` builds the server on the registry's
domain, store, record-signing key and chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet.defer import Deferred

from common.identity import Identity
from common.pki import errors as pki_errors
from common.pki.keyfiles import fingerprint
from common.pki.trust import TrustStore
from sixid.server.service import SixidServer, SixidSettings

if TYPE_CHECKING:
    from irp.server.credentials import ServerCredentials
    from irp.server.registry import Registry


class RegistryCertificateChecker:
    """Checks a registration's certificate chain (leaf first) for this registry's domain:
    the identity the leaf certifies, or a :class:`common.pki.errors.PKIError`."""

    def __init__(self, registry: Registry, root: x509.Certificate, intermediates: Sequence[x509.Certificate]) -> None:
        self.registry = registry
        #: Only this domain's root: a federated domain's users register with their own
        #: registry.
        self.trust = TrustStore(anchors=[(registry.domain, root)])
        self.intermediates = list(intermediates)

    def __call__(self, chain: Sequence[x509.Certificate], now: float) -> Deferred[Identity]:
        """Check ``chain`` at ``now`` (Unix seconds)."""
        return Deferred.fromCoroutine(self._check(list(chain), now))

    async def _check(self, chain: list[x509.Certificate], now: float) -> Identity:
        if not chain:
            raise pki_errors.CertificateInvalid("malformed", "no certificate was given")
        leaf = chain[0]
        domain = self.registry.domain
        verified = self.trust.verify_user_certificate(
            leaf, [*chain[1:], *self.intermediates], now=datetime.fromtimestamp(now, timezone.utc)
        )
        if verified.identity.domain != domain:
            raise pki_errors.CertificateInvalid("bad-identity", f"the certificate names a user of {verified.identity.domain}, not of {domain}")
        # The registry's own record of what its CA issued says whether it was revoked
        # (its CRL is made from it) and who owns it (a deleted user's are revoked).
        info = await self.registry.auth.certificate(fingerprint(leaf))
        if info is None or info.origin != "issued":
            raise pki_errors.CertificateInvalid("unknown-issuer", f"the certificate was not issued by the registry of {domain}")
        status = info.status(now)
        if status == "revoked":
            raise pki_errors.CertificateRevoked(f"the certificate of {info.username}@{domain} has been revoked")
        if status != "good":
            raise pki_errors.CertificateInvalid(status, f"the certificate of {info.username}@{domain} is {status}")
        return Identity(info.username, domain)


def signer_chain(credentials: ServerCredentials) -> list[x509.Certificate]:
    """The record-signing certificate, its issuing CA and the root."""
    ca = credentials.ca
    return [credentials.signing_certificate, ca.issuing_certificate, ca.root_certificate]


def build_sixid_server(
    registry: Registry, credentials: ServerCredentials, settings: SixidSettings, reactor: Any
) -> SixidServer:
    """The sixid server of ``registry``: its domain and store, its record-signing key and
    that key's chain (record-signing, issuing CA, root), its certificate check."""
    ca = credentials.ca
    return SixidServer(
        domain=registry.domain,
        store=registry.store,
        signing_key=credentials.signing_key,
        signer_chain=signer_chain(credentials),
        check_certificate=RegistryCertificateChecker(registry, ca.root_certificate, [issuing for issuing, _key in ca.issuers]),
        settings=settings,
        reactor=reactor,
    )
