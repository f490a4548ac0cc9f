"""How the ``irp`` command prints: directory entries, address records, certificate lines,
files written (0600 when private), and serial numbers typed by a person."""

from __future__ import annotations

import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.cliutil import CommandError, show
from common.pki import keyfiles
from common.timeutil import format_timestamp
from irp.wire.elements import CertificateEntry
from irp.wire.records import AddressRecord, UserRecord


def describe_user(record: UserRecord) -> None:
    """Print a directory entry."""
    show(f"{record.identity}")
    if record.display_name:
        show(f"  name:  {record.display_name}")
    if record.email:
        show(f"  email: {record.email}")
    for name, value in record.attributes:
        show(f"  {name}: {value}")
    show(f"  (entry version {record.seq}, signed by the registry {format_timestamp(record.signed_at)})")


def describe_addresses(record: AddressRecord, now: float) -> None:
    """Print an address record."""
    current = record.is_current(now)
    presence = record.presence if current else "offline"
    show(f"{record.identity}: {presence}")
    if current:
        for endpoint in record.endpoints:
            host = f"[{endpoint.address}]" if endpoint.family == "ipv6" else endpoint.address
            show(f"  {host}:{endpoint.port}")
        show(f"  (valid until {format_timestamp(record.expires_at)}; signature verified)")
    else:
        show("  (no current addresses; signature verified)")


def describe_certificate(entry: CertificateEntry) -> None:
    """Print one certificate's summary line."""
    line = (
        f"{entry.serial:x}  {entry.status:<8} {entry.origin:<8} "
        f"{format_timestamp(entry.not_before)[:10]} .. {format_timestamp(entry.not_after)[:10]}"
    )
    if entry.reason:
        line += f"  ({entry.reason})"
    show(line)
    show(f"    {keyfiles.format_fingerprint(entry.fingerprint)}")


def write_output(path: str | None, data: bytes, *, private: bool = False) -> None:
    """Write to a file (0600 when private) or to stdout."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if private:
        keyfiles.write_bytes_private(path, data)
    else:
        with open(path, "wb") as handle:
            handle.write(data)
    print(f"wrote {path}", file=sys.stderr)


def pem(certificate: x509.Certificate) -> bytes:
    """PEM bytes of a certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def parse_serial_argument(text: str) -> int:
    """Parse a hex serial number typed by a person."""
    cleaned = text.lower().replace(":", "")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise CommandError(f"{text!r} is not a hexadecimal serial number") from None
