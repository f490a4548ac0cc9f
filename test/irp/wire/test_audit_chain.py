"""The audit trail's chain and its verification, sans I/O (irp.wire.audit_chain and
verify): the published vectors, any changed byte caught, gaps, checkpoints with real keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial import unittest

from irp.wire.audit_chain import (
    GENESIS,
    AuditCheckpoint,
    AuditEntry,
    ChainError,
    canonical_json,
    checkpoint_message,
    encode_entry,
    extend,
    make_draft,
    split_der,
)
from irp.wire.audit_verify import ChainVerifier, CheckpointRejected, checkpoint_signer
from test import pki
from test.helpers import REPOSITORY
from tools import kat_audit

DOMAIN = "example.org"
VECTORS = os.path.join(REPOSITORY, "docs", "vectors", "audit-chain.json")
def now() -> int:
    """Now, in microseconds: when a test's certificates are valid (read at each use, not
    when the module is loaded: a suite loads it minutes before running its tests, and
    certificates issued by a test are valid from five minutes before they are made)."""
    return int(datetime.now(timezone.utc).timestamp()) * 1_000_000


def load_vectors() -> dict:  # type: ignore[type-arg]
    with open(VECTORS, encoding="utf-8") as handle:
        return json.load(handle)  # type: ignore[no-any-return]


def sample(count: int, start: int | None = None) -> list[AuditEntry]:
    start = now() if start is None else start
    drafts = [make_draft(start + i, "login", "ok", f"user{i}@example.org", f"user{i}@example.org", "2001:db8::1", {"method": "password"}) for i in range(count)]
    return extend(GENESIS, 1, drafts)


class VectorTests(unittest.TestCase):
    """docs/vectors/audit-chain.json."""

    def test_file_is_what_the_generator_writes(self) -> None:
        """The published file is the generator's output, byte for byte."""
        with open(VECTORS, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), kat_audit.render(kat_audit.generate()))

    def test_recomputed_from_the_rules(self) -> None:
        """Each hash is SHA-384(previous || encoding), and each encoding is the label then
        the length-prefixed fields, rebuilt here without the library."""
        vectors = load_vectors()
        previous = bytes(48)
        for entry in vectors["entries"]:
            fields = [str(entry["id"]), str(entry["at"]), entry["event"], entry["outcome"], entry["actor"], entry["subject"], entry["address"], entry["details"]]
            encoding = b"irp-audit-entry-v1\x00" + b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
            self.assertEqual(encoding.hex(), entry["encoding"])
            self.assertEqual(entry["previous_hash"], previous.hex())
            previous = hashlib.sha384(previous + encoding).digest()
            self.assertEqual(previous.hex(), entry["hash"])
        checkpoint = vectors["checkpoint"]
        message = bytes.fromhex(checkpoint["message"])
        self.assertEqual(message, checkpoint_message(DOMAIN, checkpoint["entry_id"], bytes.fromhex(checkpoint["hash"])))
        key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(checkpoint["record_signing_public_key"]))
        key.verify(bytes.fromhex(checkpoint["signature"]), message)

    def test_canonical_details(self) -> None:
        """Details: keys sorted at every depth, no spaces, UTF-8 as is; NaN refused."""
        self.assertEqual(canonical_json({"b": 1, "a": {"d": "é", "c": None}}), '{"a":{"c":null,"d":"é"},"b":1}')
        self.assertRaises(ChainError, canonical_json, {"a": float("nan")})

    def test_control_characters_cleaned(self) -> None:
        """Text from requests loses its control characters before it is chained."""
        draft = make_draft(1, "create-user", "bad-request", "", "a\x1b[2Jb\tc", "", {"note": "x\ny"})
        self.assertEqual(draft.subject, "a\ufffd[2Jb\ufffdc")
        self.assertEqual(json.loads(draft.details), {"note": "x\ufffdy"})


