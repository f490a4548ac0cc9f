"""Database connections: adbapi pools on SQLite and PostgreSQL, a direct SQLite reader,
and database URLs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorCore

from common.db.dialect import POSTGRESQL, SQLITE, Dialect
from common.db.outage import quiet_pool

__all__ = [
    "UnsupportedDatabase",
    "direct_sqlite_reader",
    "parse_database_url",
    "postgresql_pool",
    "sqlite_pool",
]


class UnsupportedDatabase(ValueError):
    """The database URL names an engine or driver that is not available."""


def _prepare_sqlite(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA busy_timeout = 10000")


def sqlite_pool(path: str, reactor: IReactorCore) -> adbapi.ConnectionPool:
    """A one-connection adbapi pool on a SQLite file (WAL, full sync, mode 0600)."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The database holds password hashes and escrowed PKCS#12 files: owner only.
        # (SQLite gives its -wal and -shm files the database file's permissions.)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
    return quiet_pool(adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,
        cp_min=1,
        cp_max=1,
        cp_openfun=_prepare_sqlite,
        cp_reactor=reactor,
    ))


def _autocommit(connection: Any) -> None:
    connection.autocommit = True


def postgresql_pool(
    url: str, reactor: IReactorCore, pool_size: int, *, autocommit: bool = False
) -> adbapi.ConnectionPool:
    """A pool of psycopg connections; ``autocommit`` ones suit single-statement reads (no
    BEGIN and COMMIT round trips around each)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise UnsupportedDatabase(
            "PostgreSQL needs the psycopg driver: pip install 'irp-sixchat[postgresql]'"
        ) from None
    return quiet_pool(adbapi.ConnectionPool(
        "psycopg",
        url,
        cp_min=1,
        cp_max=pool_size,
        cp_reconnect=True,
        cp_reactor=reactor,
        cp_openfun=_autocommit if autocommit else None,
    ))


def direct_sqlite_reader(path: str) -> sqlite3.Connection:
    """A read-only connection for point reads on the reactor thread (see the IRP
    registry's store)."""
    connection = sqlite3.connect(
        f"file:{os.path.abspath(path)}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    # Never hold the reactor long: when busy, the read goes to the pool instead.
    connection.execute("PRAGMA busy_timeout = 50")
    connection.execute("PRAGMA query_only = ON")
    return connection


def parse_database_url(url: str) -> tuple[Dialect, str]:
    """Return the dialect and the driver's connection argument for a database URL.

    Accepted: ``sqlite:///relative/or//absolute/path.db``, a plain file path (SQLite),
    ``postgresql://user:password@host:port/dbname`` (also ``postgres://``).
    """
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return POSTGRESQL, url
    if parts.scheme == "sqlite":
        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise UnsupportedDatabase("sqlite URLs need a file path: sqlite:///registry.db")
        return SQLITE, path
    if parts.scheme and len(parts.scheme) > 1:
        raise UnsupportedDatabase(f"unsupported database URL scheme {parts.scheme!r}")
    return SQLITE, url
