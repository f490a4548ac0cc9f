"""Giving the memory of closed connections back to the system.

glibc's allocator keeps what the process frees for its own later use: after thousands of
connections close, the memory they held is free inside the process but still counted in
its resident size (RSS), because the pages are scattered among pages still in use and only
the top of the heap is returned on its own. ``malloc_trim(0)`` returns every free page.

:class:`MemoryReturn` calls it once after many connections have closed, a moment after the
last of them (closures come in bursts: one call covers the burst). It costs a walk over the
allocator's free lists, a few milliseconds for hundreds of MiB, against the megabytes each
thousand idle connections held. Where there is no ``malloc_trim`` (not glibc), it does
nothing.

Operators who run many threads may also cap glibc's arenas with ``MALLOC_ARENA_MAX`` (see
``docs/deployment.rst``); that is their setting, not the program's.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Closed connections after which the freed memory is returned.
RETURN_EVERY = 1000
#: Seconds to wait after the closure that reaches RETURN_EVERY (for the rest of its burst).
RETURN_DELAY = 1.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def return_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is impossible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryReturn:
    """Counts closed connections; after ``every`` of them, returns the free memory
    ``delay`` seconds later (with ``release``, :func:`return_free_memory` by default)."""

    def __init__(
        self,
        clock: IReactorTime,
        every: int = RETURN_EVERY,
        delay: float = RETURN_DELAY,
        release: Callable[[], bool] = return_free_memory,
    ) -> None:
        self.clock = clock
        self.every = every
        self.delay = delay
        self.release = release
        #: Connections closed since the memory was last returned.
        self.closed = 0
        self._pending: IDelayedCall | None = None

    def connection_closed(self) -> None:
        """One more connection is gone."""
        self.closed += 1
        if self.closed >= self.every and self._pending is None:
            self._pending = self.clock.callLater(self.delay, self._return)

    def _return(self) -> None:
        self._pending = None
        self.closed = 0
        self.release()

    def stop(self) -> None:
        """Cancel a pending return (the service is stopping)."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
