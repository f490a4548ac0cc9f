"""Who a message is for, as a person writes it: a user or one of their devices.

The one parser of recipients: the ``sixchat`` command, the agent's control socket and the
agent's outbox all take what :func:`parse_recipient` returns.

- ``bob@example.org`` (or ``bob``, meaning a user of the profile's own domain): a user, found
  through their domain's IRP registry.
- ``ID@example.org``: a device, by its sixid device ID (32 base32 characters, or the grouped
  form ``xxxx-xxxx-...``, any case), found at example.org's sixid server. A local part that
  reads as a device ID is one: a user name of exactly that shape must be written in another
  way (there is none: such user names are not reachable by name through this parser).
"""

from __future__ import annotations

from common.identity import Identity, InvalidIdentity, check_domain
from sixid.ids import InvalidSixId, SixId, SixIdAddress

#: What a recipient can be.
Recipient = Identity | SixIdAddress


class InvalidRecipient(ValueError):
    """Text that names neither a user nor a device; ``str()`` says why, readably."""


def parse_recipient(text: str, home_domain: str | None = None) -> Recipient:
    """A user (:class:`Identity`) or a device (:class:`SixIdAddress`) from ``text``.

    Without ``@``, ``text`` is a user of ``home_domain`` (a device always names its domain);
    with no ``home_domain``, ``@domain`` is required. Raises :class:`InvalidRecipient`.
    """
    if not isinstance(text, str):
        raise InvalidRecipient(f"invalid recipient {text!r}: expected user@domain or ID@domain")
    text = text.strip()
    if text.count("@") > 1:
        raise InvalidRecipient(f"invalid recipient {text!r}: expected user@domain or ID@domain")
    local, _, domain = text.partition("@")
    if not _:
        if home_domain is None:
            raise InvalidRecipient(f"invalid recipient {text!r}: expected user@domain or ID@domain")
        if _looks_like_id(local):
            raise InvalidRecipient(f"{text!r} looks like a device ID: write it with its domain, as ID@domain")
        domain = home_domain
    if _looks_like_id(local):
        try:
            return SixIdAddress(SixId.parse(local), check_domain(domain))
        except (InvalidSixId, InvalidIdentity) as error:
            raise InvalidRecipient(f"invalid device address {text!r}: {error}") from None
    try:
        return Identity(local, domain)
    except InvalidIdentity as error:
        raise InvalidRecipient(str(error)) from None


def is_device(recipient: Recipient) -> bool:
    """True for a device address (found at a sixid server)."""
    return isinstance(recipient, SixIdAddress)


def _looks_like_id(local: str) -> bool:
    try:
        SixId.parse(local)
    except InvalidSixId:
        return False
    return True
