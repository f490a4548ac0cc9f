"""Figure 13b: durable sixid registrations/s (each freshly signed) vs raw SQLite group commits of the same rows, one Ed25519 signature each.

The registry (``twistd irp --sixid``: :func:`bench.sixid_server.serve_sixid`, policy
``open``, a new database) takes ``<register>`` requests on 50 persistent anonymous TLS
connections from 50 loopback addresses, in a closed loop (one outstanding per
connection). Every request is a registration never sent before
(:class:`bench.sixid_load.FreshRegistrations`): 5,000 device keys (quick 500) in turn,
each registration with a higher sequence number, the current time, one endpoint, signed
by its device key on the load generator's core when it is sent (inside the window: the
clients' signing is theirs, the server's work is what is measured). The registry checks it
(key policy, the ID derived from the key, the device signature, the clock, the limits),
signs its record (Ed25519), stores it in a group commit (``synchronous=FULL``) and
answers with the record after the commit. The per-ID and per-address registration limits
are lifted (:data:`bench.sixid_server.UNLIMITED`): the load is a few thousand devices
registering thousands of times a minute.

Baseline (target: ratio >= 0.5): raw ``sqlite3`` on the server core, the registry's own
schema and PRAGMAs, groups of 50 (one registration in flight per connection): per group
``BEGIN IMMEDIATE``, per row a savepoint, one Ed25519 signature of a record of the
figure's size (the registry's record format around a real signed registration) and the
registry's own upsert of the row (:data:`UPSERT`, which fires the table's triggers: the
change log and the count of IDs), then ``COMMIT``. No network, no TLS, no XML, no
checks of the registration, no thread hop. Each run is a registration run then a raw run,
back to back.

13b-v (information): the same registration runs against the raw loop doing also what the
registry cannot skip and the raw loop of 13b leaves out, the check of the device's
signature (the key loaded from its SPKI, Ed25519 verify: about three signatures' worth),
run third in each run: the ratio with the cryptography equal on both sides.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from bench import sixid_data
from bench.fixtures import HOST, client_context, source_addresses
from bench.harness import Context, Figure
from bench.sampling import SERVER_CPU, Sample, measure_loop
from bench.sixid_load import OK, FreshRegistrations, device_keys
from bench.sixid_server import UNLIMITED

FIGURE_ID = "13b"
VERIFIED_ID = "13b-v"
TARGET = 0.5
#: Device keys registering in turn (full run; quick: a tenth).
KEYS = 5_000
#: The registry's upsert of a record (``irp.server.store.sixid``), here verbatim.
UPSERT = (
    "INSERT INTO sixid_records (sixid, seq, signed_at, expires_at, keep_until, owner, record)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (sixid) DO UPDATE SET seq = excluded.seq, signed_at = excluded.signed_at,"
    " expires_at = excluded.expires_at, keep_until = excluded.keep_until, owner = excluded.owner,"
    " record = excluded.record"
    " WHERE sixid_records.seq < excluded.seq"
)
#: A registration's lifetime (the figure's and the raw rows').
LIFETIME = 3600

_FIELD = struct.Struct(">I")
_CONNECTIONS: dict[int, list[Any]] = {}
_LOAD: dict[str, Any] = {}
#: The raw loop's record templates, by count (made once per process).
_TEMPLATES: dict[int, list[Template]] = {}


# ---------------------------------------------------------------------------------------
# Load generator side


def connect(info: dict[str, Any], count: int, keys: int) -> None:
    """Load generator: the device keys, then the connections (each answers a ping)."""
    from bench.loadgen import connect_tls
    from bench.sixid_lookups import ping_frame

    _LOAD["registrations"] = FreshRegistrations(device_keys(keys), lifetime=LIFETIME)
    _LOAD["next"] = 0
    _CONNECTIONS[info["port"]] = connect_tls(
        HOST, info["port"], [client_context(None)], count, sources=source_addresses(count), first=ping_frame(), check=OK
    )


class _From(Sequence[bytes]):
    """The load's registrations from item ``start`` on (round_trips counts from 0)."""

    def __init__(self, registrations: FreshRegistrations, start: int) -> None:
        self.registrations = registrations
        self.start = start
        self.issued = 0

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, index: Any) -> Any:
        self.issued = max(self.issued, index + 1)
        return self.registrations[self.start + index]


