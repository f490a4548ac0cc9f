"""The registry's persistent store, through ``twisted.enterprise.adbapi``.

:class:`RegistryStore` is the only code that talks to the database. Public records are
signed here, inside the transaction that writes them, so what is stored and what is served
are always the same signed bytes. Every method returns a Deferred; the SQL runs in
adbapi's thread pool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.db.dialect import Dialect
from common.db.migrations import upgrade_schema
from common.identity import Identity
from irp.errors import Conflict, IRPError, NotFound, QuotaExceeded, Unavailable
from irp.server.store.schema import MIGRATIONS
from irp.wire.records import AddressRecord, CertificateInfo, Endpoint, Pkcs12Info, RecordSigner, UserRecord

T = TypeVar("T")

log = Logger()

Transaction = Any  # adbapi.Transaction: a DB-API cursor-like object


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


@dataclass(frozen=True)
class StoredCRL:
    """A CRL as stored, with the revocation generation it reflects."""

    issuer: str
    crl_number: int
    revocations: int
    next_update: int
    der: bytes


def serial_text(serial: int) -> str:
    """The canonical text form of a serial number (lower-case hex)."""
    return format(serial, "x")


#: The most small writes committed together.
GROUP_COMMIT_LIMIT = 256

_USER_COLUMNS = (
    "username, display_name, email, attributes, is_admin, password_hash, password_login,"
    " created_at, updated_at, record_seq, record_signed_at, record_signature, password_version"
)
_CERT_COLUMNS = (
    "serial, fingerprint, username, origin, not_before, not_after, issued_at, revoked_at,"
    " revocation_reason, der"
)
#: The certificate this registry's CA issued with a serial (serials are unique per issuer).
_ISSUED_BY_SERIAL = f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ? AND origin = 'issued'"


class RegistryStore:
    """Persistent users, addresses, certificates and PKCS#12 files of one domain."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: Dialect,
        domain: str,
        signer: RecordSigner,
        now: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.dialect = dialect
        self.domain = domain
        self.signer = signer
        self.now = now
        self._integrity_error: type[Exception] = pool.dbapi.IntegrityError
        self._operational_error: type[Exception] = pool.dbapi.OperationalError
        #: A read-only SQLite connection used on the calling (reactor) thread for point
        #: reads: a look-up then costs one in-process query (about 10 us) instead of a
        #: hop to adbapi's thread (about 50 us). WAL lets it read while the writer writes,
        #: and it sees every commit at once. None for PostgreSQL.
        self.direct_reader: Any = None
        #: PostgreSQL: a pool of autocommit connections for reads (one round trip each).
        self.read_pool: Any = None
        #: The reactor (for once-per-turn work), set by open_store.
        self.reactor: Any = None
        self._version: int | None = None
        #: Writes completed through this store: they change data_version() at once, even
        #: within the reactor turn that memoised SQLite's own counter.
        self._local_writes = 0
        #: Small writes waiting for the next group commit (see _grouped_write).
        self._group_queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._group_running = False

    # -- plumbing ---------------------------------------------------------------------

    def _execute(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> None:
        txn.execute(self.dialect.sql(statement), tuple(params))

    def _fetchone(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> Any:
        self._execute(txn, statement, params)
        return txn.fetchone()

    def _fetchall(self, txn: Transaction, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        self._execute(txn, statement, params)
        return list(txn.fetchall())

    def _unavailable(self, failure: Failure) -> Failure:
        """Turn the database's operational errors (locked, unreachable, out of space...)
        into Unavailable (503, try again later), logged; pass other failures on."""
        if failure.check(self._operational_error):
            log.error("The database is unavailable: {error}", error=str(failure.value))
            raise Unavailable("the registry's database is unavailable; try again later")
        return failure

    def _read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a point read: on the direct reader when there is one, else in the pool.
        Operational errors become Unavailable."""
        reader = self.direct_reader
        if reader is None:
            return self._pool_read(interaction, *args)
        cursor = reader.cursor()
        try:
            return succeed(interaction(cursor, *args))
        except self._operational_error:
            # Busy (a checkpoint, a schema change): the pool's connection waits instead.
            return self._pool_read(interaction, *args)
        except Exception:  # noqa: BLE001 - handed to the Deferred like the pool would
            return fail()
        finally:
            cursor.close()

    def data_version(self) -> int | None:
        """A number that changes whenever another connection commits (SQLite's
        ``PRAGMA data_version`` on the direct reader), for caches of answers; None when
        there is no direct reader (answers are then not cached)."""
        reader = self.direct_reader
        if reader is None:
            return None
        if self._version is None:
            try:
                self._version = int(reader.execute("PRAGMA data_version").fetchone()[0])
            except self._operational_error:
                return None
            # Asked again at most once per reactor turn: many look-ups share one query.
            self.reactor.callLater(0, self._forget_version)
        return self._version * 1_000_000_007 + self._local_writes

    def _forget_version(self) -> None:
        self._version = None

    def close(self) -> None:
        """Close the database connections."""
        if self.direct_reader is not None:
            self.direct_reader.close()
            self.direct_reader = None
        if self.read_pool is not None:
            self.read_pool.close()
            self.read_pool = None
        self.pool.close()

    def _pool_read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a read in a thread pool: the read pool's autocommit connections when there
        is one (PostgreSQL), else the store's pool (reads that may be long, on SQLite)."""
        pool = self.read_pool or self.pool
        return pool.runInteraction(interaction, *args).addErrback(self._unavailable)

    def _write(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``interaction`` in a write transaction; integrity errors become Conflict,
        operational errors Unavailable."""

        def transaction(txn: Transaction, *inner: Any) -> T:
            if self.dialect.begin_write:
                txn.execute(self.dialect.begin_write)
            try:
                return interaction(txn, *inner)
            except self._integrity_error as error:
                raise Conflict(f"the change conflicts with stored data ({error.__class__.__name__})") from None

        result = self.pool.runInteraction(transaction, *args)
        result.addBoth(self._count_write)
        return result.addErrback(self._unavailable)

    def _count_write(self, result: T) -> T:
        self._local_writes += 1
        return result

    def _grouped_write(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run a small write in the next group commit.

        Writes that arrive while a group's transaction runs wait for the next group, so one
        commit (one fsync) serves many. Each runs under its own savepoint: one that fails
        (not found, a conflict) is rolled back alone and fails alone. Each Deferred fires
        only after the commit that holds its write.
        """
        waiting: Deferred[T] = Deferred()
        self._group_queue.append((interaction, args, waiting))
        if not self._group_running:
            self._commit_group()
        return waiting

    def _commit_group(self) -> None:
        group = self._group_queue[:GROUP_COMMIT_LIMIT]
        del self._group_queue[:GROUP_COMMIT_LIMIT]
        self._group_running = True

        def commit_all(txn: Transaction) -> list[Any]:
            results: list[Any] = []
            for interaction, args, _waiting in group:
                txn.execute("SAVEPOINT grouped_write")
                try:
                    results.append(interaction(txn, *args))
                except self._integrity_error as error:
                    txn.execute("ROLLBACK TO SAVEPOINT grouped_write")
                    results.append(Conflict(f"the change conflicts with stored data ({error.__class__.__name__})"))
                except IRPError as error:
                    txn.execute("ROLLBACK TO SAVEPOINT grouped_write")
                    results.append(error)
                txn.execute("RELEASE SAVEPOINT grouped_write")
            return results

        def committed(results: list[Any]) -> None:
            for (_interaction, _args, waiting), result in zip(group, results, strict=True):
                if isinstance(result, IRPError):
                    waiting.errback(result)
                else:
                    waiting.callback(result)

        def failed(failure: Failure) -> None:
            for _interaction, _args, waiting in group:
                waiting.errback(failure)

        def next_group(_: object) -> None:
            self._group_running = False
            if self._group_queue:
                self._commit_group()

        self._write(commit_all).addCallbacks(committed, failed).addBoth(next_group)

    def _security_event(self, txn: Transaction) -> int:
        """Count a change that may end sessions (see :meth:`security_generation`); return
        the counter's new value."""
        self._execute(txn, "UPDATE counters SET value = value + 1 WHERE name = 'security_events'")
        return self._security_events(txn)

    def _security_events(self, txn: Transaction) -> int:
        return int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'security_events'")[0])

    def _now(self) -> int:
        return int(self.now())

    def _identity(self, username: str) -> Identity:
        return Identity(username, self.domain)

    # -- schema -----------------------------------------------------------------------

    def upgrade(self) -> Deferred[int]:
        """Create or upgrade the schema; fire with the version now in use."""
        return self.pool.runInteraction(self._upgrade)

    def _upgrade(self, txn: Transaction) -> int:
        return upgrade_schema(txn, self.dialect, MIGRATIONS)

    # -- users ------------------------------------------------------------------------

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
            txn, f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?{suffix}", (username,)
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
            record = self.signer.sign(
                UserRecord(self._identity(username), display_name, email, attributes, 1, now)
            )
            self._execute(
                txn,
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

        return self._write(create)

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
            record = self.signer.sign(
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

    def count_admins(self) -> Deferred[int]:
        """Fire with the number of administrators."""

        def count(txn: Transaction) -> int:
            return int(self._fetchone(txn, "SELECT COUNT(*) FROM users WHERE is_admin = 1")[0])

        return self._read(count)

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

        return self._write(delete)

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
                f"SELECT {_USER_COLUMNS} FROM users WHERE username LIKE ? ESCAPE '\\'"
                " ORDER BY username LIMIT ? OFFSET ?",
                (pattern, limit, offset),
            )
            return total, [self._account_from_row(row) for row in rows]

        return self._pool_read(page)

    # -- addresses --------------------------------------------------------------------

    def _write_addresses(
        self,
        txn: Transaction,
        username: str,
        presence: str,
        endpoints: tuple[Endpoint, ...],
        expires_at: int,
        seq: int,
        now: int,
        insert: bool = True,
    ) -> AddressRecord:
        record = self.signer.sign(
            AddressRecord(self._identity(username), presence, endpoints, expires_at, seq, now)
        )
        encoded = json.dumps([[endpoint.address, endpoint.port] for endpoint in endpoints])
        if insert:
            self._execute(
                txn,
                "INSERT INTO addresses (username, presence, endpoints, expires_at, seq, signed_at,"
                " signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (username, presence, encoded, expires_at, seq, now, record.signature),
            )
        else:
            self._execute(
                txn,
                "UPDATE addresses SET presence = ?, endpoints = ?, expires_at = ?, seq = ?,"
                " signed_at = ?, signature = ? WHERE username = ?",
                (presence, encoded, expires_at, seq, now, record.signature, username),
            )
        return record

    def _address_from_row(self, row: Sequence[Any]) -> AddressRecord:
        return AddressRecord(
            identity=self._identity(row[0]),
            presence=row[1],
            endpoints=tuple(Endpoint(address, int(port)) for address, port in json.loads(row[2])),
            expires_at=int(row[3]),
            seq=int(row[4]),
            signed_at=int(row[5]),
            signature=self.dialect.blob(row[6]),
        )

    _ADDRESS_SELECT = (
        "SELECT username, presence, endpoints, expires_at, seq, signed_at, signature"
        " FROM addresses WHERE username = ?"
    )

    def put_addresses(
        self, username: str, presence: str, endpoints: tuple[Endpoint, ...], ttl: int
    ) -> Deferred[AddressRecord]:
        """Replace the user's addresses and presence, valid for ``ttl`` seconds; sign them
        (committed with others arriving at the same time: see :meth:`_grouped_write`)."""
        return self._grouped_write(self._put_one_address, username, presence, endpoints, ttl)

    def _put_one_address(
        self, txn: Transaction, username: str, presence: str, endpoints: tuple[Endpoint, ...], ttl: int
    ) -> AddressRecord:
        row = self._fetchone(txn, self._ADDRESS_SELECT + self.dialect.for_update, (username,))
        if row is None:
            raise NotFound(f"no user {username}@{self.domain}")
        now = self._now()
        return self._write_addresses(txn, username, presence, endpoints, now + ttl, int(row[4]) + 1, now, insert=False)

    def get_addresses(self, username: str) -> Deferred[AddressRecord | None]:
        """Fire with the user's signed address record, or None for an unknown user."""

        def get(txn: Transaction) -> AddressRecord | None:
            row = self._fetchone(txn, self._ADDRESS_SELECT, (username,))
            return None if row is None else self._address_from_row(row)

        return self._read(get)

    def expire_addresses(self) -> Deferred[int]:
        """Replace every expired record that still lists addresses with a signed offline one.

        Fires with the number of records replaced.
        """

        def sweep(txn: Transaction) -> int:
            now = self._now()
            rows = self._fetchall(
                txn,
                "SELECT username, seq FROM addresses WHERE expires_at <= ?"
                " AND (endpoints <> '[]' OR presence <> 'offline')",
                (now,),
            )
            for username, seq in rows:
                self._write_addresses(txn, username, "offline", (), now, int(seq) + 1, now, insert=False)
            return len(rows)

        return self._write(sweep)

    # -- certificates -----------------------------------------------------------------

    def _certificate_from_row(self, row: Sequence[Any]) -> CertificateInfo:
        return CertificateInfo(
            serial=int(row[0], 16),
            fingerprint=row[1],
            username=row[2],
            origin=row[3],
            not_before=int(row[4]),
            not_after=int(row[5]),
            issued_at=int(row[6]),
            revoked_at=None if row[7] is None else int(row[7]),
            revocation_reason=row[8],
            der=self.dialect.blob(row[9]),
        )

    def _count_current_certificates(self, txn: Transaction, username: str, now: float, excluding: int | None) -> int:
        row = self._fetchone(
            txn,
            "SELECT COUNT(*) FROM certificates WHERE username = ? AND revoked_at IS NULL"
            " AND not_after >= ? AND NOT (origin = 'issued' AND serial = ?)",
            (username, int(now), "" if excluding is None else serial_text(excluding)),
        )
        return int(row[0])

    def _check_certificate_quota(self, txn: Transaction, username: str, most: int | None, replacing: int | None) -> None:
        """Inside the write's transaction, with the user's row locked: QuotaExceeded if
        the user already holds ``most`` current certificates (not counting ``replacing``)."""
        if most is None:
            return
        held = self._count_current_certificates(txn, username, self._now(), replacing)
        if held >= most:
            raise QuotaExceeded(f"{username} already holds {held} certificates, the most allowed")

    def _check_pkcs12_quota(self, txn: Transaction, username: str, most: int | None) -> None:
        """Inside the write's transaction, with the user's row locked: QuotaExceeded if
        the user already holds ``most`` PKCS#12 files."""
        if most is None:
            return
        held = int(self._fetchone(txn, "SELECT COUNT(*) FROM pkcs12_files WHERE username = ?", (username,))[0])
        if held >= most:
            raise QuotaExceeded(f"{username} already holds {held} PKCS#12 files, the most allowed")

    def add_certificate(
        self,
        username: str,
        certificate: x509.Certificate,
        fingerprint: str,
        origin: str = "issued",
        *,
        most: int | None = None,
        replacing: int | None = None,
    ) -> Deferred[CertificateInfo]:
        """Record a certificate for a user. The same certificate (fingerprint) twice, or a
        second certificate issued here with the same serial, is a Conflict. With ``most``,
        a user who already holds that many current certificates (leaving out the serial
        ``replacing``) gets QuotaExceeded instead: counted in the same transaction as the
        write, with the user's row locked, so concurrent additions cannot all pass."""

        def add(txn: Transaction) -> CertificateInfo:
            self._require_account(txn, username, lock=True)
            self._check_certificate_quota(txn, username, most, replacing)
            return self._insert_certificate(txn, username, certificate, fingerprint, origin)

        return self._grouped_write(add)

    def _insert_certificate(
        self, txn: Transaction, username: str, certificate: x509.Certificate, fingerprint: str, origin: str
    ) -> CertificateInfo:
        from cryptography.hazmat.primitives.serialization import Encoding

        der = certificate.public_bytes(Encoding.DER)
        info = CertificateInfo(
            serial=certificate.serial_number,
            fingerprint=fingerprint,
            username=username,
            origin=origin,
            not_before=int(certificate.not_valid_before_utc.timestamp()),
            not_after=int(certificate.not_valid_after_utc.timestamp()),
            issued_at=self._now(),
            revoked_at=None,
            revocation_reason=None,
            der=der,
        )
        self._execute(
            txn,
            f"INSERT INTO certificates ({_CERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                serial_text(info.serial),
                info.fingerprint,
                username,
                origin,
                info.not_before,
                info.not_after,
                info.issued_at,
                None,
                None,
                der,
            ),
        )
        return info

    def get_certificate(self, serial: int) -> Deferred[CertificateInfo | None]:
        """Fire with the certificate this registry's CA issued with this serial, or None
        (serials are unique per issuer: uploaded certificates are found by fingerprint)."""

        def get(txn: Transaction) -> CertificateInfo | None:
            row = self._fetchone(txn, _ISSUED_BY_SERIAL, (serial_text(serial),))
            return None if row is None else self._certificate_from_row(row)

        return self._read(get)

    def get_certificate_by_fingerprint(self, fingerprint: str) -> Deferred[CertificateInfo | None]:
        """Fire with the certificate with this SHA-256 fingerprint, or None."""

        def get(txn: Transaction) -> CertificateInfo | None:
            row = self._fetchone(
                txn, f"SELECT {_CERT_COLUMNS} FROM certificates WHERE fingerprint = ?", (fingerprint,)
            )
            return None if row is None else self._certificate_from_row(row)

        return self._read(get)

    def list_certificates(self, username: str) -> Deferred[list[CertificateInfo]]:
        """Fire with all certificates of a user, newest first."""

        def get(txn: Transaction) -> list[CertificateInfo]:
            rows = self._fetchall(
                txn,
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE username = ?"
                " ORDER BY issued_at DESC, serial",
                (username,),
            )
            return [self._certificate_from_row(row) for row in rows]

        return self._read(get)

    def _revoke(self, txn: Transaction, serial: str, reason: str, at: int) -> None:
        self._execute(
            txn,
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
            " WHERE serial = ? AND origin = 'issued'",
            (at, reason, serial),
        )
        self._execute(txn, "UPDATE counters SET value = value + 1 WHERE name = 'revocations'")
        self._security_event(txn)

    def revoke_certificate(self, serial: int, reason: str) -> Deferred[CertificateInfo]:
        """Revoke a certificate this CA issued; revoking twice is a Conflict."""

        def revoke(txn: Transaction) -> CertificateInfo:
            text = serial_text(serial)
            row = self._fetchone(txn, f"{_ISSUED_BY_SERIAL}{self.dialect.for_update}", (text,))
            if row is None:
                raise NotFound(f"no certificate issued here with serial {text}")
            info = self._certificate_from_row(row)
            if info.revoked_at is not None:
                raise Conflict(f"the certificate {text} is already revoked")
            self._revoke(txn, text, reason, self._now())
            row = self._fetchone(txn, _ISSUED_BY_SERIAL, (text,))
            return self._certificate_from_row(row)

        return self._write(revoke)

    def security_generation(self) -> Deferred[int]:
        """Fire with a counter that grows with every change that may end sessions:
        revocations, new passwords, password-login and administrator changes, deleted
        users. Registry processes sharing the database watch it."""

        return self._read(self._security_events)

    def get_crl(self, issuer: str) -> Deferred[StoredCRL | None]:
        """Fire with the last CRL stored for ``issuer`` (``"issuing"`` or ``"root"``)."""

        def get(txn: Transaction) -> StoredCRL | None:
            row = self._fetchone(
                txn,
                "SELECT issuer, crl_number, revocations, next_update, der FROM crls WHERE issuer = ?",
                (issuer,),
            )
            if row is None:
                return None
            return StoredCRL(row[0], int(row[1]), int(row[2]), int(row[3]), self.dialect.blob(row[4]))

        return self._read(get)

    def refresh_crl(
        self,
        issuer: str,
        build: Callable[[int, list[tuple[int, int, str | None]]], tuple[bytes, int]],
        refresh_before: int,
    ) -> Deferred[StoredCRL]:
        """Return the current CRL for ``issuer``, building and storing a new one if needed.

        A new CRL is built when revocations happened since the stored one, or when it is
        within ``refresh_before`` seconds of its next update. ``build(crl_number, entries)``
        gets the next CRL number and ``(serial, revoked_at, reason)`` entries (empty for the
        root) and returns ``(der, next_update)``. The counter row is locked, so servers
        sharing one database agree on one CRL sequence.
        """

        def refresh(txn: Transaction) -> StoredCRL:
            counter = self._fetchone(
                txn,
                "SELECT value FROM counters WHERE name = 'crl_number'" + self.dialect.for_update,
            )
            generation = int(
                self._fetchone(txn, "SELECT value FROM counters WHERE name = 'revocations'")[0]
            )
            row = self._fetchone(
                txn,
                "SELECT issuer, crl_number, revocations, next_update, der FROM crls WHERE issuer = ?",
                (issuer,),
            )
            now = self._now()
            if row is not None:
                stored = StoredCRL(row[0], int(row[1]), int(row[2]), int(row[3]), self.dialect.blob(row[4]))
                fresh = stored.next_update - refresh_before > now
                if fresh and (issuer == "root" or stored.revocations == generation):
                    return stored
            number = int(counter[0]) + 1
            self._execute(txn, "UPDATE counters SET value = ? WHERE name = 'crl_number'", (number,))
            entries: list[tuple[int, int, str | None]] = []
            if issuer != "root":
                rows = self._fetchall(
                    txn,
                    "SELECT serial, revoked_at, revocation_reason FROM certificates"
                    " WHERE revoked_at IS NOT NULL AND origin = 'issued' ORDER BY revoked_at, serial",
                )
                entries = [(int(serial, 16), int(at), reason) for serial, at, reason in rows]
            der, next_update = build(number, entries)
            self._execute(txn, "DELETE FROM crls WHERE issuer = ?", (issuer,))
            self._execute(
                txn,
                "INSERT INTO crls (issuer, crl_number, revocations, next_update, der) VALUES (?, ?, ?, ?, ?)",
                (issuer, number, generation, next_update, der),
            )
            return StoredCRL(issuer, number, generation, next_update, der)

        return self._write(refresh)

    # -- PKCS#12 files ----------------------------------------------------------------

    def add_pkcs12(
        self,
        username: str,
        label: str,
        origin: str,
        data: bytes,
        certificate_serial: int | None,
        *,
        most: int | None = None,
    ) -> Deferred[Pkcs12Info]:
        """Store a PKCS#12 file for a user. With ``most``, a user who already holds that
        many files gets QuotaExceeded instead (counted in the write's transaction, with
        the user's row locked)."""

        def add(txn: Transaction) -> Pkcs12Info:
            self._require_account(txn, username, lock=True)
            self._check_pkcs12_quota(txn, username, most)
            return self._insert_pkcs12(txn, username, label, origin, data, certificate_serial)

        return self._write(add)

    def add_generated_key(
        self,
        username: str,
        certificate: x509.Certificate,
        fingerprint: str,
        label: str,
        pkcs12: bytes,
        *,
        most_certificates: int | None = None,
        most_pkcs12: int | None = None,
    ) -> Deferred[tuple[CertificateInfo, Pkcs12Info]]:
        """Store a certificate issued for a key generated here and the PKCS#12 file that
        holds both, in one transaction: both quotas are checked in it (QuotaExceeded, and
        nothing is stored), with the user's row locked."""

        def add(txn: Transaction) -> tuple[CertificateInfo, Pkcs12Info]:
            self._require_account(txn, username, lock=True)
            self._check_certificate_quota(txn, username, most_certificates, None)
            self._check_pkcs12_quota(txn, username, most_pkcs12)
            info = self._insert_certificate(txn, username, certificate, fingerprint, "issued")
            stored = self._insert_pkcs12(txn, username, label, "generated", pkcs12, info.serial)
            return info, stored

        return self._write(add)

    def _insert_pkcs12(
        self, txn: Transaction, username: str, label: str, origin: str, data: bytes, certificate_serial: int | None
    ) -> Pkcs12Info:
        now = self._now()
        serial = None if certificate_serial is None else serial_text(certificate_serial)
        row = self._fetchone(
            txn,
            "INSERT INTO pkcs12_files (username, label, origin, certificate_serial, created_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (username, label, origin, serial, now, data),
        )
        return Pkcs12Info(int(row[0]), username, label, origin, serial, now, len(data))

    _PKCS12_COLUMNS = "id, username, label, origin, certificate_serial, created_at, data"

    def _pkcs12_from_row(self, row: Sequence[Any], with_data: bool) -> Pkcs12Info:
        data = self.dialect.blob(row[6])
        return Pkcs12Info(
            int(row[0]), row[1], row[2], row[3], row[4], int(row[5]), len(data), data if with_data else None
        )

    def list_pkcs12(self, username: str) -> Deferred[list[Pkcs12Info]]:
        """Fire with the user's PKCS#12 files (without their data), newest first."""

        def get(txn: Transaction) -> list[Pkcs12Info]:
            rows = self._fetchall(
                txn,
                f"SELECT {self._PKCS12_COLUMNS} FROM pkcs12_files WHERE username = ? ORDER BY id DESC",
                (username,),
            )
            return [self._pkcs12_from_row(row, with_data=False) for row in rows]

        return self._read(get)

    def get_pkcs12(self, file_id: int) -> Deferred[Pkcs12Info | None]:
        """Fire with one PKCS#12 file including its data, or None."""

        def get(txn: Transaction) -> Pkcs12Info | None:
            row = self._fetchone(
                txn, f"SELECT {self._PKCS12_COLUMNS} FROM pkcs12_files WHERE id = ?", (file_id,)
            )
            return None if row is None else self._pkcs12_from_row(row, with_data=True)

        return self._read(get)
