"""The registry under test: the real ``RegistryService`` in a server process.

:func:`serve_registry` (run by the harness in a process pinned to the server core) starts
the product exactly as ``twistd irp`` does: :class:`irp.server.service.RegistryService` with its
own CA (created on first start, P-384 by default), TLS on a loopback port and a SQLite file
(WAL, ``synchronous=FULL``, one connection through ``twisted.enterprise.adbapi``). Its log
goes to ``registry.log`` in the data folder at level info, as a deployed server's does.

Set-up that is not measured is done directly, not over the network:

* users for the load generator are created with ``Registry.add_user`` and get a
  certificate from the registry's CA (``CertificateAuthority.issue_user_certificate``
  stored with ``RegistryStore.add_certificate``), the same thing ``request-certificate``
  does; their keys and certificates go back to the harness as PEM;
* a large directory is bulk-loaded (:func:`populate`) before the service starts: the
  schema comes from the store's own migrations, then one transaction of ``executemany``
  INSERTs. A realistic mix: 10 % of users are online (a signed record with one endpoint,
  valid for a day) and 90 % offline (the signed offline record ``create_user`` writes,
  long expired). The records of the users the load generator looks up (an even spread of
  the key space) are signed with the registry's record-signing key; the others carry a
  random 64-byte signature of the same size (signing a million records would take
  minutes and changes nothing the server does: it serves stored signatures, it does not
  check them).

The registry's answer cache counts its hits and its reads from the database (its
``stats()``), so every IRP figure can say how many look-ups it answered from cached
answers; the ``use_caches`` command switches all of the registry's caches off and
on again between runs (cache-on and cache-off rows from one process and one database).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pem
from bench.processes import Commands, serve_twisted

DOMAIN = "example.org"
#: The endpoint every online user of the bulk-loaded directory registered.
ONLINE_ENDPOINT = ("2001:db8::7", 4605)
ONLINE_EVERY = 10


def username(index: int) -> str:
    """The name of bulk-loaded user ``index``."""
    return f"u{index:07d}"


def answer_counts(now: dict[str, int], since: dict[str, int]) -> dict[str, Any]:
    """The answer cache's counts between two of its ``stats()``: ``hits``, ``misses``,
    ``database_reads`` (answers read from the database) and ``hit_rate`` (hits over hits
    plus database reads; None before any look-up). A look-up that misses asks the cache
    twice (the immediate path, then the database path), so misses overcount look-ups."""
    hits = now.get("hits", 0) - since.get("hits", 0)
    reads = now.get("reads", 0) - since.get("reads", 0)
    return {
        "hits": hits,
        "database_reads": reads,
        "misses": now.get("misses", 0) - since.get("misses", 0),
        "hit_rate": round(hits / (hits + reads), 4) if hits + reads else None,
    }


def populate(path: str, credentials: Any, count: int, sample: int) -> list[str]:
    """Bulk-load ``count`` users into a new database at ``path`` (a SQLite file, or a
    ``postgresql://`` URL of an empty database); return the user names whose records are
    signed (an even spread of ``sample`` of them)."""
    from common.db.dialect import SQLITE
    from common.db.migrations import upgrade_schema
    from common.db.pools import parse_database_url
    from common.identity import Identity
    from irp.server.store.schema import MIGRATIONS
    from irp.wire.records import AddressRecord, Endpoint, RecordSigner, UserRecord

    signer = RecordSigner(credentials.signing_key, credentials.signing_certificate)
    now = int(time.time())
    created = now - 30 * 86400
    expires = now + 86400
    step = max(count // max(sample, 1), 1)
    dialect, target = parse_database_url(path)
    database: Any
    if dialect is SQLITE:
        database = sqlite3.connect(target, isolation_level=None)
    else:
        import psycopg

        database = psycopg.connect(target)
    cursor = database.cursor()

    def commit() -> None:
        if dialect is SQLITE:
            cursor.execute("COMMIT")
        else:
            database.commit()

    try:
        if dialect is SQLITE:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = OFF")  # loading only; the server uses FULL
        upgrade_schema(cursor, dialect, MIGRATIONS)
        commit()
        if dialect is SQLITE:
            cursor.execute("BEGIN")
        endpoint = Endpoint(*ONLINE_ENDPOINT)
        online_endpoints = json.dumps([[endpoint.address, endpoint.port]])
        signed: list[str] = []
        users: list[tuple[Any, ...]] = []
        addresses: list[tuple[Any, ...]] = []

        def flush() -> None:
            cursor.executemany(
                dialect.sql(
                    "INSERT INTO users (username, display_name, email, attributes, is_admin, password_hash,"
                    " password_login, created_at, updated_at, record_seq, record_signed_at, record_signature)"
                    " VALUES (?, ?, ?, ?, 0, NULL, 1, ?, ?, 1, ?, ?)"
                ),
                users,
            )
            cursor.executemany(
                dialect.sql(
                    "INSERT INTO addresses (username, presence, endpoints, expires_at, seq, signed_at, signature)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                addresses,
            )
            users.clear()
            addresses.clear()

        for index in range(count):
            name = username(index)
            display = f"User {index}"
            email = f"{name}@{DOMAIN}"
            online = index % ONLINE_EVERY == 3
            if index % step == 0:
                identity = Identity(name, DOMAIN)
                user_signature = signer.sign(UserRecord(identity, display, email, (), 1, created)).signature
                if online:
                    record = AddressRecord(identity, "online", (endpoint,), expires, 2, now - 60)
                else:
                    record = AddressRecord(identity, "offline", (), created, 1, created)
                address_signature = signer.sign(record).signature
                signed.append(name)
            else:
                user_signature = secrets.token_bytes(64)
                address_signature = secrets.token_bytes(64)
            users.append((name, display, email, "[]", created, created, created, user_signature))
            if online:
                addresses.append((name, "online", online_endpoints, expires, 2, now - 60, address_signature))
            else:
                addresses.append((name, "offline", "[]", created, 1, created, address_signature))
            if len(users) >= 50_000:
                flush()
        flush()
        commit()
        if dialect is SQLITE:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            # Fresh statistics, as a long-running database would have.
            database.autocommit = True
            cursor.execute("VACUUM ANALYZE")
    finally:
        database.close()
    return signed


def _pem(name: str, key: Any, certificate: Any, chain: list[Any]) -> Pem:
    from cryptography.hazmat.primitives import serialization

    return Pem(
        name,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        certificate.public_bytes(serialization.Encoding.PEM),
        tuple(c.public_bytes(serialization.Encoding.PEM) for c in chain),
    )


def serve_registry(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: bulk-load (optionally), start the registry, create load users.

    ``params``: ``data_dir``, ``key_type``, ``users`` (load users with certificates),
    ``bulk_users`` and ``sample`` (bulk-loaded directory and how many records are signed);
    optionally ``limits`` (:class:`irp.server.protocol.ConnectionLimits` fields, as ``twistd irp``'s
    options set them), ``argon2`` (``"production"``: the product's default Argon2id cost
    instead of cheap test parameters), ``password_users`` (``(name, password)`` pairs
    created with a password and password login allowed), ``database`` (a
    ``postgresql://`` URL instead of the SQLite file in the data folder; several processes
    may share it and the data folder, see :mod:`bench.irp_postgres`) and ``log_name``
    (the log file in the data folder, ``registry.log`` by default).
    """
    from irp.server.credentials import load_or_create_credentials

    data_dir = params["data_dir"]
    key_type = params.get("key_type", "p384")
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    credentials = load_or_create_credentials(data_dir, DOMAIN, ["localhost", HOST], key_type=key_type)
    database = params.get("database") or os.path.join(data_dir, "registry.sqlite3")
    targets: list[str] = []
    populate_seconds = 0.0
    if params.get("bulk_users"):
        started = time.perf_counter()
        targets = populate(database, credentials, params["bulk_users"], params.get("sample", 1000))
        populate_seconds = time.perf_counter() - started

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from common.identity import Identity
        from common.pki.keyfiles import fingerprint
        from common.wire.framing import encode_frame
        from irp.server.ca import generate_key
        from irp.server.caching import CACHE_NAMES, RegistryCaches
        from irp.server.passwords import Argon2Parameters
        from irp.server.protocol import ConnectionLimits
        from irp.server.service import RegistryService, RegistrySettings
        from irp.wire.elements import addresses_element
        from irp.wire.messages import ok_response
        from irp.wire.records import Endpoint
        from test.helpers import TEST_PARAMETERS

        settings = RegistrySettings(
            domain=DOMAIN,
            data_dir=data_dir,
            database=params.get("database"),
            listen=[f"tcp:0:interface={HOST}"],
            hostnames=["localhost", HOST],
            key_type=key_type,
            # Only the bootstrap administrator's password is hashed; nothing measured
            # logs in with a password (but the abuse runs, which ask for the real cost).
            argon2=Argon2Parameters() if params.get("argon2") == "production" else TEST_PARAMETERS,
            limits=ConnectionLimits(**params.get("limits", {})),
        )
        service = RegistryService(settings, reactor)
        service.startService()
        await service.ready
        assert service.registry is not None and service.store is not None and service.credentials is not None
        registry, store, ca = service.registry, service.store, service.credentials.ca
        counter = {"next": 0}
        caches = {True: registry.caches, False: RegistryCaches.build(CACHE_NAMES)}
        counted_since: dict[str, int] = {}

        def use_caches(on: bool) -> None:
            """All of the registry's caches on (the ones it started with, as warm as they
            were) or all off (``--no-cache all``)."""
            registry.caches = caches[on]

        def cache_stats(reset: bool = False) -> dict[str, Any]:
            """The answer cache's counts since the last reset (its own ``stats()``)."""
            now = caches[True].answers.stats()
            counts = answer_counts(now, counted_since)
            if reset:
                counted_since.clear()
                counted_since.update(now)
            return {"answers": counts, "on": registry.caches is caches[True]}

        async def register(names: list[str]) -> None:
            """Register one online endpoint for each of ``names``, as ``<register-address>``
            does (so that their records look as they do while they register)."""
            for index, name in enumerate(names):
                await store.put_addresses(name, "online", (Endpoint(f"2001:db8::{index % 64 + 1:x}", 4605),), 300)

        async def enrol(prefix: str) -> Pem:
            name = f"{prefix}{counter['next']:05d}"
            counter["next"] += 1
            await registry.add_user(name, password=None)
            key = generate_key(key_type)
            certificate = ca.issue_user_certificate(Identity(name, DOMAIN), key.public_key())
            await store.add_certificate(name, certificate, fingerprint(certificate))
            return _pem(name, key, certificate, [ca.issuing_certificate])

        async def cohort(count: int, prefix: str = "load") -> list[Pem]:
            return [await enrol(prefix) for _ in range(count)]

        async def response_size(names: list[str]) -> float:
            sizes = []
            for name in names:
                record = await store.get_addresses(name)
                assert record is not None, name
                sizes.append(len(encode_frame(ok_response(1, [addresses_element(record)]))) - 4)
            return sum(sizes) / len(sizes)

        async def sweep() -> dict[str, float]:
            started = time.perf_counter()
            replaced = await store.expire_addresses()
            return {"seconds": time.perf_counter() - started, "replaced": replaced}

        async def certificates() -> int:
            def count(txn: Any) -> int:
                txn.execute("SELECT COUNT(*) FROM certificates")
                return int(txn.fetchone()[0])

            return await store.pool.runInteraction(count)  # type: ignore[no-any-return]

        users = await cohort(params.get("users", 0))
        for name, password in params.get("password_users", ()):
            await registry.add_user(name, password=password)
        port = service.ports[0].getHost().port  # type: ignore[attr-defined]
        info = {
            "port": port,
            "domain": DOMAIN,
            "root": ca.root_certificate.public_bytes(_pem_encoding()),
            "users": users,
            "targets": targets or [user.name for user in users],
            "bulk_users": params.get("bulk_users", 0),
            "populate_seconds": populate_seconds,
            "database": database,
        }
        commands: Commands = {
            "cohort": cohort,
            "response_size": response_size,
            "sweep": sweep,
            "certificates": certificates,
            "use_caches": use_caches,
            "cache_stats": cache_stats,
            "register": register,
        }
        return info, commands

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, params.get("log_name", "registry.log")))


