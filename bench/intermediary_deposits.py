"""Figure 12: durable deposits/s through the SixChat intermediary vs raw SQLite group commits of the same.

50 persistent TLS connections, each a user of the domain presenting a client certificate
(checked against the registry once, then cached), each sending ``<deposit>`` of a 1 KiB
sealed envelope to another user in a closed loop. The intermediary checks the request,
then stores it in a group commit (one SQLite transaction for the deposits waiting, a
savepoint per deposit: the mailbox check, the recipient's and the sender's quota counts,
the insert) with ``synchronous=FULL``, and answers only after the commit.

Baseline (target: ratio >= 0.5): raw ``sqlite3`` on the server core, the intermediary's own
schema and PRAGMAs, groups of 50 (one deposit in flight per connection), the same
statements per row with the same envelope size. Each run is a deposit run then a raw run,
back to back; the messages table is emptied before each, so both start alike.

The server process runs the domain's registry and the intermediary in one reactor (the
registry only answers the intermediary's first certificate checks, before the runs).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST, Pem
from bench.harness import Context, Figure
from bench.processes import Commands, serve_twisted
from bench.sampling import SERVER_CPU, Sample, measure_loop

FIGURE_ID = "12"
TARGET = 0.5
DOMAIN = "example.org"
#: The sealed envelope's size (bytes).
ENVELOPE = 1024
#: What every answer on a load connection holds (a deposit's, or the first ping's).
OK = b"<response"

_CONNECTIONS: dict[int, list[Any]] = {}


def user_name(index: int) -> str:
    """Load user ``index``."""
    return f"load{index:05d}"


def recipient_of(index: int, count: int) -> str:
    """Whom connection ``index`` deposits for (the next user)."""
    return user_name((index + 1) % count)


def _prekey(owner: str) -> bytes:
    import base64

    x25519 = base64.b64encode(secrets.token_bytes(32)).decode()
    mlkem = base64.b64encode(secrets.token_bytes(1184)).decode()
    signature = base64.b64encode(secrets.token_bytes(64)).decode()
    now = int(time.time())
    return (
        f'<prekey id="{secrets.token_hex(16)}" kind="last-resort" owner="{owner}@{DOMAIN}" created="{now}"'
        f' expires="{now + 86400}" algorithm="ecdsa-p384-sha384" x25519="{x25519}" mlkem="{mlkem}"'
        f' signature="{signature}"/>'
    ).encode()


def serve(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the registry and the intermediary of example.org, ``users`` load
    users with certificates and mailboxes."""
    data_dir = params["data_dir"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        from cryptography.hazmat.primitives.serialization import Encoding

        from common.identity import Identity
        from common.pki.keyfiles import fingerprint
        from common.profile import Profile, ProfileConfig
        from intermediary.server.connection import ConnectionLimits
        from intermediary.server.operations import Limits
        from intermediary.server.service import IntermediaryService, IntermediarySettings
        from intermediary.server.store import Quotas
        from intermediary.wire import parse_prekey_info
        from irp.server.ca import generate_key
        from irp.server.service import RegistryService, RegistrySettings
        from test.helpers import TEST_PARAMETERS

        key_type = params["key_type"]
        registry_service = RegistryService(
            RegistrySettings(
                domain=DOMAIN,
                data_dir=os.path.join(data_dir, "registry"),
                listen=[f"tcp:0:interface={HOST}"],
                hostnames=["localhost", HOST],
                key_type=key_type,
                argon2=TEST_PARAMETERS,
            ),
            reactor,
        )
        registry_service.startService()
        await registry_service.ready
        assert registry_service.registry is not None and registry_service.store is not None
        assert registry_service.credentials is not None
        registry, store, ca = registry_service.registry, registry_service.store, registry_service.credentials.ca

        async def enrol(name: str) -> Pem:
            await registry.add_user(name, password=None)
            key = generate_key(key_type)
            certificate = ca.issue_user_certificate(Identity(name, DOMAIN), key.public_key())
            await store.add_certificate(name, certificate, fingerprint(certificate))
            from bench.irp_server import _pem

            return _pem(name, key, certificate, [ca.issuing_certificate])

        own = await enrol("intermediary")
        users = [await enrol(user_name(index)) for index in range(params["users"])]
        profile_dir = os.path.join(data_dir, "intermediary")
        profile = Profile(profile_dir)
        port = registry_service.ports[0].getHost().port  # type: ignore[attr-defined]
        profile.create(ProfileConfig(server=HOST, port=port, domain=DOMAIN, username="intermediary"), ca.root_certificate)
        from bench.fixtures import load_certificate, load_key

        profile.save_credentials(load_key(own.key), [load_certificate(own.certificate), ca.issuing_certificate])
        service = IntermediaryService(
            IntermediarySettings(
                profile_dir=profile_dir,
                listen=[f"tcp:0:interface={HOST}"],
                quotas=Quotas(recipient_messages=10**9, recipient_bytes=10**15, pair_messages=10**9, pair_bytes=10**15),
                limits=Limits(deposits_per_hour=10**9),
                connection_limits=ConnectionLimits(max_connections_per_address=10_000),
                relay_factory=lambda reactor_, settings_: None,
            ),
            reactor,
        )
        service.startService()
        await service.ready
        intermediary_store = service.store
        assert intermediary_store is not None
        now = int(time.time())
        for user in users:
            data = _prekey(user.name)
            await intermediary_store.publish_prekeys(user.name, [(parse_prekey_info(data), data)], now)

        async def purge() -> int:
            def delete(txn: Any) -> int:
                txn.execute("DELETE FROM messages")
                return int(txn.rowcount)

            return await intermediary_store.pool.runInteraction(delete)  # type: ignore[no-any-return]

        info = {
            "port": service.ports[0].getHost().port,  # type: ignore[attr-defined]
            "users": users,
            "root": ca.root_certificate.public_bytes(Encoding.PEM),
            "database": os.path.join(profile_dir, "intermediary.sqlite3"),
        }
        return info, {"purge": purge}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "intermediary.log"))