class VerifierTests(unittest.TestCase):
    """ChainVerifier on entries built in memory."""

    def verdict(self, entries: list[AuditEntry], checkpoints: list[AuditCheckpoint] = (), roots: list = ()) -> object:  # type: ignore[assignment, type-arg]
        verifier = ChainVerifier(DOMAIN, list(roots))
        verifier.checkpoints(checkpoints)
        verifier.entries(entries[:3])
        verifier.entries(entries[3:])
        return verifier.finish()

    def test_intact(self) -> None:
        """An untouched chain is intact, every entry counted."""
        verdict = self.verdict(sample(7))
        self.assertTrue(verdict.intact)  # type: ignore[attr-defined]
        self.assertEqual(verdict.entries, 7)  # type: ignore[attr-defined]

    def test_every_field_change_caught(self) -> None:
        """Changing any field of entry 3 (one character, or the time by a microsecond)
        names entry 3."""
        for name in ("at", "event", "outcome", "actor", "subject", "address", "details"):
            entries = sample(6)
            value = getattr(entries[2], name)
            changed = value + 1 if isinstance(value, int) else value[:-1] + chr(ord(value[-1]) ^ 1)
            entries[2] = dataclasses.replace(entries[2], **{name: changed})  # type: ignore[arg-type]
            verdict = self.verdict(entries)
            self.assertEqual(verdict.problem, "entry 3 was altered: its hash does not follow from entry 2", name)  # type: ignore[attr-defined]
            self.assertEqual(verdict.first_bad, 3)  # type: ignore[attr-defined]

    def test_every_hash_bit_caught(self) -> None:
        """A stored hash with any one bit flipped names that entry."""
        for bit in range(0, 384, 37):
            entries = sample(3)
            flipped = bytearray(entries[1].hash)
            flipped[bit // 8] ^= 1 << (bit % 8)
            entries[1] = dataclasses.replace(entries[1], hash=bytes(flipped))
            self.assertEqual(self.verdict(entries).first_bad, 2)  # type: ignore[attr-defined]

    def test_gaps_and_repeats(self) -> None:
        """Missing entries are named as a range; a repeated one as such."""
        entries = sample(8)
        self.assertEqual(self.verdict(entries[:2] + entries[5:]).problem, "entries 3-5 are missing")  # type: ignore[attr-defined]
        self.assertEqual(self.verdict(entries[:2] + entries[3:]).problem, "entry 3 is missing")  # type: ignore[attr-defined]
        self.assertEqual(self.verdict(entries[:4] + entries[3:]).problem, "entry 4 appears twice or out of order")  # type: ignore[attr-defined]
        self.assertEqual(self.verdict(entries[1:]).problem, "entry 1 is missing")  # type: ignore[attr-defined]

    def test_rewritten_chain_caught_by_checkpoint(self) -> None:
        """Entries rewritten with their hashes recomputed chain well, but the signed
        checkpoint no longer matches; the end cut off past a checkpoint is found too."""
        ca = pki.make_ca(DOMAIN)
        key = ed25519.Ed25519PrivateKey.generate()
        certificate = ca.issue_signing_certificate(key.public_key())
        blob = certificate.public_bytes(Encoding.DER) + ca.issuing_certificate.public_bytes(Encoding.DER)
        entries = sample(5)
        checkpoint = AuditCheckpoint(5, now(), entries[4].hash, key.sign(checkpoint_message(DOMAIN, 5, entries[4].hash)), blob)
        verdict = self.verdict(entries, [checkpoint], [ca.root_certificate])
        self.assertTrue(verdict.intact, verdict.problem)  # type: ignore[attr-defined]
        self.assertEqual(verdict.last_checkpoint, (5, entries[4].at))  # type: ignore[attr-defined]
        drafts = [entry.draft for entry in entries]
        drafts[1] = dataclasses.replace(drafts[1], subject="mallory@example.org")
        rewritten = extend(GENESIS, 1, drafts)
        self.assertEqual(
            self.verdict(rewritten, [checkpoint], [ca.root_certificate]).problem,  # type: ignore[attr-defined]
            "checkpoint at entry 5 does not match: the entries up to it were changed since it was signed",
        )
        self.assertEqual(
            self.verdict(entries[:3], [checkpoint], [ca.root_certificate]).problem,  # type: ignore[attr-defined]
            "entries 4-5 are missing: checkpoint at entry 5 signs the trail up to it",
        )
        forged = dataclasses.replace(checkpoint, signature=bytes(64))
        self.assertEqual(
            self.verdict(entries, [forged], [ca.root_certificate]).problem,  # type: ignore[attr-defined]
            "checkpoint at entry 5 does not match: its signature is not valid",
        )

    def test_checkpoint_by_another_ca_refused(self) -> None:
        """A checkpoint signed with a key certified by another CA (a forger's) is not the
        registry's, however well it signs."""
        ours, theirs = pki.make_ca(DOMAIN), pki.make_ca(DOMAIN, label="forger")
        key = ed25519.Ed25519PrivateKey.generate()
        blob = theirs.issue_signing_certificate(key.public_key()).public_bytes(Encoding.DER) + theirs.issuing_certificate.public_bytes(Encoding.DER)
        entries = sample(2)
        checkpoint = AuditCheckpoint(2, now(), entries[1].hash, key.sign(checkpoint_message(DOMAIN, 2, entries[1].hash)), blob)
        verdict = self.verdict(entries, [checkpoint], [ours.root_certificate])
        self.assertEqual(
            verdict.problem,  # type: ignore[attr-defined]
            "checkpoint at entry 2 is not the registry's: its certificate does not chain to the root CA you trust",
        )

    def test_checkpoint_needs_record_signing_certificate(self) -> None:
        """A certificate of our CA without the record-signing usage (a user's) does not do."""
        ca = pki.make_ca(DOMAIN)
        user = pki.issue_user(ca, "alice")
        blob = user.certificate.public_bytes(Encoding.DER) + ca.issuing_certificate.public_bytes(Encoding.DER)
        checkpoint = AuditCheckpoint(1, now(), bytes(48), b"", blob)
        with self.assertRaises(CheckpointRejected):
            checkpoint_signer(checkpoint, [ca.root_certificate], datetime.now(timezone.utc))

    def test_split_der(self) -> None:
        """Concatenated certificates split back; garbage is refused."""
        ca = pki.make_ca(DOMAIN)
        parts = [ca.root_certificate.public_bytes(Encoding.DER), ca.issuing_certificate.public_bytes(Encoding.DER)]
        self.assertEqual(split_der(b"".join(parts)), parts)
        self.assertRaises(ChainError, split_der, parts[0][:-1])
        self.assertRaises(ChainError, split_der, b"\x04\x01a")

    def test_encoding_refuses_bad_numbers(self) -> None:
        """Negative numbers cannot be encoded."""
        self.assertRaises(ChainError, encode_entry, -1, make_draft(0, "x", "ok", ""))
