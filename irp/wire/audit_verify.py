"""Verifying the audit trail, sans I/O: feed the checkpoints, then the entries in order
(a page at a time), and learn whether the chain is intact or which entry is the first
that is not.

What is checked (docs/irp.rst, "Verifying the trail"): entries are numbered 1, 2, ...
without a gap or a repeat; each entry's stored hash is SHA-384(previous hash || its
encoding); each checkpoint's hash is the chain's hash at its entry, its signature verifies
with the record-signing certificate stored with it, and that certificate was issued by the
issuing CA stored with it, which was issued by a root the verifier trusts, with the
record-signing extended key usage, both valid at the time of the checkpoint's entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.pki.keyfiles import fingerprint
from irp.wire.audit_chain import (
    GENESIS,
    AuditCheckpoint,
    AuditEntry,
    ChainError,
    checkpoint_message,
    entry_hash,
    split_der,
)
from irp.wire.records import RECORD_SIGNING_OID


class CheckpointRejected(Exception):
    """A checkpoint whose signature or certificates do not hold."""


def checkpoint_signer(checkpoint: AuditCheckpoint, roots: Sequence[x509.Certificate], when: datetime) -> Ed25519PublicKey:
    """The key that may have signed ``checkpoint``: its record-signing certificate's, once
    that certificate is shown to come from one of ``roots`` through the stored issuing CA,
    to carry the record-signing extended key usage, and, with its issuer, to have been
    valid at ``when``. Raise :class:`CheckpointRejected` saying why not."""
    try:
        parts = split_der(checkpoint.certificates)
    except ChainError as error:
        raise CheckpointRejected(f"its certificates cannot be read ({error})") from None
    if len(parts) != 2:
        raise CheckpointRejected("it must hold two certificates (record-signing, issuing CA)")
    try:
        signing, issuing = (x509.load_der_x509_certificate(part) for part in parts)
    except ValueError:
        raise CheckpointRejected("its certificates are not valid DER") from None
    pinned = {fingerprint(root): root for root in roots}
    root = next((candidate for candidate in pinned.values() if candidate.subject == issuing.issuer), None)
    try:
        if root is None:
            raise InvalidSignature
        issuing.verify_directly_issued_by(root)
        signing.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, InvalidSignature):
        raise CheckpointRejected("its certificate does not chain to the root CA you trust") from None
    for certificate in (signing, issuing):
        if not certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc:
            raise CheckpointRejected("its certificates were not valid at the time of its entry")
    try:
        usages = signing.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if RECORD_SIGNING_OID not in usages:
        raise CheckpointRejected("its certificate is not for signing records")
    key = signing.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointRejected("its certificate does not hold an Ed25519 key")
    return key


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification."""

    #: Entries read and found chained (all of them when intact).
    entries: int
    #: The last checkpoint that verified, with the time (microseconds) of its entry.
    last_checkpoint: tuple[int, int] | None
    #: None when intact; else what is wrong, for people ("entry 42 was altered: ...").
    problem: str | None
    #: The number of the first entry found wrong (missing, altered), when there is one.
    first_bad: int | None = None

    @property
    def intact(self) -> bool:
        """Whether nothing was found wrong."""
        return self.problem is None


class ChainVerifier:
    """Checks the trail as it is fed: :meth:`checkpoints` first, then :meth:`entries` in
    order, then :meth:`finish`. Stops at the first problem (later input is ignored)."""

    def __init__(self, domain: str, roots: Sequence[x509.Certificate]) -> None:
        self.domain = domain
        self.roots = list(roots)
        self._checkpoints: dict[int, AuditCheckpoint] = {}
        self._previous = GENESIS
        self._next_id = 1
        self._count = 0
        self._last_checkpoint: tuple[int, int] | None = None
        self.problem: str | None = None
        self.first_bad: int | None = None

    def checkpoints(self, checkpoints: Iterable[AuditCheckpoint]) -> None:
        """Take checkpoints (any order; each checked when its entry is reached)."""
        for checkpoint in checkpoints:
            if checkpoint.entry_id in self._checkpoints:
                self._fail(f"checkpoint at entry {checkpoint.entry_id} appears twice", None)
                return
            self._checkpoints[checkpoint.entry_id] = checkpoint

    def entries(self, entries: Iterable[AuditEntry]) -> None:
        """Take the next entries, in order of their numbers."""
        for entry in entries:
            if self.problem is not None:
                return
            self._entry(entry)

    def _entry(self, entry: AuditEntry) -> None:
        expected = self._next_id
        if entry.id > expected:
            missing = f"entry {expected} is" if entry.id == expected + 1 else f"entries {expected}-{entry.id - 1} are"
            self._fail(f"{missing} missing", expected)
            return
        if entry.id < expected:
            self._fail(f"entry {entry.id} appears twice or out of order", entry.id)
            return
        try:
            computed = entry_hash(self._previous, entry.id, entry.draft)
        except ChainError as error:
            self._fail(f"entry {entry.id} cannot be encoded: {error}", entry.id)
            return
        if computed != entry.hash:
            after = f"entry {entry.id - 1}" if entry.id > 1 else "the start of the trail"
            self._fail(f"entry {entry.id} was altered: its hash does not follow from {after}", entry.id)
            return
        self._previous = computed
        self._next_id = entry.id + 1
        self._count += 1
        checkpoint = self._checkpoints.get(entry.id)
        if checkpoint is not None:
            self._check_checkpoint(checkpoint, entry)

    def _check_checkpoint(self, checkpoint: AuditCheckpoint, entry: AuditEntry) -> None:
        where = f"checkpoint at entry {entry.id}"
        if checkpoint.hash != entry.hash:
            self._fail(f"{where} does not match: the entries up to it were changed since it was signed", entry.id)
            return
        when = datetime.fromtimestamp(entry.at / 1_000_000, timezone.utc)
        try:
            key = checkpoint_signer(checkpoint, self.roots, when)
            key.verify(checkpoint.signature, checkpoint_message(self.domain, entry.id, entry.hash))
        except CheckpointRejected as error:
            self._fail(f"{where} is not the registry's: {error}", None)
            return
        except (InvalidSignature, ChainError):
            self._fail(f"{where} does not match: its signature is not valid", None)
            return
        self._last_checkpoint = (entry.id, entry.at)

    def finish(self) -> Verdict:
        """The verdict once every entry was fed."""
        if self.problem is None:
            beyond = sorted(entry_id for entry_id in self._checkpoints if entry_id >= self._next_id)
            if beyond:
                last = beyond[-1]
                missing = f"entry {self._next_id} is" if last == self._next_id else f"entries {self._next_id}-{last} are"
                self._fail(f"{missing} missing: checkpoint at entry {last} signs the trail up to it", self._next_id)
        return Verdict(self._count, self._last_checkpoint, self.problem, self.first_bad)

    def _fail(self, problem: str, entry_id: int | None) -> None:
        if self.problem is None:
            self.problem = problem
            self.first_bad = entry_id
