"""Figure 4: certificate issuances/s through IRP (CSR in, stored certificate out) vs raw signing of the same.

50 persistent connections, each logged in as its own user, send ``<request-certificate>``
with a PEM CSR in a closed loop; the registry checks the caller and the quota, verifies the
CSR, signs the certificate with its issuing key, stores it (a committed SQLite
transaction) and answers with it. Each run uses 50 freshly created users, because a user
may hold at most 50 certificates (``max_certificates_per_user``, left at its default). The
baseline is :mod:`bench.cert_signing` on the server core: the same CSRs, the same
certificate, the same key type, with ``cryptography`` alone.

Target: ratio >= 0.6 (the issue's table). The baseline runs interleaved with the figure's (raw, IRP,
raw, IRP...) and keeps the same CPU record as every other run.
"""

from __future__ import annotations

from typing import Any

from bench import cert_signing
from bench.fixtures import HOST, Pem, client_context, source_addresses
from bench.harness import Context, Figure
from bench.irp_server import OK, registry
from bench.sampling import SERVER_CPU, Sample

FIGURE_ID = "4"
TARGET = 0.6
#: Requests per connection per run: the quota is 50 certificates and each user has one.
LIMIT = 45


def measure_one(irp: dict[str, Any], users: list[Pem], frames: list[bytes], settings: Any) -> Sample:
    """Load generator: one run of issuances/s with a fresh cohort of users."""
    from bench.loadgen import connect_tls, round_trips

    connections = connect_tls(
        HOST,
        irp["port"],
        [client_context(user) for user in users],
        len(users),
        sources=source_addresses(len(users)),
        check=OK,
    )
    try:
        return round_trips(
            connections, frames, warmup=settings.warmup, duration=settings.duration, server_pid=irp["pid"], limit=LIMIT
        )
    finally:
        for connection in connections:
            connection.goodbye()


def checked_frames(key_type: str) -> list[bytes]:
    """Request frames with CSRs of fresh keys (built in the load generator)."""
    from bench.irp_server import request_certificate_frames

    return request_certificate_frames(key_type)


def run(ctx: Context) -> list[Figure]:
    """Measure figure 4."""
    settings = ctx.settings
    irp = registry(ctx, settings.small_users)
    csrs = cert_signing.make_csrs(settings.key_type)
    figures: list[Sample] = []
    baselines: list[Sample] = []
    before = irp.call("certificates")
    load, local = ctx.worker(), ctx.worker(SERVER_CPU)
    frames = load.run(checked_frames, settings.key_type)
    for _ in range(settings.runs):
        baselines.append(local.run(cert_signing.signing_rate, settings.key_type, csrs, settings.warmup, settings.duration))
        users = irp.call("cohort", count=settings.connections, prefix="iss")
        figures.append(load.run(measure_one, irp.info, users, frames, settings))
    stored = irp.call("certificates") - before
    return [
        Figure(
            FIGURE_ID,
            "IRP certificate issuances/s (CSR in, stored certificate out)",
            "/s",
            figures,
            "raw cryptography signing/s (CSR in, certificate out)",
            "/s",
            baselines,
            target=TARGET,
            parameters={"connections": settings.connections, "key_type": settings.key_type, "per_connection_limit": LIMIT},
            details={"certificates_stored": stored},
            notes=["fresh users each run (quota of 50 certificates per user); the raw loop runs on the server core"],
        )
    ]

