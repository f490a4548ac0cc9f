"""Bounded caches: recently used values; values read from the database kept while the
database has not changed; and answers kept per key until a write to that key.

:class:`VersionedCache`: the store's :meth:`~irp.server.store.RegistryStore.data_version`
changes with every commit, by any process sharing the database (and with the store's own
writes). A value remembered with the version it was read at is current exactly while that
version is; read the version *before* reading the value, so that a commit in between
retires it.

:class:`AnswerCache`: an answer that depends on one key's data only is kept until a write
to that key is reported (:meth:`~AnswerCache.evict`, :meth:`~AnswerCache.replace`). A read
that started before such a report may have read the old data, so it stores its answer only
if no write to its key was reported while it read (:meth:`~AnswerCache.reading` gives the
ticket to store with).

Every cache counts its hits and misses (:meth:`stats`), so a benchmark can report the hit
rate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheStats:
    """Hit and miss counters (plain ints: counting costs next to nothing)."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        """The counts so far: ``hits``, ``misses`` (and, in subclasses, more)."""
        return {"hits": self.hits, "misses": self.misses}


class RecentCache(CacheStats, Generic[K, V]):
    """At most ``size`` values; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._values: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value kept for ``key`` (now the most recently used), or None."""
        value = self._values.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._values.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key``, forgetting the least recently used beyond ``size``."""
        values = self._values
        values[key] = value
        values.move_to_end(key)
        if len(values) > self.size:
            values.popitem(last=False)

    def pop(self, key: K) -> V | None:
        """Forget the value kept for ``key``; return it (None if there was none)."""
        return self._values.pop(key, None)

    def peek(self, key: K) -> V | None:
        """The value kept for ``key``, without counting nor refreshing it."""
        return self._values.get(key)

    def clear(self) -> None:
        """Forget everything."""
        self._values.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)


class VersionedCache(CacheStats, Generic[K, V]):
    """At most ``size`` values, each with the data version it was read at; the least
    recently used goes first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._values: RecentCache[K, tuple[int, V]] = RecentCache(size)

    @property
    def size(self) -> int:
        """How many values are kept at most."""
        return self._values.size

    def get(self, key: K, version: int | None) -> V | None:
        """The value kept for ``key`` if it was read at ``version``, else None."""
        kept = None if version is None else self._values.get(key)
        if kept is None or kept[0] != version:
            self.misses += 1
            return None
        self.hits += 1
        return kept[1]

    def put(self, key: K, version: int | None, value: V) -> None:
        """Keep ``value``, read at ``version`` (nothing is kept without a version)."""
        if version is not None:
            self._values.put(key, (version, value))

    def __len__(self) -> int:
        return len(self._values)


#: How many keys' latest writes an :class:`AnswerCache` remembers by default (to refuse
#: the answers of reads that started before them); older writes are summed up in one
#: ticket below which every store is refused.
WRITES_REMEMBERED = 4096


class AnswerCache(CacheStats, Generic[K, V]):
    """At most ``size`` answers by key, each kept until a write to its key is reported;
    the least recently used goes first.

    Each answer is kept with the version of the data it was made from (for a user's
    addresses, the record's sequence number): :meth:`evict` told of a write at a version
    the answer already shows keeps it (a write of this process, whose answer
    :meth:`replace` put there, reported again by the database's change log).

    Tickets: every reported write takes the next number of one counter and is remembered
    for its key; :meth:`put` with a ticket from :meth:`reading` stores only if no write to
    that key (nor a :meth:`clear`) was reported since the ticket was taken.
    """

    #: A cache that is on (see :class:`irp.server.caching.NoAnswerCache`).
    active = True

    def __init__(self, size: int, writes_remembered: int = WRITES_REMEMBERED) -> None:
        super().__init__()
        self._answers: RecentCache[K, tuple[int, V]] = RecentCache(size)
        self._writes = 0
        #: The ticket of each key's latest reported write (the latest last).
        self._written: OrderedDict[K, int] = OrderedDict()
        self._writes_remembered = writes_remembered
        #: Stores with a ticket below this are refused (writes forgotten, or a clear).
        self._floor = 0
        self.reads = 0
        self.replaced = 0
        self.evicted = 0
        self.refused = 0
        self.cleared = 0

    @property
    def size(self) -> int:
        """How many answers are kept at most."""
        return self._answers.size

    def get(self, key: K) -> V | None:
        """The answer kept for ``key``, or None (counted as a hit or a miss)."""
        kept = self._answers.peek(key)
        if kept is None:
            self.misses += 1
            return None
        self.hits += 1
        self._answers.put(key, kept)  # the most recently used now
        return kept[1]

    def reading(self, key: K) -> int:
        """The ticket to :meth:`put` an answer with, taken before reading its data."""
        return self._writes

    def put(self, key: K, ticket: int, value: V, version: int) -> bool:
        """Keep ``value`` (made from data at ``version``) if no write to ``key`` was
        reported since ``ticket`` was taken; return whether it was kept."""
        self.reads += 1
        if not self._unchanged_since(key, ticket):
            self.refused += 1
            return False
        self._answers.put(key, (version, value))
        return True

    def replace(self, key: K, ticket: int, value: V, version: int) -> bool:
        """A write to ``key``, whose new answer is ``value``, was committed (by this
        process, which took ``ticket`` before writing). Keep the new answer unless another
        write to ``key`` was reported meanwhile (then forget it: which came last is not
        known here); in-flight reads of ``key`` will not store theirs. Return whether the
        new answer was kept."""
        unchanged = self._unchanged_since(key, ticket)
        self._note_write(key)
        if not unchanged:
            self.refused += 1
            self._answers.pop(key)
            return False
        self.replaced += 1
        self._answers.put(key, (version, value))
        return True

    def evict(self, key: K, version: int | None = None) -> None:
        """A write to ``key`` was committed: forget its answer, unless it already shows
        ``version`` or later (None: whatever it shows); in-flight reads of ``key`` will not
        store theirs."""
        self._note_write(key)
        kept = self._answers.peek(key)
        if kept is not None and (version is None or kept[0] < version):
            self._answers.pop(key)
            self.evicted += 1

    def clear(self) -> None:
        """Forget every answer; no read in flight will store its own."""
        self._answers.clear()
        self._written.clear()
        self._writes += 1
        self._floor = self._writes
        self.cleared += 1

    def stats(self) -> dict[str, int]:
        """Hits and misses (a caller may ask twice before reading: the hit rate is hits
        over hits plus ``reads``), answers read from the database and offered (``reads``),
        how many were replaced by this process's writes, evicted, refused (read while
        their key was written: not kept), how many times all were dropped, and how many
        are kept."""
        return {
            **super().stats(),
            "reads": self.reads,
            "replaced": self.replaced,
            "evicted": self.evicted,
            "refused": self.refused,
            "cleared": self.cleared,
            "size": len(self._answers),
        }

    def _unchanged_since(self, key: K, ticket: int) -> bool:
        if ticket < self._floor:
            return False
        written = self._written.get(key)
        return written is None or written <= ticket

    def _note_write(self, key: K) -> None:
        self._writes += 1
        written = self._written
        written[key] = self._writes
        written.move_to_end(key)
        if len(written) > self._writes_remembered:
            _key, ticket = written.popitem(last=False)
            self._floor = max(self._floor, ticket)

    def __contains__(self, key: object) -> bool:
        return key in self._answers

    def __len__(self) -> int:
        return len(self._answers)
