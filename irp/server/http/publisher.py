"""What the HTTP endpoint serves, by name: CRLs, CA certificates, the database's health.

CRLs are those IRP's ``get-crl`` serves (:meth:`CertificateOps.current_crls
<irp.server.ops.certificates.CertificateOps.current_crls>`: built and stored by the store,
shared by the processes), kept here while no revocation happened and until the last
quarter of their life; a retired issuing CA's CRL is stored under its label
(``issuing-<16 hex>``) and signed with its key. No Twisted web here.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from common.pki.certificates import issuing_crl_name
from common.pki.keyfiles import PrivateKey
from irp.server.http.credentials import issuers_of
from irp.server.ops.certificates import CertificateOps

if TYPE_CHECKING:
    from irp.server.registry import Registry

#: Seconds the database has to answer the health check's read.
HEALTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Published:
    """A CRL or certificate to serve: DER bytes, when it was made, until when it may be
    cached (None: a CA certificate, cached a day)."""

    der: bytes
    made: datetime.datetime
    expires: datetime.datetime | None = None


class Publisher:
    """The CRLs and CA certificates of ``registry``'s CA, by name (see docs/http.rst)."""

    def __init__(self, registry: Registry, reactor: Any) -> None:
        self.registry = registry
        self.reactor = reactor
        self._crls: dict[str, tuple[int, Published]] = {}

    def _issuers(self) -> dict[str, tuple[x509.Certificate, PrivateKey]]:
        """The issuing CAs by label, the current one also as ``issuing``."""
        issuers = issuers_of(self.registry.ca)
        named = {issuing_crl_name(certificate): (certificate, key) for certificate, key in issuers}
        named["issuing"] = issuers[0]
        return named

    def certificate(self, name: str) -> Published | None:
        """The CA certificate named ``name`` (``root``, ``issuing`` or an issuing CA's
        label), or None."""
        ca = self.registry.ca
        if name == "root":
            certificate = ca.root_certificate
        else:
            found = self._issuers().get(name)
            if found is None:
                return None
            certificate = found[0]
        return Published(certificate.public_bytes(Encoding.DER), certificate.not_valid_before_utc)

    async def crl(self, name: str) -> Published | None:
        """The current CRL named ``name`` (``root``, ``issuing`` or an issuing CA's
        label), or None; may raise :class:`irp.errors.Unavailable`."""
        issuers = self._issuers()
        if name != "root" and name not in issuers:
            return None
        current = issuing_crl_name(issuers["issuing"][0])
        key = "issuing" if name == current else name
        generation = await self.registry.store.revocation_generation()
        kept = self._crls.get(key)
        now = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.UTC)
        if kept is not None and kept[0] == generation:
            published, expires = kept[1], kept[1].expires
            if expires is not None and now < expires - (expires - published.made) / 4:
                return published
        if key in ("issuing", "root"):
            for stored_issuer, _number, _next_update, der in await CertificateOps(self.registry).current_crls():
                self._keep(stored_issuer, generation, der)
        else:
            certificate, private_key = issuers[key]
            _name, _number, _next_update, der = await CertificateOps(self.registry).issuing_crl(certificate, private_key)
            self._keep(key, generation, der)
        return self._crls[key][1]

    def _keep(self, name: str, generation: int, der: bytes) -> None:
        crl = x509.load_der_x509_crl(der)
        self._crls[name] = (generation, Published(der, crl.last_update_utc, crl.next_update_utc))

    async def health(self) -> str | None:
        """None when the database answers a trivial read within :data:`HEALTH_TIMEOUT`
        seconds, else why not (one line)."""
        try:
            reading = self.registry.store.security_generation()
            reading.addTimeout(HEALTH_TIMEOUT, self.reactor)
            await reading
        except Exception as error:  # noqa: BLE001 - any failure is an unhealthy database
            from twisted.internet.defer import TimeoutError as DeferredTimeout

            from irp.errors import Unavailable

            if isinstance(error, DeferredTimeout):
                return f"the database did not answer within {HEALTH_TIMEOUT:g} seconds"
            if isinstance(error, Unavailable):
                return "the database is unavailable"
            return f"reading the database failed: {error.__class__.__name__}: {error}"
        return None
