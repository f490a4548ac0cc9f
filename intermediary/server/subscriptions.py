"""Push delivery: each subscribed user's mailbox, pushed as messages come due.

One :class:`Subscription` per user (a new one supersedes the old). It pushes the user's due
messages in deposit order, at most ``window`` unacknowledged at a time; a deposit for a
subscribed user is pushed at once (:meth:`Subscriptions.deposited`), and a message held for
later (``deliver-at``) is pushed when a reactor timer set for its time fires: the database
is read when something happened (a subscription, a deposit, an acknowledgement, a timer),
never polled. Unacknowledged messages stay stored and are pushed again to the next
subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from intermediary.server.store import IntermediaryStore, StoredMessage
from intermediary.wire import Delivery, Event, Superseded

log = Logger()

#: Unacknowledged pushes per subscription.
WINDOW = 32

Sink = Callable[[Event], None]


class Subscription:
    """One user's mailbox being pushed to one connection."""

    def __init__(self, owner: Subscriptions, username: str, sink: Sink) -> None:
        self.owner = owner
        self.username = username
        self.sink = sink
        #: Pushed and not yet acknowledged: message id -> server sequence.
        self.unacked: dict[str, int] = {}
        self.active = True
        self._reading = False
        self._again = False
        self._timer: IDelayedCall | None = None
        self._timer_at: int | None = None
        self._settled: list[Deferred[None]] = []
        #: Look-ups of the next held message running.
        self._looking = 0

    def pump(self) -> None:
        """Push what is due, within the window (one read at a time; a pump asked for
        during a read runs after it)."""
        if not self.active:
            return
        if self._reading:
            self._again = True
            return
        room = self.owner.window - len(self.unacked)
        if room <= 0:
            return
        self._reading = True
        self._again = False
        now = self.owner.now()
        reading = self.owner.store.due_messages(self.username, now=now, limit=room, exclude=list(self.unacked.values()))
        reading.addCallbacks(self._read, self._failed, callbackArgs=(room,))

    def _read(self, messages: list[StoredMessage], room: int) -> None:
        self._reading = False
        if not self.active:
            return
        for message in messages:
            if message.message_id in self.unacked:
                continue
            self.unacked[message.message_id] = message.seq
            self.sink(Delivery(message.message_id, message.sender, message.deposited_at, message.envelope))
        if self._again or len(messages) == room:
            self.pump()
        self._notify_settled()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        log.failure("Reading the mailbox of {user} failed", failure, user=self.username)
        self.owner.retry_later(self)
        self._notify_settled()

    def settled(self) -> Deferred[None]:
        """Fires once no read of the mailbox is running (at once if none is)."""
        waiting: Deferred[None] = Deferred()
        if self._reading or self._looking:
            self._settled.append(waiting)
        else:
            waiting.callback(None)
        return waiting

    def _notify_settled(self) -> None:
        if not (self._reading or self._looking):
            waiters, self._settled = self._settled, []
            for waiting in waiters:
                waiting.callback(None)

    def acked(self, message_id: str) -> None:
        """The subscriber acknowledged ``message_id`` (deleted): room for one more."""
        if self.unacked.pop(message_id, None) is not None:
            self.pump()

    def due_at(self, when: int) -> None:
        """A message comes due at ``when`` (Unix seconds): push it then."""
        if not self.active:
            return
        now = self.owner.now()
        if when <= now:
            self.pump()
            return
        if self._timer_at is not None and self._timer_at <= when and self._timer is not None and self._timer.active():
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.owner.clock.callLater(when - self.owner.clock.seconds(), self._due)

    def _due(self) -> None:
        self._timer = None
        self._timer_at = None
        self.pump()
        self._looking += 1

        def found(result: tuple[int, int | None]) -> None:
            if result[1] is not None:
                self.due_at(result[1])

        def done(_: object) -> None:
            self._looking -= 1
            self._notify_settled()

        looking = self.owner.store.pending(self.username, self.owner.now())
        looking.addCallbacks(found, lambda failure: self.owner.retry_later(self)).addBoth(done)

    def end(self) -> None:
        """Stop pushing (the connection went, or a newer subscription took over)."""
        self.active = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class Subscriptions:
    """Every subscribed user of the intermediary."""

    def __init__(self, store: IntermediaryStore, clock: Any, *, window: int = WINDOW, retry_after: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.window = window
        self.retry_after = retry_after
        self.by_user: dict[str, Subscription] = {}

    def now(self) -> int:
        """The current time in Unix seconds."""
        return int(self.clock.seconds())

    def subscribe(self, username: str, sink: Sink) -> Deferred[tuple[Subscription, int]]:
        """Subscribe ``sink`` to ``username``'s mailbox (superseding an older subscription,
        which is told); fire with the subscription and how many messages are due now. The
        first pushes follow the answer (the caller calls :meth:`Subscription.pump`)."""
        old = self.by_user.pop(username, None)
        if old is not None:
            old.end()
            old.sink(Superseded())
        subscription = Subscription(self, username, sink)
        self.by_user[username] = subscription

        def counted(result: tuple[int, int | None]) -> tuple[Subscription, int]:
            pending, later = result
            if later is not None:
                subscription.due_at(later)
            return subscription, pending

        def failed(failure: Failure) -> Failure:
            self.unsubscribe(subscription)
            return failure

        return self.store.pending(username, self.now()).addCallbacks(counted, failed)

    def unsubscribe(self, subscription: Subscription) -> None:
        """The subscriber's connection is gone."""
        subscription.end()
        if self.by_user.get(subscription.username) is subscription:
            del self.by_user[subscription.username]

    def deposited(self, username: str, deliver_at: int) -> None:
        """A message for ``username`` was committed, due at ``deliver_at``."""
        subscription = self.by_user.get(username)
        if subscription is not None:
            subscription.due_at(deliver_at)

    def retry_later(self, subscription: Subscription) -> None:
        """The database failed: try again in a moment."""
        if subscription.active:
            self.clock.callLater(self.retry_after, subscription.pump)

    def stop(self) -> None:
        """End every subscription."""
        for subscription in list(self.by_user.values()):
            subscription.end()
        self.by_user.clear()
