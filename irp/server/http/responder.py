"""The OCSP responder: a request's bytes in, a response's bytes out, with the status read
from the registry's certificates and signed responses cached until the next revocation.

The status (docs/http.rst, "Status rules"): a serial this registry's CA never issued, or
issued by another of its issuing CAs than the CertID names, is ``unknown``; a revoked one
is ``revoked`` with its time and reason (none for ``unspecified``); any other is ``good``
(expired ones too: RFC 6960 leaves expiry to the relying party).

Caching: a response to a request without a nonce, for a serial the registry issued, is
kept (at most :data:`CACHE_SIZE`) with the revocation generation it was made at
(``counters.revocations``, which every revocation through any process raises); it is
served while that generation is current and for half its lifetime at most, after which a
new one is signed. The generation is read per request (one point read). Responses with a
nonce, and ``unknown`` ones, are signed per request.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.x509 import ocsp
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from common.caches import VersionedCache
from common.timeutil import to_datetime
from irp.errors import Unavailable
from irp.server.ca import DEFAULT_CRL_LIFETIME, REVOCATION_REASONS
from irp.server.http.ocsp import (
    GOOD,
    UNKNOWN,
    OCSPRefusal,
    Query,
    Responder,
    Status,
    find_responder,
    next_update,
    parse_request,
    refusal_response,
    sign_response,
)
from irp.wire.records import CertificateInfo

log = Logger()

#: Most signed responses kept.
CACHE_SIZE = 100_000


class StatusSource(Protocol):
    """Where certificate statuses come from (the registry's store)."""

    def revocation_generation(self) -> Deferred[int]:
        """Fire with a number every revocation raises."""

    def get_certificate(self, serial: int) -> Deferred[CertificateInfo | None]:
        """Fire with the certificate this registry issued with ``serial``, or None."""


@dataclass(frozen=True)
class Answer:
    """An OCSP response to send: its bytes, its outcome (``good``, ``revoked``,
    ``unknown`` or the refusal's status), until when it may be cached by HTTP caches
    (None: not at all), and for a refusal, why."""

    body: bytes
    outcome: str
    expires: datetime.datetime | None = None
    why: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class _Kept:
    body: bytes
    this_update: datetime.datetime
    next_update: datetime.datetime
    outcome: str


class OCSPResponder:
    """Answers OCSP requests for the issuing CAs of ``responders``."""

    def __init__(
        self,
        responders: list[Responder],
        source: StatusSource,
        clock: Callable[[], datetime.datetime],
        *,
        crl_lifetime: datetime.timedelta = DEFAULT_CRL_LIFETIME,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._responders = list(responders)
        self.source = source
        self.clock = clock
        self.crl_lifetime = crl_lifetime
        self.cache: VersionedCache[tuple[str, tuple[str, bytes, bytes, int]], _Kept] = VersionedCache(cache_size)
        #: Responses signed (not served from the cache), for the benchmark and tests.
        self.signed = 0

    @property
    def responders(self) -> list[Responder]:
        """The issuing CAs answered for, with their responder certificates."""
        return list(self._responders)

    @responders.setter
    def responders(self, responders: list[Responder]) -> None:
        """New responder certificates (renewed): responses kept are signed anew."""
        self._responders = list(responders)
        self.cache = VersionedCache(self.cache.size)

    async def answer(self, der: bytes) -> Answer:
        """The response to the DER request ``der``; never raises."""
        try:
            query = parse_request(der)
            responder = find_responder(query, self._responders)
            return await self._answer(query, responder)
        except OCSPRefusal as refusal:
            return self._refused(refusal.status, refusal.why)
        except Unavailable:
            return self._refused(ocsp.OCSPResponseStatus.TRY_LATER, "the database is unavailable")
        except Exception:  # noqa: BLE001 - one answer per request, whatever happens
            log.failure("The OCSP responder failed on a request")
            return self._refused(ocsp.OCSPResponseStatus.INTERNAL_ERROR, "the responder failed")

    @staticmethod
    def _refused(status: ocsp.OCSPResponseStatus, why: str) -> Answer:
        return Answer(refusal_response(status), status.name.lower(), None, why)

    async def _answer(self, query: Query, responder: Responder) -> Answer:
        key = (responder.label, query.cert_id)
        generation = await self.source.revocation_generation()
        now = self._now()
        if query.nonce is None:
            kept = self.cache.get(key, generation)
            if kept is not None and now < kept.this_update + (kept.next_update - kept.this_update) / 2:
                return Answer(kept.body, kept.outcome, kept.next_update, cached=True)
        status = await self._status(query, responder)
        until = next_update(now, self.crl_lifetime)
        body = sign_response(query, responder, status, now, until)
        self.signed += 1
        outcome = status.status.name.lower()
        if query.nonce is not None or status is UNKNOWN:
            return Answer(body, outcome, None)
        self.cache.put(key, generation, _Kept(body, now, until, outcome))
        return Answer(body, outcome, until)

    async def _status(self, query: Query, responder: Responder) -> Status:
        if query.serial <= 0:
            return UNKNOWN
        info = await self.source.get_certificate(query.serial)
        if info is None or not responder.issued(x509.load_der_x509_certificate(info.der)):
            return UNKNOWN
        if info.revoked_at is None:
            return GOOD
        reason = REVOCATION_REASONS.get(info.revocation_reason or "unspecified")
        if reason is x509.ReasonFlags.unspecified:
            reason = None
        return Status(ocsp.OCSPCertStatus.REVOKED, to_datetime(info.revoked_at), reason)

    def _now(self) -> datetime.datetime:
        return self.clock().astimezone(datetime.UTC).replace(microsecond=0)
