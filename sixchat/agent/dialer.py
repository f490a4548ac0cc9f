"""How an agent reaches a peer: one dial at a time per peer, trying addresses in turn.

The address that last worked comes first, then every address the peer's registry
publishes (IPv6 first). Each attempt is a TCP connection and a whole handshake; a peer that
answers but is not the one we want (or refuses us) does not end the search. Every caller
of :meth:`Dialer.connect` for a peer being dialled waits for the same attempt.

A peer last addressed by one of their devices (``ID@domain``, see :meth:`Dialer.route`) is
reached at that device's sixid record's endpoints only, and the peer who answers must hold
the key of that ID besides passing the usual checks; a session with them qualifies only if
it is with that device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.endpoint import Endpoint
from common.factory import QuietFactory
from common.identity import Identity
from sixchat import errors
from sixchat.credentials import Role
from sixchat.peer.protocol import PeerConnection
from sixid.ids import SixIdAddress

if TYPE_CHECKING:
    from sixchat.agent.service import Agent

log = Logger()


class Dialer:
    """The outgoing connection attempts of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        #: The callers waiting for each peer being dialled.
        self.dialling: dict[Identity, list[Deferred[PeerConnection]]] = {}
        #: The certificate fingerprints each peer's registry gave, and when.
        self._expected: dict[Identity, tuple[float, set[str]]] = {}
        #: The device each peer was last addressed by (absent: addressed as a user).
        self.devices: dict[Identity, SixIdAddress] = {}

    def route(self, peer: Identity, device: SixIdAddress | None) -> None:
        """Reach ``peer`` at ``device`` from now on (None: as a user, through their
        registry): the way the user last addressed them decides."""
        if device is None:
            self.devices.pop(peer, None)
        else:
            self.devices[peer] = device

    def usable(self, peer: Identity, connection: PeerConnection | None) -> bool:
        """Whether ``connection`` is an established session that may carry messages for
        ``peer`` (with the device they were addressed by, if any)."""
        if connection is None or not connection.is_established:
            return False
        device = self.devices.get(peer)
        return device is None or connection.peer_device == device.sixid

    def connect(self, peer: Identity) -> Deferred[PeerConnection]:
        """An established session with ``peer``: the current one, or a new one (one dial
        at a time per peer; every caller gets its outcome)."""
        current = self.agent.sessions.get(peer)
        if current is not None and self.usable(peer, current):
            return succeed(current)
        waiter: Deferred[PeerConnection] = Deferred()
        waiters = self.dialling.get(peer)
        if waiters is None:
            self.dialling[peer] = [waiter]
            Deferred.fromCoroutine(self._dial(peer)).addBoth(self._finished, peer)
        else:
            waiters.append(waiter)
        return waiter

    def _finished(self, result: Any, peer: Identity) -> None:
        for waiter in self.dialling.pop(peer, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def expected_fingerprints(self, peer: Identity, *, fresh: bool = False) -> set[str]:
        """The certificates the peer's registry holds for them now (cached briefly, unless
        ``fresh``)."""
        assert self.agent.directory is not None
        cached = self._expected.get(peer)
        now = self.agent.clock.seconds()
        if cached is not None and not fresh and now - cached[0] < self.agent.settings.fingerprint_cache:
            return cached[1]
        fingerprints = await self.agent.directory.certificate_fingerprints(peer)
        if not fingerprints:
            raise errors.PeerUnreachable(f"{peer} has no valid certificate at their registry")
        self._expected[peer] = (now, fingerprints)
        return fingerprints

    async def _dial(self, peer: Identity) -> PeerConnection:
        """Try the address that last worked, then every address the registry gives (IPv6
        first). A peer that answers but is refused (another identity or certificate, or it
        refuses us) does not stop the search: an address can move to someone else, and
        nothing is sent before a session with the right peer exists. If no address works,
        the first refusal is raised (it says more than "unreachable")."""
        assert self.agent.store is not None and self.agent.directory is not None
        if peer == self.agent.identity:
            raise errors.SelfConnection("dialling yourself")
        self.agent.reload_credentials()
        device = self.devices.get(peer)
        if device is not None:
            return await self._dial_device(peer, device)
        self.agent.progress(peer, f"asking the registry of {peer.domain} about {peer}")
        await self.expected_fingerprints(peer)
        tried: list[Endpoint] = []
        contact = await self.agent.store.get_contact(peer)
        problems: list[str] = []
        refusals: list[errors.SixChatError] = []
        if contact is not None and contact.last_endpoint is not None:
            tried.append(contact.last_endpoint)
            connection = await self._try_endpoint(peer, contact.last_endpoint, problems, refusals)
            if connection is not None:
                return connection
        record = await self.agent.directory.lookup(peer)
        if not record.is_current(self.agent.clock.seconds()) or not record.endpoints:
            await self.agent.store.set_presence(peer, "offline")
            if refusals:
                raise refusals[0]
            raise errors.PeerUnreachable(f"{peer} is offline (no current address at their registry)")
        await self.agent.store.set_presence(peer, record.presence)
        for endpoint in sorted(record.endpoints, key=lambda item: item.family != "ipv6"):
            if endpoint in tried:
                continue
            tried.append(endpoint)
            connection = await self._try_endpoint(peer, endpoint, problems, refusals)
            if connection is not None:
                return connection
        if refusals:
            raise refusals[0]
        raise errors.PeerUnreachable(f"{peer} did not answer at {', '.join(problems) or 'any address'}")

    async def _dial_device(self, peer: Identity, device: SixIdAddress) -> PeerConnection:
        """Reach ``peer`` at the endpoints of ``device``'s current sixid record (IPv6
        first); the peer must hold the device's key (see :func:`check_device_key`)."""
        name = f"{device.sixid.grouped()}@{device.domain}"
        self.agent.progress(peer, f"asking the sixid server of {device.domain} about device {name}")
        # Asked afresh at each dial: the device may have moved since the last record.
        record = await self.agent.sixid.find(device, fresh=True)
        if record.owner != peer:
            raise errors.IdentityMismatch(f"device {name} now belongs to {record.owner}, not to {peer}")
        if not record.endpoints:
            raise errors.PeerUnreachable(f"device {name} of {peer} is offline (it withdrew its addresses)")
        await self.expected_fingerprints(peer)
        problems: list[str] = []
        refusals: list[errors.SixChatError] = []
        for endpoint in sorted(record.endpoints, key=lambda item: item.family != "ipv6"):
            connection = await self._try_endpoint(peer, endpoint, problems, refusals, device=device)
            if connection is not None:
                return connection
        if refusals:
            raise refusals[0]
        raise errors.PeerUnreachable(f"device {name} of {peer} did not answer at {', '.join(problems)}")

    async def _try_endpoint(
        self,
        peer: Identity,
        endpoint: Endpoint,
        problems: list[str],
        refusals: list[errors.SixChatError],
        *,
        device: SixIdAddress | None = None,
    ) -> PeerConnection | None:
        """A session with ``peer`` (at ``device``, if given) at ``endpoint``, or None (with
        the problem noted)."""
        assert self.agent.store is not None
        endpoint_class = TCP6ClientEndpoint if endpoint.family == "ipv6" else TCP4ClientEndpoint
        client = endpoint_class(self.agent.reactor, endpoint.address, endpoint.port, timeout=self.agent.settings.connect_timeout)
        connection = PeerConnection(self.agent, Role.INITIATOR, expected_peer=peer, expected_device=device)
        self.agent.progress(peer, f"calling {peer} at {endpoint.address} port {endpoint.port}")
        try:
            await client.connect(QuietFactory.forProtocol(lambda: connection))
            await connection.when_established()
        except errors.SixChatError as error:
            problems.append(f"{endpoint.address} port {endpoint.port} ({error.message})")
            if isinstance(error, (errors.IdentityMismatch, errors.SelfConnection, errors.PeerRejected, errors.CertificateInvalid)):
                log.warn("{address} port {port} did not give a session with {peer}: {error}", address=endpoint.address, port=endpoint.port, peer=str(peer), error=str(error))
                refusals.append(error)
            return None
        except Exception as error:  # noqa: BLE001 - any transport failure means "try the next"
            problems.append(f"{endpoint.address} port {endpoint.port} ({error.__class__.__name__})")
            return None
        await self.agent.store.remember_endpoint(peer, endpoint)
        return connection
