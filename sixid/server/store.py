"""What the sixid server needs of its store (DESIGN-13 section 5).

Placeholder of the sixid-store branch, holding only the types its store implementation
uses, with the names and fields the design fixes; the sixid-server branch's version (with
the ``SixidStore`` protocol) replaces this file when it is merged.
"""

from __future__ import annotations

from dataclasses import dataclass


class Replayed(Exception):  # noqa: N818 - the design's name
    """A registration's sequence number is not greater than the one stored for its ID."""


@dataclass(frozen=True)
class StoredRecord:
    """One ID's current signed record, as stored."""

    sixid: str
    seq: int
    expires_at: int
    owner: str
    record: bytes


@dataclass(frozen=True)
class AllowedSixid:
    """An entry of the allow list (policy ``listed``)."""

    sixid: str
    note: str
    added_at: int
    added_by: str
