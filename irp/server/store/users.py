"""Users, changed: creation, directory fields, security settings and deletion.

Creating a user writes its first address record; deleting one revokes its certificates and
drops its other rows: the user operations stand on the address and certificate tables.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from irp.errors import Conflict
from irp.server.store.accounts import USER_COLUMNS, Account
from irp.server.store.addresses import AddressTable
from irp.server.store.certificates import CertificateTable
from irp.server.store.engine import Transaction
from irp.wire.records import UserRecord


class UserTable(AddressTable, CertificateTable):
    """Changing the ``users`` table (and, for a new or deleted user, its other rows)."""

    def create_user(
        self,
        username: str,
        *,
        display_name: str = "",
        email: str = "",
        attributes: tuple[tuple[str, str], ...] = (),
        is_admin: bool = False,
        password_hash: str | None = None,
        password_login: bool = True,
    ) -> Deferred[Account]:
        """Create a user with a signed directory entry and a signed offline address record."""

        def create(txn: Transaction) -> Account:
            now = self._now()
            if self._get_account(txn, username) is not None:
                raise Conflict(f"the user {username}@{self.domain} already exists")
            # Deleting a user was a security event: a session of a deleted account of the
            # same name holds a lower version, and cannot pass for this account's.
            password_version = self._security_events(txn)
            record = self.record_signer().sign(
                UserRecord(self._identity(username), display_name, email, attributes, 1, now)
            )
            self._execute(
                txn,
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    username,
                    display_name,
                    email,
                    json.dumps(attributes),
                    int(is_admin),
                    password_hash,
                    int(password_login),
                    now,
                    now,
                    record.seq,
                    record.signed_at,
                    record.signature,
                    password_version,
                ),
            )
            self._write_addresses(txn, username, "offline", (), now, 1, now)
            return Account(record, is_admin, password_hash, password_login, now, now, password_version)

        return self._write(create).addBoth(self._address_written, username, 1)

    def update_user(
        self,
        username: str,
        *,
        display_name: str | None = None,
        email: str | None = None,
        attributes: tuple[tuple[str, str], ...] | None = None,
    ) -> Deferred[Account]:
        """Change directory fields (None leaves a field as it is) and re-sign the entry."""

        def update(txn: Transaction) -> Account:
            account = self._require_account(txn, username, lock=True)
            now = self._now()
            old = account.record
            record = self.record_signer().sign(
                UserRecord(
                    old.identity,
                    old.display_name if display_name is None else display_name,
                    old.email if email is None else email,
                    old.attributes if attributes is None else attributes,
                    old.seq + 1,
                    now,
                )
            )
            self._execute(
                txn,
                "UPDATE users SET display_name = ?, email = ?, attributes = ?, updated_at = ?,"
                " record_seq = ?, record_signed_at = ?, record_signature = ? WHERE username = ?",
                (
                    record.display_name,
                    record.email,
                    json.dumps(record.attributes),
                    now,
                    record.seq,
                    record.signed_at,
                    record.signature,
                    username,
                ),
            )
            return Account(
                record,
                account.is_admin,
                account.password_hash,
                account.password_login,
                account.created_at,
                now,
                account.password_version,
            )

        return self._write(update)

    def _keep_an_administrator(self, txn: Transaction, account: Account) -> None:
        """Refuse to remove the last administrator (checked inside the write transaction,
        with every administrator row locked, so two concurrent removals cannot both pass)."""
        if not account.is_admin:
            return
        admins = self._fetchall(txn, "SELECT username FROM users WHERE is_admin = 1" + self.dialect.for_update)
        if not any(name != account.username for (name,) in admins):
            raise Conflict("the last administrator cannot be removed or lose administrator rights")

    def _update_account_field(self, username: str, column: str, value: Any) -> Deferred[Account]:
        """Change one security setting of an account: a security event (see
        :meth:`security_generation`)."""

        def update(txn: Transaction) -> Account:
            account = self._require_account(txn, username, lock=True)
            if column == "is_admin" and not value:
                self._keep_an_administrator(txn, account)
            event = self._security_event(txn)
            if column == "password_hash":
                self._execute(txn, "UPDATE users SET password_version = ? WHERE username = ?", (event, username))
            self._execute(
                txn,
                f"UPDATE users SET {column} = ?, updated_at = ? WHERE username = ?",
                (value, self._now(), username),
            )
            return self._require_account(txn, username)

        return self._write(update)

    def set_password_hash(self, username: str, password_hash: str | None) -> Deferred[Account]:
        """Set (or clear, with None) the user's password: a new password version."""
        return self._update_account_field(username, "password_hash", password_hash)

    def rehash_password(self, username: str, old_hash: str, new_hash: str) -> Deferred[bool]:
        """Replace ``old_hash`` by ``new_hash``, a hash of the same password with the
        current parameters: not a new password (the version stays, no session ends).

        Only if the stored hash is still ``old_hash``: a password set meanwhile wins. Fires
        with whether the hash was replaced.
        """

        def rehash(txn: Transaction) -> bool:
            self._execute(
                txn,
                "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?",
                (new_hash, username, old_hash),
            )
            return bool(txn.rowcount == 1)

        return self._write(rehash)

    def set_password_login(self, username: str, enabled: bool) -> Deferred[Account]:
        """Allow or refuse password login for the user."""
        return self._update_account_field(username, "password_login", int(enabled))

    def set_admin(self, username: str, is_admin: bool) -> Deferred[Account]:
        """Grant or withdraw administrator rights (never the last administrator's: Conflict)."""
        return self._update_account_field(username, "is_admin", int(is_admin))

    def delete_user(self, username: str, reason: str = "cessation-of-operation") -> Deferred[int]:
        """Delete a user, revoke their certificates and drop their files.

        Fires with the number of certificates revoked. The last administrator cannot be
        deleted (Conflict).
        """

        def delete(txn: Transaction) -> int:
            account = self._require_account(txn, username, lock=True)
            self._keep_an_administrator(txn, account)
            now = self._now()
            rows = self._fetchall(
                txn,
                "SELECT serial FROM certificates WHERE username = ? AND origin = 'issued'"
                " AND revoked_at IS NULL",
                (username,),
            )
            for (serial,) in rows:
                self._revoke(txn, serial, reason, now)
            self._execute(txn, "DELETE FROM addresses WHERE username = ?", (username,))
            self._execute(txn, "DELETE FROM pkcs12_files WHERE username = ?", (username,))
            # Issued certificates stay (revoked) for the CRL; uploaded ones go, so that a
            # user later created under the same name does not inherit them.
            self._execute(
                txn, "DELETE FROM certificates WHERE username = ? AND origin <> 'issued'", (username,)
            )
            self._execute(txn, "DELETE FROM users WHERE username = ?", (username,))
            self._security_event(txn)
            return len(rows)

        return self._write(delete).addBoth(self._address_written, username, None)
