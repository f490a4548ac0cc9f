"""The client side of the audit trail: ``audit-list`` and ``audit-checkpoints``
(administrators' operations of :class:`~irp.client.api.RegistryClient`, which inherits
them), and :func:`verify_audit_trail`, which fetches the whole trail in pages and checks it
(see :class:`~irp.wire.audit_verify.ChainVerifier`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from cryptography import x509
from twisted.internet.defer import Deferred

from common.timeutil import format_timestamp
from irp.wire.audit import parse_checkpoint, parse_entry
from irp.wire.audit_chain import AuditCheckpoint, AuditEntry
from irp.wire.audit_verify import ChainVerifier, Verdict
from irp.wire.fields import check_fields
from irp.wire.messages import Response

T = TypeVar("T")

#: Entries or checkpoints asked for per request while verifying (the registry's most).
VERIFY_PAGE = 1000


class AuditAdministration:
    """The audit trail's operations, for :class:`~irp.client.api.RegistryClient`."""

    async def _call(self, tag: str, attributes: dict[str, Any] | None = None, children: Sequence[tuple[str, str]] = ()) -> Response:
        raise NotImplementedError  # RegistryClient's

    def audit_list(
        self,
        *,
        event: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since: int | None = None,
        until: int | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> Deferred[list[AuditEntry]]:
        """A page of the audit trail's entries (administrators): those matching every
        filter given (``since``/``until``: POSIX seconds), numbered above ``after_id``, by
        number; at most ``limit`` (the registry answers 100 by default, 1000 at most)."""

        async def run() -> list[AuditEntry]:
            attributes = {
                "event": event,
                "actor": actor,
                "subject": subject,
                "since": None if since is None else format_timestamp(since),
                "until": None if until is None else format_timestamp(until),
                "after-id": str(after_id) if after_id else None,
                "limit": None if limit is None else str(limit),
            }
            response = await self._call("audit-list", attributes)
            wrapper = response.single("audit-entries")
            check_fields(wrapper, (), ("entry",))
            return [parse_entry(element) for element in wrapper]

        return Deferred.fromCoroutine(run())

    def audit_checkpoints(self, after_id: int = 0, limit: int | None = None) -> Deferred[list[AuditCheckpoint]]:
        """A page of the audit trail's signed checkpoints, by entry (administrators)."""

        async def run() -> list[AuditCheckpoint]:
            attributes = {"after-id": str(after_id) if after_id else None, "limit": None if limit is None else str(limit)}
            response = await self._call("audit-checkpoints", attributes)
            wrapper = response.single("audit-checkpoints")
            check_fields(wrapper, (), ("checkpoint",))
            return [parse_checkpoint(element) for element in wrapper]

        return Deferred.fromCoroutine(run())


async def verify_audit_trail(
    client: AuditAdministration,
    domain: str,
    roots: Sequence[x509.Certificate],
    progress: Callable[[str, int], None] | None = None,
) -> Verdict:
    """Fetch every checkpoint then every entry (pages of :data:`VERIFY_PAGE`) and check
    the chain and the checkpoints' signatures against ``roots``; ``progress(what, count)``
    is told after each page."""
    verifier = ChainVerifier(domain, roots)
    await _read_pages(
        lambda after: client.audit_checkpoints(after, VERIFY_PAGE),
        lambda checkpoint: checkpoint.entry_id,
        verifier.checkpoints,
        "checkpoints",
        progress,
        lambda: True,
    )
    await _read_pages(
        lambda after: client.audit_list(after_id=after, limit=VERIFY_PAGE),
        lambda entry: entry.id,
        verifier.entries,
        "entries",
        progress,
        lambda: verifier.problem is None,
    )
    return verifier.finish()


async def _read_pages(
    fetch: Callable[[int], Awaitable[list[T]]],
    number: Callable[[T], int],
    feed: Callable[[list[T]], None],
    what: str,
    progress: Callable[[str, int], None] | None,
    going_on: Callable[[], bool],
) -> None:
    """Feed every page ``fetch(after)`` gives (pages of :data:`VERIFY_PAGE`, each after the
    ``number`` of the last item read) while ``going_on()``; tell ``progress`` after each."""
    after = 0
    fetched = 0
    while going_on():
        page = await fetch(after)
        feed(page)
        fetched += len(page)
        if progress is not None:
            progress(what, fetched)
        if len(page) < VERIFY_PAGE:
            return
        after = number(page[-1])
