"""The client side of sixid's allow list (issue 13): ``sixid-allow``, ``sixid-disallow``
and ``sixid-list``, administrators' operations of :class:`~irp.client.api.RegistryClient`
(which inherits them), their answers parsed strictly."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from common.wire.xmlcodec import Element
from irp import errors
from irp.client.results import parse_boolean
from irp.wire.elements import timestamp_attribute
from irp.wire.fields import check_fields, required
from irp.wire.messages import Response

#: A canonical ID as the registry answers it (32 characters of RFC 4648 base32, lower case).
_CANONICAL_ID = re.compile(r"[a-z2-7]{32}\Z")


@dataclass(frozen=True)
class AllowedSixidEntry:
    """One entry of the allow list: the ID (canonical), the administrator's note, when and
    by whom it was added."""

    sixid: str
    note: str
    added_at: int
    added_by: str


def _canonical(element: Element, name: str) -> str:
    text = required(element, name)
    if not _CANONICAL_ID.match(text):
        raise errors.BadRequest(f"the registry answered {text!r}, not a canonical sixid")
    return text


def parse_allowed_entry(element: Element) -> AllowedSixidEntry:
    """Parse ``<sixid id note added-at added-by/>``."""
    if element.tag != "sixid":
        raise errors.BadRequest(f"expected <sixid> entries, got <{element.tag}>")
    check_fields(element, ("id", "note", "added-at", "added-by"))
    return AllowedSixidEntry(
        _canonical(element, "id"), required(element, "note"), timestamp_attribute(element, "added-at"), required(element, "added-by")
    )


class SixidAdministration:
    """sixid's allow-list operations, for :class:`~irp.client.api.RegistryClient`."""

    async def _call(self, tag: str, attributes: dict[str, Any] | None = None, children: Sequence[tuple[str, str]] = ()) -> Response:
        raise NotImplementedError  # RegistryClient's

    async def _flag(self, tag: str, result_tag: str, flag: str, attributes: dict[str, Any]) -> bool:
        response = await self._call(tag, attributes)
        element = response.single(result_tag)
        check_fields(element, ("sixid", flag))
        _canonical(element, "sixid")
        return parse_boolean(element, flag)

    def sixid_allow(self, sixid: str, note: str = "") -> Deferred[bool]:
        """Put a device ID (either form) on sixid's allow list (administrators); fire with
        False when it was there already (its note unchanged)."""
        return Deferred.fromCoroutine(self._flag("sixid-allow", "sixid-allowed", "added", {"sixid": sixid, "note": note or None}))

    def sixid_disallow(self, sixid: str) -> Deferred[bool]:
        """Take a device ID off sixid's allow list (administrators); fire with False when
        it was not on it."""
        return Deferred.fromCoroutine(self._flag("sixid-disallow", "sixid-disallowed", "removed", {"sixid": sixid}))

    def sixid_list(self, offset: int = 0, limit: int | None = None) -> Deferred[list[AllowedSixidEntry]]:
        """A page of sixid's allow list, by ID (administrators; the registry answers at
        most 1000 entries by default, 10 000 at most)."""

        async def run() -> list[AllowedSixidEntry]:
            attributes = {"offset": str(offset) if offset else None, "limit": None if limit is None else str(limit)}
            response = await self._call("sixid-list", attributes)
            return [parse_allowed_entry(element) for element in response.results]

        return Deferred.fromCoroutine(run())
