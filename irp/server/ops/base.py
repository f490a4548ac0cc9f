"""What every group of operations shares: the registry's parts and the small checks the
handlers make (who the target user is, whether the caller is an administrator...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from common.identity import Identity, InvalidIdentity, check_username
from common.wire.xmlcodec import Element
from irp import errors
from irp.server.ca import CertificateAuthority
from irp.server.passwords import PasswordHasher
from irp.server.session import Session
from irp.server.store import Account, RegistryStore
from irp.wire.elements import AccountView, certificate_element
from irp.wire.records import CertificateInfo

if TYPE_CHECKING:
    from irp.server.registry import Registry, RegistryConfig

T = TypeVar("T")

#: Log lines keep the namespace they had before the registry was split (issue 10).
log = Logger(namespace="irp.server.registry")


class Handlers:
    """A group of operation handlers over one registry.

    The registry's parts are read through it at each use (not copied), so that a part
    replaced on the registry (a new signing certificate, a test's store) is the one used.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- the registry's parts ---------------------------------------------------------

    @property
    def config(self) -> RegistryConfig:
        """The registry's limits."""
        return self.registry.config

    @property
    def store(self) -> RegistryStore:
        """The registry's store."""
        return self.registry.store

    @property
    def ca(self) -> CertificateAuthority:
        """The registry's CA."""
        return self.registry.ca

    @property
    def hasher(self) -> PasswordHasher:
        """The registry's password hasher."""
        return self.registry.hasher

    @property
    def clock(self) -> IReactorTime:
        """The registry's clock."""
        return self.registry.clock

    @property
    def domain(self) -> str:
        """The domain the registry serves."""
        return self.registry.domain

    @property
    def signing_certificate(self) -> x509.Certificate:
        """The registry's record-signing certificate."""
        return self.registry.signing_certificate

    def security_changed(self) -> None:
        """Make every session re-check itself before its next request."""
        self.registry.security_changed()

    async def _password_work(self, function: Callable[..., T], *args: Any) -> T:
        """Run a password hash in its turn (see :class:`~irp.server.passwords.HashQueue`)."""
        return await self.registry.hashes.run(function, *args)

    # -- checks -----------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.seconds()

    async def _account(self, username: str) -> Account:
        account = await self.store.get_account(username)
        if account is None:
            raise errors.NotFound(f"no user {username}@{self.domain}")
        return account

    async def _caller_is_admin(self, session: Session) -> bool:
        return await self.registry.caller_is_admin(session)

    async def _require_admin(self, session: Session) -> None:
        if not await self._caller_is_admin(session):
            raise errors.Forbidden("only administrators may do this")

    async def _self_or_admin(self, session: Session, username: str) -> None:
        if username != session.username:
            await self._require_admin(session)

    def _target_user(self, element: Element, session: Session) -> str:
        """The user an operation is about: the ``user`` attribute, or the caller."""
        name = element.get("user")
        if name is None:
            return session.username
        return self._local_username(name)

    def _local_username(self, name: str) -> str:
        """Accept ``alice`` or ``alice@<our domain>``; refuse other domains."""
        cache = self.registry.caches.usernames
        known = cache.get(name)
        if known is not None:
            return known
        username = self._parse_local_username(name)
        cache.put(name, username)
        return username

    def _parse_local_username(self, name: str) -> str:
        try:
            if "@" in name:
                identity = Identity.parse(name)
                if identity.domain != self.domain:
                    raise errors.NotFound(f"{name} is not a user of {self.domain}")
                return identity.username
            return check_username(name)
        except InvalidIdentity as error:
            raise errors.InvalidArgument(str(error)) from None

    @staticmethod
    def _account_view(account: Account) -> AccountView:
        return AccountView(
            is_admin=account.is_admin,
            password_login=account.password_login,
            has_password=account.password_hash is not None,
            created_at=account.created_at,
            updated_at=account.updated_at,
        )

    def _certificate_element(self, info: CertificateInfo, with_pem: bool) -> Element:
        return certificate_element(info, self.domain, self._now(), with_pem=with_pem)
