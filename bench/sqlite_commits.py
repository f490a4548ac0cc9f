"""Baseline: raw sqlite3 group commits of signed address records, with the registry's PRAGMAs.

A plain ``sqlite3`` loop on the server core, no Twisted, no thread hop, no network, doing
what the registry's group commit does for ``register-address`` (``irp.server.store``:
``StoreEngine._commit_group`` and ``AddressTable._put_one_address``): per group ``BEGIN
IMMEDIATE``; per row ``SAVEPOINT``, the ``SELECT`` of the user's address row, one Ed25519
signature of the new address record (the registry's record format, signed with
``cryptography`` directly), the ``UPDATE`` (the same columns and sizes, in the store's own
schema), ``RELEASE``; then ``COMMIT``, which with ``synchronous=FULL`` waits for the
write-ahead log to reach the disk. Each row of a group is a different user, as each of the
registry's is a different connection's. The group size is the figure's connection count:
the most the registry can group when each connection has one registration in flight.
It is the ceiling for durable signed registrations through one connection on this disk.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time

from bench.sampling import Sample, measure_loop

#: Users prepared by default (and the default group size).
ROWS = 50
#: The registry's domain (in each signed record).
DOMAIN = "example.org"


def open_database(path: str) -> sqlite3.Connection:
    """A connection with the registry's PRAGMAs (see ``common.db.pools._prepare_sqlite``)."""
    database = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = FULL")
    database.execute("PRAGMA foreign_keys = ON")
    database.execute("PRAGMA busy_timeout = 10000")
    return database


def prepare(path: str, users: int = ROWS) -> None:
    """Create the store's schema and ``users`` users with address rows."""
    from common.db.dialect import SQLITE
    from common.db.migrations import upgrade_schema
    from irp.server.store.schema import MIGRATIONS

    database = open_database(path)
    try:
        upgrade_schema(database.cursor(), SQLITE, MIGRATIONS)
        now = int(time.time())
        for index in range(users):
            name = user_name(index)
            database.execute(
                "INSERT INTO users (username, display_name, email, attributes, is_admin, password_hash,"
                " password_login, created_at, updated_at, record_seq, record_signed_at, record_signature)"
                " VALUES (?, '', '', '[]', 0, NULL, 1, ?, ?, 1, ?, ?)",
                (name, now, now, now, secrets.token_bytes(64)),
            )
            database.execute(
                "INSERT INTO addresses (username, presence, endpoints, expires_at, seq, signed_at, signature)"
                " VALUES (?, 'offline', '[]', ?, 1, ?, ?)",
                (name, now, now, secrets.token_bytes(64)),
            )
        database.execute("COMMIT")
    finally:
        database.close()


def user_name(index: int) -> str:
    """The name of prepared user ``index``."""
    return f"load{index:05d}"


def grouped_commits(path: str, warmup: float, duration: float, group: int = ROWS, ttl: int = 300) -> Sample:
    """One run: durable signed address registrations per second, committed ``group`` rows
    per transaction (runs on the server core; the users must exist: :func:`prepare` with at
    least ``group`` users)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.identity import Identity
    from irp.wire.records import AddressRecord, Endpoint

    signing_key = Ed25519PrivateKey.generate()
    database = open_database(path)
    identities = [Identity(user_name(index), DOMAIN) for index in range(group)]
    position = {"index": 0}

    def one_group() -> dict[str, int]:
        database.execute("BEGIN IMMEDIATE")
        for identity in identities:
            index = position["index"]
            position["index"] = index + 1
            endpoint = Endpoint(f"2001:db8::{index % 64 + 1:x}", 4605)
            database.execute("SAVEPOINT grouped_write")
            row = database.execute(
                "SELECT username, presence, endpoints, expires_at, seq, signed_at, signature"
                " FROM addresses WHERE username = ?",
                (identity.username,),
            ).fetchone()
            now = int(time.time())
            seq = int(row[4]) + 1
            record = AddressRecord(identity, "online", (endpoint,), now + ttl, seq, now)
            signature = signing_key.sign(record.signing_bytes())
            database.execute(
                "UPDATE addresses SET presence = ?, endpoints = ?, expires_at = ?, seq = ?,"
                " signed_at = ?, signature = ? WHERE username = ?",
                ("online", json.dumps([[endpoint.address, endpoint.port]]), now + ttl, seq, now, signature, identity.username),
            )
            database.execute("RELEASE SAVEPOINT grouped_write")
        database.execute("COMMIT")
        return {"rows": group, "commits": 1, "signatures": group}

    try:
        window, counts = measure_loop(one_group, warmup, duration)
    finally:
        database.close()
    return window.sample(counts["rows"] / window.wall, **counts, group=group)


def database_path(folder: str) -> str:
    """A new database path in ``folder`` (beside the registry's, on the same disk)."""
    import tempfile

    os.makedirs(folder, exist_ok=True)
    return os.path.join(tempfile.mkdtemp(prefix="sqlite-", dir=folder), "raw.sqlite3")
