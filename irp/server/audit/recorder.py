"""The audit trail's recorder: a listener of the registry's events (see
:mod:`irp.server.events`) that turns them into entries and appends them to the database in
batches, and signs checkpoints.

Appending works like the store's group commit: the entries that arrive while a batch's
transaction runs wait for the next batch, so one transaction serves many. A request the
trail records is answered only after the batch holding its entry was tried: an
administrator hears "done" once the trail has the action. When the database cannot take
a batch, the failure is logged (once per outage), its entries are kept in memory, in order,
and tried again every :attr:`AuditRecorder.retry_delay` seconds; the requests waiting for
them are answered after the failed attempt, and until the database takes entries again
requests are answered without waiting (the action itself happened, or was refused,
already: the entry is recorded late, in order, or its loss is logged). Past
:attr:`AuditRecorder.queue_limit` entries waiting, the oldest are dropped, never silently:
each drop is a critical log line with the count.

A checkpoint is signed when :attr:`AuditRecorder.checkpoint_every` entries were appended
by this process since its last one, or :attr:`AuditRecorder.checkpoint_delay` seconds
after an entry it appended that no checkpoint covers yet, and at a clean stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from irp.errors import Unavailable
from irp.server.audit.entries import (
    REGISTRY_START,
    REGISTRY_STOP,
    REQUEST_DETAILS,
    login_draft,
    microseconds,
    registry_draft,
    request_draft,
)
from irp.server.events import LoginDone, RequestDone
from irp.server.store.audit import AuditTable
from irp.wire.audit_chain import AuditCheckpoint, EntryDraft, checkpoint_message
from irp.wire.records import RecordSigner

log = Logger()

#: The registry's current record signer and issuing CA certificate (read at each checkpoint,
#: so a renewed record-signing certificate is used at once).
SigningKeys = Callable[[], tuple[RecordSigner, x509.Certificate]]


class AuditRecorder:
    """Records the registry's security-relevant events in the audit trail."""

    #: The most entries appended in one transaction.
    batch_limit = 256
    #: Entries appended by this process after which a checkpoint is signed.
    checkpoint_every = 100
    #: Seconds after an appended entry not yet covered by a checkpoint before one is signed.
    checkpoint_delay = 60.0
    #: Seconds between attempts while the database refuses entries.
    retry_delay = 5.0
    #: The most entries kept in memory while the database refuses them.
    queue_limit = 100_000
    #: Seconds an entry nobody waits for (a certificate login's) may wait to be appended
    #: with others: logins come with every connection, and one transaction per few of
    #: them cost a busy registry a fifth of its new sessions (bench figure 2).
    coalesce_delay = 0.25
    #: The longest an answer waits for its entry (a database that neither takes nor refuses
    #: it): the answer then goes out, logged; the entry is written when the database answers.
    hold_timeout = 30.0

    def __init__(self, store: AuditTable, domain: str, clock: IReactorTime, keys: SigningKeys) -> None:
        self.store = store
        self.domain = domain
        self.clock = clock
        self.keys = keys
        self._queue: list[EntryDraft] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []
        #: Entries queued so far (those before number ``_done`` were tried).
        self._queued = 0
        self._done = 0
        #: The number of the last queued entry someone waits for (appended at once).
        self._urgent = 0
        self._coalesce: IDelayedCall | None = None
        self._running = False
        self._retry: IDelayedCall | None = None
        self._failing = False
        self._unsigned = 0
        self._checkpoint_timer: IDelayedCall | None = None
        self._checkpointing: Deferred[None] | None = None
        self._stopped = False

    # -- the registry's events ----------------------------------------------------------

    def request_done(self, event: RequestDone) -> Deferred[None] | None:
        """Record the request when the trail records its operation; hold its answer until
        the entry was appended (a password login's answer waits for its login entry)."""
        if event.operation == "login":
            return self._bounded(self.flushed(), event.operation)
        if event.operation not in REQUEST_DETAILS:
            return None  # most requests (look-ups, registrations): nothing to record
        draft = request_draft(event, self._now(), self.domain)
        return None if draft is None else self._bounded(self.record(draft), event.operation)

    def _bounded(self, waiting: Deferred[None], operation: str) -> Deferred[None]:
        """``waiting``, given up after :attr:`hold_timeout` seconds (logged)."""
        if waiting.called:
            return waiting

        def late(failure: Failure) -> None:
            failure.trap(CancelledError)
            log.error(
                "The answer to {operation} went out before its audit entry was written: the database"
                " took more than {timeout} s",
                operation=operation,
                timeout=self.hold_timeout,
            )

        return waiting.addTimeout(self.hold_timeout, self.clock, onTimeoutCancel=lambda result, _timeout: result).addErrback(late)

    def login_done(self, event: LoginDone) -> None:
        """Record a login. Nothing waits for it (a certificate login is no request; a
        password login's answer waits through :meth:`flushed`), so it may wait up to
        :attr:`coalesce_delay` seconds to be appended with others."""
        self._enqueue(login_draft(event, self._now()))
        self._kick()

    # -- appending ----------------------------------------------------------------------

    def _now(self) -> int:
        return microseconds(self.clock.seconds())

    def record(self, draft: EntryDraft) -> Deferred[None]:
        """Queue an entry, appended at once; fire once the batch holding it was tried
        (never fails)."""
        self._enqueue(draft)
        if self._failing:
            return succeed(None)  # the database refuses entries: kept for the retry
        self._urgent = self._queued
        waiting: Deferred[None] = Deferred()
        self._waiting.append((self._queued, waiting))
        self._kick()
        return waiting

    def _enqueue(self, draft: EntryDraft) -> None:
        self._queue.append(draft)
        self._queued += 1
        if len(self._queue) > self.queue_limit:
            dropped = len(self._queue) - self.queue_limit
            del self._queue[:dropped]
            log.critical(
                "The audit trail dropped {count} entries: the database has refused them for too long",
                count=dropped,
            )

    def flushed(self) -> Deferred[None]:
        """Fire once every entry queued so far was tried (at once while the database
        refuses entries)."""
        if self._done >= self._queued or self._failing:
            return succeed(None)
        self._urgent = self._queued
        waiting: Deferred[None] = Deferred()
        self._waiting.append((self._queued, waiting))
        self._kick()
        return waiting

    def idle(self) -> Deferred[None]:
        """Fire once every entry queued so far was tried and no checkpoint is being signed."""

        def checkpointed(_: object) -> Deferred[None] | None:
            checkpointing = self._checkpointing
            return None if checkpointing is None else self._after(checkpointing)

        return self.flushed().addCallback(checkpointed)

    def _kick(self) -> None:
        if self._running or self._retry is not None or not self._queue:
            return
        if self._stopped and self._failing:
            return  # stopping: one last attempt was made
        if self._urgent > self._done or self._stopped or len(self._queue) >= self.batch_limit:
            if self._coalesce is not None and self._coalesce.active():
                self._coalesce.cancel()
            self._coalesce = None
            self._append_batch()
        elif self._coalesce is None:
            self._coalesce = self.clock.callLater(self.coalesce_delay, self._coalesced)

    def _coalesced(self) -> None:
        self._coalesce = None
        if not self._running and self._retry is None and self._queue:
            self._append_batch()

    def _append_batch(self) -> None:
        batch = self._queue[: self.batch_limit]
        del self._queue[: len(batch)]
        self._running = True
        last = self._queued - len(self._queue)
        self.store.append_audit_entries(batch).addCallbacks(
            self._appended, self._append_failed, errbackArgs=(batch,)
        ).addBoth(self._batch_done, last)

    def _appended(self, entries: list[Any]) -> None:
        if self._failing:
            self._failing = False
            log.info("The audit trail is being written again")
        self._unsigned += len(entries)
        if self._unsigned >= self.checkpoint_every:
            self.checkpoint()
        elif self._checkpoint_timer is None and not self._stopped:
            self._checkpoint_timer = self.clock.callLater(self.checkpoint_delay, self._checkpoint_due)

    def _append_failed(self, failure: Failure, batch: list[EntryDraft]) -> None:
        self._queue[:0] = batch
        if not self._failing:
            self._failing = True
            # A database outage was logged once already, by the store: this line only adds
            # that entries wait (any other failure is an error of its own).
            level = LogLevel.info if failure.check(Unavailable) else LogLevel.error
            log.emit(
                level,
                "The audit trail could not be written ({count} entries wait, tried again every"
                " {delay} s): {why}",
                count=len(self._queue),
                delay=self.retry_delay,
                why=failure.getErrorMessage(),
            )
        if not self._stopped:
            self._retry = self.clock.callLater(self.retry_delay, self._retried)

    def _retried(self) -> None:
        self._retry = None
        if not self._running and self._queue:
            self._append_batch()  # what waited for the database goes at once

    def _batch_done(self, _: object, last: int) -> None:
        self._running = False
        self._done = max(self._done, self._queued if self._failing else last)
        ready = [waiting for number, waiting in self._waiting if number <= self._done]
        self._waiting = [(number, waiting) for number, waiting in self._waiting if number > self._done]
        for waiting in ready:
            if not waiting.called:  # not given up (see _bounded)
                waiting.callback(None)
        self._kick()

    # -- checkpoints --------------------------------------------------------------------

    def _checkpoint_due(self) -> None:
        self._checkpoint_timer = None
        self.checkpoint()

    def checkpoint(self) -> Deferred[None]:
        """Sign a checkpoint at the trail's last entry (unless it has one); fire when done
        (a failure is logged, never raised)."""
        if self._checkpoint_timer is not None and self._checkpoint_timer.active():
            self._checkpoint_timer.cancel()
        self._checkpoint_timer = None
        if self._checkpointing is not None:
            return self._after(self._checkpointing)
        signed = self._unsigned
        self._unsigned = 0

        def done(checkpoint: AuditCheckpoint | None) -> None:
            if checkpoint is not None:
                log.debug("Signed the audit trail at entry {entry}", entry=checkpoint.entry_id)

        def failed(failure: Failure) -> None:
            self._unsigned += signed
            log.error("The audit trail's checkpoint could not be signed: {why}", why=failure.getErrorMessage())

        def finished(_: object) -> None:
            self._checkpointing = None

        result: Deferred[None] = self.store.add_audit_checkpoint(self._now(), self._sign).addCallbacks(done, failed)
        result.addBoth(finished)
        self._checkpointing = result
        return self._after(result)

    @staticmethod
    def _after(result: Deferred[None]) -> Deferred[None]:
        """A Deferred firing (with None) after ``result`` does."""
        waiting: Deferred[None] = Deferred()
        result.addBoth(lambda _: waiting.callback(None))
        return waiting

    def _sign(self, entry_id: int, chain_hash: bytes) -> tuple[bytes, bytes]:
        """Sign the chain at ``entry_id`` (runs in the store's thread)."""
        signer, issuing = self.keys()
        signature = signer.private_key.sign(checkpoint_message(self.domain, entry_id, chain_hash))
        certificates = signer.certificate.public_bytes(Encoding.DER) + issuing.public_bytes(Encoding.DER)
        return signature, certificates

    # -- start and stop -----------------------------------------------------------------

    def start(self, version: str) -> Deferred[None]:
        """Record the registry's start (with its version)."""
        return self.record(registry_draft(REGISTRY_START, self._now(), {"version": version}))

    def registry_event(self, event: str, subject: str = "", details: dict[str, Any] | None = None) -> Deferred[None]:
        """Record something the registry did of itself (actor ``registry``), such as
        creating the first administrator at its first start."""
        return self.record(registry_draft(event, self._now(), details or {}, subject))

    def stop(self) -> Deferred[None]:
        """Record the registry's stop, append what waits (one attempt) and sign a last
        checkpoint; fire when done (never fails)."""
        self.record(registry_draft(REGISTRY_STOP, self._now(), {}))
        self._stopped = True
        if self._coalesce is not None and self._coalesce.active():
            self._coalesce.cancel()
            self._coalesce = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            if not self._running:
                self._append_batch()  # one last attempt
        if self._checkpoint_timer is not None and self._checkpoint_timer.active():
            self._checkpoint_timer.cancel()
            self._checkpoint_timer = None

        def last(_: object) -> Deferred[None]:
            if self._queue:
                log.critical(
                    "The registry stops with {count} audit entries the database did not take: they are lost",
                    count=len(self._queue),
                )
            return self.checkpoint()

        return self.flushed().addCallback(last)
