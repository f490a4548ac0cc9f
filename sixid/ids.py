"""Device IDs: the hash of a public key, and where it is registered (sans-I/O).

An ID is the first 160 bits of ``SHA-256(b"sixid-id-v1\\x00" || SPKI)``, where SPKI is the
DER SubjectPublicKeyInfo of a key the key policy accepts (:func:`derive_id`). Whoever holds
the key can prove the ID is theirs; nobody can choose a key for a given ID.

Text forms: the canonical one (the wire, the database) is RFC 4648 base32 in lower case
without padding, exactly 32 characters of ``a-z2-7``; the display form puts a ``-`` after
every 4 characters (39 characters). :meth:`SixId.parse` reads either, in any case, with
white space around it. An address ``ID@domain`` (:class:`SixIdAddress`) names the domain
whose registry serves the ID.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.identity import InvalidIdentity, check_domain
from common.pki.keys import check_public_key

#: The prefix hashed before the SPKI.
ID_CONTEXT: Final = b"sixid-id-v1\x00"
#: Bytes of an ID's digest.
DIGEST_SIZE: Final = 20
#: Characters of the canonical text.
TEXT_LENGTH: Final = 32
#: Characters of the grouped (display) text.
GROUPED_LENGTH: Final = 39

_CANONICAL = re.compile(r"[a-z2-7]{32}\Z")
_GROUPED = re.compile(r"[a-z2-7]{4}(?:-[a-z2-7]{4}){7}\Z")


class InvalidSixId(ValueError):
    """Text that is not an ID or an ID address; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, order=True, repr=False)
class SixId:
    """A device ID: 20 bytes of key hash."""

    digest: bytes

    def __repr__(self) -> str:
        return f"SixId({str(self)!r})"

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise InvalidSixId(f"an ID is {DIGEST_SIZE} bytes")

    def __str__(self) -> str:
        """The canonical text: 32 characters of lower-case base32."""
        return base64.b32encode(self.digest).decode("ascii").lower()

    def grouped(self) -> str:
        """The display form: the canonical text in 8 groups of 4 joined by ``-``."""
        text = str(self)
        return "-".join(text[start : start + 4] for start in range(0, TEXT_LENGTH, 4))

    @classmethod
    def parse(cls, text: str) -> SixId:
        """Read the canonical or the grouped form, in any case, white space around it
        stripped; anything else is :class:`InvalidSixId`."""
        if not isinstance(text, str):
            raise InvalidSixId("an ID is text")
        candidate = text.strip().lower()
        if _GROUPED.match(candidate):
            candidate = candidate.replace("-", "")
        elif not _CANONICAL.match(candidate):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise InvalidSixId(
                f"{shown!r} is not a sixid ID: expected 32 characters of a-z and 2-7,"
                " or 8 groups of 4 of them joined by '-'"
            )
        return cls(base64.b32decode(candidate.upper()))

    @classmethod
    def from_canonical(cls, text: str) -> SixId:
        """Read the canonical form only (the wire and signed bytes): exactly 32 characters
        of ``a-z2-7``; else :class:`InvalidSixId`."""
        if not isinstance(text, str) or not _CANONICAL.match(text):
            raise InvalidSixId("an ID must be written as 32 characters of a-z and 2-7")
        return cls(base64.b32decode(text.upper()))


def spki_der(public_key: PublicKeyTypes) -> bytes:
    """The key's DER SubjectPublicKeyInfo."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def id_of_spki(spki: bytes) -> SixId:
    """The ID of a DER SubjectPublicKeyInfo (the bytes as given: no key policy, no parse)."""
    return SixId(hashlib.sha256(ID_CONTEXT + spki).digest()[:DIGEST_SIZE])


def derive_id(public_key: PublicKeyTypes) -> SixId:
    """The ID of a public key; :class:`common.pki.errors.WeakKey` for a key the key policy
    refuses."""
    return id_of_spki(spki_der(check_public_key(public_key)))


@dataclass(frozen=True, order=True)
class SixIdAddress:
    """An ID and the domain whose registry serves it: ``ID@domain``."""

    sixid: SixId
    domain: str

    def __post_init__(self) -> None:
        try:
            domain = check_domain(self.domain)
        except InvalidIdentity as error:
            raise InvalidSixId(str(error)) from None
        object.__setattr__(self, "domain", domain)

    @classmethod
    def parse(cls, text: str) -> SixIdAddress:
        """Read ``ID@domain`` (the ID canonical or grouped, any case); else
        :class:`InvalidSixId`."""
        if not isinstance(text, str) or text.strip().count("@") != 1:
            raise InvalidSixId(f"{text!r} is not a sixid address: expected ID@domain")
        sixid, domain = text.strip().split("@")
        return cls(SixId.parse(sixid), domain)

    def __str__(self) -> str:
        return f"{self.sixid}@{self.domain}"
