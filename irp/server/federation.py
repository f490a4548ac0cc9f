"""The registry's federated domains: the root CA each is trusted for, and the CRLs of
their issuing CAs, fetched from their registries to check their users' certificates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from common.pki.revocation import RevocationChecker
from common.pki.trust import check_anchor
from irp import errors
from irp.client import connect, connect_domain

#: Seconds to connect to a federated domain's registry.
CONNECT_TIMEOUT = 15


def federated_roots(
    entries: Sequence[x509.Certificate | tuple[str, x509.Certificate]], own_domain: str
) -> dict[str, x509.Certificate]:
    """The federated domains' roots, by the one domain each is trusted for.

    ``entries`` are (domain, root) pairs, or bare roots whose ``O`` attribute names their
    domain. A root must state the domain it is trusted for, may not be trusted for
    ``own_domain``, and may not be trusted for two domains (:class:`InvalidArgument`).
    """
    roots: dict[str, x509.Certificate] = {}
    for entry in entries:
        if isinstance(entry, tuple):
            stated, root = entry
        else:
            root = entry
            names = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            if not names:
                raise errors.InvalidArgument("a federated root CA names no domain (O attribute)")
            stated = str(names[0].value)
        try:
            domain = check_anchor(root, stated)
        except ValueError as problem:
            raise errors.InvalidArgument(f"cannot trust a root CA for {stated}: {problem}") from None
        if domain == own_domain:
            raise errors.InvalidArgument(
                f"{domain} is this registry's own domain: only its own root CA certifies its users"
            )
        if domain in roots and roots[domain] != root:
            raise errors.InvalidArgument(f"two root CAs are given for {domain}")
        if any(other == root and name != domain for name, other in roots.items()):
            raise errors.InvalidArgument(f"the root CA of {domain} is also given for another domain")
        roots[domain] = root
    return roots


class FederatedRegistries:
    """The registries of the federated domains, asked anonymously for their CRLs."""

    def __init__(
        self,
        roots: Mapping[str, x509.Certificate],
        registries: Mapping[str, tuple[str, int]],
        resolver: Any,
        reactor: Any,
    ) -> None:
        self.roots = roots
        #: Where a domain's registry is (others are found by DNS SRV, with ``resolver``).
        self.registries = registries
        self.resolver = resolver
        self.reactor = reactor

    def revocation_checker(self) -> RevocationChecker:
        """A checker of federated users' certificates against these registries' CRLs."""
        return RevocationChecker(self.issuing_crl, self.reactor, fetch_issuer=self.issuer_crl)

    async def _connect(self, domain: str) -> Any:
        root = self.roots[domain]
        server = self.registries.get(domain)
        if server is not None:
            return await connect(self.reactor, server[0], server[1], domain=domain, trust_roots=[root], timeout=CONNECT_TIMEOUT)
        return await connect_domain(self.reactor, domain, resolver=self.resolver, trust_roots=[root], timeout=CONNECT_TIMEOUT)

    async def issuing_crl(self, domain: str) -> x509.CertificateRevocationList:
        """The current issuing CRL of a federated domain, from its registry."""
        client = await self._connect(domain)
        try:
            for info in await client.get_crls():
                if info.issuer == "issuing":
                    return info.crl
            raise errors.ServerVerificationFailed(f"the registry of {domain} returned no issuing CRL")
        finally:
            client.close()

    async def issuer_crl(self, domain: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        """The CRL of a federated domain's (retired) issuing CA ``issuer``."""
        client = await self._connect(domain)
        try:
            return await client.get_crl_of(issuer)  # type: ignore[no-any-return]
        finally:
            client.close()
