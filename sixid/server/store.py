"""What the sixid server needs of its database: the :class:`SixidStore` interface.

The registry's store implements it (``irp/server/store/sixid.py``, on the registry's
SQLite or PostgreSQL database); the server never imports it, the registry passes its
store in. A row holds an ID's current signed record (the exact bytes answered to
look-ups), its sequence number and times; rows outlive their record until ``keep_until``
(``max(expires, signed_at + 300)``) so that a replayed registration is refused across an
expiry. The allow list serves the ``listed`` policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

from twisted.internet.defer import Deferred


class Replayed(Exception):
    """Raised (failed) by :meth:`SixidStore.put_sixid_record` when a stored row of the ID
    holds a sequence number at least the new one's; ``stored_seq`` is that number.
    :mod:`sixid.errors` maps it to the wire's ``replayed`` (406), in one place."""

    def __init__(self, sixid: str, stored_seq: int) -> None:
        super().__init__(f"{sixid} holds sequence number {stored_seq} already")
        self.sixid = sixid
        self.stored_seq = stored_seq


@dataclass(frozen=True)
class StoredRecord:
    """An ID's current record as stored: its sequence number, expiry (Unix seconds),
    owner (``""`` or ``user@domain``) and the signed record bytes."""

    sixid: str
    seq: int
    expires_at: int
    owner: str
    record: bytes = field(repr=False)


@dataclass(frozen=True)
class AllowedSixid:
    """An entry of the allow list (policy ``listed``)."""

    sixid: str
    note: str
    added_at: int
    added_by: str


class Unread(Enum):
    """What :meth:`SixidStore.sixid_record_now` answers when it cannot read at once."""

    NOT_NOW = "not now"


#: The store cannot read on the calling thread now (no direct reader, or it is busy):
#: ask :meth:`SixidStore.get_sixid_record`.
NOT_NOW: Final = Unread.NOT_NOW


class SixidStore(Protocol):
    """The sixid tables' operations (see the module docs). IDs are canonical text."""

    def sixid_record_now(self, sixid: str, now: int) -> bytes | Unread | None:
        """The look-up's fast path: the signed record bytes of ``sixid``'s current record
        (``expires_at > now``), or None, read on the calling thread (SQLite's direct
        reader), with no Deferred and no :class:`StoredRecord`; :data:`NOT_NOW` when it
        cannot be read at once (then :meth:`get_sixid_record` reads it). A failure of the
        read is raised."""

    def get_sixid_record(self, sixid: str, now: int) -> Deferred[StoredRecord | None]:
        """The current record of ``sixid`` (``expires_at > now``), or None. On SQLite the
        direct reader answers on the calling thread (an already-fired Deferred)."""

    def get_sixid_records(self, sixids: Sequence[str], now: int) -> Deferred[dict[str, StoredRecord]]:
        """The current records of those of ``sixids`` that have one."""

    def put_sixid_record(self, stored: StoredRecord, signed_at: int, keep_until: int) -> Deferred[None]:
        """Insert or replace the row of ``stored.sixid`` (group-committed, durable when it
        fires); fails with :class:`Replayed` if a stored row has ``seq >= stored.seq``."""

    def count_sixids(self) -> Deferred[int]:
        """How many IDs the table holds (rows, expired ones not yet swept included)."""

    def sixid_allowed(self, sixid: str) -> Deferred[bool]:
        """Whether ``sixid`` is on the allow list."""

    def allow_sixid(self, sixid: str, note: str, by: str) -> Deferred[bool]:
        """Add ``sixid`` to the allow list (False: it was there)."""

    def disallow_sixid(self, sixid: str) -> Deferred[bool]:
        """Remove ``sixid`` from the allow list (False: it was absent)."""

    def list_allowed_sixids(self) -> Deferred[list[AllowedSixid]]:
        """The allow list."""

    def sweep_sixids(self, now: int) -> Deferred[int]:
        """Delete the rows whose ``keep_until <= now``; fire with how many."""

    def follow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(sixid, seq)`` for every record other processes commit (workers
        sharing the database). The process's own commits are not told here."""

    def unfollow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        """Stop calling ``callback`` (with no follower left, the store stops following)."""
