"""The registry hosting its HTTP endpoint (``twistd irp --http-listen``): binding, start,
daily renewal of the OCSP responder certificates, stop. Called from
:class:`irp.server.service.RegistryService` in a few lines; only the main process serves
HTTP (workers of ``--workers`` issue certificates naming it, but do not listen).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from common.startup import EarlyPorts, describe_port
from irp.server.ca.issuance import PublicationURLs
from irp.server.http.credentials import load_or_issue_responders
from irp.server.http.ocsp import Responder
from irp.server.http.publisher import Publisher
from irp.server.http.responder import OCSPResponder
from irp.server.http.site import PKIResource, PKISite

if TYPE_CHECKING:
    from irp.server.registry import Registry
    from irp.server.service import RegistrySettings

log = Logger()

#: How often the responder certificates are checked for renewal, in seconds.
RENEW_INTERVAL = 86_400.0


def publication_of(settings: RegistrySettings) -> PublicationURLs | None:
    """The URLs certificates name, when ``--http-url`` (or ``--http-listen``) is given."""
    url = getattr(settings, "http_url", None)
    return None if not url else PublicationURLs(url)


class HTTPHost:
    """The HTTP endpoint of one registry process."""

    def __init__(self, settings: RegistrySettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self.early: EarlyPorts | None = None
        self.ports: list[IListeningPort] = []
        self.responder: OCSPResponder | None = None
        self.registry: Registry | None = None
        self._loop: LoopingCall | None = None

    def bind(self) -> EarlyPorts:
        """Bind the listening ports (connections wait until :meth:`start`)."""
        if self.early is None:
            self.early = EarlyPorts(self.reactor, self.settings.http_listen, "HTTP")
        return self.early

    async def listen(self) -> None:
        """Wait for the ports to be bound; raise if one could not be."""
        self.ports.extend(await self.bind().ports())

    async def start(self, registry: Registry) -> None:
        """Load or issue the responder certificates and serve ``registry``'s CA."""
        self.registry = registry
        responders = await self._load_responders()
        self.responder = OCSPResponder(
            responders,
            registry.store,
            lambda: datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.UTC),
            crl_lifetime=registry.config.crl_lifetime,
        )
        resource = PKIResource(Publisher(registry, self.reactor), self.responder, self.reactor.seconds)
        self.bind().gate.open(PKISite(resource, self.reactor))
        log.info(
            "Serving CRLs, CA certificates and OCSP over HTTP on {endpoints}; certificates name {url}",
            endpoints=", ".join(describe_port(port) for port in self.ports),
            url=self.settings.http_url,
        )
        host = urlsplit(self.settings.http_url or "").hostname
        if host in ("localhost", "127.0.0.1", "::1"):
            log.warn(
                "Certificates name {url}, which only this machine can reach: give --http-url with"
                " the public URL clients will use",
                url=self.settings.http_url,
            )
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self.reactor
        self._loop.start(RENEW_INTERVAL, now=False)

    async def _load_responders(self) -> list[Responder]:
        """Load the responder credentials (in a thread: files, a lock, maybe a new key);
        log each certificate issued or renewed."""
        assert self.registry is not None
        issued: list[x509.Certificate] = []
        responders: list[Responder] = await deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            load_or_issue_responders,
            self.settings.data_dir,
            self.registry.ca,
            key_type=self.settings.key_type,
            issued=issued,
        )
        for certificate in issued:
            log.info(
                "Issued the OCSP responder certificate of {issuer}, valid until {until}",
                issuer=certificate.issuer.rfc4514_string(),
                until=certificate.not_valid_after_utc.isoformat(),
            )
        return responders

    async def _renew(self) -> None:
        """The daily check: renewed responder certificates are used at once."""
        assert self.responder is not None
        try:
            responders = await self._load_responders()
        except Exception:  # noqa: BLE001 - logged; tried again the next day
            log.failure("Renewing the OCSP responder certificates failed; trying again in a day")
            return
        if [r.certificate for r in responders] != [r.certificate for r in self.responder.responders]:
            self.responder.responders = responders

    def release(self) -> None:
        """The registry could not start: let the ports go."""
        if self.ports:
            for port in self.ports:
                port.stopListening()
        elif self.early is not None:
            self.early.release()
        self.ports.clear()
        self.early = None

    def stop(self) -> Deferred[Any]:
        """Stop listening and renewing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        stopping = [Deferred.fromCoroutine(_stopped(port)) for port in self.ports]
        self.ports.clear()
        return DeferredList(stopping)


async def _stopped(port: IListeningPort) -> None:
    waiting = port.stopListening()
    if waiting is not None:
        await waiting
