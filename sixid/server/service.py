"""The sixid server as the registry hosts it: :class:`SixidServer`.

The registry (``twistd irp --sixid``, :mod:`irp.server.service`) builds it with its domain,
its store (a :class:`~sixid.server.store.SixidStore`), its Ed25519 record-signing key and
that key's certificate chain, its certificate check (its CA, its CRL) and the settings,
then listens with :meth:`SixidServer.factory` on its own TLS server context and calls
:meth:`SixidServer.start`. The server never imports :mod:`irp`.

Running, it sweeps rows past their ``keep_until`` every minute and follows the records
other processes (workers sharing the database) commit, so that their watchers here are
told; its own commits are told to the watchers at once by the operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from common.tls import ServerTLS
from sixid.server.operations import CertificateChecker, Operations, SixidSettings
from sixid.server.protocol import SixidFactory
from sixid.server.store import SixidStore
from sixid.server.watches import WatchHub
from sixid.wire import SIGNER_CERTIFICATES

log = Logger()

#: How often rows past their keep_until are deleted, seconds.
SWEEP_INTERVAL = 60.0


class AnonymousServerTLS(ServerTLS):
    """Server-side TLS connections that ask the client for no certificate (sixid's
    clients are anonymous), whatever the shared context asks by default."""

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802
        """A new connection for one accepted socket, without a certificate request."""
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_NONE, None)
        return connection


class SixidServer:
    """sixid on the registry (see the module docs)."""

    def __init__(
        self,
        *,
        domain: str,
        store: SixidStore,
        signing_key: Ed25519PrivateKey,
        signer_chain: Sequence[x509.Certificate],
        check_certificate: CertificateChecker,
        settings: SixidSettings,
        reactor: Any,
    ) -> None:
        _check_signer(signing_key, signer_chain)
        self.domain = domain
        self.store = store
        self.settings = settings
        self.reactor = reactor
        self.hub = WatchHub(store, reactor)
        self.operations = Operations(
            domain=domain,
            store=store,
            signing_key=signing_key,
            signer_chain=[certificate.public_bytes(serialization.Encoding.DER) for certificate in signer_chain],
            check_certificate=check_certificate,
            settings=settings,
            hub=self.hub,
            clock=reactor,
        )
        self.connections = SixidFactory(self.operations, reactor, settings.limits)
        self._sweeper: LoopingCall | None = None
        self._following = False

    def set_signer(self, signing_key: Ed25519PrivateKey, signer_chain: Sequence[x509.Certificate]) -> None:
        """Sign and answer ``<signer/>`` with these from now on (a renewed record-signing
        certificate)."""
        _check_signer(signing_key, signer_chain)
        self.operations.set_signer(signing_key, [certificate.public_bytes(serialization.Encoding.DER) for certificate in signer_chain])

    def factory(self, tls_context: SSL.Context) -> TLSMemoryBIOFactory:
        """A TLS-wrapped factory on ``tls_context`` (the registry's server certificate;
        no client certificate is asked for). Every listening port shares the connection
        counts."""
        return TLSMemoryBIOFactory(AnonymousServerTLS(tls_context), False, self.connections)  # type: ignore[arg-type]

    def start(self) -> None:
        """Sweep every minute; follow other processes' changes."""
        if not self._following:
            self.store.follow_sixid_changes(self._followed)
            self._following = True
        if self._sweeper is None:
            sweeper = LoopingCall(self.sweep)
            sweeper.clock = self.reactor
            sweeper.start(SWEEP_INTERVAL, now=False).addErrback(lambda failure: log.failure("The sixid sweeper stopped", failure))
            self._sweeper = sweeper

    def _followed(self, sixid: str, seq: int) -> None:
        self.hub.followed(sixid, seq)

    def sweep(self) -> Deferred[int]:
        """Delete the rows past their ``keep_until`` now (the sweeper does every minute);
        fire with how many (0 when it failed: logged)."""
        sweeping = self.store.sweep_sixids(int(self.reactor.seconds()))

        def swept(count: int) -> int:
            if count:
                log.info("Swept {count} sixid records past their replay window", count=count)
            return count

        def failed(failure: Failure) -> int:
            log.failure("Sweeping the sixid records failed", failure)
            return 0

        return sweeping.addCallbacks(swept, failed)

    def stop(self) -> None:
        """Stop sweeping and following; the watches end (close the connections with
        :meth:`close_connections`)."""
        if self._following:
            self.store.unfollow_sixid_changes(self._followed)
            self._following = False
        if self._sweeper is not None:
            if self._sweeper.running:
                self._sweeper.stop()
            self._sweeper = None
        self.hub.stop()

    def close_connections(self, grace: float = 5.0) -> Deferred[None]:
        """Close every connection (aborting those still open after ``grace`` seconds)."""
        return Deferred.fromCoroutine(self.connections.close_all(grace))

    def connection_count(self) -> int:
        """Connections open now."""
        return len(self.connections.open)


def _check_signer(signing_key: Ed25519PrivateKey, signer_chain: Sequence[x509.Certificate]) -> None:
    """ValueError unless ``signer_chain`` is three certificates, the first for ``signing_key``."""
    if len(signer_chain) != SIGNER_CERTIFICATES:
        raise ValueError("the signer chain is the record-signing certificate, its issuing CA and the root")
    signing_public = signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    leaf_public = signer_chain[0].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if signing_public != leaf_public:
        raise ValueError("the record-signing certificate is not for the record-signing key")
