"""``irp admin audit``: list the registry's audit trail (filtered), or verify it.

``irp admin audit verify`` fetches the whole trail and every checkpoint, recomputes the
chain and checks each checkpoint's signature against the root CA pinned in the profile:
it prints ``intact: ...`` and exits 0, or names the first entry found altered or missing
and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone

from common.cliutil import CommandError, Context, show
from irp.client import open_registry
from irp.client.audit import VERIFY_PAGE, verify_audit_trail
from irp.wire.audit_chain import AuditEntry, clean_text

#: Entries fetched per request when listing.
LIST_PAGE = 1000


def parse_time(text: str) -> int:
    """POSIX seconds of an ISO 8601 time (``2026-12-06``, ``2026-12-06T10:00:00Z``, with
    an offset or without: UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"{text!r} is not a time: give it as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = int(moment.timestamp())
    if seconds < 0:
        raise CommandError(f"{text!r} is before 1970")
    return seconds


def format_micros(at: int) -> str:
    """An entry's time for people: ``2026-12-06 10:00:00.123456Z``."""
    return datetime.fromtimestamp(at / 1_000_000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%fZ")


def _cell(text: str, width: int) -> str:
    # What the registry sent may be anything: never let it reach the terminal raw (no
    # control characters, no bidirectional overrides that would reorder the line).
    shown = "".join("\ufffd" if unicodedata.category(char) == "Cf" else char for char in clean_text(text, 10_000))
    return shown if len(shown) <= width else shown[: width - 1] + "\u2026"


def describe_entry(entry: AuditEntry) -> str:
    """One line of the table."""
    return "  ".join(
        [
            f"{entry.id:>7}",
            format_micros(entry.at),
            _cell(entry.event, 20).ljust(20),
            _cell(entry.outcome, 14).ljust(14),
            _cell(entry.actor, 28).ljust(28),
            _cell(entry.subject, 32).ljust(32),
            _cell(entry.address, 39).ljust(39),
            _cell(entry.details, 200),
        ]
    ).rstrip()


def entry_json(entry: AuditEntry) -> dict[str, object]:
    """An entry as JSON (``details`` parsed; the hash in hex)."""
    try:
        details: object = json.loads(entry.details)
    except ValueError:
        details = entry.details
    return {
        "id": entry.id,
        "at": entry.at,
        "time": format_micros(entry.at),
        "event": entry.event,
        "outcome": entry.outcome,
        "actor": entry.actor,
        "subject": entry.subject,
        "address": entry.address,
        "details": details,
        "hash": entry.hash.hex(),
    }


async def cmd_audit(ctx: Context) -> int:
    """``irp admin audit [verify]``."""
    if ctx.args.audit_action == "verify":
        return await cmd_audit_verify(ctx)
    return await cmd_audit_list(ctx)


async def cmd_audit_list(ctx: Context) -> int:
    """List entries matching the filters, oldest first."""
    args = ctx.args
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    since = None if args.since is None else parse_time(args.since)
    until = None if args.until is None else parse_time(args.until)
    client = await open_registry(ctx)
    entries: list[AuditEntry] = []
    after = args.after_id
    while len(entries) < args.limit:
        wanted = min(LIST_PAGE, args.limit - len(entries))
        page = await client.audit_list(
            event=args.event, actor=args.actor, subject=args.subject, since=since, until=until, after_id=after, limit=wanted
        )
        entries.extend(page)
        if len(page) < wanted:
            break
        after = page[-1].id
    if args.json:
        json.dump([entry_json(entry) for entry in entries], sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    header = "  ".join(
        ["     id", "time (UTC)".ljust(27), "event".ljust(20), "outcome".ljust(14), "actor".ljust(28),
         "subject".ljust(32), "address".ljust(39), "details"]
    )
    show(header)
    for entry in entries:
        show(describe_entry(entry))
    more = f"; more after entry {entries[-1].id}: --after-id {entries[-1].id}" if len(entries) >= args.limit else ""
    show(f"({len(entries)} entries shown{more})")
    return 0


async def cmd_audit_verify(ctx: Context) -> int:
    """Verify the whole trail against the pinned root."""
    client = await open_registry(ctx)

    def progress(what: str, count: int) -> None:
        if count >= VERIFY_PAGE:
            print(f"  ... {count} {what} read", file=sys.stderr)

    verdict = await verify_audit_trail(client, client.domain, client.trust_roots, progress)
    if verdict.problem is not None:
        raise CommandError(f"the audit trail is NOT intact: {verdict.problem}", 1)
    if verdict.last_checkpoint is None:
        show(f"intact: {verdict.entries} entries, no signed checkpoint yet")
        print("note: without a checkpoint, none of it is signed: someone with access to the database could"
              " have rewritten all of it", file=sys.stderr)
        return 0
    entry_id, at = verdict.last_checkpoint
    show(f"intact: {verdict.entries} entries, last signed checkpoint at entry {entry_id} ({format_micros(at)})")
    if entry_id < verdict.entries:
        print(f"note: entries after {entry_id} are not signed yet: entries past the last checkpoint could have"
              " been removed or rewritten by someone with access to the database", file=sys.stderr)
    return 0


def add_audit_action(admin_action: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Declare ``irp admin audit`` (``admin_action`` adds an action to ``irp admin``)."""
    action = admin_action(
        "audit",
        "list the registry's audit trail (oldest first), or verify it: 'irp admin audit verify'"
        " proves it intact against your pinned root CA or names the first altered entry (exit 1)",
    )
    action.add_argument(
        "audit_action", nargs="?", choices=("list", "verify"), default="list", metavar="list|verify",
        help="list (the default) or verify",
    )
    group = action.add_argument_group("list")
    group.add_argument("--event", help="only this event (login, create-user, revoke, registry-start, ...)")
    group.add_argument("--actor", metavar="USER@DOMAIN", help="only what this user did ('registry': the registry itself)")
    group.add_argument("--subject", help="only entries about this user (user@domain; a revoked certificate's owner) or device ID")
    group.add_argument("--since", metavar="ISO-TIME", help="only entries at or after this time (UTC unless it says)")
    group.add_argument("--until", metavar="ISO-TIME", help="only entries before this time")
    group.add_argument("--after-id", type=int, default=0, metavar="N", help="only entries numbered above N (paging)")
    group.add_argument("--limit", type=int, default=100, help="entries to show (default 100)")
    group.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
