"""Administration: creating and deleting users, passwords, password login, admin rights."""

from __future__ import annotations

from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.server.ops.base import Handlers, log
from irp.server.passwords import check_password_policy
from irp.server.session import Session, SessionState
from irp.wire.elements import user_element
from irp.wire.fields import child_text, optional_bool, required
from irp.wire.records import check_email, check_text_field


class AdminOps(Handlers):
    """create-user, set-password, set-password-login, set-admin and delete-user."""

    async def create_user(self, session: Session, element: Element) -> list[Element]:
        """Create a user (administrators only)."""
        await self._require_admin(session)
        return [await self.add_user(
            self._local_username(required(element, "user")),
            display_name=check_text_field("display-name", element.get("display-name", "")),
            email=check_email(element.get("email", "")),
            is_admin=bool(optional_bool(element, "admin", False)),
            password=child_text(element, "password", required_child=False, limit=1024),
            password_login=bool(optional_bool(element, "password-login", True)),
        )]

    async def add_user(
        self,
        username: str,
        *,
        display_name: str = "",
        email: str = "",
        is_admin: bool = False,
        password: str | None = None,
        password_login: bool = True,
    ) -> Element:
        """Create a user; used by ``create-user`` and by the first-start bootstrap."""
        password_hash = None
        if password is not None:
            check_password_policy(password)
            password_hash = await self._password_work(self.hasher.hash, password)
        account = await self.store.create_user(
            username,
            display_name=display_name,
            email=email,
            is_admin=is_admin,
            password_hash=password_hash,
            password_login=password_login,
        )
        log.info("Created user {user} (admin: {admin})", user=username, admin=is_admin)
        return user_element(account.record, self._account_view(account))

    async def set_password(self, session: Session, element: Element) -> list[Element]:
        """Set a password: one's own (with the current one after a password login), or
        anyone's for administrators."""
        username = self._target_user(element, session)
        new_password = child_text(element, "password", limit=1024) or ""
        check_password_policy(new_password)
        is_admin = await self._caller_is_admin(session)
        if username != session.username and not is_admin:
            raise errors.Forbidden("only administrators may set other users' passwords")
        account = await self._account(username)
        if username == session.username and session.state is SessionState.PASSWORD and not is_admin:
            current = child_text(element, "current-password", required_child=False, limit=1024)
            if current is None or not await self._password_work(self.hasher.verify, current, account.password_hash):
                raise errors.LoginFailed("the current password is wrong")
        new_hash = await self._password_work(self.hasher.hash, new_password)
        account = await self.store.set_password_hash(username, new_hash)
        if username == session.username and session.state is SessionState.PASSWORD:
            # The caller stays logged in; other password sessions of the user end.
            session.password_version = account.password_version
        self.security_changed()
        log.info("Password of {user} set by {caller}", user=username, caller=str(session.identity))
        return [user_element(account.record, self._account_view(account))]

    async def set_password_login(self, session: Session, element: Element) -> list[Element]:
        """Enable or disable password login for a user. Users may disable their own;
        only administrators may enable it."""
        username = self._target_user(element, session)
        enabled = optional_bool(element, "enabled")
        if enabled is None:
            raise errors.BadRequest("<set-password-login> needs enabled='true' or 'false'")
        if enabled or username != session.username:
            await self._require_admin(session)
        account = await self.store.set_password_login(username, enabled)
        self.security_changed()
        log.info("Password login of {user} {state} by {caller}", user=username, state="enabled" if enabled else "disabled", caller=str(session.identity))
        return [user_element(account.record, self._account_view(account))]

    async def set_admin(self, session: Session, element: Element) -> list[Element]:
        """Grant or withdraw administrator rights (never from the last administrator)."""
        await self._require_admin(session)
        username = self._local_username(required(element, "user"))
        enabled = optional_bool(element, "enabled")
        if enabled is None:
            raise errors.BadRequest("<set-admin> needs enabled='true' or 'false'")
        account = await self._account(username)
        if account.is_admin and not enabled and await self.store.count_admins() <= 1:
            raise errors.Conflict("the last administrator cannot lose administrator rights")
        account = await self.store.set_admin(username, enabled)
        self.security_changed()
        return [user_element(account.record, self._account_view(account))]

    async def delete_user(self, session: Session, element: Element) -> list[Element]:
        """Delete a user and revoke their certificates (administrators only)."""
        await self._require_admin(session)
        username = self._local_username(required(element, "user"))
        account = await self._account(username)
        if account.is_admin and await self.store.count_admins() <= 1:
            raise errors.Conflict("the last administrator cannot be deleted")
        revoked = await self.store.delete_user(username)
        self.security_changed()
        log.info("{caller} deleted user {user}, revoking {count} certificates", caller=str(session.identity), user=username, count=revoked)
        return [make_element("deleted", {"user": f"{username}@{self.domain}", "revoked": str(revoked)})]
