"""Directory operations: users' public entries, the user list, addresses and look-ups."""

from __future__ import annotations

from common.endpoint import InvalidEndpoint
from common.wire.xmlcodec import Element, make_element, serialize
from irp import errors
from irp.server.caching import Answers
from irp.server.ops.base import Handlers
from irp.server.session import Session
from irp.wire.elements import addresses_element, user_element
from irp.wire.fields import check_fields, optional_int, required
from irp.wire.messages import Result
from irp.wire.records import MAX_ENDPOINTS, Endpoint, check_attributes, check_email, check_presence, check_text_field


class DirectoryOps(Handlers):
    """get-user, update-user, list-users, register-address and lookup."""

    async def get_user(self, session: Session, element: Element) -> list[Element]:
        """A user's signed public entry (with account settings for self and admins)."""
        username = self._local_username(required(element, "user"))
        account = await self._account(username)
        private = (not session.federated and username == session.username) or await self._caller_is_admin(session)
        return [user_element(account.record, self._account_view(account) if private else None)]

    async def update_user(self, session: Session, element: Element) -> list[Element]:
        """Change one's display name, email or free attributes (admins: anyone's)."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        display_name = element.get("display-name")
        email = element.get("email")
        if display_name is not None:
            check_text_field("display-name", display_name)
        if email is not None:
            check_email(email)
        attributes = None
        groups = element.findall("attributes")
        loose = element.findall("attribute")
        if loose:
            raise errors.BadRequest("put <attribute> elements inside one <attributes> element")
        if len(groups) > 1:
            raise errors.BadRequest("more than one <attributes> element")
        if groups:
            check_fields(groups[0], (), ("attribute",))
            pairs = []
            for child in groups[0]:
                check_fields(child, ("name",), text=True)
                pairs.append((required(child, "name"), child.text or ""))
            attributes = check_attributes(pairs)
        account = await self.store.update_user(
            username, display_name=display_name, email=email, attributes=attributes
        )
        return [user_element(account.record, self._account_view(account))]

    async def list_users(self, session: Session, element: Element) -> list[Element]:
        """One page of users' public entries, by user name."""
        offset = optional_int(element, "offset", 0, 0, 10**9)
        limit = optional_int(element, "limit", 50, 1, self.config.page_size_max)
        prefix = element.get("prefix", "")
        if len(prefix) > 63:
            raise errors.InvalidArgument("the prefix is too long")
        prefix = prefix.lower()  # user names are lower case
        total, accounts = await self.store.list_users(offset, limit, prefix)
        result = make_element("users", {"total": str(total), "offset": str(offset)})
        for account in accounts:
            result.append(user_element(account.record))
        return [result]

    async def register_address(self, session: Session, element: Element) -> list[Element]:
        """Replace one's current addresses and presence (signed, with an expiry)."""
        presence = check_presence(element.get("presence", "online"))
        ttl = optional_int(
            element,
            "ttl",
            self.config.address_ttl_default,
            self.config.address_ttl_min,
            self.config.address_ttl_max,
        )
        endpoints: list[Endpoint] = []
        for child in element:
            check_fields(child, ("address", "port"))
            try:
                endpoints.append(Endpoint.parse(required(child, "address"), required(child, "port")))
            except InvalidEndpoint as error:
                raise errors.InvalidArgument(error.message) from None
        if len(endpoints) > MAX_ENDPOINTS:
            raise errors.InvalidArgument(f"at most {MAX_ENDPOINTS} endpoints may be registered")
        if len(set(endpoints)) != len(endpoints):
            raise errors.InvalidArgument("an endpoint is listed twice")
        if presence == "offline":
            endpoints = []
        username = session.username
        answers = self._current_answers()
        ticket = None if answers is None else answers.reading(username)  # before the write
        record = await self.store.put_addresses(username, presence, tuple(endpoints), ttl)
        result = addresses_element(record)
        if answers is not None and ticket is not None:
            # Committed: the new answer is known (kept unless another write came between).
            answers.replace(username, ticket, serialize(result), record.seq)
        return [result]

    def _current_answers(self) -> Answers[str, bytes] | None:
        """The answer cache, brought up to date with the address records written since it
        was last asked (by any process); None when it is off or cannot be kept current."""
        answers = self.registry.caches.answers
        if not answers.active or not self.store.follow_address_changes(answers):
            return None
        return answers

    def cached_lookup(self, session: Session, element: Element) -> list[Result] | None:
        """The look-up's answer if it is cached and still current, else None."""
        answers = self._current_answers()
        if answers is None:
            return None
        cached = answers.get(self._local_username(required(element, "user")))
        return None if cached is None else [cached]

    async def lookup(self, session: Session, element: Element) -> list[Result]:
        """A user's signed addresses and presence."""
        username = self._local_username(required(element, "user"))
        answers = self._current_answers()
        ticket = 0
        if answers is not None:
            cached = answers.get(username)  # cached meanwhile (a re-validated session)
            if cached is not None:
                return [cached]
            ticket = answers.reading(username)  # before the read: a write meanwhile refuses it
        record = await self.store.get_addresses(username)
        if record is None:
            raise errors.NotFound(f"no user {username}@{self.domain}")
        answer = serialize(addresses_element(record))
        if answers is not None:
            answers.put(username, ticket, answer, record.seq)
        return [answer]
