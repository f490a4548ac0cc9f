"""The agent and sixid: its device ID published at its domain's sixid server, and peers
found by theirs.

The agent's device ID is :func:`sixid.ids.derive_id` of its certificate's public key; its
address is ``ID@<its domain>``. With ``twistd sixchat --sixid`` the :class:`Publisher`
registers the addresses the agent registers in IRP at its domain's sixid server as a
*certified* registration (signed with the agent's key, carrying its certificate chain, so
the record names the user as its owner): lifetime :data:`LIFETIME`, refreshed at half of it
and at once when the addresses (or the certificate) change, retried with backoff
(:data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_LAST`) when it fails, withdrawn (a
registration without endpoints) when the agent stops. Each outcome is one log line.

:class:`SixidServers` keeps one connection per domain's sixid server (trusting the domain's
root CA the profile pins, as for IRP); :meth:`SixidServers.find` looks a device up and
gives its verified record, with a certified owner (SixChat talks to users a registry
vouches for). The dialer reaches such a device at the record's endpoints only, and
:func:`check_device_key` makes sure the peer that answers holds the key of that ID.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.endpoint import Endpoint
from common.identity import Identity
from common.pki.errors import WeakKey
from common.pki.keyfiles import PrivateKey
from sixchat import errors
from sixid import DEFAULT_PORT as SIXID_PORT
from sixid import errors as sixid_errors
from sixid.client import connect_sixid
from sixid.ids import SixId, SixIdAddress, derive_id
from sixid.records import Registration, SignedRegistration, VerifiedRecord, sign_registration

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()

#: Seconds a published registration is valid (refreshed at half of it).
LIFETIME = 3600
#: First delay before another try after a failed registration, doubled each time up to
#: :data:`BACKOFF_LAST`.
BACKOFF_FIRST = 5.0
BACKOFF_LAST = 300.0
#: At most this many endpoints in one registration (the sixid wire's limit).
MAX_ENDPOINTS = 8


class SixidConnection(Protocol):
    """What the agent uses of a connection to one domain's sixid server
    (:class:`sixid.client.SixidClient`)."""

    def register(self, signed: SignedRegistration) -> Awaitable[VerifiedRecord]: ...

    def lookup(self, address: SixIdAddress, *, cached: bool = True) -> Awaitable[VerifiedRecord]: ...

    def when_lost(self) -> Deferred[None]: ...

    def close(self) -> Awaitable[None]: ...


#: Opens a connection to the sixid server of a domain.
Connector = Callable[[str], Awaitable[SixidConnection]]


def device_id(certificate: x509.Certificate) -> SixId:
    """The device ID of the holder of ``certificate`` (its public key's)."""
    return derive_id(certificate.public_key())


def peer_device_id(certificate: x509.Certificate) -> SixId | None:
    """The device ID of a peer's certificate, or None if its key could not have one."""
    try:
        return device_id(certificate)
    except (WeakKey, ValueError, TypeError):
        return None


def check_device_key(address: SixIdAddress, identity: Identity, certificate: x509.Certificate) -> None:
    """Raise IdentityMismatch unless ``certificate``'s key is the one of ``address``'s ID."""
    found = peer_device_id(certificate)
    if found != address.sixid:
        what = "a key that has no device ID" if found is None else f"the key of device {found.grouped()}"
        raise errors.IdentityMismatch(
            f"dialled device {address.sixid.grouped()}@{address.domain} but {identity} answered there with {what}"
        )


def problem_text(error: BaseException) -> str:
    """A sixid client failure, in words."""
    message = getattr(error, "message", None) or str(error) or error.__class__.__name__
    name = getattr(error, "name", None)
    return f"{message} [{name}]" if name and name not in message else message


class SixidServers:
    """One connection per domain's sixid server, opened when first needed and again after
    it dropped."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self._clients: dict[str, SixidConnection] = {}
        self._connecting: dict[str, list[Deferred[SixidConnection]]] = {}
        self._closed = False

    async def client(self, domain: str) -> SixidConnection:
        """The connection to ``domain``'s sixid server (concurrent callers share one
        connection attempt)."""
        existing = self._clients.get(domain)
        if existing is not None:
            return existing
        if self._closed:
            raise sixid_errors.ClientError("the agent is stopping: no new sixid connections")
        mine: Deferred[SixidConnection] = Deferred()
        waiters = self._connecting.get(domain)
        if waiters is None:
            self._connecting[domain] = [mine]
            Deferred.fromCoroutine(_await(self.connector(domain))).addBoth(self._connected, domain)
        else:
            waiters.append(mine)
        return await mine

    def _connected(self, result: SixidConnection | Failure, domain: str) -> None:
        waiters = self._connecting.pop(domain, [])
        if not isinstance(result, Failure) and self._closed:
            # Connected while the agent stopped: not kept.
            Deferred.fromCoroutine(_await(result.close())).addErrback(lambda _: None)
            result = Failure(sixid_errors.ClientError("the agent is stopping: no new sixid connections"))
        if not isinstance(result, Failure):
            self._clients[domain] = result
            result.when_lost().addBoth(lambda _: self._lost(domain, result))
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _lost(self, domain: str, client: SixidConnection) -> None:
        """A connection ended: the next call reconnects."""
        if self._clients.get(domain) is client:
            del self._clients[domain]

    async def _call(self, domain: str, operation: Callable[[SixidConnection], Awaitable[Any]]) -> Any:
        """Run ``operation`` on ``domain``'s connection; once more on a new connection if
        the one it used was lost meanwhile (an idle connection the server closed)."""
        client = await self.client(domain)
        try:
            return await operation(client)
        except sixid_errors.ConnectionLost:
            self._lost(domain, client)
            return await operation(await self.client(domain))

    async def register(self, domain: str, signed: SignedRegistration) -> VerifiedRecord:
        """Register at ``domain``'s server; its verified record."""
        record: VerifiedRecord = await self._call(domain, lambda client: client.register(signed))
        return record

    async def lookup(self, address: SixIdAddress, *, fresh: bool = False) -> VerifiedRecord:
        """The verified current record of ``address`` (the client's cached one for its
        lifetime, unless ``fresh``)."""
        record: VerifiedRecord = await self._call(address.domain, lambda client: client.lookup(address, cached=not fresh))
        return record

    async def find(self, address: SixIdAddress, *, fresh: bool = False) -> VerifiedRecord:
        """The verified current record of a device SixChat may talk to: certified, its owner
        a user of the ID's domain. Raises PeerUnreachable (not registered now, or the server
        cannot be asked) or IdentityMismatch (no certified owner)."""
        try:
            record = await self.lookup(address, fresh=fresh)
        except (sixid_errors.SixidError, OSError) as error:
            if isinstance(error, sixid_errors.UnknownId):
                raise errors.PeerUnreachable(
                    f"device {address.sixid.grouped()}@{address.domain} is not registered at the sixid server of"
                    f" {address.domain} now (it is offline, or the ID is wrong)"
                ) from None
            raise errors.PeerUnreachable(
                f"cannot look device {address.sixid.grouped()}@{address.domain} up at the sixid server of"
                f" {address.domain}: {problem_text(error)}"
            ) from None
        if record.owner is None:
            raise errors.IdentityMismatch(
                f"device {address.sixid.grouped()}@{address.domain} is not certified by {address.domain}'s CA:"
                " SixChat talks only to users their registry vouches for"
            )
        if record.owner.domain != address.domain:
            raise errors.IdentityMismatch(
                f"device {address.sixid.grouped()}@{address.domain} belongs to {record.owner}, not to a user of {address.domain}"
            )
        return record

    async def close(self) -> None:
        """Close every connection (none is opened after)."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.failure("Closing a sixid connection failed")


class Publisher:
    """Keeps the agent's device ID registered at its domain's sixid server (see the module
    docs)."""

    def __init__(self, agent: Agent, servers: SixidServers, *, lifetime: int = LIFETIME) -> None:
        self.agent = agent
        self.servers = servers
        self.lifetime = lifetime
        #: What ``sixchat status`` says about it.
        self.state = "not started"
        #: The endpoints the server holds now for our ID (None: nothing known to be current).
        self.published: tuple[Endpoint, ...] | None = None
        self.published_until = 0
        self.failures = 0
        self._running = False
        self._seq = 0
        self._timer: IDelayedCall | None = None
        self._lock = DeferredLock()
        #: The address and key of what we published last (to withdraw it when the
        #: certificate, hence the ID, changes).
        self._last: tuple[SixIdAddress, PrivateKey, tuple[bytes, ...]] | None = None

    @property
    def address(self) -> SixIdAddress:
        """The agent's device address now."""
        return SixIdAddress(device_id(self.agent.credentials.certificate), self.agent.identity.domain)

    def idle(self) -> Deferred[None]:
        """Fires once no registration (or withdrawal) is under way."""
        return self._lock.run(lambda: None)

    def start(self) -> None:
        """Publish now, then keep it published until :meth:`stop`."""
        self._running = True
        self._publish_now()

    def addresses_changed(self) -> None:
        """The agent's addresses (or its certificate) may have changed: publish at once if
        what the server holds is not what we would publish now."""
        if not self._running:
            return
        try:
            moved = self._last is None or self._last[0] != self.address
        except WeakKey:
            moved = True
        if moved or self.published != self._endpoints():
            self._publish_now()

    def _endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self.agent.advertised[:MAX_ENDPOINTS])

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.agent.clock.callLater(delay, self._fire)

    def _publish_now(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._fire()

    def _fire(self) -> None:
        self._timer = None
        Deferred.fromCoroutine(self._publish()).addErrback(lambda failure: log.failure("Publishing the device ID failed", failure))

    async def _publish(self) -> None:
        await self._lock.acquire()
        try:
            if not self._running:
                return
            credentials = self.agent.credentials
            try:
                address = self.address
            except WeakKey as error:
                self.state = f"not published: the certificate's key cannot have a device ID ({error})"
                log.warn("Cannot publish a device ID: the certificate's key cannot have one ({error})", error=str(error))
                return
            if self._last is not None and self._last[0] != address and self.published is not None:
                await self._withdraw(*self._last, why="the certificate changed")
            endpoints = self._endpoints()
            if len(self.agent.advertised) > MAX_ENDPOINTS:
                log.warn("Publishing only the first {count} of the agent's addresses at the sixid server", count=MAX_ENDPOINTS)
            self._last = (address, credentials.private_key, credentials.certificates_der)
            try:
                record = await self._register(address, credentials.private_key, credentials.certificates_der, endpoints)
            except Exception as error:  # noqa: BLE001 - every failure is retried
                self.failures += 1
                delay = min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_LAST)
                why = problem_text(error)
                self.state = f"not published: {why}"
                log.warn(
                    "Could not publish device ID {address} at the sixid server of {domain}: {why}; trying again in {delay:g} s",
                    address=str(address), domain=address.domain, why=why, delay=delay,
                )
                self._schedule(delay)
                return
            self.failures = 0
            self.published = endpoints
            self.published_until = record.expires
            until = _time_text(record.expires)
            self.state = f"published as {address.sixid.grouped()}@{address.domain} until {until}"
            log.info(
                "Published device ID {address} at the sixid server of {domain} ({owner}; {addresses}) until {until}",
                address=str(address), domain=address.domain, owner=str(record.owner or "no owner"),
                addresses=", ".join(f"{endpoint.address} port {endpoint.port}" for endpoint in endpoints) or "no address",
                until=until,
            )
            self._schedule(self.lifetime / 2)
        finally:
            self._lock.release()

    async def _register(
        self, address: SixIdAddress, key: PrivateKey, certificates: Sequence[bytes], endpoints: tuple[Endpoint, ...]
    ) -> VerifiedRecord:
        """Sign and register ``endpoints`` for ``address``; a server holding a newer
        sequence number (our clock went back) is asked for it and the registration made
        again once above it."""
        try:
            return await self.servers.register(address.domain, self._sign(address, key, certificates, endpoints))
        except Exception as error:
            if not isinstance(error, sixid_errors.Replayed):
                raise
        current = await self.servers.lookup(address)
        self._seq = max(self._seq, current.seq)
        return await self.servers.register(address.domain, self._sign(address, key, certificates, endpoints))

    def _sign(
        self, address: SixIdAddress, key: PrivateKey, certificates: Sequence[bytes], endpoints: tuple[Endpoint, ...]
    ) -> SignedRegistration:
        now = self.agent.clock.seconds()
        self._seq = max(int(now * 1000), self._seq + 1)
        signed_at = int(now)
        registration = Registration(
            domain=address.domain,
            sixid=address.sixid,
            seq=self._seq,
            signed_at=signed_at,
            expires=signed_at + self.lifetime,
            endpoints=endpoints,
        )
        return sign_registration(key, registration, certificates=tuple(certificates))

    async def _withdraw(self, address: SixIdAddress, key: PrivateKey, certificates: tuple[bytes, ...], *, why: str) -> None:
        """Register ``address`` without endpoints (watchers are told it is unreachable)."""
        try:
            await self.servers.register(address.domain, self._sign(address, key, certificates, ()))
        except Exception as error:  # noqa: BLE001 - it expires by itself anyway
            log.warn(
                "Could not withdraw device ID {address} at the sixid server of {domain} ({reason}): {why}; it expires at {until}",
                address=str(address), domain=address.domain, reason=why, why=problem_text(error),
                until=_time_text(self.published_until),
            )
        else:
            log.info("Withdrew device ID {address} at the sixid server of {domain} ({reason})", address=str(address), domain=address.domain, reason=why)
        self.published = None

    async def stop(self) -> None:
        """Stop refreshing; withdraw what is published (the agent stops)."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        await self._lock.acquire()
        try:
            if self._last is not None and self.published is not None and self.published_until > self.agent.clock.seconds():
                await self._withdraw(*self._last, why="the agent stops")
            self.state = "withdrawn"
        finally:
            self._lock.release()


def sixid_server(agent: Agent, domain: str) -> tuple[str, int] | None:
    """Where ``agent`` finds ``domain``'s sixid server: for its own domain,
    ``--sixid-server``, else its registry's host (as ``sixid`` does with the same profile) on
    port 4606; None for another domain (found by DNS SRV ``_sixid._tcp``, else the domain on
    port 4606)."""
    if domain != agent.identity.domain:
        return None
    if agent.settings.sixid_server is not None:
        return agent.settings.sixid_server
    registry = agent.settings.server[0] if agent.settings.server is not None else agent.profile.load_config().server
    return None if registry is None else (registry, SIXID_PORT)


def sixid_connector(agent: Agent) -> Connector:
    """How ``agent`` reaches a domain's sixid server (:func:`sixid_server`):
    :mod:`sixid.client`, trusting the domain's root CA its profile pins (as for IRP)."""

    async def connect(domain: str) -> SixidConnection:
        roots = agent.profile.trusted_roots()
        if domain not in roots:
            raise sixid_errors.ClientError(f"{domain} is not a trusted domain: trust its CA first (sixchat trust-domain)")
        return await connect_sixid(
            agent.reactor, domain, trust=roots[domain], server=sixid_server(agent, domain), resolver=agent.settings.resolver
        )

    return connect


async def _await(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value


def _time_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
