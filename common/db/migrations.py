"""Numbered schema migrations, run inside one transaction under the write lock.

A database's schema has a version (the table ``schema_version``); ``migrations[n]`` is the
list of statements (written for :meth:`~common.db.dialect.Dialect.sql`) that upgrade it
from version ``n`` to ``n + 1``. Each user of a database keeps its own list. A statement
that differs between engines (a trigger) is a mapping from the dialect's name to its text;
an engine missing from the mapping skips it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.db.dialect import Dialect

__all__ = ["describe_upgrade", "upgrade_schema", "upgrade_schema_from"]


def upgrade_schema(
    txn: Any, dialect: Dialect, migrations: Sequence[Sequence[str | Mapping[str, str]]], *, lock_key: int = 4604
) -> int:
    """Bring a database to ``len(migrations)`` inside the caller's transaction; return the
    version now in use (see :func:`upgrade_schema_from`)."""
    return upgrade_schema_from(txn, dialect, migrations, lock_key=lock_key)[1]


def describe_upgrade(found: int, now: int) -> str | None:
    """The log line of an upgrade from schema version ``found`` to ``now`` (None: nothing
    was done)."""
    if found == now:
        return None
    if found == 0:
        return f"Created the database schema (version {now})"
    return f"Upgraded the database schema from version {found} to {now}"


def upgrade_schema_from(
    txn: Any, dialect: Dialect, migrations: Sequence[Sequence[str | Mapping[str, str]]], *, lock_key: int = 4604
) -> tuple[int, int]:
    """Bring a database to ``len(migrations)`` inside the caller's transaction.

    Takes the write lock first (SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock on
    ``lock_key``) so that concurrent upgraders of one database run one after the other.
    Returns the version found and the version now in use; refuses a database newer than
    this software.
    """
    if dialect.begin_write:
        txn.execute(dialect.begin_write)
    else:
        txn.execute(dialect.sql("SELECT pg_advisory_xact_lock(?)"), (lock_key,))
    txn.execute(dialect.sql("CREATE TABLE IF NOT EXISTS schema_version (version {BIGINT} NOT NULL)"))
    txn.execute("SELECT version FROM schema_version")
    row = txn.fetchone()
    version = 0 if row is None else int(row[0])
    if row is None:
        txn.execute("INSERT INTO schema_version (version) VALUES (0)")
    latest = len(migrations)
    if version > latest:
        raise RuntimeError(
            f"the database has schema version {version}, newer than this software ({latest});"
            " upgrade the software"
        )
    for number in range(version, latest):
        for statement in migrations[number]:
            text = statement if isinstance(statement, str) else statement.get(dialect.name)
            if text is not None:
                txn.execute(dialect.sql(text))
        txn.execute(dialect.sql("UPDATE schema_version SET version = ?"), (number + 1,))
    return version, latest
