"""The registry's caches, composed in one place, each one switchable off.

Three caches save work on the busy paths; none changes an answer:

``answers``
    serialised look-up answers by user name, each kept until a write to that user's
    address record is reported: by this process at once (a registration replaces the
    answer), by other processes sharing the database through its change log (see
    :meth:`irp.server.store.RegistryStore.follow_address_changes` and
    :class:`common.caches.AnswerCache`);
``certificates``
    stored certificates by fingerprint, as found at login, kept while the database's
    data version is the one they were read at (any commit retires them);
``usernames``
    names as callers write them (``alice``, ``alice@example.org``) mapped to valid local
    user names.

A cache that is off is a :class:`NoCache` (:class:`NoAnswerCache` for answers): it keeps
nothing and is always asked in vain,
so the code that uses a cache reads the same either way. ``twistd irp --no-cache NAME``
turns one off (see :func:`parse_cache_names`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from common.caches import AnswerCache, RecentCache, VersionedCache
from irp.wire.records import CertificateInfo

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)

#: The names of the caches, as ``--no-cache`` takes them.
CACHE_NAMES = ("answers", "certificates", "usernames")

#: How many serialised look-up answers a registry keeps (about 600 bytes each).
ANSWER_CACHE_SIZE = 20_000
#: How many certificates presented at login are remembered.
CERTIFICATE_CACHE_SIZE = 20_000
#: How many names as callers write them are remembered (the check is cheap, the cache
#: only saves it).
USERNAMES_CACHED = 20_000


class Versioned(Protocol[K_contra, V]):
    """Values kept with the data version they were read at."""

    def get(self, key: K_contra, version: int | None) -> V | None:
        """The value kept for ``key`` if read at ``version``, else None."""

    def put(self, key: K_contra, version: int | None, value: V) -> None:
        """Keep ``value``, read at ``version``."""

    def stats(self) -> dict[str, int]:
        """Hit and miss counts."""


class Recent(Protocol[K_contra, V]):
    """Values kept while recently used."""

    def get(self, key: K) -> V | None:
        """The value kept for ``key``, or None."""

    def put(self, key: K_contra, value: V) -> None:
        """Keep ``value`` for ``key``."""

    def stats(self) -> dict[str, int]:
        """Hit and miss counts."""


class Answers(Protocol[K_contra, V]):
    """Answers kept per key until a write to the key (see :class:`~common.caches.AnswerCache`)."""

    #: False for a cache that is off (no change needs following for it).
    active: bool

    def get(self, key: K_contra) -> V | None:
        """The answer kept for ``key``, or None."""

    def reading(self, key: K_contra) -> int:
        """The ticket to store an answer with, taken before reading its data."""

    def put(self, key: K_contra, ticket: int, value: V, version: int) -> bool:
        """Keep ``value`` unless ``key`` was written since ``ticket``."""

    def replace(self, key: K_contra, ticket: int, value: V, version: int) -> bool:
        """This process wrote ``key``: its new answer is ``value``."""

    def evict(self, key: K_contra, version: int | None = None) -> None:
        """``key`` was written (at ``version``): forget an older answer."""

    def clear(self) -> None:
        """Forget every answer."""

    def stats(self) -> dict[str, int]:
        """Hit and miss counts."""


class NoCache(Generic[K, V]):
    """A cache that is off: keeps nothing (either interface, versioned or not)."""

    def get(self, key: K, version: int | None = None) -> V | None:
        """Always None: nothing is kept."""
        return None

    def put(self, key: K, *value: object) -> None:
        """Keep nothing."""

    def stats(self) -> dict[str, int]:
        """Nothing kept, nothing asked of it counted."""
        return {"hits": 0, "misses": 0}


class NoAnswerCache(Generic[K, V]):
    """The answer cache when it is off: keeps nothing, follows no change."""

    active = False

    def get(self, key: K) -> V | None:
        """Always None: nothing is kept."""
        return None

    def reading(self, key: K) -> int:
        """A ticket that stores nothing."""
        return 0

    def put(self, key: K, ticket: int, value: V, version: int) -> bool:
        """Keep nothing."""
        return False

    def replace(self, key: K, ticket: int, value: V, version: int) -> bool:
        """Keep nothing."""
        return False

    def evict(self, key: K, version: int | None = None) -> None:
        """Nothing to forget."""

    def clear(self) -> None:
        """Nothing to forget."""

    def stats(self) -> dict[str, int]:
        """Nothing kept, nothing asked of it counted."""
        return {"hits": 0, "misses": 0}


@dataclass
class RegistryCaches:
    """The registry's three caches (each a real one, or a :class:`NoCache` when off)."""

    answers: Answers[str, bytes]
    certificates: Versioned[str, CertificateInfo]
    usernames: Recent[str, str]

    @classmethod
    def build(cls, off: Iterable[str] = ()) -> RegistryCaches:
        """The caches, without the ones named in ``off`` (see :data:`CACHE_NAMES`)."""
        off = frozenset(off)
        unknown = off - set(CACHE_NAMES)
        if unknown:
            raise ValueError(f"unknown caches: {', '.join(sorted(unknown))}")
        return cls(
            answers=NoAnswerCache() if "answers" in off else AnswerCache(ANSWER_CACHE_SIZE),
            certificates=NoCache() if "certificates" in off else VersionedCache(CERTIFICATE_CACHE_SIZE),
            usernames=NoCache() if "usernames" in off else RecentCache(USERNAMES_CACHED),
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Each cache's counts (hits, misses...) by name (zeros for a cache that is off)."""
        return {
            "answers": self.answers.stats(),
            "certificates": self.certificates.stats(),
            "usernames": self.usernames.stats(),
        }


def parse_cache_names(value: str) -> frozenset[str]:
    """The caches one ``--no-cache`` value names: one of :data:`CACHE_NAMES`, several
    separated by commas, or ``all``; ValueError for any other name."""
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if names == {"all"}:
        return frozenset(CACHE_NAMES)
    unknown = names - set(CACHE_NAMES)
    if unknown or not names:
        raise ValueError(f"unknown cache {value!r}: the caches are {', '.join(CACHE_NAMES)} (or all)")
    return names
