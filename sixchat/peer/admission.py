"""Admission of incoming SixChat handshakes (sans-I/O, time from an injected clock).

Two budgets decide whether an incoming connection may start a handshake:

* **per source**: at most ``per_source`` handshakes in any sliding ``window`` seconds from
  one source, where a source is an IPv4 address or an IPv6 /64, grouped exactly as the
  registry groups its clients (:func:`common.limits.address_key`), because one IPv6 host
  can pick any address of its /64;
* **overall**: at most ``max_concurrent`` handshakes in progress at once, from everyone.

A refusal is a :class:`~sixchat.errors.RateLimited` error saying which budget was spent;
the agent answers it with a ``rate-limited`` alert and logs it.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

from common.limits import address_key
from sixchat import errors


class HandshakeAdmission:
    """The per-source and overall budgets of incoming handshakes."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        per_source: int,
        window: float,
        max_concurrent: int,
        max_sources: int = 10_000,
    ) -> None:
        self.clock = clock
        self.per_source = per_source
        self.window = window
        self.max_concurrent = max_concurrent
        self.max_sources = max_sources
        #: Handshakes now in progress (admitted and not yet finished).
        self.in_progress = 0
        self._starts: dict[str, deque[float]] = {}

    def admit(self, host: str) -> errors.RateLimited | None:
        """Count a handshake from ``host`` and return None, or return why it is refused
        (nothing is counted then). An admitted handshake must be ended with
        :meth:`finished`."""
        now = self.clock.seconds()
        if self.in_progress >= self.max_concurrent:
            return errors.RateLimited(f"too many handshakes in progress ({self.max_concurrent})")
        source = address_key(host)
        starts = self._starts.get(source)
        if starts is None:
            starts = self._starts[source] = deque()
        while starts and now - starts[0] >= self.window:
            starts.popleft()
        if len(starts) >= self.per_source:
            return errors.RateLimited(f"too many handshakes from {source}")
        starts.append(now)
        self.in_progress += 1
        if len(self._starts) > self.max_sources:
            self._forget_idle(now)
        return None

    def finished(self) -> None:
        """One admitted handshake ended (completed or failed)."""
        self.in_progress = max(0, self.in_progress - 1)

    def _forget_idle(self, now: float) -> None:
        for source in [key for key, starts in self._starts.items() if not starts or now - starts[-1] >= self.window]:
            del self._starts[source]
