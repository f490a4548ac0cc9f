"""User identities (``username@domain``) and how certificates carry them.

A user certificate issued by a domain's CA names its holder twice: the subject's common
name is the user name and the organisation is the domain, and a subjectAltName URI
``irp:<username>@<domain>`` carries the full identity. Only the URI is authoritative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

URI_SCHEME = "irp:"

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class InvalidIdentity(ValueError):
    """A user name, domain or certificate identity is malformed."""


def check_username(username: str) -> str:
    """Return ``username`` if it is a valid user name, else raise :class:`InvalidIdentity`.

    User names are 1-63 characters of lower-case ASCII letters, digits, dot, underscore and
    hyphen, starting with a letter or digit.
    """
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise InvalidIdentity(
            f"invalid user name {username!r}: use 1-63 lower-case letters, digits, '.', '_' or"
            " '-', starting with a letter or digit"
        )
    return username


def check_domain(domain: str) -> str:
    """Return ``domain`` (lower-cased, without a final dot) if it is a valid DNS name."""
    if not isinstance(domain, str):
        raise InvalidIdentity(f"invalid domain {domain!r}")
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidIdentity(f"invalid domain {domain!r}")
    return name


@dataclass(frozen=True, order=True)
class Identity:
    """A user of a domain: ``alice@example.org``."""

    username: str
    domain: str

    def __post_init__(self) -> None:
        check_username(self.username)
        object.__setattr__(self, "domain", check_domain(self.domain))

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Parse ``username@domain``."""
        if not isinstance(text, str) or text.count("@") != 1:
            raise InvalidIdentity(f"invalid identity {text!r}: expected user@domain")
        username, domain = text.split("@")
        return cls(username, domain)

    @property
    def uri(self) -> str:
        """The subjectAltName URI that carries this identity in a certificate."""
        return f"{URI_SCHEME}{self}"

    def __str__(self) -> str:
        return f"{self.username}@{self.domain}"


def identity_from_certificate(certificate: x509.Certificate) -> Identity:
    """Return the identity a user certificate names, from its ``irp:`` SAN URI.

    Raises :class:`InvalidIdentity` if there is not exactly one such URI.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise InvalidIdentity("the certificate has no subjectAltName") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
        # Garbled or repeated extensions: no identity can be read from them.
        raise InvalidIdentity(f"the certificate's extensions cannot be read: {error}") from None
    uris = [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(URI_SCHEME)
    ]
    if len(uris) != 1:
        raise InvalidIdentity("the certificate must carry exactly one irp: identity URI")
    return Identity.parse(uris[0][len(URI_SCHEME) :])
