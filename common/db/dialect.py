"""SQL dialects: what differs between SQLite and PostgreSQL, in one place.

Queries are written once with ``?`` placeholders and the type tokens below; the dialect
turns them into its own SQL. Only the stores (each protocol has its own) write SQL.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

_TYPE_TOKENS = re.compile(r"\{(ID_PK|BLOB|BIGINT)\}")


@dataclass(frozen=True)
class Dialect:
    """The SQL differences of one database engine."""

    name: str
    placeholder: str
    id_primary_key: str
    blob_type: str
    #: Statement that opens a write transaction taking the write lock at once.
    begin_write: str | None
    #: Suffix that locks selected rows for the rest of the transaction.
    for_update: str

    @functools.lru_cache(maxsize=512)  # noqa: B019 - dialects are module-level singletons
    def sql(self, statement: str) -> str:
        """Translate a statement written with ``?`` placeholders and type tokens."""
        statement = _TYPE_TOKENS.sub(self._token, statement)
        if self.placeholder != "?":
            statement = statement.replace("?", self.placeholder)
        return statement

    def _token(self, match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "ID_PK":
            return self.id_primary_key
        if token == "BLOB":
            return self.blob_type
        return "BIGINT"

    def blob(self, value: Any) -> bytes:
        """Return a fetched blob column as bytes (drivers return memoryview or bytes)."""
        return bytes(value)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    id_primary_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    blob_type="BLOB",
    begin_write="BEGIN IMMEDIATE",
    for_update="",
)

POSTGRESQL = Dialect(
    name="postgresql",
    placeholder="%s",
    id_primary_key="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    blob_type="BYTEA",
    begin_write=None,
    for_update=" FOR UPDATE",
)
