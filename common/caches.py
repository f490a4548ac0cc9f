"""Bounded caches: recently used values, and values read from the database kept while
the database has not changed.

The store's :meth:`~irp.server.store.RegistryStore.data_version` changes with every commit, by
any process sharing the database (and with the store's own writes). A value remembered
with the version it was read at is current exactly while that version is; read the
version *before* reading the value, so that a commit in between retires it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentCache(Generic[K, V]):
    """At most ``size`` values; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._values: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value kept for ``key`` (now the most recently used), or None."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key``, forgetting the least recently used beyond ``size``."""
        values = self._values
        values[key] = value
        values.move_to_end(key)
        if len(values) > self.size:
            values.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._values.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)


class VersionedCache(Generic[K, V]):
    """At most ``size`` values, each with the data version it was read at; the least
    recently used goes first."""

    def __init__(self, size: int) -> None:
        self._values: RecentCache[K, tuple[int, V]] = RecentCache(size)

    @property
    def size(self) -> int:
        """How many values are kept at most."""
        return self._values.size

    def get(self, key: K, version: int | None) -> V | None:
        """The value kept for ``key`` if it was read at ``version``, else None."""
        if version is None:
            return None
        kept = self._values.get(key)
        if kept is None or kept[0] != version:
            return None
        return kept[1]

    def put(self, key: K, version: int | None, value: V) -> None:
        """Keep ``value``, read at ``version`` (nothing is kept without a version)."""
        if version is not None:
            self._values.put(key, (version, value))

    def __len__(self) -> int:
        return len(self._values)
