"""Times and states of scheduled and stored messages, as the ``sixchat`` command reads and
shows them."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

from common.cliutil import CommandError


def parse_at(text: str, now: float) -> int:
    """``--at``: HH:MM (local time, its next occurrence) or ISO 8601 with a zone; Unix
    seconds."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if match:
        local = datetime.fromtimestamp(now).astimezone()
        when = local.replace(hour=int(match.group(1)), minute=int(match.group(2)), second=0, microsecond=0)
        if when.timestamp() <= now:
            when = (local + timedelta(days=1)).replace(hour=int(match.group(1)), minute=int(match.group(2)), second=0, microsecond=0)
            # Re-anchor in the local zone of that day (a daylight saving change in between).
            when = datetime(when.year, when.month, when.day, when.hour, when.minute).astimezone()
        return int(when.timestamp())
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"--at {text!r}: give HH:MM (local time) or an ISO 8601 time with its zone, e.g. 2026-12-24T09:00+01:00") from None
    if parsed.tzinfo is None:
        raise CommandError(f"--at {text!r}: an ISO 8601 time needs its zone (e.g. +01:00 or Z)")
    if parsed.timestamp() <= now:
        raise CommandError(f"--at {text!r} is in the past")
    return int(parsed.timestamp())


def when_text(seconds: float) -> str:
    """A local date and time, for scheduled messages."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(seconds))


def state_text(row: dict[str, Any]) -> str:
    """A message's state, with where it waits."""
    state = str(row["state"])
    peer = str(row.get("peer") or row.get("to") or "")
    domain = peer.partition("@")[2]
    if state == "stored":
        return f"stored at {domain}'s intermediary"
    if state == "scheduled" and row.get("deliver_at"):
        return f"scheduled for {when_text(row['deliver_at'])}"
    return state