def deposit_frames(index: int, count: int, frames: int = 16) -> list[bytes]:
    """Pre-serialised deposits for the recipient after user ``index`` (a connection has one
    request outstanding at a time: one id serves)."""
    from common.identity import Identity
    from common.wire.framing import encode_frame
    from intermediary.wire import Deposit, Request, encode_request

    to = Identity(recipient_of(index, count), DOMAIN)
    expires = int(time.time()) + 86400
    return [encode_frame(encode_request(Request(1, Deposit(to, expires, None, secrets.token_bytes(ENVELOPE))))) for _ in range(frames)]


def connect(info: dict[str, Any], count: int) -> None:
    """Load generator: open the connections (each answers one ping first)."""
    from bench.fixtures import client_context
    from bench.loadgen import connect_tls
    from common.wire.framing import encode_frame
    from intermediary.wire import Ping, Request, encode_request

    _CONNECTIONS[info["port"]] = connect_tls(
        HOST, info["port"], [client_context(user) for user in info["users"][:count]], count,
        first=encode_frame(encode_request(Request(1, Ping()))), check=OK,
    )


def measure(info: dict[str, Any], settings: Any) -> Sample:
    """Load generator: one closed-loop deposit run on the open connections."""
    from bench.loadgen import round_trips

    connections = _CONNECTIONS[info["port"]]
    count = len(connections)
    # Deposits for every load user in turn (round_trips hands the frames out in order).
    frames = [frame for index in range(count) for frame in deposit_frames(index, count, 1)]
    return round_trips(connections, frames, warmup=settings.warmup, duration=settings.duration, server_pid=info["pid"])


def disconnect(info: dict[str, Any]) -> None:
    """Load generator: close the connections."""
    for connection in _CONNECTIONS.pop(info["port"], []):
        connection.close()


# -- the raw baseline ------------------------------------------------------------------------


def open_database(path: str) -> sqlite3.Connection:
    """A connection with the intermediary's PRAGMAs (``common.db.pools``)."""
    database = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = FULL")
    database.execute("PRAGMA foreign_keys = ON")
    database.execute("PRAGMA busy_timeout = 10000")
    return database