def measure(info: dict[str, Any], settings: Any) -> Sample:
    """Load generator: one closed-loop registration run on the open connections."""
    from bench.loadgen import round_trips

    frames = _From(_LOAD["registrations"], _LOAD["next"])
    sample = round_trips(
        _CONNECTIONS[info["port"]], frames, warmup=settings.warmup, duration=settings.duration, server_pid=info["pid"]
    )
    _LOAD["next"] += frames.issued
    sample.details["registrations_sent"] = frames.issued
    return sample


def disconnect(info: dict[str, Any]) -> int:
    """Load generator: close the connections; return the registrations signed in all."""
    for connection in _CONNECTIONS.pop(info["port"], []):
        connection.goodbye()
    registrations = _LOAD.pop("registrations", None)
    return 0 if registrations is None else int(registrations.made)


# ---------------------------------------------------------------------------------------
# The raw baseline (on the server core)


def open_database(path: str) -> sqlite3.Connection:
    """A connection with the registry's PRAGMAs (``common.db.pools``)."""
    from bench.sqlite_commits import open_database as registry_pragmas

    return registry_pragmas(path)


def prepare(path: str) -> None:
    """A new database with the registry's schema."""
    database = open_database(path)
    try:
        sixid_data.create_schema(database)
    finally:
        database.close()


class Template(NamedTuple):
    """A real record cut around its ``accepted_at`` field, and what the device signed."""

    sixid: str
    #: The record's signed bytes before ``accepted_at``, and after it.
    head: bytes
    tail: bytes
    spki: bytes
    registration: bytes
    device_signature: bytes


