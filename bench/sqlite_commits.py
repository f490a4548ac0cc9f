"""Baseline: raw sqlite3 commits with the registry's PRAGMAs (WAL, synchronous=FULL).

A plain ``sqlite3`` loop on the server core, no Twisted, no thread hop, no signing: each
transaction is ``BEGIN IMMEDIATE``, one ``UPDATE`` of an address row (the same columns and
sizes as ``register-address`` writes, in the store's own schema), ``COMMIT``, which with
``synchronous=FULL`` waits for the write-ahead log to reach the disk. It is the ceiling
for durable writes through one connection on this disk.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time

from bench.harness import CpuWindow, Sample

ROWS = 50


def open_database(path: str) -> sqlite3.Connection:
    """A connection with the registry's PRAGMAs (see ``common.db.pools._prepare_sqlite``)."""
    database = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = FULL")
    database.execute("PRAGMA foreign_keys = ON")
    database.execute("PRAGMA busy_timeout = 10000")
    return database


def prepare(path: str) -> None:
    """Create the store's schema and ``ROWS`` users with address rows."""
    from common.db.dialect import SQLITE
    from common.db.migrations import upgrade_schema
    from irp.server.store.schema import MIGRATIONS

    database = open_database(path)
    try:
        upgrade_schema(database.cursor(), SQLITE, MIGRATIONS)
        now = int(time.time())
        for index in range(ROWS):
            name = f"load{index:05d}"
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


def commits(path: str, warmup: float, duration: float) -> Sample:
    """One run: durable single-row commits per second (runs on the server core)."""
    database = open_database(path)
    endpoints = json.dumps([["2001:db8::7", 4605]])
    signature = secrets.token_bytes(64)
    index = 0
    window = CpuWindow()
    try:
        begin = time.perf_counter() + warmup
        end = begin + duration
        measuring = False
        count = 0
        while True:
            name = f"load{index % ROWS:05d}"
            now = int(time.time())
            database.execute("BEGIN IMMEDIATE")
            database.execute(
                "SELECT username, presence, endpoints, expires_at, seq, signed_at, signature"
                " FROM addresses WHERE username = ?",
                (name,),
            ).fetchone()
            database.execute(
                "UPDATE addresses SET presence = ?, endpoints = ?, expires_at = ?, seq = seq + 1,"
                " signed_at = ?, signature = ? WHERE username = ?",
                ("online", endpoints, now + 300, now, signature, name),
            )
            database.execute("COMMIT")
            index += 1
            count += 1
            if index % 16 == 0:
                moment = time.perf_counter()
                if measuring and moment >= end:
                    window.end()
                    break
                if not measuring and moment >= begin:
                    window.begin()
                    count = 0
                    measuring = True
    finally:
        database.close()
    # The process doing the commits is this one: its share is the "server" share.
    return Sample(count / window.wall, window.wall, 0.0, window.load_cpu, {"commits": count})


def database_path(folder: str) -> str:
    """A new database path in ``folder`` (beside the registry's, on the same disk)."""
    import tempfile

    os.makedirs(folder, exist_ok=True)
    return os.path.join(tempfile.mkdtemp(prefix="sqlite-", dir=folder), "raw.sqlite3")
