"""Values read from the database, kept while the database has not changed.

The store's :meth:`~irp.store.RegistryStore.data_version` changes with every commit, by
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


class VersionedCache(Generic[K, V]):
    """At most ``size`` values, each with the data version it was read at; the least
    recently used goes first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._values: OrderedDict[K, tuple[int, V]] = OrderedDict()

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
        if version is None:
            return
        values = self._values
        values[key] = (version, value)
        values.move_to_end(key)
        if len(values) > self.size:
            values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)