def record_templates(count: int) -> list[Template]:
    """``count`` real records (a registration of the figure's shape, one endpoint,
    :data:`LIFETIME`, signed by its own device key), cut around ``accepted_at``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.endpoint import Endpoint
    from sixid.ids import derive_id
    from sixid.records import Record, Registration, field_bytes, sign_registration

    templates = []
    now = int(time.time())
    for index in range(count):
        device = Ed25519PrivateKey.generate()
        sixid = derive_id(device.public_key())
        endpoint = Endpoint(f"2001:db8:5::{index % 0xFFFF + 1:x}", 4605)
        registration = Registration(sixid_data.DOMAIN, sixid, now * 1000, now, now + LIFETIME, (endpoint,))
        signed = sign_registration(device, registration)
        record = Record(sixid_data.DOMAIN, sixid, "", now, signed.registration_bytes, signed.spki, signed.signature)
        tbs = record.signing_bytes()
        accepted = field_bytes(str(now).encode("ascii"))
        cut = tbs.index(accepted, len(b"SIXID-RECORD-V1\x00"))
        templates.append(
            Template(str(sixid), tbs[:cut], tbs[cut + len(accepted) :], signed.spki, signed.registration_bytes, signed.signature)
        )
    return templates


def grouped_registrations(path: str, warmup: float, duration: float, group: int, keys: int, verify: bool = False) -> Sample:
    """Raw durable registrations/s (see the module's docstring): groups of ``group`` rows
    over ``keys`` IDs in turn, each row's record signed as the registry signs it; with
    ``verify``, each row's device signature is also checked first, its key loaded from
    the SPKI as the registry loads it (figure 13b-v)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    signing_key = Ed25519PrivateKey.generate()
    templates = _TEMPLATES.get(keys) or _TEMPLATES.setdefault(keys, record_templates(keys))
    database = open_database(path)
    # Microseconds: above every earlier run's rows (a few thousand a second).
    position = {"next": 0, "seq": int(time.time() * 1_000_000)}

    def one_group() -> dict[str, int]:
        database.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            index = position["next"]
            position["next"] = index + 1
            position["seq"] += 1
            template = templates[index % keys]
            if verify:
                device = load_der_public_key(template.spki)
                assert isinstance(device, Ed25519PublicKey)
                device.verify(template.device_signature, template.registration)
            now = int(time.time())
            accepted = str(now).encode("ascii")
            tbs = template.head + _FIELD.pack(len(accepted)) + accepted + template.tail
            signature = signing_key.sign(tbs)
            record = tbs + _FIELD.pack(len(signature)) + signature
            database.execute("SAVEPOINT grouped_write")
            cursor = database.execute(UPSERT, (template.sixid, position["seq"], now, now + LIFETIME, now + LIFETIME, "", record))
            if cursor.rowcount != 1:
                raise RuntimeError("the raw upsert was refused")
            database.execute("RELEASE SAVEPOINT grouped_write")
        database.execute("COMMIT")
        return {"rows": group, "commits": 1, "signatures": group, "verifications": group if verify else 0}

    try:
        window, counts = measure_loop(one_group, warmup, duration)
    finally:
        database.close()
    return window.sample(counts["rows"] / window.wall, **counts, group=group, record_bytes=len(record_example(templates)))


def record_example(templates: list[Template]) -> bytes:
    """A record of the raw loop's size (for the JSON)."""
    return templates[0].head + _FIELD.pack(10) + b"0" * 10 + templates[0].tail + _FIELD.pack(64) + b"\0" * 64


# ---------------------------------------------------------------------------------------


def run(ctx: Context) -> list[Figure]:
    """Measure figure 13b."""
    settings = ctx.settings
    count = settings.connections
    keys = KEYS // 10 if settings.quick else KEYS
    server = ctx.server(
        "sixid-registrations",
        "bench.sixid_server:serve_sixid",
        {
            "data_dir": tempfile.mkdtemp(prefix="sixid-registrations-", dir=ctx.workdir),
            "key_type": settings.key_type,
            "policy": "open",
            "sixid": dict(UNLIMITED),
        },
    )
    info = server.info
    raw_path = os.path.join(tempfile.mkdtemp(prefix="sixid-raw-", dir=ctx.workdir), "raw.sqlite3")
    load, local = ctx.worker(), ctx.worker(SERVER_CPU)
    local.run(prepare, raw_path)
    figures: list[Sample] = []
    raw: list[Sample] = []
    checked: list[Sample] = []
    load.run(connect, info, count, keys)
    signed = 0
    try:
        for _ in range(settings.runs):
            figures.append(load.run(measure, info, settings))
            raw.append(local.run(grouped_registrations, raw_path, settings.warmup, settings.duration, count, keys))
            checked.append(local.run(grouped_registrations, raw_path, settings.warmup, settings.duration, count, keys, True))
        held = server.call("count")
    finally:
        signed = load.run(disconnect, info)
        ctx.stop_server("sixid-registrations")
    parameters = {
        "connections": count,
        "device_keys": keys,
        "policy": "open",
        "limits_lifted": sorted(UNLIMITED),
        "pragmas": "journal_mode=WAL, synchronous=FULL",
        "raw_group_size": count,
    }
    return [
        Figure(
            FIGURE_ID,
            "durable sixid registrations/s (each freshly signed by its device, answered after the commit)",
            "/s",
            figures,
            f"raw sqlite3 registrations/s, the registry's schema, upsert and PRAGMAs, groups of {count}, an Ed25519 signature per row",
            "/s",
            raw,
            target=TARGET,
            parameters=parameters,
            details={"registrations_signed": signed, "ids_held_by_registry": held},
            notes=[
                "every registration is new (a higher sequence number, the current time), signed by the load generator as it is sent",
                "the raw loop is one Python thread on the server core: no network, no TLS, no XML, no checks, no thread hop",
            ],
        ),
        Figure(
            VERIFIED_ID,
            "durable sixid registrations/s (the same runs as 13b)",
            "/s",
            figures,
            "the raw loop of 13b plus the device signature's check per row (key loaded from its SPKI, Ed25519 verify)",
            "/s",
            checked,
            parameters=parameters,
            notes=["information: a baseline doing the same cryptography as the registry (verify the device, sign the record)"],
        ),
    ]
