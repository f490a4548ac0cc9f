"""Tests for :mod:`irp.server.passwords`: Argon2id (RFC 9106) in PHC string format."""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from cryptography.hazmat.primitives.kdf import argon2
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from irp.errors import InvalidArgument
from irp.server import passwords
from irp.server.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    Argon2Parameters,
    PasswordHasher,
    check_password_policy,
)
from test.helpers import TEST_PARAMETERS

PHC = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)\Z")


def _unpadded_b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


class ParameterTests(unittest.SynchronousTestCase):
    """The default parameters."""

    def test_rfc9106_second_recommendation(self) -> None:
        """RFC 9106 section 4, second recommended option: Argon2id, t=3, p=4, m=64 MiB,
        128-bit salt, 256-bit tag."""
        parameters = Argon2Parameters()
        self.assertEqual(
            (parameters.iterations, parameters.lanes, parameters.memory_kib, parameters.salt_length, parameters.hash_length),
            (3, 4, 65536, 16, 32),
        )
        self.assertEqual(PasswordHasher().parameters, parameters)

    def test_default_hash_format(self) -> None:
        """A hash made with the defaults names them in its PHC string (one real-cost hash)."""
        encoded = PasswordHasher().hash("correct horse battery staple")
        match = PHC.match(encoded)
        self.assertIsNotNone(match, encoded)
        assert match is not None
        self.assertEqual(match.group(1, 2, 3), ("65536", "3", "4"))
        self.assertEqual(len(_unpadded_b64decode(match.group(4))), 16)
        self.assertEqual(len(_unpadded_b64decode(match.group(5))), 32)


class HashVerifyTests(unittest.SynchronousTestCase):
    """hash and verify, with the cheap test parameters."""

    def setUp(self) -> None:
        self.hasher = PasswordHasher(TEST_PARAMETERS)

    def test_phc_format(self) -> None:
        """Hashes are PHC strings naming their parameters."""
        match = PHC.match(self.hasher.hash("password one"))
        assert match is not None
        self.assertEqual(match.group(1, 2, 3), (str(TEST_PARAMETERS.memory_kib), str(TEST_PARAMETERS.iterations), str(TEST_PARAMETERS.lanes)))

    def test_salted(self) -> None:
        """The same password hashes differently every time."""
        self.assertNotEqual(self.hasher.hash("same password"), self.hasher.hash("same password"))

    def test_verify(self) -> None:
        """The right password verifies; a wrong one does not."""
        encoded = self.hasher.hash("Zoë's password")
        self.assertTrue(self.hasher.verify("Zoë's password", encoded))
        self.assertFalse(self.hasher.verify("Zoe's password", encoded))
        self.assertFalse(self.hasher.verify("", encoded))

    def test_verify_garbage_hash(self) -> None:
        """A stored value that is not a PHC string verifies nothing (no exception)."""
        for encoded in ("", "plain", "$argon2i$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "$argon2id$v=19$m=x"):
            self.assertFalse(self.hasher.verify("password", encoded))

    def test_old_parameters_still_verify(self) -> None:
        """Hashes name their parameters, so a hasher with other defaults verifies them."""
        encoded = self.hasher.hash("an old password")
        stronger = PasswordHasher(Argon2Parameters(memory_kib=512, iterations=2, lanes=1))
        self.assertTrue(stronger.verify("an old password", encoded))

    def test_interoperable(self) -> None:
        """cryptography's own Argon2id verifies our hashes."""
        encoded = self.hasher.hash("interoperable!")
        argon2.Argon2id.verify_phc_encoded(b"interoperable!", encoded)

    def test_hashes_stored_by_earlier_versions_verify(self) -> None:
        """Hashes made by cryptography's Argon2id (what earlier versions stored), with the
        test, four-lane and shipped default parameters, verify (and wrong passwords do
        not); those with the current parameters need no rehash."""
        for parameters in (TEST_PARAMETERS, Argon2Parameters(memory_kib=1024, lanes=4), Argon2Parameters()):
            stored = argon2.Argon2id(
                salt=os.urandom(parameters.salt_length),
                length=parameters.hash_length,
                iterations=parameters.iterations,
                lanes=parameters.lanes,
                memory_cost=parameters.memory_kib,
            ).derive_phc_encoded("Zoë's password".encode())
            hasher = PasswordHasher(parameters)
            self.assertTrue(hasher.verify("Zoë's password", stored), parameters)
            self.assertFalse(hasher.verify("Zoe's password", stored), parameters)
            self.assertFalse(hasher.needs_rehash(stored))


class UnknownUserTests(unittest.SynchronousTestCase):
    """verify(password, None): the path for unknown users and users without a password."""

    def test_false(self) -> None:
        """No hash never verifies, whatever the password (even the dummy's)."""
        hasher = PasswordHasher(TEST_PARAMETERS)
        self.assertFalse(hasher.verify("anything at all", None))
        self.assertFalse(hasher.verify("dummy password for timing", None))

    def test_pays_one_real_hash(self) -> None:
        """It runs Argon2id once, with the hasher's own parameters, like a known user."""
        calls: list[str] = []
        real = passwords.verify_secret

        def spy(encoded: bytes, secret: bytes, kind: Any) -> Any:
            calls.append(encoded.decode("ascii"))
            return real(encoded, secret, kind)

        self.patch(passwords, "verify_secret", spy)
        hasher = PasswordHasher(TEST_PARAMETERS)
        known = hasher.hash("a known password")
        hasher.verify("guess", known)
        hasher.verify("guess", None)
        hasher.verify("guess", None)
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[0], known)
        self.assertEqual(calls[1], calls[2])  # the dummy is made once
        self.assertFalse(hasher.needs_rehash(calls[1]))


