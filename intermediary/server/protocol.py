"""The intermediary's Twisted protocol: a thin adapter from TLS bytes to the operations.

The connection's logic is the sans-I/O core :class:`intermediary.server.connection.Connection`
and the generic adapter :class:`common.rpc.protocol.RpcProtocol` feeds it the transport's
events and performs its actions; this module adds what is the intermediary's own: the
client certificate checked when TLS is up
(:class:`~intermediary.server.senders.SenderVerifier`), requests run on
:class:`~intermediary.server.operations.Operations` as the caller, pushes, and the
subscription and reservation released at the end.
"""

from __future__ import annotations

from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.identity import Identity
from common.rpc.protocol import RpcFactory, RpcProtocol
from intermediary import errors, wire
from intermediary.server.connection import ConnectionLimits
from intermediary.server.operations import Caller, Operations
from intermediary.server.senders import SenderVerifier
from intermediary.wire import Event, Request, Result

log = Logger()


class IntermediaryProtocol(RpcProtocol):
    """One client connection."""

    factory: IntermediaryFactory

    def __init__(self) -> None:
        super().__init__()
        self.caller: Caller | None = None

    # -- the client certificate ---------------------------------------------------------

    def check_peer(self) -> None:
        """TLS is up: check the client certificate."""
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        peer = handle.get_peer_certificate()
        if peer is None:
            self._do(self.core.authenticated(errors.CertificateRejected("a client certificate is required")))
            return
        leaf = peer.to_cryptography()
        leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
        intermediates = [
            certificate.to_cryptography()
            for certificate in handle.get_peer_cert_chain() or []
            if crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate) != leaf_der
        ]
        checking = Deferred.fromCoroutine(self.factory.verifier.verify(leaf, intermediates))
        checking.addCallbacks(self._authenticated, self._refused)

    def _authenticated(self, identity: Identity) -> None:
        if self.core.closing:
            return
        self.caller = Caller(identity, self._push, self._kept)
        log.info("{who} connected from {host}", who=str(identity), host=self.peer_host)
        self._do(self.core.authenticated(None))

    def _refused(self, failure: Failure) -> None:
        if failure.check(errors.IntermediaryError):
            error: errors.IntermediaryError = failure.value  # type: ignore[assignment]
        else:
            log.failure("Checking the certificate from {host} failed", failure, host=self.peer_host)
            error = errors.InternalError()
        log.info("Refused the certificate from {host}: {error}", host=self.peer_host, error=str(error))
        self._do(self.core.authenticated(error))

    # -- requests, pushes, the end ------------------------------------------------------

    def run(self, request: Request) -> Deferred[Result]:
        """Run ``request`` on the operations, as the caller."""
        assert self.caller is not None
        return self.factory.operations.handle(self.caller, request.operation)

    def who(self) -> str:
        """The caller's identity (once known)."""
        return "?" if self.caller is None else str(self.caller.identity)

    def released(self) -> None:
        """Release the subscription and the reservation."""
        if self.caller is not None:
            self.factory.operations.connection_lost(self.caller)

    def _push(self, event: Event) -> None:
        self._do(self.core.push(event))

    def _kept(self, kept: bool) -> None:
        self._do(self.core.set_kept(kept))


class IntermediaryFactory(RpcFactory):
    """Builds :class:`IntermediaryProtocol` connections sharing one set of operations."""

    protocol = IntermediaryProtocol  # type: ignore[assignment]

    def __init__(
        self,
        operations: Operations,
        verifier: SenderVerifier,
        clock: IReactorTime,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(wire, errors, clock, limits or ConnectionLimits())
        self.operations = operations
        self.verifier = verifier

