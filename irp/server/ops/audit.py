"""Reading the audit trail (administrators only): ``audit-list`` and ``audit-checkpoints``.
Each read is itself recorded in the trail (see :mod:`irp.server.audit.entries`)."""

from __future__ import annotations

from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.server.ops.base import Handlers
from irp.server.session import Session
from irp.server.store.audit import AUDIT_PAGE_MAX, AuditFilter
from irp.wire.audit import checkpoint_element, entry_element
from irp.wire.elements import timestamp_attribute
from irp.wire.fields import optional_int
from irp.wire.records import check_text_field

#: ``audit-list`` and ``audit-checkpoints``: entries answered by default.
PAGE_DEFAULT = 100
#: The highest entry number a request may name.
ID_MAX = 2**63 - 1


class AuditOps(Handlers):
    """audit-list and audit-checkpoints."""

    async def audit_list(self, session: Session, element: Element) -> list[Element]:
        """A page of the trail's entries matching the filters, by number."""
        await self._require_admin(session)
        since = None if element.get("since") is None else timestamp_attribute(element, "since") * 1_000_000
        until = None if element.get("until") is None else timestamp_attribute(element, "until") * 1_000_000
        if since is not None and until is not None and until <= since:
            raise errors.InvalidArgument("'until' must be later than 'since'")
        wanted = AuditFilter(
            event=self._text(element, "event"),
            actor=self._text(element, "actor"),
            subject=self._text(element, "subject"),
            since=since,
            until=until,
            after_id=optional_int(element, "after-id", 0, 0, ID_MAX),
            limit=optional_int(element, "limit", PAGE_DEFAULT, 1, AUDIT_PAGE_MAX),
        )
        entries = await self.store.list_audit_entries(wanted)
        return [self._wrap("audit-entries", [entry_element(entry) for entry in entries])]

    async def audit_checkpoints(self, session: Session, element: Element) -> list[Element]:
        """A page of the trail's signed checkpoints, by entry."""
        await self._require_admin(session)
        after_id = optional_int(element, "after-id", 0, 0, ID_MAX)
        limit = optional_int(element, "limit", PAGE_DEFAULT, 1, AUDIT_PAGE_MAX)
        checkpoints = await self.store.list_audit_checkpoints(after_id, limit)
        return [self._wrap("audit-checkpoints", [checkpoint_element(checkpoint) for checkpoint in checkpoints])]

    @staticmethod
    def _text(element: Element, name: str) -> str | None:
        value = element.get(name)
        return None if value is None else check_text_field(name, value)

    @staticmethod
    def _wrap(tag: str, children: list[Element]) -> Element:
        wrapper = make_element(tag, {})
        wrapper.extend(children)
        return wrapper
