"""Known-answer vectors for IRP's audit trail: ``python -m tools.kat_audit``.

Writes ``docs/vectors/audit-chain.json``: four entries with every field fixed (one with
non-ASCII text and nested details), each entry's encoding and hash as the chain makes
them, and a checkpoint over the last entry: the signed message, the record-signing public
key and the Ed25519 signature (deterministic, so reproducible). docs/irp.rst ("The audit
trail") states every rule they follow; ``--write PATH`` writes elsewhere, ``--print``
prints the file.

The record-signing key is SHAKE256("IRP audit known-answer vectors: record-signing key")
(32 bytes, the Ed25519 private key).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from irp.wire.audit_chain import GENESIS, checkpoint_message, encode_entry, extend, make_draft
from tools.kat import render

DOMAIN: Final = "example.org"
FILE: Final = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "vectors", "audit-chain.json")
KEY_LABEL: Final = "IRP audit known-answer vectors: record-signing key"
#: 2026-01-02T03:04:05Z in microseconds.
START: Final = 1_767_323_045_000_000

#: The entries' fields (at, event, outcome, actor, subject, address, details).
ENTRIES: Final = (
    (START, "registry-start", "ok", "registry", "", "", {"version": "0.13.0"}),
    (START + 1_250_000, "login", "ok", "admin@example.org", "admin@example.org", "2001:db8::10", {"method": "password"}),
    (START + 2_000_001, "create-user", "ok", "admin@example.org", "zoë@example.org", "2001:db8::10",
     {"admin": "false", "password-login": "true"}),
    (START + 3_500_000, "revoke", "not-found", "admin@example.org", "", "192.0.2.7",
     {"reason": "key-compromise", "serial": "5f3a", "z": [1, {"b": "ü", "a": None}]}),
)


def signing_key() -> ed25519.Ed25519PrivateKey:
    """The vectors' fixed record-signing key."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.shake_256(KEY_LABEL.encode("ascii")).digest(32))


def generate() -> dict[str, Any]:
    """The vectors."""
    drafts = [make_draft(*fields) for fields in ENTRIES]
    entries = extend(GENESIS, 1, drafts)
    previous = GENESIS
    listed = []
    for entry, draft in zip(entries, drafts, strict=True):
        listed.append(
            {
                "id": entry.id,
                "at": entry.at,
                "event": entry.event,
                "outcome": entry.outcome,
                "actor": entry.actor,
                "subject": entry.subject,
                "address": entry.address,
                "details": entry.details,
                "previous_hash": previous.hex(),
                "encoding": encode_entry(entry.id, draft).hex(),
                "hash": entry.hash.hex(),
            }
        )
        previous = entry.hash
    key = signing_key()
    last = entries[-1]
    message = checkpoint_message(DOMAIN, last.id, last.hash)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "description": "IRP audit trail: entry encodings, the SHA-384 chain and a checkpoint (docs/irp.rst)",
        "domain": DOMAIN,
        "genesis_hash": GENESIS.hex(),
        "entries": listed,
        "checkpoint": {
            "entry_id": last.id,
            "hash": last.hash.hex(),
            "message": message.hex(),
            "record_signing_private_key": key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ).hex(),
            "record_signing_public_key": public.hex(),
            "signature": key.sign(message).hex(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Write the vectors (or print them)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--write", metavar="PATH", default=FILE, help="file to write (default: docs/vectors/audit-chain.json)")
    parser.add_argument("--print", action="store_true", help="print instead of writing")
    arguments = parser.parse_args(argv)
    text = render(generate())
    if arguments.print:
        sys.stdout.write(text)
        return 0
    with open(arguments.write, "w", encoding="utf-8") as output:
        output.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
