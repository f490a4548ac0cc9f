"""Password hashing with Argon2id (RFC 9106), in PHC string format.

Hashing is deliberately slow and memory-hard, so the server runs it in a thread pool (see
:class:`irp.registry.Registry`). Hashes name their own parameters, so stronger defaults can
be introduced later while old hashes still verify (and :meth:`PasswordHasher.needs_rehash`
tells when to upgrade them at the next successful login).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

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


#: Cheap parameters for test suites only; never use them in production.
TEST_PARAMETERS = Argon2Parameters(memory_kib=256, iterations=1, lanes=1)


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

    def _kdf(self, salt: bytes) -> Argon2id:
        parameters = self.parameters
        return Argon2id(
            salt=salt,
            length=parameters.hash_length,
            iterations=parameters.iterations,
            lanes=parameters.lanes,
            memory_cost=parameters.memory_kib,
        )

    def hash(self, password: str) -> str:
        """Return the PHC string for ``password`` with a fresh random salt."""
        kdf = self._kdf(os.urandom(self.parameters.salt_length))
        return kdf.derive_phc_encoded(password.encode("utf-8"))

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
        try:
            Argon2id.verify_phc_encoded(data, encoded)
        except (InvalidKey, ValueError):
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
