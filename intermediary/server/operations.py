"""The intermediary's operations: what each request does, for one authenticated caller.

:class:`Operations` runs a parsed request for a :class:`Caller` (the TLS identity and the
connection's push sink) and fires with the result or fails with an
:class:`~intermediary.errors.IntermediaryError`. The rules (who may do what, limits, times)
are in docs/intermediary.rst; the database work is :mod:`intermediary.server.store`; push
delivery is :mod:`intermediary.server.subscriptions`; relay circuits are part C's
:mod:`intermediary.server.relay`, reached through the :class:`RelayService` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from common.identity import Identity
from common.limits import SlidingWindow
from intermediary import errors
from intermediary.server.relay import RelayUnavailable
from intermediary.server.relay import UnknownCircuit as RelayUnknownCircuit
from intermediary.server.store import IntermediaryStore
from intermediary.server.subscriptions import Subscription, Subscriptions
from intermediary.wire import (
    Accept,
    Accepted,
    Ack,
    Acked,
    CircuitOffer,
    Deposit,
    Deposited,
    Event,
    FetchPrekey,
    Operation,
    Ping,
    Pong,
    PrekeyCount,
    PrekeyData,
    PublishPrekeys,
    Reserve,
    Reserved,
    Result,
    Subscribe,
    Subscribed,
    parse_prekey_info,
)

log = Logger()


class RelayService(Protocol):
    """What the operations need of the relay (part C's ``Relay``)."""

    def reserve(self, user: Identity, notify: Callable[[str, str], None]) -> Deferred[Any]:
        """Reserve a port for ``user``; fire with an object with address, port, expires."""

    def release(self, user: Identity, notify: Callable[[str, str], None]) -> None:
        """The reserving connection is gone."""

    def join(self, user: Identity, circuit_id: str, leg: Any) -> Any:
        """Attach ``leg`` to the waiting circuit; return its splice."""

    def stop(self) -> Deferred[None]:
        """Close every circuit and relay port."""


@dataclass(frozen=True)
class Limits:
    """Time and rate rules of the operations."""

    #: The longest a message may be stored.
    max_lifetime: int = 30 * 86400
    #: Prekey fetches per (requester, user) per hour.
    fetches_per_hour: int = 60
    #: Deposits per sender per hour (over all recipients).
    deposits_per_hour: int = 600


@dataclass
class Caller:
    """One authenticated connection: who it is and how to push to it."""

    identity: Identity
    push: Callable[[Event], None]
    #: Called with True when the connection starts holding a subscription or reservation.
    kept: Callable[[bool], None] = lambda kept: None
    subscription: Subscription | None = None
    reserved: bool = False
    #: This connection as a relay leg (what ``Relay.join`` is given), and the splice it
    #: joined (after ``accept``).
    leg: Any = None
    splice: Any = None
    notify: Callable[[str, str], None] | None = field(default=None, repr=False)


class Operations:
    """Runs requests for callers (see the module docs)."""

    def __init__(
        self,
        domain: str,
        store: IntermediaryStore,
        subscriptions: Subscriptions,
        clock: Any,
        *,
        limits: Limits | None = None,
        relay: RelayService | None = None,
    ) -> None:
        self.domain = domain
        self.store = store
        self.subscriptions = subscriptions
        self.clock = clock
        self.limits = limits or Limits()
        self.relay = relay
        self.fetches = SlidingWindow(clock, limit=self.limits.fetches_per_hour, window=3600.0)
        self.deposits = SlidingWindow(clock, limit=self.limits.deposits_per_hour, window=3600.0)

    def _now(self) -> int:
        return int(self.clock.seconds())

    def _local(self, caller: Caller, what: str) -> str:
        if caller.identity.domain != self.domain:
            raise errors.NotAllowed(f"only users of {self.domain} may {what}")
        return caller.identity.username

    def handle(self, caller: Caller, operation: Operation) -> Deferred[Result]:
        """Run ``operation`` for ``caller``."""
        return Deferred.fromCoroutine(self._handle(caller, operation))

    async def _handle(self, caller: Caller, op: Operation) -> Result:
        if isinstance(op, Ping):
            return Pong()
        if caller.splice is not None:
            raise errors.UnexpectedMessage("this connection carries a circuit")
        if isinstance(op, Deposit):
            return await self.deposit(caller, op)
        if isinstance(op, FetchPrekey):
            return await self.fetch_prekey(caller, op)
        if isinstance(op, PublishPrekeys):
            return await self.publish_prekeys(caller, op)
        if isinstance(op, Subscribe):
            return await self.subscribe(caller)
        if isinstance(op, Ack):
            return await self.ack(caller, op)
        if isinstance(op, Reserve):
            return await self.reserve(caller)
        if isinstance(op, Accept):
            return self.accept(caller, op)
        raise errors.UnexpectedMessage("unknown operation")

    async def publish_prekeys(self, caller: Caller, op: PublishPrekeys) -> PrekeyCount:
        """Store the caller's own prekeys."""
        username = self._local(caller, "publish prekeys")
        now = self._now()
        parsed = []
        for data in op.prekeys:
            info = parse_prekey_info(data)
            if info.owner != caller.identity:
                raise errors.NotAllowed("you may publish only your own prekeys")
            if info.expires <= now:
                raise errors.Expired("a published prekey has expired already")
            parsed.append((info, data))
        if sum(1 for info, _ in parsed if info.kind == "last-resort") > 1:
            raise errors.InvalidArgument("publish at most one last-resort prekey at a time")
        one_time, last_resort = await self.store.publish_prekeys(username, parsed, now)
        return PrekeyCount(one_time, last_resort)

    async def fetch_prekey(self, caller: Caller, op: FetchPrekey) -> PrekeyData:
        """Hand out one prekey of a user of this domain."""
        if op.user.domain != self.domain:
            raise errors.UnknownUser(f"{op.user} is not a user of {self.domain}")
        if not self.fetches.allow((caller.identity, op.user)):
            raise errors.RateLimited(f"at most {self.limits.fetches_per_hour} prekeys of one user per hour")
        return PrekeyData(await self.store.fetch_prekey(op.user.username, self._now()))

    async def deposit(self, caller: Caller, op: Deposit) -> Deposited:
        """Store a sealed message (answered after the commit)."""
        if op.to.domain != self.domain:
            raise errors.UnknownUser(f"{op.to} is not a user of {self.domain}")
        now = self._now()
        if not now < op.expires <= now + self.limits.max_lifetime:
            raise errors.Expired(f"'expires' must be in the future and at most {self.limits.max_lifetime // 86400} days ahead")
        deliver_at = now if op.deliver_at is None else max(op.deliver_at, now)
        if deliver_at >= op.expires:
            raise errors.InvalidArgument("'deliver-at' must be before 'expires'")
        if not self.deposits.allow(caller.identity):
            raise errors.QuotaExceeded(f"at most {self.limits.deposits_per_hour} messages per hour may be deposited")
        receipt = await self.store.deposit(op.to.username, caller.identity, op.envelope, now=now, expires=op.expires, deliver_at=deliver_at)
        log.debug("Stored message {id} for {to} ({size} bytes)", id=receipt.message_id, to=str(op.to), size=len(op.envelope))
        self.subscriptions.deposited(op.to.username, deliver_at)
        return Deposited(receipt.message_id, receipt.queued)

    async def subscribe(self, caller: Caller) -> Subscribed:
        """Push the caller's own mailbox to this connection."""
        username = self._local(caller, "subscribe")
        if caller.subscription is not None:
            self.subscriptions.unsubscribe(caller.subscription)
        subscription, pending = await self.subscriptions.subscribe(username, caller.push)
        caller.subscription = subscription
        caller.kept(True)
        # The first pushes follow the answer: the read runs in the database's thread and
        # its result comes back on a later reactor turn, after the answer is written.
        subscription.pump()
        return Subscribed(pending)

    async def ack(self, caller: Caller, op: Ack) -> Acked:
        """Delete the caller's delivered message."""
        username = self._local(caller, "acknowledge messages")
        try:
            await self.store.ack(username, op.message_id)
        finally:
            # Deleted now, or gone already (expired): either way no longer in the window.
            if caller.subscription is not None:
                caller.subscription.acked(op.message_id)
        return Acked()

    async def reserve(self, caller: Caller) -> Reserved:
        """Reserve (or renew) a relay port for the caller."""
        self._local(caller, "reserve a relay port")
        if self.relay is None:
            raise errors.Unavailable("this intermediary runs no relay")
        if caller.notify is None:
            def notify(circuit_id: str, source: str) -> None:
                caller.push(CircuitOffer(circuit_id, source))

            caller.notify = notify
        try:
            reservation = await self.relay.reserve(caller.identity, caller.notify)
        except RelayUnavailable as error:
            raise errors.Unavailable(error.message) from None
        caller.reserved = True
        caller.kept(True)
        return Reserved(str(reservation.address), int(reservation.port), int(reservation.expires))

    def accept(self, caller: Caller, op: Accept) -> Accepted:
        """Join a waiting circuit (raw bytes follow the answer)."""
        self._local(caller, "accept circuits")
        if self.relay is None:
            raise errors.UnknownCircuit("this intermediary runs no relay")
        if caller.leg is None:
            raise errors.InternalError("no leg for this connection")
        try:
            caller.splice = self.relay.join(caller.identity, op.circuit_id, caller.leg)
        except RelayUnknownCircuit as error:
            raise errors.UnknownCircuit(error.message) from None
        return Accepted()

    def connection_lost(self, caller: Caller) -> None:
        """The caller's connection is gone: end its subscription and reservation."""
        if caller.subscription is not None:
            self.subscriptions.unsubscribe(caller.subscription)
            caller.subscription = None
        if caller.reserved and self.relay is not None and caller.notify is not None:
            self.relay.release(caller.identity, caller.notify)
            caller.reserved = False
