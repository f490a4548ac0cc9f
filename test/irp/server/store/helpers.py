"""Helpers of the registry store's tests: the engines, and reads only tests need.

The store's tests are mixins on :class:`RegistryStoreTestsMixin`, so that every database
engine runs the same ones: each test module pairs its mixin with :class:`SQLiteStore` (a
real file in the test's temporary folder) and :class:`PostgreSQLStore` (a real server, see
test/pgserver.py), which supply :meth:`~RegistryStoreTestsMixin.make_store`. The reads at
the end are what the tests check that the library itself never asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.db.dialect import SQLITE
from common.db.pools import sqlite_pool
from common.identity import Identity
from common.pki.keyfiles import fingerprint
from irp.server.store import RegistryStore, serial_text
from irp.server.store.schema import LATEST_VERSION
from irp.wire.records import RecordSigner, RecordVerifier
from test import pki

DOMAIN = "example.org"
START = 1_900_000_000


def make_signer() -> RecordSigner:
    key = ed25519.Ed25519PrivateKey.generate()
    return RecordSigner(key, pki.make_ca(DOMAIN).issue_signing_certificate(key.public_key()))


if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object


class RegistryStoreTestsMixin(_MixinBase):
    """Behaviour every RegistryStore must have, whatever the database engine.

    Test cases combine it with an engine (:class:`SQLiteStore`, :class:`PostgreSQLStore`)
    that implements :meth:`make_store`.
    """

    clock: Clock
    signer: RecordSigner

    # -- to be supplied by the engine -------------------------------------------------

    async def make_store(self, name: str = "registry") -> RegistryStore:
        """A store on the database ``name``: empty (no schema) the first time it is asked
        for in a test, the same database when asked for again. Closed at the test's end."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------

    async def store(self, name: str = "registry") -> RegistryStore:
        store = await self.make_store(name)
        self.assertEqual(await store.upgrade(), LATEST_VERSION)
        return store

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.signer = make_signer()
        self.verifier = RecordVerifier(self.signer.certificate)

    def certificate(self, username: str = "alice") -> x509.Certificate:
        return pki.issue_user(pki.make_ca(DOMAIN), username).certificate

    async def add_certificate(self, store: RegistryStore, username: str = "alice", origin: str = "issued") -> x509.Certificate:
        certificate = self.certificate(username)
        await store.add_certificate(username, certificate, fingerprint(certificate), origin)
        return certificate

    def use_certificate_time(self) -> None:
        """Run the store's clock at the time the test certificates are valid (they are
        made now, START is later): current certificates count against quotas."""
        self.clock = Clock()
        self.clock.advance(self.certificate().not_valid_before_utc.timestamp() + 3600)

    async def assertFailsWith(self, error_type: type[Exception], deferred: Any) -> Exception:
        try:
            await deferred
        except error_type as error:
            return error
        self.fail(f"{error_type.__name__} not raised")
        raise AssertionError  # not reached

    def certificate_with_serial(self, username: str, serial: int, issuer: str = DOMAIN) -> x509.Certificate:
        ca = pki.make_ca(issuer)
        certificate, _key = pki.build_certificate(
            ca.issuing_certificate, ca.issuing_key, subject=pki.user_name(Identity(username, DOMAIN)), serial=serial
        )
        return certificate

    def crl_builder(self, calls: list[tuple[int, list[tuple[int, int, str | None]]]], lifetime: int = 86400) -> Callable[..., tuple[bytes, int]]:
        def build(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            calls.append((number, entries))
            return f"crl {number}".encode(), int(self.clock.seconds()) + lifetime

        return build


class SQLiteStore(RegistryStoreTestsMixin):
    """The store on a real SQLite file."""

    def path(self, name: str) -> str:
        if not hasattr(self, "_directory"):
            self._directory = os.path.abspath(self.mktemp())
        return os.path.join(self._directory, f"{name}.sqlite3")

    async def make_store(self, name: str = "registry") -> RegistryStore:
        pool = sqlite_pool(self.path(name), global_reactor)
        pool.start()
        self.addCleanup(pool.close)
        return RegistryStore(pool, SQLITE, DOMAIN, self.signer, self.clock.seconds)


class PostgreSQLStore(RegistryStoreTestsMixin):
    """The store on a real PostgreSQL server (see test/pgserver.py); skipped without one."""

    def setUp(self) -> None:
        from test.pgserver import PostgresServer, PostgresUnavailable

        try:
            self.server = PostgresServer.shared()
        except PostgresUnavailable as error:
            raise unittest.SkipTest(f"no PostgreSQL server: {error}") from None
        super().setUp()
        self._databases: dict[str, str] = {}

    async def make_store(self, name: str = "registry") -> RegistryStore:
        from common.db.dialect import POSTGRESQL
        from common.db.pools import postgresql_pool

        if name not in self._databases:
            self._databases[name] = self.server.create_database()
        pool = postgresql_pool(self._databases[name], global_reactor, 4)
        pool.start()
        self.addCleanup(pool.close)
        return RegistryStore(pool, POSTGRESQL, DOMAIN, self.signer, self.clock.seconds)


def check_integrity(store: RegistryStore) -> Deferred[str]:
    """Run the engine's integrity check; fire with ``"ok"`` or the problems found."""

    def check(txn: Any) -> str:
        if store.dialect.name != "sqlite":
            txn.execute("SELECT 1")
            return "ok"
        txn.execute("PRAGMA integrity_check")
        return ", ".join(str(row[0]) for row in txn.fetchall())

    return store.pool.runInteraction(check)


def count_current_certificates(
    store: RegistryStore, username: str, now: float, excluding: int | None = None
) -> Deferred[int]:
    """How many certificates the user holds that are not revoked nor expired at ``now``
    (leaving out the serial ``excluding``): what the store's quota checks count."""
    return store._read(store._count_current_certificates, username, now, excluding)


def serial_in_use(store: RegistryStore, serial: int) -> Deferred[bool]:
    """Fire with whether a certificate this registry issued with this serial is recorded."""

    def check(txn: Any) -> bool:
        row = store._fetchone(
            txn, "SELECT 1 FROM certificates WHERE serial = ? AND origin = 'issued'", (serial_text(serial),)
        )
        return row is not None

    return store._read(check)


def revocation_generation(store: RegistryStore) -> Deferred[int]:
    """Fire with the counter that grows with every revocation."""

    def get(txn: Any) -> int:
        return int(store._fetchone(txn, "SELECT value FROM counters WHERE name = 'revocations'")[0])

    return store._read(get)