def _pem_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


# ---------------------------------------------------------------------------------------
# Requests, serialised once (load generator side)


def lookup_frames(targets: list[str], count: int = 4096) -> list[bytes]:
    """Pre-serialised ``<lookup>`` request frames for ``targets`` (random order, fixed seed)."""
    import random

    from common.wire.framing import encode_frame
    from common.wire.xmlcodec import make_element
    from irp.wire.messages import build_request

    chooser = random.Random(4604)
    return [
        encode_frame(build_request(1 + index % 1000, make_element("lookup", {"user": chooser.choice(targets)})))
        for index in range(count)
    ]


def register_frames(count: int = 64) -> list[bytes]:
    """Pre-serialised ``<register-address>`` request frames (one endpoint, online)."""
    from common.wire.framing import encode_frame
    from common.wire.xmlcodec import make_element, sub_element
    from irp.wire.messages import build_request

    frames = []
    for index in range(count):
        operation = make_element("register-address", {"presence": "online", "ttl": "300"})
        sub_element(operation, "endpoint", {"address": f"2001:db8::{index + 1:x}", "port": "4605"})
        frames.append(encode_frame(build_request(1 + index, operation)))
    return frames


#: One request in this many of the mixed workload is a ``<register-address>`` (2 %).
REGISTER_EVERY = 50


