"""Users, read: the account row, its look-ups, the administrators' count and the user list."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from irp.errors import NotFound
from irp.server.store.engine import StoreEngine, Transaction
from irp.wire.records import UserRecord


@dataclass(frozen=True)
class Account:
    """A user's full row: the public record and the private account settings."""

    record: UserRecord
    is_admin: bool
    password_hash: str | None
    password_login: bool
    created_at: int
    updated_at: int
    #: Changes with every new password (not with a rehash of the same password), and
    #: differs from every version of an earlier account of the same name: it is the
    #: security-event count when the password was set or the account created.
    password_version: int = 0

    @property
    def username(self) -> str:
        """The user's name."""
        return self.record.identity.username


#: The columns of a user row, in the order :meth:`AccountRows._account_from_row` reads.
USER_COLUMNS = (
    "username, display_name, email, attributes, is_admin, password_hash, password_login,"
    " created_at, updated_at, record_seq, record_signed_at, record_signature, password_version"
)


class AccountRows(StoreEngine):
    """Reading the ``users`` table."""

    def _account_from_row(self, row: Sequence[Any]) -> Account:
        record = UserRecord(
            identity=self._identity(row[0]),
            display_name=row[1],
            email=row[2],
            attributes=tuple((name, value) for name, value in json.loads(row[3])),
            seq=int(row[9]),
            signed_at=int(row[10]),
            signature=self.dialect.blob(row[11]),
        )
        return Account(
            record=record,
            is_admin=bool(row[4]),
            password_hash=row[5],
            password_login=bool(row[6]),
            created_at=int(row[7]),
            updated_at=int(row[8]),
            password_version=int(row[12]),
        )

    def _get_account(self, txn: Transaction, username: str, lock: bool = False) -> Account | None:
        suffix = self.dialect.for_update if lock else ""
        row = self._fetchone(
            txn, f"SELECT {USER_COLUMNS} FROM users WHERE username = ?{suffix}", (username,)
        )
        return None if row is None else self._account_from_row(row)

    def _require_account(self, txn: Transaction, username: str, lock: bool = False) -> Account:
        account = self._get_account(txn, username, lock)
        if account is None:
            raise NotFound(f"no user {username}@{self.domain}")
        return account

    def get_account(self, username: str) -> Deferred[Account | None]:
        """Fire with the user's account, or None."""
        return self._read(self._get_account, username)

    def count_admins(self) -> Deferred[int]:
        """Fire with the number of administrators."""

        def count(txn: Transaction) -> int:
            return int(self._fetchone(txn, "SELECT COUNT(*) FROM users WHERE is_admin = 1")[0])

        return self._read(count)

    def list_users(self, offset: int, limit: int, prefix: str = "") -> Deferred[tuple[int, list[Account]]]:
        """Fire with (total matching, one page of accounts ordered by user name)."""

        def page(txn: Transaction) -> tuple[int, list[Account]]:
            pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            total = int(
                self._fetchone(
                    txn, "SELECT COUNT(*) FROM users WHERE username LIKE ? ESCAPE '\\'", (pattern,)
                )[0]
            )
            rows = self._fetchall(
                txn,
                f"SELECT {USER_COLUMNS} FROM users WHERE username LIKE ? ESCAPE '\\'"
                " ORDER BY username LIMIT ? OFFSET ?",
                (pattern, limit, offset),
            )
            return total, [self._account_from_row(row) for row in rows]

        return self._pool_read(page)
