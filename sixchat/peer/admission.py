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

from twisted.internet.interfaces import IReactorTime

from common.limits import SlidingWindow, address_key
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
        self._starts = SlidingWindow(clock, limit=per_source, window=window, max_keys=max_sources)

    def admit(self, host: str) -> errors.RateLimited | None:
        """Count a handshake from ``host`` and return None, or return why it is refused
        (nothing is counted then). An admitted handshake must be ended with
        :meth:`finished`."""
        if self.in_progress >= self.max_concurrent:
            return errors.RateLimited(f"too many handshakes in progress ({self.max_concurrent})")
        source = address_key(host)
        if not self._starts.allow(source):
            return errors.RateLimited(f"too many handshakes from {source}")
        self.in_progress += 1
        return None

    def finished(self) -> None:
        """One admitted handshake ended (completed or failed)."""
        self.in_progress = max(0, self.in_progress - 1)
