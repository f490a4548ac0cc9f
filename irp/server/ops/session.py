"""Session operations: capabilities, login, logout and whoami."""

from __future__ import annotations

from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.server.ops.base import Handlers
from irp.server.session import Session
from irp.wire.fields import bool_text, child_text, required
from irp.wire.messages import PROTOCOL_VERSION


class SessionOps(Handlers):
    """capabilities, login, logout and whoami."""

    async def capabilities(self, session: Session, element: Element) -> list[Element]:
        """What this server supports."""
        result = make_element(
            "capabilities",
            {
                "domain": self.domain,
                "versions": PROTOCOL_VERSION,
                "max-request": str(self.config.max_request),
                "idle-timeout": str(int(self.config.idle_timeout)),
            },
        )
        for method in ("certificate", "password"):
            sub_element(result, "auth", {"method": method})
        for name in self.registry.operations:
            sub_element(result, "operation", {"name": name})
        return [result]

    async def login(self, session: Session, element: Element) -> list[Element]:
        """Username/password login (UPA): see :meth:`~irp.server.auth.Authenticator.password_login`."""
        username = self._local_username(required(element, "user"))
        password = child_text(element, "password", limit=1024) or ""
        account = await self.registry.auth.password_login(session, username, password)
        return [self._session_element(session, account.is_admin)]

    async def logout(self, session: Session, element: Element) -> list[Element]:
        """End the login (a certificate login ends too, until the next connection)."""
        session.end()
        return [self._session_element(session, False)]

    async def whoami(self, session: Session, element: Element) -> list[Element]:
        """Who the session is logged in as (a refused certificate is reported)."""
        if session.identity is None and session.rejected is not None:
            raise errors.CertificateRejected(session.rejected)
        if session.logged_in:
            await self.registry.sessions.check(session)
        is_admin = session.logged_in and await self._caller_is_admin(session)
        return [self._session_element(session, is_admin)]

    def _session_element(self, session: Session, is_admin: bool) -> Element:
        return make_element(
            "session",
            {
                "user": None if session.identity is None else str(session.identity),
                "method": session.method,
                "admin": bool_text(is_admin),
            },
        )
