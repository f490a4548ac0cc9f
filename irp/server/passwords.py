"""Password hashing with Argon2id (RFC 9106), in PHC string format.

Hashing is deliberately slow and memory-hard, so the server runs it in a thread pool (see
:class:`HashQueue`). Hashes name their own parameters, so stronger defaults can
be introduced later while old hashes still verify (and :meth:`PasswordHasher.needs_rehash`
tells when to upgrade them at the next successful login).

The hashing is libargon2's, the reference implementation, through ``argon2-cffi``: each
hash computes its lanes on threads of its own, so any number of hashes may run at once on
any number of threads. (``cryptography``'s Argon2id runs the lanes on OpenSSL's one
process-wide thread pool, sized to the CPU count: two concurrent multi-lane hashes on a
2-CPU machine wait for each other's lanes for ever.) Both write and read the same PHC
strings, so hashes made by either verify with the other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from argon2 import exceptions as argon2_errors
from argon2.low_level import Type, hash_secret, verify_secret
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from irp.errors import InvalidArgument, Unavailable

T = TypeVar("T")

#: Log lines keep the namespace they had before the registry was split (issue 10).
log = Logger(namespace="irp.server.registry")

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

_PHC = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


@dataclass(frozen=True)
class Argon2Parameters:
    """Argon2id cost parameters; the default is RFC 9106's second recommended option."""

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4
    salt_length: int = 16
    hash_length: int = 32


def check_password_policy(password: str) -> None:
    """Refuse passwords that are too short or too long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(f"passwords must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument(f"passwords may have at most {MAX_PASSWORD_LENGTH} characters")


class PasswordHasher:
    """Hash and verify passwords with Argon2id."""

    def __init__(self, parameters: Argon2Parameters | None = None) -> None:
        self.parameters = parameters or Argon2Parameters()
        # Verifying an unknown user costs one hash of this dummy, so timing does not tell
        # whether a user exists.
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> str:
        """Return the PHC string for ``password`` with a fresh random salt."""
        parameters = self.parameters
        encoded = hash_secret(
            password.encode("utf-8"),
            os.urandom(parameters.salt_length),
            time_cost=parameters.iterations,
            memory_cost=parameters.memory_kib,
            parallelism=parameters.lanes,
            hash_len=parameters.hash_length,
            type=Type.ID,
        )
        return encoded.decode("ascii")

    def verify(self, password: str, encoded: str | None) -> bool:
        """Return whether ``password`` matches ``encoded`` (a PHC string, or None).

        ``None`` (no password set, or no such user) still costs one hash.
        """
        data = password.encode("utf-8")
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hash("dummy password for timing")
            encoded = self._dummy_hash
            target = False
        else:
            target = True
        if not _PHC.match(encoded):
            return False  # not an Argon2id (version 19) hash: never a match
        try:
            verify_secret(encoded.encode("ascii"), data, Type.ID)
        except (argon2_errors.VerificationError, argon2_errors.InvalidHashError, UnicodeEncodeError):
            return False
        return target

    def needs_rehash(self, encoded: str) -> bool:
        """True if ``encoded`` uses weaker parameters than the current ones."""
        match = _PHC.match(encoded)
        if not match:
            return True
        memory, iterations, lanes = (int(group) for group in match.groups())
        parameters = self.parameters
        return (memory, iterations, lanes) != (
            parameters.memory_kib,
            parameters.iterations,
            parameters.lanes,
        )


class ThreadsAndClock(Protocol):
    """Where a :class:`HashQueue` finds its thread pool and clock (the registry: read at
    each use, so that either may be replaced on it)."""

    @property
    def run_in_thread(self) -> Callable[..., Deferred[Any]]:
        """Runs a function in a thread; a Deferred of its result."""

    @property
    def clock(self) -> IReactorTime:
        """The time and the timers."""


class HashQueue:
    """Runs password hashes in the thread pool, a few at a time, each within a deadline.

    Argon2id is memory-hard: only ``concurrent`` hashes run at once (each takes the
    memory cost), the rest wait their turn in order.
    """

    def __init__(self, parts: ThreadsAndClock, concurrent: int, timeout: Callable[[], float]) -> None:
        """``timeout`` gives the current deadline in seconds (read at each hash)."""
        self.parts = parts
        self.timeout = timeout
        self._turns = DeferredSemaphore(concurrent)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run a password hash (a :class:`PasswordHasher`'s ``hash`` or ``verify``) in its
        turn, within the ``timeout`` in seconds (waiting included). Past the timeout the request
        fails with Unavailable; its turn is given up, so other requests go on (a
        computation already under way finishes in its thread, its result unused)."""
        work: Deferred[T] = self._turns.run(self.parts.run_in_thread, function, *args)
        seconds = self.timeout()
        work.addTimeout(seconds, self.parts.clock)
        try:
            return await work
        except defer.TimeoutError:
            log.warn(
                "A password hash took more than {seconds} s (waiting included): the request was refused",
                seconds=seconds,
            )
            raise Unavailable("checking the password took too long; try again later") from None
