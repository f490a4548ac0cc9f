"""The watch hub: which connection watches which ID, and telling them of changes.

A connection (a :class:`Watcher`) watches IDs; the hub keeps, per watched ID, the
watchers, the newest record it knows (its sequence number and expiry) and one reactor
timer at that expiry (not a sweep). It tells the watchers:

- ``changed(stored)`` when a newer record is committed: by this process (the operations
  call :meth:`WatchHub.committed` right after the commit) or by another process sharing
  the database (the store's change feed calls :meth:`WatchHub.followed` with the ID and
  sequence number; the hub reads the record, if anyone watches the ID);
- ``gone(sixid)`` when the record's expiry passes without a newer one (the store is read
  again at that moment, so that a newer record another process committed is told as a
  change instead).

Sequence numbers only rise, so a change told twice (by the feed and directly) or late is
told once. The hub does no I/O of its own beyond the store reads and the timers, both
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixid.server.store import SixidStore, StoredRecord

log = Logger()


class Watcher(Protocol):
    """A connection watching IDs (its pushes)."""

    def changed(self, stored: StoredRecord) -> None:
        """A watched ID has a new record."""

    def gone(self, sixid: str) -> None:
        """A watched ID's record expired."""


@dataclass(eq=False)
class _Watched:
    """One watched ID: its watchers, the newest record known, the expiry timer."""

    watchers: set[Watcher] = field(default_factory=set)
    #: Sequence number of the newest record known (0: none known).
    seq: int = 0
    #: Its expiry (0: none current).
    expires_at: int = 0
    timer: IDelayedCall | None = None


class WatchHub:
    """Watchers per ID and their notifications (see the module docs)."""

    def __init__(self, store: SixidStore, clock: Any) -> None:
        self.store = store
        self.clock = clock
        self._watched: dict[str, _Watched] = {}
        self._by_watcher: dict[Watcher, set[str]] = {}

    # -- watching -------------------------------------------------------------------------

    def watching(self, watcher: Watcher) -> int:
        """How many IDs ``watcher`` watches."""
        ids = self._by_watcher.get(watcher)
        return 0 if ids is None else len(ids)

    def is_watching(self, watcher: Watcher, sixid: str) -> bool:
        """Whether ``watcher`` watches ``sixid``."""
        return sixid in self._by_watcher.get(watcher, ())

    def watched_ids(self) -> int:
        """How many distinct IDs are watched."""
        return len(self._watched)

    def add(self, watcher: Watcher, sixid: str) -> None:
        """``watcher`` watches ``sixid`` from now on (tell the hub what a read found
        with :meth:`current`)."""
        entry = self._watched.get(sixid)
        if entry is None:
            entry = self._watched[sixid] = _Watched()
        entry.watchers.add(watcher)
        self._by_watcher.setdefault(watcher, set()).add(sixid)

    def current(self, sixid: str, stored: StoredRecord | None) -> StoredRecord | None:
        """A read of ``sixid`` (for a new watcher) found ``stored``: remember it if it is
        newer than what the hub knows, and arm its expiry. Returns ``stored``."""
        entry = self._watched.get(sixid)
        if entry is not None and stored is not None and stored.seq > entry.seq:
            entry.seq = stored.seq
            self._arm(sixid, entry, stored.expires_at)
        return stored

    def remove(self, watcher: Watcher, sixid: str) -> bool:
        """``watcher`` stops watching ``sixid`` (False: it did not watch it)."""
        ids = self._by_watcher.get(watcher)
        if ids is None or sixid not in ids:
            return False
        ids.discard(sixid)
        if not ids:
            del self._by_watcher[watcher]
        self._drop(watcher, sixid)
        return True

    def remove_all(self, watcher: Watcher) -> None:
        """``watcher`` is gone: forget all it watched."""
        for sixid in self._by_watcher.pop(watcher, ()):
            self._drop(watcher, sixid)

    def _drop(self, watcher: Watcher, sixid: str) -> None:
        entry = self._watched.get(sixid)
        if entry is None:
            return
        entry.watchers.discard(watcher)
        if not entry.watchers:
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            del self._watched[sixid]

    def stop(self) -> None:
        """Cancel every timer and forget every watcher."""
        for entry in self._watched.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._watched.clear()
        self._by_watcher.clear()

    # -- changes --------------------------------------------------------------------------

    def committed(self, stored: StoredRecord) -> None:
        """This process committed ``stored``: tell its watchers now."""
        entry = self._watched.get(stored.sixid)
        if entry is not None and stored.seq > entry.seq:
            self._tell_changed(entry, stored)

    def followed(self, sixid: str, seq: int) -> None:
        """Another process committed record ``seq`` of ``sixid`` (the store's change feed)."""
        entry = self._watched.get(sixid)
        if entry is None or seq <= entry.seq:
            return
        reading = self.store.get_sixid_record(sixid, int(self.clock.seconds()))
        reading.addCallbacks(self._read_after_change, self._read_failed, errbackArgs=(sixid,))

    def _read_after_change(self, stored: StoredRecord | None) -> None:
        if stored is None:
            return  # expired already, or swept: the expiry timer tells it
        entry = self._watched.get(stored.sixid)
        if entry is not None and stored.seq > entry.seq:
            self._tell_changed(entry, stored)

    def _read_failed(self, failure: Failure, sixid: str) -> None:
        log.failure("Reading the changed record of {sixid} failed", failure, sixid=sixid)

    def _tell_changed(self, entry: _Watched, stored: StoredRecord) -> None:
        entry.seq = stored.seq
        self._arm(stored.sixid, entry, stored.expires_at)
        for watcher in list(entry.watchers):
            watcher.changed(stored)

    # -- expiry ---------------------------------------------------------------------------

    def _arm(self, sixid: str, entry: _Watched, expires_at: int) -> None:
        entry.expires_at = expires_at
        delay = max(0.0, expires_at - self.clock.seconds())
        if entry.timer is not None and entry.timer.active():
            entry.timer.reset(delay)
        else:
            entry.timer = self.clock.callLater(delay, self._expired, sixid)

    def _expired(self, sixid: str) -> None:
        entry = self._watched.get(sixid)
        if entry is None:
            return
        entry.timer = None
        seq, expires_at = entry.seq, entry.expires_at
        # Read again: another process may have committed a newer record not told yet.
        now = max(int(self.clock.seconds()), expires_at)
        reading = self.store.get_sixid_record(sixid, now)
        reading.addCallbacks(self._read_at_expiry, self._read_failed, callbackArgs=(sixid, seq), errbackArgs=(sixid,))

    def _read_at_expiry(self, stored: StoredRecord | None, sixid: str, seq: int) -> None:
        entry = self._watched.get(sixid)
        if entry is None or entry.seq != seq or entry.timer is not None:
            return  # changed meanwhile (told already), or no longer watched
        if stored is not None and stored.seq > entry.seq:
            self._tell_changed(entry, stored)
            return
        entry.expires_at = 0
        for watcher in list(entry.watchers):
            watcher.gone(sixid)
