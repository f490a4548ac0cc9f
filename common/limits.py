"""Rate limits, the one family of them (sans-I/O): a sliding-window budget
(:class:`SlidingWindow`), failed-attempt lock-outs (:class:`FailureLimiter`) and
per-address connection counts (:class:`ConnectionCounter`).

All keep bounded state in memory and take time from an injected clock, so they are
tested with ``twisted.internet.task.Clock``. With several registry processes each keeps
its own counts: a guesser spread over ``n`` processes gets at most ``n`` times the budget.
A refusal is a :class:`LimitExceeded` (or a False / a count): each protocol turns it into
its own wire error.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


class LimitExceeded(Exception):
    """A key is over its budget; :attr:`message` says why, in words a user can read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SlidingWindow:
    """A budget of ``limit`` events per key in any sliding ``window`` seconds.

    Keys are used as given (group client addresses with :func:`address_key` first). At
    most ``limit + 1`` moments are kept per key and, past ``max_keys`` keys, the idle ones
    (nothing in the window) are forgotten, so a flood cannot grow the state beyond the
    keys active in one window; while most keys are active the scans for idle ones are
    spaced out (the next when the count has doubled), so each event costs O(1) amortised.
    """

    def __init__(self, clock: IReactorTime, *, limit: int, window: float, max_keys: int = 10_000) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[Hashable, deque[float]] = {}
        self._prune_at = max_keys

    def _recent(self, key: Hashable, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is not None:
            while events and now - events[0] >= self.window:
                events.popleft()
        return events

    def _add(self, key: Hashable, events: deque[float] | None, now: float) -> None:
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit + 1)
        events.append(now)
        if len(self._events) > self._prune_at:
            idle = [k for k, moments in self._events.items() if not moments or now - moments[-1] >= self.window]
            for old in idle:
                del self._events[old]
            # When most keys are still active, the next scan waits until their number has
            # doubled: a scan per event would cost O(keys) each (10 ms at 100,000 keys).
            self._prune_at = max(self.max_keys, 2 * len(self._events))

    def allow(self, key: Hashable) -> bool:
        """Count an event for ``key`` and return True if the window has room for it;
        else return False and count nothing (refusals do not use the budget)."""
        now = self.clock.seconds()
        events = self._recent(key, now)
        if events is not None and len(events) >= self.limit:
            return False
        self._add(key, events, now)
        return True

    def record(self, key: Hashable) -> int:
        """Count an event for ``key`` whatever the budget (refusals use it too), and
        return how many events the window holds, this one included.

        Only the last ``limit + 1`` moments are kept, so past the budget the count stops
        at ``limit + 2``: ``limit + 1`` is the first event over the budget.
        """
        now = self.clock.seconds()
        events = self._recent(key, now)
        count = (0 if events is None else len(events)) + 1
        self._add(key, events, now)
        return count

    def count(self, key: Hashable) -> int:
        """Events of ``key`` now in the window (counting nothing)."""
        events = self._recent(key, self.clock.seconds())
        return 0 if events is None else len(events)


@dataclass
class _FailureState:
    failures: int
    window_start: float
    locked_until: float


class FailureLimiter:
    """Locks a key (an address or a user) out after repeated failures.

    Within ``window`` seconds a key may fail ``max_failures`` times; the next failure locks
    it for ``lockout`` seconds, doubling for each further lock-out up to ``max_lockout``.
    A success clears the key. At most ``max_keys`` keys are tracked (oldest dropped).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_failures: int,
        window: float,
        lockout: float,
        max_lockout: float,
        max_keys: int = 100_000,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_lockout = max_lockout
        self.max_keys = max_keys
        self._states: OrderedDict[Hashable, _FailureState] = OrderedDict()
        self._lockouts: dict[Hashable, int] = {}
        self._in_flight: dict[Hashable, int] = {}

    def check(self, key: Hashable) -> None:
        """Raise :class:`LimitExceeded` if ``key`` is locked out now, or if the attempts still
        being checked would reach the limit should they fail (so that concurrent guesses
        cannot all be checked before the first failure is counted)."""
        state = self._states.get(key)
        failures = 0
        if state is not None:
            remaining = state.locked_until - self.clock.seconds()
            if remaining > 0:
                raise LimitExceeded(f"too many failed attempts; try again in {math.ceil(remaining)} seconds")
            if self.clock.seconds() - state.window_start <= self.window:
                failures = state.failures
        if failures + self._in_flight.get(key, 0) > self.max_failures:
            raise LimitExceeded("too many attempts at once; try again in a moment")

    def begin(self, key: Hashable) -> None:
        """An attempt for ``key`` starts (ended by record_failure, record_success or end)."""
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, key: Hashable) -> None:
        """An attempt for ``key`` ended without a verdict (an error)."""
        count = self._in_flight.get(key, 0) - 1
        if count <= 0:
            self._in_flight.pop(key, None)
        else:
            self._in_flight[key] = count

    def record_failure(self, key: Hashable) -> None:
        """Count a failure for ``key``, locking it out when over the limit."""
        self.end(key)
        now = self.clock.seconds()
        state = self._states.get(key)
        if state is None or now - state.window_start > self.window:
            state = _FailureState(0, now, 0.0)
        state.failures += 1
        if state.failures > self.max_failures:
            count = self._lockouts.get(key, 0)
            state.locked_until = now + min(self.lockout * (2**count), self.max_lockout)
            self._lockouts[key] = count + 1
            state.failures = 0
            state.window_start = now
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.max_keys:
            old_key, _ = self._states.popitem(last=False)
            self._lockouts.pop(old_key, None)

    def record_success(self, key: Hashable) -> None:
        """Forget ``key``'s failures."""
        self.end(key)
        self._states.pop(key, None)
        self._lockouts.pop(key, None)


@functools.lru_cache(maxsize=4096)
def address_key(host: str) -> str:
    """The unit a client address is limited by: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually holds a whole /64 and can pick any source address in it, so
    limits per single IPv6 address would be no limits at all. IPv4-mapped IPv6 addresses
    count as the IPv4 address. Anything that is not an IP address is used as it is.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionCounter:
    """Counts open connections per address (see :func:`address_key`) and refuses more
    than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, host: str) -> bool:
        """Count a new connection from ``host``; False if it is over the limit."""
        key = address_key(host)
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, host: str) -> None:
        """Forget one connection from ``host``."""
        key = address_key(host)
        count = self._counts.get(key, 0) - 1
        if count <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count

    def count(self, host: str) -> int:
        """Open connections from ``host`` (and its /64, for IPv6)."""
        return self._counts.get(address_key(host), 0)
