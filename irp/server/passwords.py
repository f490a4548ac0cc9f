"""Password hashing with Argon2id (RFC 9106), in PHC string format.

Hashing is deliberately slow and memory-hard, so the server runs it in a thread pool (see
:class:`irp.server.registry.Registry`). Hashes name their own parameters, so stronger defaults can
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
from dataclasses import dataclass

from argon2 import exceptions as argon2_errors
from argon2.low_level import Type, hash_secret, verify_secret

from irp.errors import InvalidArgument

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
