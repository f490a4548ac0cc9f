"""The sixid figures' data: a registry data folder holding many signed sixid records, made
directly and kept on disk between runs.

A million records cannot be registered through the server in a benchmark's time, so they
are made as the registry would have made them, then inserted in bulk (as
:func:`bench.irp_server.populate` does for IRP users):

* every record has its own **real** Ed25519 device key (made, used, thrown away), the ID
  derived from it (``sixid.ids.derive_id``), a registration signed by that key
  (``sixid.records.sign_registration``: two endpoints, one IPv6 and one IPv4) and the
  registry's record around it, signed with the registry's own record-signing key
  (``sixid.records.sign_record``), so every record verifies as a served one does;
* the database is made by the registry's own migrations
  (``irp.server.store.schema.MIGRATIONS``) with the registry's credentials beside it
  (``irp.server.credentials.load_or_create_credentials``), and the rows go straight
  into its ``sixid_records`` table, in one transaction (its triggers run as for any
  insert; the change log they fill is then pruned, as the registry's sweep would).

The records are signed now and valid for :data:`RECORD_LIFETIME` (longer than the
registry would accept in a registration, ``--sixid-max-lifetime``: the limit is checked
when a registration is accepted, not when a record is served), so that they can be kept.
They are kept under :func:`cache_root`, in a folder named after :data:`GENERATOR_VERSION`,
the count and the key type of the registry's CA: ``registry/`` (the registry's data
folder: credentials and database), ``records.sqlite3`` (the generated rows), ``ids.bin``
(every ID's 20-byte digest, in the order made) and ``meta.json``. The records are made
again when the generator or the count changes, or when they or the signing certificate
near their end; the database alone is made again from ``records.sqlite3`` (seconds) when
the registry's schema changes (``database.json``). Each run copies ``registry/`` (the
registry writes to its database).

Making a million takes minutes (about 100 us of CPU per record: a key, two signatures),
in two processes (this machine's two cores), with progress shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

DOMAIN = "example.org"
HOSTNAMES = ["localhost", "127.0.0.1"]
#: Bump when the records made change (their content, layout or signatures).
GENERATOR_VERSION = 1
#: How long the generated records are valid (and the folder usable): a year.
RECORD_LIFETIME = 365 * 86400
#: Make the data again when less than this is left of the records' or signer's lifetime.
RENEW_WITHIN = 30 * 86400
#: Records made per task of the generating processes.
CHUNK = 5_000
#: Processes generating (this machine has two cores).
PROCESSES = 2
DIGEST_SIZE = 20
IDS_FILE = "ids.bin"
META_FILE = "meta.json"
RECORDS_FILE = "records.sqlite3"
DATABASE_META_FILE = "database.json"
REGISTRY_DIR = "registry"
DATABASE_FILE = "registry.sqlite3"


def cache_root() -> str:
    """Where generated data is kept: ``$IRP_BENCH_CACHE``, else ``~/.cache/irp-bench``."""
    return os.environ.get("IRP_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "irp-bench")


def cache_dir(count: int, key_type: str, root: str | None = None) -> str:
    """The folder of the data for ``count`` records (keyed by the generator's version)."""
    return os.path.join(root or cache_root(), f"sixid-v{GENERATOR_VERSION}-{count}-{key_type}")


def schema_fingerprint() -> str:
    """A digest of the registry's migrations: data made on another schema is made again."""
    from irp.server.store.schema import MIGRATIONS

    return hashlib.sha256(json.dumps(MIGRATIONS, sort_keys=True).encode()).hexdigest()[:16]


def id_text(digest: bytes) -> str:
    """The canonical text of an ID (32 lower-case base32 characters) from its digest."""
    return base64.b32encode(digest).decode("ascii").lower()


# ---------------------------------------------------------------------------------------
# Making records (in the generating processes)


def endpoints_of(index: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """Record ``index``'s endpoints: one IPv6 and one IPv4 address, port 4605."""
    import ipaddress

    v6 = str(ipaddress.IPv6Address((0x20010DB8 << 96) | (index << 16) | 1))
    v4 = str(ipaddress.IPv4Address((10 << 24) | (index % 0xFFFFFE + 1)))
    return (v6, 4605), (v4, 4605)


def make_record(signing_key: Any, index: int, signed_at: int, lifetime: int = RECORD_LIFETIME) -> tuple[bytes, Any]:
    """One record: a fresh device key, its registration (seq 1) signed by it, the
    registry's record signed with ``signing_key``. Returns (digest, ``SignedRecord``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.endpoint import Endpoint
    from sixid.ids import derive_id
    from sixid.records import Record, Registration, sign_record, sign_registration

    device = Ed25519PrivateKey.generate()
    sixid = derive_id(device.public_key())
    registration = Registration(
        domain=DOMAIN,
        sixid=sixid,
        seq=1,
        signed_at=signed_at,
        expires=signed_at + lifetime,
        endpoints=tuple(Endpoint.parse(address, port) for address, port in endpoints_of(index)),
    )
    signed = sign_registration(device, registration)
    record = Record(
        domain=DOMAIN,
        sixid=sixid,
        owner="",
        accepted_at=signed_at,
        registration_bytes=signed.registration_bytes,
        spki=signed.spki,
        device_signature=signed.signature,
    )
    return sixid.digest, sign_record(signing_key, record)


def make_rows(
    signing_key_raw: bytes, start: int, count: int, signed_at: int, lifetime: int
) -> tuple[list[tuple[Any, ...]], bytes]:
    """Records ``start`` to ``start + count`` as ``sixid_records`` rows (see :func:`row_of`),
    and their digests joined (a generating process's task)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signing_key = Ed25519PrivateKey.from_private_bytes(signing_key_raw)
    rows = []
    digests = bytearray()
    for index in range(start, start + count):
        digest, signed = make_record(signing_key, index, signed_at, lifetime)
        rows.append(row_of(digest, signed_at, lifetime, signed.to_bytes()))
        digests += digest
    return rows, bytes(digests)


def row_of(digest: bytes, signed_at: int, lifetime: int, record: bytes) -> tuple[Any, ...]:
    """A ``sixid_records`` row in :data:`ROW_COLUMNS` order (seq 1, owner "")."""
    expires = signed_at + lifetime
    return (id_text(digest), 1, signed_at, expires, max(expires, signed_at + 300), "", record)


#: The columns :func:`row_of` fills.
ROW_COLUMNS = ("sixid", "seq", "signed_at", "expires_at", "keep_until", "owner", "record")


def _generator_init() -> None:
    """A generating process may run on every core (the orchestrator is pinned to one)."""
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        except OSError:
            pass


def _make_task(task: tuple[bytes, int, int, int, int]) -> tuple[list[tuple[Any, ...]], bytes]:
    return make_rows(*task)


# ---------------------------------------------------------------------------------------
# The database


def open_loading(path: str) -> sqlite3.Connection:
    """A connection for bulk loading (WAL as the registry's; not synchronous while loading)."""
    database = sqlite3.connect(path, isolation_level=None)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = OFF")
    return database


def create_schema(database: sqlite3.Connection) -> None:
    """The registry's own schema (its migrations)."""
    from common.db.dialect import SQLITE
    from common.db.migrations import upgrade_schema
    from irp.server.store.schema import MIGRATIONS

    upgrade_schema(database.cursor(), SQLITE, MIGRATIONS)
    if database.in_transaction:  # the migrations' transaction is the caller's to end
        database.execute("COMMIT")
    if "sixid_records" not in _tables(database):
        raise RuntimeError("the registry's schema has no sixid_records table (irp.server.store.schema)")


def _tables(database: sqlite3.Connection) -> set[str]:
    return {row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def prune_change_log(database: sqlite3.Connection) -> None:
    """Empty the change log the insert trigger filled (one entry per record), as the
    registry's sweep prunes it: a loaded database looks like one whose registrations are
    old news, and the registry has no backlog to prune while it is measured."""
    if "sixid_changes" not in _tables(database):
        return
    database.execute(
        "UPDATE counters SET value = (SELECT COALESCE(MAX(id), 0) FROM sixid_changes) WHERE name = 'sixid_changes_pruned'"
    )
    database.execute("DELETE FROM sixid_changes")


def generate_records(folder: str, count: int, key_type: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Make ``count`` records in ``folder`` (replaced if present): the registry's
    credentials (``registry/``), the rows (``records.sqlite3``, table ``rows`` in
    :data:`ROW_COLUMNS` order), ``ids.bin`` and ``meta.json``."""
    from irp.server.credentials import load_or_create_credentials

    building = folder + ".building"
    shutil.rmtree(building, ignore_errors=True)
    os.makedirs(building, mode=0o700)
    credentials = load_or_create_credentials(os.path.join(building, REGISTRY_DIR), DOMAIN, HOSTNAMES, key_type=key_type)
    signing_raw = credentials.signing_key.private_bytes_raw()
    signed_at = int(time.time())
    database = open_loading(os.path.join(building, RECORDS_FILE))
    started = time.perf_counter()
    made = 0
    next_report = 0.0
    try:
        database.execute(f"CREATE TABLE rows ({', '.join(ROW_COLUMNS)})")
        statement = f"INSERT INTO rows VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
        database.execute("BEGIN")
        tasks = [(signing_raw, start, min(CHUNK, count - start), signed_at, RECORD_LIFETIME) for start in range(0, count, CHUNK)]
        with open(os.path.join(building, IDS_FILE), "wb") as ids, _pool(len(tasks)) as pool:
            for rows, digests in pool.imap(_make_task, tasks):
                ids.write(digests)
                database.executemany(statement, rows)
                made += len(rows)
                elapsed = time.perf_counter() - started
                if elapsed >= next_report or made == count:
                    rate = made / max(elapsed, 1e-9)
                    log(f"  sixid data: {made:,}/{count:,} records ({rate:,.0f}/s, {(count - made) / rate:.0f} s left)")
                    next_report = elapsed + 10.0
        database.execute("COMMIT")
    finally:
        database.close()
    not_after = credentials.signing_certificate.not_valid_after_utc.timestamp()
    meta = {
        "generator_version": GENERATOR_VERSION,
        "count": count,
        "key_type": key_type,
        "domain": DOMAIN,
        "signed_at": signed_at,
        "valid_until": int(min(signed_at + RECORD_LIFETIME, not_after)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(os.path.join(building, META_FILE), meta)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(building, folder)
    return meta


def build_database(folder: str, log: Callable[[str], None] = print) -> None:
    """(Re)make ``registry/registry.sqlite3`` in ``folder``: the registry's schema, then
    every row of ``records.sqlite3`` inserted into ``sixid_records`` in one statement (the
    table's triggers run as for any insert), then the change log pruned."""
    registry_dir = os.path.join(folder, REGISTRY_DIR)
    path = os.path.join(registry_dir, DATABASE_FILE)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    started = time.perf_counter()
    database = open_loading(path)
    try:
        create_schema(database)
        database.execute("ATTACH DATABASE ? AS generated", (os.path.join(folder, RECORDS_FILE),))
        names = ", ".join(ROW_COLUMNS)
        database.execute("BEGIN")
        database.execute(f"INSERT INTO sixid_records ({names}) SELECT {names} FROM generated.rows")
        prune_change_log(database)
        database.execute("COMMIT")
        database.execute("DETACH DATABASE generated")
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = database.execute("SELECT COUNT(*) FROM sixid_records").fetchone()[0]
    finally:
        database.close()
    log(f"  sixid data: {stored:,} records loaded into the registry's schema in {time.perf_counter() - started:.0f} s")
    _write_json(os.path.join(folder, DATABASE_META_FILE), {"schema": schema_fingerprint(), "records": stored})


def _write_json(path: str, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


class _pool:
    """The generating processes (``spawn``: nothing inherited), closed on exit; for a
    single task, this process (no pool)."""

    def __init__(self, tasks: int) -> None:
        self.pool: Any = None if tasks <= 1 else multiprocessing.get_context("spawn").Pool(PROCESSES, initializer=_generator_init)

    def __enter__(self) -> Any:
        return self.pool or _InProcess()

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class _InProcess:
    """``imap`` in this process."""

    def imap(self, function: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]:
        return map(function, tasks)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def records_usable(folder: str, count: int, key_type: str, now: float | None = None) -> bool:
    """Whether ``folder`` holds complete records of this generator and count, with more
    than :data:`RENEW_WITHIN` left of their lifetime (and of the signer's)."""
    meta = _read_json(os.path.join(folder, META_FILE))
    now = time.time() if now is None else now
    ids = os.path.join(folder, IDS_FILE)
    return bool(
        meta.get("generator_version") == GENERATOR_VERSION
        and meta.get("count") == count
        and meta.get("key_type") == key_type
        and meta.get("valid_until", 0) - RENEW_WITHIN > now
        and os.path.exists(ids)
        and os.path.getsize(ids) == count * DIGEST_SIZE
    )


def database_usable(folder: str, count: int) -> bool:
    """Whether ``folder``'s registry database was made on the current schema."""
    meta = _read_json(os.path.join(folder, DATABASE_META_FILE))
    return bool(
        meta.get("schema") == schema_fingerprint()
        and meta.get("records") == count
        and os.path.exists(os.path.join(folder, REGISTRY_DIR, DATABASE_FILE))
    )


def ensure(count: int, key_type: str, log: Callable[[str], None] = print, root: str | None = None) -> str:
    """The data folder for ``count`` records: made first when there is none usable, its
    database made again when the registry's schema changed."""
    folder = cache_dir(count, key_type, root)
    if records_usable(folder, count, key_type):
        log(f"  sixid data: {count:,} records kept in {folder}")
    else:
        log(f"  sixid data: making {count:,} records in {folder} (kept for later runs)")
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        generate_records(folder, count, key_type, log)
    if not database_usable(folder, count):
        build_database(folder, log)
    return folder


def copy_registry(folder: str, destination: str) -> str:
    """A copy of the data folder's registry folder at ``destination`` (for one server)."""
    shutil.copytree(os.path.join(folder, REGISTRY_DIR), destination)
    return destination


def read_ids(folder: str) -> bytes:
    """Every ID's 20-byte digest, joined, in the order made."""
    with open(os.path.join(folder, IDS_FILE), "rb") as handle:
        return handle.read()


def digests(blob: bytes) -> Iterator[bytes]:
    """The digests of an ``ids.bin`` blob."""
    for start in range(0, len(blob), DIGEST_SIZE):
        yield blob[start : start + DIGEST_SIZE]
