"""Starting and stopping the audit trail's recorder with the registry process (called
from :mod:`irp.server.service`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.version import VERSION
from irp.server.audit.recorder import AuditRecorder

if TYPE_CHECKING:
    from irp.server.registry import Registry

log = Logger()

#: Seconds a stopping registry gives the trail to take its last entries and checkpoint.
STOP_TIMEOUT = 10.0


def start_audit(registry: Registry, reactor: Any) -> AuditRecorder:
    """Record the registry's events from now on, starting with its start."""
    recorder = AuditRecorder(
        registry.store, registry.domain, reactor, lambda: (registry.store.record_signer(), registry.ca.issuing_certificate)
    )
    registry.events.add(recorder)
    recorder.start(VERSION)
    return recorder


def stop_audit(recorder: AuditRecorder, reactor: Any) -> Deferred[None]:
    """Record the stop, append what waits and sign a last checkpoint (at most
    :data:`STOP_TIMEOUT` seconds); never fails."""

    def late(failure: Failure) -> None:
        log.error("The audit trail's last checkpoint was not signed before the stop: {why}", why=failure.getErrorMessage())

    return recorder.stop().addTimeout(STOP_TIMEOUT, reactor).addErrback(late)