class ConcurrencyTests(unittest.TestCase):
    """The shipped default parameters, many hashes at once, on thread pools of any size
    (cryptography's Argon2id never returned from two concurrent four-lane hashes on a
    2-CPU machine)."""

    #: Concurrent verifications per pool: more than the CPUs and than the smaller pools.
    CONCURRENT = 8

    async def check_on_pool(self, threads: int) -> None:
        pool = ThreadPool(minthreads=threads, maxthreads=threads, name=f"hashing-{threads}")
        pool.start()
        self.addCleanup(pool.stop)
        hasher = PasswordHasher()
        encoded = hasher.hash("the right password")
        guesses = ["the right password" if n % 2 else f"wrong guess {n}" for n in range(self.CONCURRENT)]
        work = gatherResults(
            [deferToThreadPool(reactor, pool, hasher.verify, guess, encoded) for guess in guesses]
        )
        # A bound, not a measurement: one such hash takes well under a second; a hang
        # fails here instead of holding the test run.
        work.addTimeout(120, reactor)
        self.assertEqual(await work, [guess == "the right password" for guess in guesses])

    async def test_one_thread(self) -> None:
        await self.check_on_pool(1)

    async def test_two_threads(self) -> None:
        await self.check_on_pool(2)

    async def test_many_threads(self) -> None:
        await self.check_on_pool(self.CONCURRENT)


class RehashTests(unittest.SynchronousTestCase):
    """needs_rehash."""

    def test_same_parameters(self) -> None:
        """A hash with the current parameters needs nothing."""
        hasher = PasswordHasher(TEST_PARAMETERS)
        self.assertFalse(hasher.needs_rehash(hasher.hash("some password")))

    def test_weaker_or_different(self) -> None:
        """Other memory, iterations or lanes need a rehash."""
        encoded = PasswordHasher(TEST_PARAMETERS).hash("some password")
        for parameters in (
            Argon2Parameters(memory_kib=512, iterations=1, lanes=1),
            Argon2Parameters(memory_kib=256, iterations=2, lanes=1),
            Argon2Parameters(memory_kib=256, iterations=1, lanes=2),
            Argon2Parameters(),
        ):
            self.assertTrue(PasswordHasher(parameters).needs_rehash(encoded), parameters)

    def test_garbage(self) -> None:
        """Anything that is not an Argon2id PHC string needs a rehash."""
        hasher = PasswordHasher(TEST_PARAMETERS)
        for encoded in ("", "$2b$12$abcdefghijklmnopqrstuv", "$argon2i$v=19$m=256,t=1,p=1$x$y"):
            self.assertTrue(hasher.needs_rehash(encoded))


class PolicyTests(unittest.SynchronousTestCase):
    """check_password_policy."""

    def test_lengths(self) -> None:
        """MIN_PASSWORD_LENGTH to MAX_PASSWORD_LENGTH characters."""
        check_password_policy("x" * MIN_PASSWORD_LENGTH)
        check_password_policy("x" * MAX_PASSWORD_LENGTH)
        error = self.assertRaises(InvalidArgument, check_password_policy, "x" * (MIN_PASSWORD_LENGTH - 1))
        self.assertIn(str(MIN_PASSWORD_LENGTH), error.message)
        self.assertRaises(InvalidArgument, check_password_policy, "x" * (MAX_PASSWORD_LENGTH + 1))
        self.assertEqual((MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH), (10, 1024))
