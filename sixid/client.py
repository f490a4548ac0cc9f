"""The sixid client library: register an ID's addresses, look IDs up, watch them.

:func:`connect_sixid` finds a domain's sixid server (DNS SRV ``_sixid._tcp.<domain>``, else
the domain itself on port 4606, or an explicit ``server``) and connects over TLS, checking
the server's certificate exactly as the IRP client checks its registry's
(:func:`common.tls.client_options`: the chain ends at the domain's pinned root, the
certificate names the host dialled). No client certificate is presented: the IDs looked up
travel only inside TLS.

:class:`SixidClient` runs the operations of docs/sixid.rst over that connection; requests
are pipelined (ids matched, at most :data:`MAX_OUTSTANDING` in flight, more queued), and
every wait is bounded. Every record the server answers or pushes is verified
(:func:`sixid.records.verify_record`) against the registry's record-signing key, learnt
once per connection from ``<signer/>`` and accepted only when its chain verifies to the
pinned root with the IRP client's own check (:func:`irp.client.results.verify_ca_chain`).
Looked-up records are kept in a small cache for their remaining lifetime. The server
closes a connection idle for 5 minutes (3 while it watches: the client pings every minute
then); a call on a closed connection fails with ``connection-lost``: connect again.

Failures are :class:`~sixid.errors.SixidError` subclasses: the server's refusals by their
wire names, and client-local ones (``connection-lost``, ``verification-failed``,
``server-verification-failed``, ``client-error``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.addresses import dial_name
from common.caches import RecentCache
from common.factory import QuietFactory
from common.identity import check_domain
from common.pki.keyfiles import fingerprint, format_fingerprint
from common.tls import client_options
from irp.client import IRPError, NotFound
from irp.client.discovery import discover
from irp.client.results import CAChain, verify_ca_chain
from sixid import DEFAULT_PORT, SRV_SERVICE, errors
from sixid.client_protocol import DEFAULT_TIMEOUT, SixidClientProtocol, describe_tls_failure
from sixid.ids import SixId, SixIdAddress
from sixid.records import SignedRecord, SignedRegistration, VerifiedRecord, verify_record
from sixid.wire import (
    MAX_OUTSTANDING,
    Changed,
    Gone,
    Lookup,
    Operation,
    Ping,
    Pong,
    RecordResult,
    Register,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    Watching,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_HELD_PUSHES",
    "MAX_OUTSTANDING",
    "PING_INTERVAL",
    "RecordCache",
    "SixidClient",
    "SixidClientProtocol",
    "WatchCallback",
    "connect_sixid",
    "describe_tls_failure",
    "fetch_root",
    "find_servers",
    "verify_signer_chain",
]

log = Logger()

#: Seconds between keep-alive pings while the connection watches IDs (the server drops a
#: watching connection after 180 s of silence).
PING_INTERVAL = 60.0
#: Pushes held for a watch not answered yet (a server sending more is broken).
MAX_HELD_PUSHES = 64
#: Records the look-up cache holds at most (the least recently used goes first).
CACHE_SIZE = 1024

#: Told of each change of a watched ID: the address and its new verified record (a
#: withdrawal is a record without endpoints), or None when its record expired.
WatchCallback = Callable[[SixIdAddress, VerifiedRecord | None], None]

R = TypeVar("R")


# -- the record cache ------------------------------------------------------------------------


class RecordCache:
    """Verified records by ID, each kept until its registration expires (at most ``size``;
    the least recently used goes first). ``stats()`` counts hits and misses."""

    #: Names this cache in statistics and logs.
    label = "sixid records"

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._records: RecentCache[SixId, VerifiedRecord] = RecentCache(size)

    def get(self, sixid: SixId, now: float) -> VerifiedRecord | None:
        """The record kept for ``sixid`` if it is still current at ``now``."""
        record = self._records.get(sixid)
        if record is not None and now >= record.expires:
            self._records.pop(sixid)
            return None
        return record

    def put(self, record: VerifiedRecord) -> None:
        """Keep ``record`` unless an equal or newer one is kept (by seq)."""
        sixid = record.address.sixid
        kept = self._records.peek(sixid)
        if kept is None or kept.seq < record.seq:
            self._records.put(sixid, record)

    def forget(self, sixid: SixId) -> None:
        """Drop what is kept for ``sixid``."""
        self._records.pop(sixid)

    def stats(self) -> dict[str, Any]:
        """``label``, ``hits``, ``misses`` and ``size`` (records kept now)."""
        return {"label": self.label, **self._records.stats(), "size": len(self._records)}

    def __len__(self) -> int:
        return len(self._records)


# -- the client ------------------------------------------------------------------------------


@dataclass
class _Watch:
    """One watched address: its callback, the newest seq told, pushes held until the watch
    was answered."""

    address: SixIdAddress
    callback: WatchCallback
    seq: int = 0
    answered: bool = False
    pending: list[Changed | Gone] = field(default_factory=list)


class SixidClient:
    """One connection to a domain's sixid server (see the module docs)."""

    def __init__(self, protocol: SixidClientProtocol, domain: str, root: x509.Certificate, *, host: str, port: int) -> None:
        self.protocol = protocol
        self.domain = domain
        self.root = root
        #: The server connected to.
        self.host = host
        self.port = port
        self.reactor = protocol.reactor
        #: Verified records by ID (looked up, registered, pushed), each until it expires.
        self.cache = RecordCache()
        self._signer_key: Ed25519PublicKey | None = None
        self._signer_waiters: list[Deferred[Ed25519PublicKey]] = []
        self._watches: dict[SixId, _Watch] = {}
        self._keepalive: LoopingCall | None = None
        protocol.on_push = self._pushed

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, operation: Operation, kind: type[R]) -> R:
        return await self.protocol.call(operation, kind)

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _check_domain(self, address: SixIdAddress) -> None:
        if address.domain != self.domain:
            raise errors.ClientError(
                f"{address} is served by the registry of {address.domain}; this client is connected to {self.domain}'s"
            )

    def signer(self) -> Deferred[Ed25519PublicKey]:
        """The registry's record-signing key, fetched once per connection (``<signer/>``)
        and accepted only if its chain verifies to the pinned root and its certificate is
        for signing records (``server-verification-failed`` otherwise)."""
        if self._signer_key is not None:
            return succeed(self._signer_key)
        waiter: Deferred[Ed25519PublicKey] = Deferred()
        self._signer_waiters.append(waiter)
        if len(self._signer_waiters) == 1:
            Deferred.fromCoroutine(self._fetch_signer()).addBoth(self._signer_fetched)
        return waiter

    def _prefetch_signer(self) -> None:
        """Ask for the signer now (pipelined with the request that needs it)."""
        if self._signer_key is None:
            self.signer().addErrback(lambda _failure: None)  # the request's own wait reports it

    async def _fetch_signer(self) -> Ed25519PublicKey:
        chain: SignerChain = await self._call(Signer(), SignerChain)
        return verify_signer_chain(chain.certificates, self.domain, self.root, self._now())

    def _signer_fetched(self, outcome: Ed25519PublicKey | Failure) -> None:
        waiters, self._signer_waiters = self._signer_waiters, []
        if isinstance(outcome, Failure):
            for waiter in waiters:
                waiter.errback(outcome)
            return
        self._signer_key = outcome
        for waiter in waiters:
            waiter.callback(outcome)

    def _verify(self, data: bytes, expected: SixIdAddress, signer: Ed25519PublicKey) -> VerifiedRecord:
        try:
            return verify_record(data, expected=expected, signer=signer, now=self._now())
        except errors.VerificationFailed:
            raise
        except errors.SixidError as error:
            raise errors.VerificationFailed(f"the record of {expected} does not verify: {error.message}") from None

    async def _verified(self, data: bytes, expected: SixIdAddress) -> VerifiedRecord:
        return self._verify(data, expected, await self.signer())

    # -- operations -------------------------------------------------------------------------

    async def register(self, signed: SignedRegistration) -> VerifiedRecord:
        """Register a signed registration (see :func:`sixid.records.sign_registration`);
        returns the registry's record of it, verified (and cached)."""
        registration = signed.registration
        address = SixIdAddress(registration.sixid, registration.domain)
        self._check_domain(address)
        self._prefetch_signer()
        result: RecordResult = await self._call(Register(signed), RecordResult)
        record = await self._verified(result.record, address)
        if SignedRecord.from_bytes(record.data).record.registration_bytes != signed.registration_bytes:
            raise errors.VerificationFailed(f"the registry answered the registration of {address} with another registration")
        self.cache.put(record)
        return record

    async def lookup(self, address: SixIdAddress, *, cached: bool = True) -> VerifiedRecord:
        """The current record of ``address``, verified: from the cache while it is current
        (unless ``cached`` is false), else from the server (``unknown-id`` when it holds no
        current record)."""
        self._check_domain(address)
        if cached:
            record = self.cache.get(address.sixid, self._now())
            if record is not None:
                return record
        self._prefetch_signer()
        result: RecordResult = await self._call(Lookup(address.sixid), RecordResult)
        record = await self._verified(result.record, address)
        self.cache.put(record)
        return record

    async def watch(self, address: SixIdAddress, callback: WatchCallback) -> VerifiedRecord | None:
        """Watch ``address``: ``callback(address, record)`` is called with each newer record
        the server pushes (verified), and with None when the record expired. Returns the
        current record (None: none now). While anything is watched the connection is kept
        alive with a ping every :data:`PING_INTERVAL` seconds. Watching an address watched
        already replaces its callback."""
        self._check_domain(address)
        watch = _Watch(address, callback)
        self._watches[address.sixid] = watch  # pushes may come before the answer: held
        self._prefetch_signer()
        try:
            result: Watching = await self._call(Watch(address.sixid), Watching)
            current = None if result.record is None else await self._verified(result.record, address)
        except BaseException:
            if self._watches.get(address.sixid) is watch:
                del self._watches[address.sixid]
            raise
        if current is not None:
            watch.seq = current.seq
            self.cache.put(current)
        watch.answered = True
        pending, watch.pending = watch.pending, []
        for push in pending:
            self._apply(watch, push)
        self._keep_alive()
        return current

    async def unwatch(self, address: SixIdAddress) -> None:
        """Stop watching ``address`` (its callback is not called any more)."""
        self._check_domain(address)
        self._watches.pop(address.sixid, None)
        if not self._watches:
            self._stop_keepalive()
        await self._call(Unwatch(address.sixid), Unwatched)

    @property
    def watching(self) -> list[SixIdAddress]:
        """The addresses watched now."""
        return [watch.address for watch in self._watches.values()]

    async def ping(self) -> None:
        """A round trip to the server."""
        await self._call(Ping(), Pong)

    # -- pushes -----------------------------------------------------------------------------

    def _pushed(self, push: Changed | Gone) -> None:
        if isinstance(push, Gone):
            sixid = push.sixid
        else:
            try:
                sixid = SignedRecord.from_bytes(push.record).record.sixid
            except errors.SixidError as error:
                self.protocol.fail(errors.MalformedMessage(f"the sixid server pushed an unreadable record: {error.message}"))
                return
        watch = self._watches.get(sixid)
        if watch is None:
            return  # not watched (any more): the push crossed an unwatch
        if not watch.answered:
            if len(watch.pending) >= MAX_HELD_PUSHES:
                self.protocol.fail(errors.MalformedMessage(f"the sixid server pushed more than {MAX_HELD_PUSHES} changes before answering a watch"))
                return
            watch.pending.append(push)
        else:
            self._apply(watch, push)

    def _apply(self, watch: _Watch, push: Changed | Gone) -> None:
        """Tell a push of an answered watch (the signer is known by then)."""
        if self._watches.get(watch.address.sixid) is not watch:
            return
        if isinstance(push, Gone):
            self.cache.forget(watch.address.sixid)
            self._tell(watch, None)
            return
        assert self._signer_key is not None
        try:
            record = self._verify(push.record, watch.address, self._signer_key)
        except errors.VerificationFailed as error:
            log.warn("A pushed record of {address} was refused: {why}", address=str(watch.address), why=error.message)
            return
        if record.seq <= watch.seq:
            return  # not newer than the one told already
        watch.seq = record.seq
        self.cache.put(record)
        self._tell(watch, record)

    def _tell(self, watch: _Watch, record: VerifiedRecord | None) -> None:
        try:
            watch.callback(watch.address, record)
        except Exception:  # noqa: BLE001 - the caller's bug must not end the connection
            log.failure("The watch callback of {address} failed", address=str(watch.address))

    # -- keep-alive and the end -------------------------------------------------------------

    def _keep_alive(self) -> None:
        if self._keepalive is None and not self.protocol.closed:
            keepalive = self._keepalive = LoopingCall(self._ping_quietly)
            keepalive.clock = self.reactor
            keepalive.start(PING_INTERVAL, now=False)
            self.protocol.when_lost().addBoth(lambda _: self._stop_keepalive())

    def _ping_quietly(self) -> Deferred[None]:
        pinging: Deferred[None] = Deferred.fromCoroutine(self.ping())
        return pinging.addErrback(lambda _failure: None)  # a timeout ends the connection itself

    def _stop_keepalive(self) -> None:
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None and keepalive.running:
            keepalive.stop()

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection is gone (closed here, by the server, or broken);
        :attr:`failure` then says why when it was not closed here."""
        return self.protocol.when_lost()

    @property
    def failure(self) -> errors.SixidError | None:
        """Why the connection ended, when the server or the network ended it."""
        failure = self.protocol.failure
        assert failure is None or isinstance(failure, errors.SixidError)  # the protocol only raises its own
        return failure

    async def close(self) -> None:
        """Close the connection and wait until it is gone."""
        self._stop_keepalive()
        self._watches.clear()
        if not self.protocol.closed:
            self.protocol.transport.loseConnection()  # type: ignore[union-attr]
            await self.when_lost()


def verify_signer_chain(certificates: Sequence[bytes], domain: str, root: x509.Certificate, now: float) -> Ed25519PublicKey:
    """The record-signing key of a ``<signer/>`` chain (record-signing, issuing CA, root)
    once the IRP client's check passes (:func:`irp.client.results.verify_ca_chain`: the root
    is the pinned one, each certificate issued by the next, all valid now, the first for
    signing records) and the key is Ed25519; else ``server-verification-failed``."""
    record_signing, issuing, chain_root = load_signer_chain(certificates)
    try:
        verify_ca_chain(CAChain(domain, chain_root, issuing, record_signing), [root], datetime.fromtimestamp(now, UTC))
    except IRPError as error:
        raise errors.ServerVerificationFailed(f"the sixid server's record-signing chain: {error.message}") from None
    key = record_signing.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise errors.ServerVerificationFailed("the sixid server's record-signing key is not an Ed25519 key")
    return key


def load_signer_chain(certificates: Sequence[bytes]) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """The three certificates of a ``<signer/>`` answer (record-signing, issuing, root);
    ``server-verification-failed`` if they are not three DER certificates."""
    try:
        record_signing, issuing, root = (x509.load_der_x509_certificate(der) for der in certificates)
    except ValueError:
        raise errors.ServerVerificationFailed("the sixid server's signer chain is not three DER certificates") from None
    return record_signing, issuing, root


# -- connecting ------------------------------------------------------------------------------


async def find_servers(domain: str, resolver: Any = None) -> list[tuple[str, int]]:
    """The sixid servers of ``domain`` to try, in order: DNS SRV ``_sixid._tcp.<domain>``
    (RFC 2782 order), else the domain itself on port 4606. ``resolver`` is a
    ``twisted.names`` resolver (default: the system's)."""
    try:
        return await discover(domain, resolver, service=SRV_SERVICE, default_port=DEFAULT_PORT)
    except NotFound:
        raise errors.Unavailable(f"{domain} publishes that it has no sixid server") from None
    except Exception as error:  # noqa: BLE001 - every DNS failure (timeout, SERVFAIL...) reads the same way
        raise errors.ConnectionLost(f"cannot look up the sixid server of {domain} in the DNS: {error}") from None


async def connect_sixid(
    reactor: Any,
    domain: str,
    *,
    trust: x509.Certificate,
    server: tuple[str, int] | None = None,
    resolver: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> SixidClient:
    """Connect to the sixid server of ``domain`` (see the module docs): ``server`` or the
    targets :func:`find_servers` names, tried in order (the next one after a failure to
    connect, to complete TLS or to verify the server, or a timeout). ``trust`` is the
    domain's pinned root CA."""
    domain = check_domain(domain)
    targets = [server] if server is not None else await find_servers(domain, resolver)
    failures: list[str] = []
    last: errors.SixidError = errors.ConnectionLost(f"no sixid server of {domain} to try")
    for host, port in targets:
        try:
            protocol = await _connect_one(reactor, host, port, client_options(host, [trust]), timeout)
        except (errors.ConnectionLost, errors.Timeout, errors.ServerVerificationFailed) as error:
            failures.append(f"{host} port {port}: {error.message}")
            last = error
            continue
        return SixidClient(protocol, domain, trust, host=host, port=port)
    if len(failures) > 1:
        raise type(last)(f"no sixid server of {domain} could be reached ({'; '.join(failures)})")
    raise last


async def fetch_root(
    reactor: Any,
    domain: str,
    expected: str,
    *,
    server: tuple[str, int] | None = None,
    resolver: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> x509.Certificate:
    """The root CA of ``domain`` whose SHA-256 fingerprint is ``expected`` (lower-case hex,
    as :func:`common.pki.keyfiles.parse_fingerprint` gives), fetched from its sixid server
    before anything is trusted, as ``irp init --ca-fingerprint`` fetches it from the
    registry: the server's ``<signer/>`` chain must end at a root with that fingerprint and
    verify, and the server's TLS certificate must be issued by that chain's issuing CA.
    ``server-verification-failed`` otherwise."""
    domain = check_domain(domain)
    targets = [server] if server is not None else await find_servers(domain, resolver)
    host, port = targets[0]
    unverified = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    protocol = await _connect_one(reactor, host, port, unverified, timeout)
    try:
        chain = await protocol.call(Signer(), SignerChain)
        _record_signing, issuing, root = load_signer_chain(chain.certificates)
        if fingerprint(root) != expected:
            raise errors.ServerVerificationFailed(
                f"the root CA of the sixid server at {host} port {port} has fingerprint"
                f" {format_fingerprint(fingerprint(root))}, not the one given: refusing to trust it"
            )
        verify_signer_chain(chain.certificates, domain, root, float(reactor.seconds()))
        peer = protocol.transport.getPeerCertificate()  # type: ignore[union-attr]
        try:
            peer.to_cryptography().verify_directly_issued_by(issuing)
        except Exception:  # noqa: BLE001 - any mismatch reads the same way
            raise errors.ServerVerificationFailed("the sixid server's TLS certificate was not issued by its CA") from None
        return root
    finally:
        if not protocol.closed:
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            await protocol.when_lost()


async def _connect_one(reactor: Any, host: str, port: int, tls: Any, timeout: float) -> SixidClientProtocol:
    """One TLS connection, within ``timeout`` seconds for TCP and again for the handshake."""
    protocol = SixidClientProtocol(reactor, timeout)
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, dial_name(host), port, timeout=timeout))
    try:
        await endpoint.connect(QuietFactory.forProtocol(lambda: protocol))
    except Exception as error:  # noqa: BLE001 - every connection failure reads the same way
        raise errors.ConnectionLost(f"cannot connect to the sixid server at {host} port {port}: {error}") from None
    try:
        connected: SixidClientProtocol = await protocol.handshake(
            errors.Timeout(f"the TLS handshake with the sixid server at {host} port {port} took too long")
        )
    except errors.ServerVerificationFailed as error:
        raise errors.ServerVerificationFailed(f"{error.message} (at {host} port {port})") from None
    return connected