def prepare(path: str, users: int) -> None:
    """The intermediary's schema and a mailbox for each load user."""
    from common.db.dialect import SQLITE
    from common.db.migrations import upgrade_schema
    from intermediary.server.store import MIGRATIONS

    for suffix in ("", "-wal", "-shm"):  # a fresh file each run
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    database = open_database(path)
    try:
        upgrade_schema(database.cursor(), SQLITE, MIGRATIONS)
        for index in range(users):
            database.execute("INSERT INTO mailboxes (owner, created_at) VALUES (?, ?)", (user_name(index), int(time.time())))
        database.execute("COMMIT")
    finally:
        database.close()


def grouped_deposits(path: str, warmup: float, duration: float, group: int) -> Sample:
    """Raw durable deposits/s: per group ``BEGIN IMMEDIATE``; per row the statements of
    ``IntermediaryStore._deposit_one`` under a savepoint; ``COMMIT`` (synchronous=FULL)."""
    database = open_database(path)
    database.execute("DELETE FROM messages")
    senders = [f"{user_name(index)}@{DOMAIN}" for index in range(group)]
    envelopes = [secrets.token_bytes(ENVELOPE) for _ in range(group)]

    def one_group() -> dict[str, int]:
        now = int(time.time())
        database.execute("BEGIN IMMEDIATE")
        for index, sender in enumerate(senders):
            recipient = recipient_of(index, group)
            database.execute("SAVEPOINT deposit")
            database.execute("SELECT 1 FROM mailboxes WHERE owner = ?", (recipient,)).fetchone()
            database.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE recipient = ? AND expires_at > ?", (recipient, now)
            ).fetchone()
            database.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE recipient = ? AND sender = ? AND expires_at > ?",
                (recipient, sender, now),
            ).fetchone()
            message_id = secrets.token_hex(16)
            database.execute(
                "INSERT INTO messages (message_id, recipient, sender, deposited_at, deliver_at, expires_at, size, envelope)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, recipient, sender, now, now, now + 86400, ENVELOPE, envelopes[index]),
            )
            database.execute("SELECT seq FROM messages WHERE message_id = ?", (message_id,)).fetchone()
            database.execute("RELEASE SAVEPOINT deposit")
        database.execute("COMMIT")
        return {"rows": group, "commits": 1}

    try:
        window, counts = measure_loop(one_group, warmup, duration)
    finally:
        database.close()
    return window.sample(counts["rows"] / window.wall, **counts, group=group)


def run(ctx: Context) -> list[Figure]:
    """Measure figure 12."""
    import tempfile

    settings = ctx.settings
    count = settings.connections
    server = ctx.server(
        "intermediary",
        "bench.intermediary_deposits:serve",
        {"data_dir": tempfile.mkdtemp(prefix="intermediary-", dir=ctx.workdir), "key_type": settings.key_type, "users": count},
    )
    info = server.info
    raw_path = ctx.path("intermediary-raw.sqlite3")
    load, local = ctx.worker(), ctx.worker(SERVER_CPU)
    local.run(prepare, raw_path, count)
    figures: list[Sample] = []
    raw: list[Sample] = []
    load.run(connect, info, count)
    try:
        for _ in range(settings.runs):
            server.call("purge")
            figures.append(load.run(measure, info, settings))
            raw.append(local.run(grouped_deposits, raw_path, settings.warmup, settings.duration, count))
    finally:
        load.run(disconnect, info)
        ctx.stop_server("intermediary")
    return [
        Figure(
            FIGURE_ID,
            "durable intermediary deposits/s (1 KiB sealed envelopes, answered after the commit)",
            "/s",
            figures,
            f"raw sqlite3 deposits/s, the intermediary's schema and PRAGMAs, groups of {count}, the same statements per row",
            "/s",
            raw,
            target=TARGET,
            parameters={"connections": count, "envelope_bytes": ENVELOPE, "pragmas": "journal_mode=WAL, synchronous=FULL"},
            notes=["the raw loop is one Python thread on the server core: no network, no TLS, no XML, no thread hop"],
        )
    ]
