"""Time stamps: integer UTC seconds inside, RFC 3339 on the wire."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def format_timestamp(seconds: int) -> str:
    """Format integer UTC seconds as RFC 3339 (``2026-11-22T03:46:51Z``)."""
    moment = time.gmtime(seconds)
    return (
        f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}"
        f"T{moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d}Z"
    )


def parse_timestamp(text: str) -> int:
    """Parse the RFC 3339 UTC form produced by :func:`format_timestamp`."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        raise ValueError(f"invalid timestamp {text!r}: expected YYYY-MM-DDTHH:MM:SSZ") from None
    return int(moment.replace(tzinfo=timezone.utc).timestamp())


def to_datetime(seconds: float) -> datetime:
    """Return an aware UTC datetime for POSIX seconds."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def from_datetime(moment: datetime) -> int:
    """Return integer POSIX seconds for an aware datetime."""
    return int(moment.timestamp())