def spread_targets(bulk_users: int, count: int) -> list[str]:
    """``count`` bulk-loaded users spread evenly over the whole directory of
    ``bulk_users`` (all of them when there are fewer)."""
    step = max(bulk_users // max(count, 1), 1)
    return [username(index) for index in range(0, bulk_users, step)][:count]


def mixed_plan(
    spread: list[str], registrants: list[str], count: int, *, every: int = REGISTER_EVERY, seed: int = 4604
) -> list[str | None]:
    """The requests of the mixed workload, in order: a user name is a ``<lookup>`` of
    that user, None a ``<register-address>`` (by whichever load user sends it).

    In each block of ``every`` requests: one registration (the last), one look-up of a
    registering user (the middle one; ``registrants`` in turn, so a changed answer is
    looked up again) and look-ups of users chosen at random from ``spread``.
    """
    import random

    if every < 3:
        raise ValueError("a block needs a registration, a registrant look-up and a look-up")
    chooser = random.Random(seed)
    plan: list[str | None] = []
    for index in range(count):
        block, position = divmod(index, every)
        if position == every - 1:
            plan.append(None)
        elif position == every // 2:
            plan.append(registrants[block % len(registrants)])
        else:
            plan.append(chooser.choice(spread))
    return plan


def mixed_frames(plan: list[str | None]) -> list[bytes]:
    """Pre-serialised request frames of :func:`mixed_plan`'s ``plan`` (a registration
    registers one endpoint, online, for 300 s)."""
    from common.wire.framing import encode_frame
    from common.wire.xmlcodec import make_element
    from irp.wire.messages import build_request

    registrations = register_frames()
    frames = []
    for index, target in enumerate(plan):
        if target is None:
            frames.append(registrations[(index // REGISTER_EVERY) % len(registrations)])
        else:
            frames.append(encode_frame(build_request(1 + index % 1000, make_element("lookup", {"user": target}))))
    return frames


def answered_names(plan: list[str | None], registrants: list[str]) -> list[str]:
    """Whose record each request of ``plan`` is answered with: the target of a look-up;
    for a registration, a registering user (its new record; every registrant's is alike)."""
    return [registrants[index % len(registrants)] if target is None else target for index, target in enumerate(plan)]


def make_csr(key: Any) -> bytes:
    """A PEM CSR for ``key``, as the ``irp`` command makes it (``irp.cli.make_csr``: a
    placeholder subject, signed with the key's usual hash)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from irp.server.ca import signature_hash

    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irp enrolment")])
    )
    return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM)


def request_certificate_frames(key_type: str, count: int = 32) -> list[bytes]:
    """Pre-serialised ``<request-certificate>`` frames, each with a CSR of a fresh key."""
    from common.wire.framing import encode_frame
    from common.wire.xmlcodec import make_element, sub_element
    from irp.server.ca import generate_key
    from irp.wire.messages import build_request

    frames = []
    for index in range(count):
        operation = make_element("request-certificate")
        sub_element(operation, "csr", None, make_csr(generate_key(key_type)).decode("ascii"))
        frames.append(encode_frame(build_request(1 + index, operation)))
    return frames


#: What every successful IRP answer holds (checked by the load generator).
OK = b'status="ok"'


# ---------------------------------------------------------------------------------------
# The registries the figures share (started once per suite run)


def registry(ctx: Any, bulk_users: int, *, users: int | None = None, key: str | None = None) -> Any:
    """The shared registry with ``bulk_users`` bulk-loaded users (all of them signed when
    there are at most 10,000, else 10,000 of them) and ``users`` load users."""
    import tempfile

    settings = ctx.settings
    name = key or f"irp-{bulk_users}"
    return ctx.server(
        name,
        "bench.irp_server:serve_registry",
        {
            # A new folder each start: a module run again gets a fresh registry.
            "data_dir": tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir),
            "key_type": settings.key_type,
            "users": settings.connections if users is None else users,
            "bulk_users": bulk_users,
            "sample": min(bulk_users, 10_000),
        },
    )
