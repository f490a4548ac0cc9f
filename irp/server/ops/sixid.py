"""sixid's allow list (issue 13), administered over IRP: the IDs the ``listed`` policy of
``twistd irp --sixid-policy`` serves."""

from __future__ import annotations

from common.timeutil import format_timestamp
from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.server.ops.base import Handlers, log
from irp.server.session import Session
from irp.wire.fields import bool_text, optional_int, required
from irp.wire.records import check_text_field
from sixid.ids import InvalidSixId, SixId

#: ``sixid-list``: entries answered by default, and at most.
LIST_DEFAULT = 1000
LIST_MAX = 10_000


class SixidOps(Handlers):
    """sixid-allow, sixid-disallow and sixid-list (administrators only)."""

    async def sixid_allow(self, session: Session, element: Element) -> list[Element]:
        """Put an ID on the allow list, with a note; answer whether it was added (False:
        it was there already, its note unchanged)."""
        await self._require_admin(session)
        sixid = self._sixid(element)
        note = check_text_field("note", element.get("note", ""))
        added = await self.store.allow_sixid(sixid, note, str(session.identity))
        if added:
            log.info("{caller} allowed sixid {sixid}", caller=str(session.identity), sixid=sixid)
        return [make_element("sixid-allowed", {"sixid": sixid, "added": bool_text(added)})]

    async def sixid_disallow(self, session: Session, element: Element) -> list[Element]:
        """Take an ID off the allow list; answer whether it was on it."""
        await self._require_admin(session)
        sixid = self._sixid(element)
        removed = await self.store.disallow_sixid(sixid)
        if removed:
            log.info("{caller} took sixid {sixid} off the allow list", caller=str(session.identity), sixid=sixid)
        return [make_element("sixid-disallowed", {"sixid": sixid, "removed": bool_text(removed)})]

    async def sixid_list(self, session: Session, element: Element) -> list[Element]:
        """A page of the allow list, by ID: one ``sixid`` element per entry."""
        await self._require_admin(session)
        offset = optional_int(element, "offset", 0, 0, 10**9)
        limit = optional_int(element, "limit", LIST_DEFAULT, 1, LIST_MAX)
        entries = await self.store.list_allowed_sixids(offset, limit)
        return [
            make_element(
                "sixid",
                {
                    "id": entry.sixid,
                    "note": entry.note,
                    "added-at": format_timestamp(entry.added_at),
                    "added-by": entry.added_by,
                },
            )
            for entry in entries
        ]

    @staticmethod
    def _sixid(element: Element) -> str:
        """The ``sixid`` attribute, canonical (either form accepted), or invalid-argument."""
        try:
            return str(SixId.parse(required(element, "sixid")))
        except InvalidSixId as error:
            raise errors.InvalidArgument(str(error)) from None
