"""What each sixid request does: register, look-up, watch, unwatch, signer, ping.

:class:`Operations` runs a parsed operation for a :class:`Client` (one connection) and
returns its result, or a Deferred firing with it, or fails with a
:class:`~sixid.errors.SixidError`. The rules are DESIGN/docs' section "server rules":

A registration is checked in this order, the first failure being the answer: it parses
(400); its domain is ours (402); its key passes the key policy and hashes to its ID (402);
the device signature verifies (405); ``signed_at`` is within the clock skew and it has not
expired (407), and it does not last longer than the longest lifetime (402); the
certificate chain given is of this domain's CA, valid, not revoked and for this key
(409), and the policy ``certified`` wants one (403); the policy ``listed`` wants the ID on
the allow list (403); the limits (per ID per minute, new IDs per client address per hour
under ``open``: 429; the most IDs held: 403); the store refuses a sequence number not
above the stored one (406). Then the registry signs the record, stores it (durable), tells
the watchers and answers.

Look-ups are the hot path: the stored record's bytes become the answer without any tree
(:class:`RecordAnswer`, encoded by :mod:`sixid.server.connection`'s codec).
"""

from __future__ import annotations

from binascii import b2a_base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.identity import Identity
from common.limits import SlidingWindow, address_key
from common.pki import errors as pki_errors
from common.rpc.connection import ConnectionLimits
from sixid import errors
from sixid.ids import spki_der
from sixid.records import Record, SignedRegistration, sign_record
from sixid.server import store as store_module
from sixid.server.store import NOT_NOW, SixidStore, StoredRecord
from sixid.server.watches import Watcher, WatchHub
from sixid.wire import (
    MAX_FRAME,
    Lookup,
    Operation,
    Ping,
    Pong,
    Register,
    Signer,
    SignerChain,
    Unwatch,
    Unwatched,
    Watch,
    record_base64,
)

log = Logger()

POLICIES = ("certified", "open", "listed")
#: How often the count of IDs held is read again (between reads it is counted here).
COUNT_REFRESH = 60.0


def default_connection_limits() -> ConnectionLimits:
    """sixid's connection limits: handshake 15 s, idle 300 s, watching 180 s (clients
    ping every 60 s), a frame within 30 s, 32 requests outstanding, 64 connections per
    address."""
    return ConnectionLimits(
        max_frame=MAX_FRAME,
        handshake_timeout=15.0,
        idle_timeout=300.0,
        kept_timeout=180.0,
        frame_timeout=30.0,
        max_outstanding=32,
        max_connections_per_address=64,
    )


@dataclass
class SixidSettings:
    """How the sixid server runs (``twistd irp --sixid-*``)."""

    #: "certified" (only keys the domain's CA certified), "open" (any key) or "listed"
    #: (only IDs on the allow list).
    policy: str = "certified"
    #: The longest a registration may last (``expires - signed_at``), seconds.
    max_lifetime: int = 86_400
    #: How far ``signed_at`` may be from the registry's clock, seconds.
    clock_skew: int = 300
    #: The most IDs the registry holds.
    max_ids: int = 10_000_000
    registrations_per_id_per_minute: int = 30
    #: Under the policy "open": new IDs per client address (IPv4, IPv6 /64) per hour.
    new_ids_per_address_per_hour: int = 120
    #: IDs one connection may watch.
    max_watches: int = 256
    limits: ConnectionLimits = field(default_factory=default_connection_limits)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"the sixid policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if self.max_lifetime < 1 or self.max_ids < 0 or self.max_watches < 0:
            raise ValueError("the sixid limits must be positive")


class CertificateChecker(Protocol):
    """The registry's check of a certificate chain (its CA, its CRL): the identity the
    leaf certifies, or a :class:`common.pki.errors.PKIError`."""

    def __call__(self, chain: Sequence[x509.Certificate], now: float) -> Deferred[Identity]:
        """Check ``chain`` (leaf first) at ``now`` (Unix seconds)."""


class Client(Watcher, Protocol):
    """One connection, as the operations see it."""

    #: The client's address (limits, logs).
    peer_host: str

    def set_watching(self, watching: bool) -> None:
        """The connection now watches some IDs (True) or none (False)."""


@dataclass(frozen=True, slots=True)
class RecordAnswer:
    """A ``<record>`` result from the record's canonical base64 (look-up, register)."""

    record_b64: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WatchingAnswer:
    """A ``<watching>`` result, with the current record's base64 if any."""

    record_b64: bytes | None = field(repr=False)


class RepeatLimit:
    """At most ``limit`` events per key in any sliding ``window`` seconds, for keys that
    mostly see one event per window (an ID registered every half hour): the first event of
    a key costs a float in a dict (swept every window), only the further ones are counted
    in a :class:`~common.limits.SlidingWindow` of ``limit - 1``. Any window holds at most
    one first event (they are a window apart), so at most ``limit`` events in all."""

    def __init__(self, clock: Any, *, limit: int, window: float) -> None:
        self.clock = clock
        self.window = window
        self._first: dict[str, float] = {}
        self._more = SlidingWindow(clock, limit=max(limit - 1, 0), window=window)
        self._swept_at = clock.seconds()

    def allow(self, key: str) -> bool:
        """Count an event for ``key`` if the window has room for it (else False)."""
        now = self.clock.seconds()
        window = self.window
        if now - self._swept_at >= window:
            self._first = {k: t for k, t in self._first.items() if now - t < window}
            self._swept_at = now
        first = self._first.get(key)
        if first is None or now - first >= window:
            self._first[key] = now
            return True
        return self._more.allow(key)


class TextLookup:
    """A plain look-up read without the XML parser (:func:`sixid.wire.match_lookup`): the
    request and its operation in one small object, the ID as canonical text."""

    __slots__ = ("id", "sixid")

    def __init__(self, request_id: int, sixid: str) -> None:
        self.id = request_id
        self.sixid = sixid

    @property
    def operation(self) -> TextLookup:
        """The request is its own operation."""
        return self


class Operations:
    """Runs operations for clients (see the module docs)."""

    def __init__(
        self,
        *,
        domain: str,
        store: SixidStore,
        signing_key: Ed25519PrivateKey,
        signer_chain: Sequence[bytes],
        check_certificate: CertificateChecker,
        settings: SixidSettings,
        hub: WatchHub,
        clock: Any,
    ) -> None:
        self.domain = domain
        self.store = store
        self.signing_key = signing_key
        self.signer = SignerChain(tuple(signer_chain))
        self.check_certificate = check_certificate
        self.settings = settings
        self.hub = hub
        self.clock = clock
        self.per_id = RepeatLimit(clock, limit=settings.registrations_per_id_per_minute, window=60.0)
        self.new_ids = SlidingWindow(clock, limit=settings.new_ids_per_address_per_hour, window=3600.0)
        self._held: int | None = None
        self._held_read_at = 0.0

    def set_signer(self, signing_key: Ed25519PrivateKey, signer_chain: Sequence[bytes]) -> None:
        """Sign with ``signing_key`` and answer ``<signer/>`` with ``signer_chain`` (DER)."""
        self.signing_key = signing_key
        self.signer = SignerChain(tuple(signer_chain))

    # -- dispatch -------------------------------------------------------------------------

    def run(self, client: Client, operation: Operation | TextLookup) -> Any:
        """Run ``operation`` for ``client``: the result, or a Deferred firing with it."""
        kind = type(operation)
        if kind is TextLookup:
            return self.lookup(operation.sixid)  # type: ignore[union-attr]
        if kind is Lookup:
            return self.lookup(operation.sixid)  # type: ignore[union-attr]
        if kind is Register:
            return Deferred.fromCoroutine(self.register(client, operation.registration))  # type: ignore[union-attr]
        if kind is Watch:
            return self.watch(client, str(operation.sixid))  # type: ignore[union-attr]
        if kind is Unwatch:
            return self.unwatch(client, str(operation.sixid))  # type: ignore[union-attr]
        if kind is Ping:
            return Pong()
        if kind is Signer:
            return self.signer
        raise errors.UnexpectedMessage("unknown operation")

    # -- look-up --------------------------------------------------------------------------

    def lookup(self, sixid: object) -> RecordAnswer | Deferred[RecordAnswer]:
        """The current record of ``sixid`` (or a Deferred firing with it), or UnknownId."""
        text = str(sixid)
        now = int(self.clock.seconds())
        record = self.store.sixid_record_now(text, now)
        if record is NOT_NOW:
            return self.store.get_sixid_record(text, now).addCallback(_record_answer, text)
        if record is None:
            raise errors.UnknownId(f"no current record for {text}")
        # Read at once (the direct reader): no Deferred, no StoredRecord on the hot path;
        # sixid.wire.record_base64 in one call (canonical base64: padded, no new line).
        return RecordAnswer(b2a_base64(record, newline=False))  # type: ignore[arg-type]

    # -- watch ----------------------------------------------------------------------------

    def watch(self, client: Client, sixid: str) -> Deferred[WatchingAnswer]:
        """Watch ``sixid`` on ``client``'s connection; answer its current record."""
        hub = self.hub
        added = not hub.is_watching(client, sixid)
        if added:
            if hub.watching(client) >= self.settings.max_watches:
                raise errors.TooManyWatches(f"a connection may watch at most {self.settings.max_watches} IDs")
            hub.add(client, sixid)
            client.set_watching(True)
        reading = self.store.get_sixid_record(sixid, int(self.clock.seconds()))
        answer = reading.addCallback(self._watched, sixid)
        if added:
            answer.addErrback(self._not_watched, client, sixid)
        return answer

    def _not_watched(self, failure: Failure, client: Client, sixid: str) -> Failure:
        """The read for a new watch failed: the ID is not watched (the client is told so)."""
        self.unwatch(client, sixid)
        return failure

    def _watched(self, stored: StoredRecord | None, sixid: str) -> WatchingAnswer:
        self.hub.current(sixid, stored)
        return WatchingAnswer(None if stored is None else record_base64(stored.record))

    def unwatch(self, client: Client, sixid: str) -> Unwatched:
        """Stop watching ``sixid`` on ``client``'s connection."""
        self.hub.remove(client, sixid)
        if not self.hub.watching(client):
            client.set_watching(False)
        return Unwatched()

    def connection_lost(self, client: Client) -> None:
        """``client``'s connection is gone: its watches end."""
        self.hub.remove_all(client)

    # -- register -------------------------------------------------------------------------

    async def register(self, client: Client, signed: SignedRegistration) -> RecordAnswer:
        """Check, sign, store and announce a registration (see the module docs)."""
        settings = self.settings
        registration = signed.registration  # 1: parses (MalformedRecord)
        sixid = str(registration.sixid)
        if registration.domain != self.domain:  # 2
            raise errors.InvalidArgument(f"{sixid}: this registry serves IDs of {self.domain}, not of {registration.domain}")
        signed.verify()  # 3, 4: the key, the ID, the device signature
        now = int(self.clock.seconds())  # 5: times
        if abs(registration.signed_at - now) > settings.clock_skew:
            raise errors.Stale(
                f"{sixid}: the registration was signed at {registration.signed_at}, {registration.signed_at - now:+d} s from the"
                f" registry's clock ({now}); at most {settings.clock_skew} s apart are accepted: check the device's clock"
            )
        if registration.expires <= now:
            raise errors.Stale(f"{sixid}: the registration expired at {registration.expires} (now {now})")
        if registration.expires > registration.signed_at + settings.max_lifetime:
            raise errors.InvalidArgument(f"{sixid}: a registration may last at most {settings.max_lifetime} s after it is signed")
        owner = await self._owner(sixid, signed, now)  # 6: certificates
        if settings.policy == "certified" and owner is None:
            raise errors.NotAllowed(
                f"{sixid}: the policy of {self.domain} is 'certified': it serves only IDs whose key its CA certified;"
                " register with the certificate chain of the key"
            )
        if settings.policy == "listed" and not await self.store.sixid_allowed(sixid):  # 7
            raise errors.NotAllowed(
                f"{sixid}: the policy of {self.domain} is 'listed': it serves only IDs on its allow list;"
                " its administrator adds one with 'irp admin sixid-allow ID'"
            )
        if not self.per_id.allow(sixid):  # 8: limits
            raise errors.RateLimited(f"{sixid}: at most {settings.registrations_per_id_per_minute} registrations of one ID per minute")
        existing = await self.store.get_sixid_record(sixid, 0)
        if existing is None:
            await self._check_new_id(sixid, client)
        elif existing.seq >= registration.seq:
            raise _replayed(sixid, existing.seq, registration.seq)
        signed_record = sign_record(
            self.signing_key,
            Record(self.domain, registration.sixid, owner or "", now, signed.registration_bytes, signed.spki, signed.signature),
        )
        stored = StoredRecord(sixid, registration.seq, registration.expires, owner or "", signed_record.to_bytes())
        # Past both, the registration is stale anyway: its row is no longer needed to refuse it.
        keep_until = max(registration.expires, registration.signed_at + settings.clock_skew)
        try:
            await self.store.put_sixid_record(stored, registration.signed_at, keep_until)  # 9
        except store_module.Replayed as replayed:
            raise _replayed(sixid, replayed.stored_seq, registration.seq) from None
        if existing is None and self._held is not None:
            self._held += 1
        log.debug(
            "Registered {sixid} seq {seq} ({endpoints} endpoints, owner {owner}) from {host}",
            sixid=sixid,
            seq=registration.seq,
            endpoints=len(registration.endpoints),
            owner=owner or "none",
            host=client.peer_host,
        )
        self.hub.committed(stored)
        return RecordAnswer(record_base64(stored.record))

    async def _owner(self, sixid: str, signed: SignedRegistration, now: int) -> str | None:
        """The owner the certificate chain given certifies (None: no chain given)."""
        if not signed.certificates:
            return None
        try:
            chain = [x509.load_der_x509_certificate(der) for der in signed.certificates]
        except ValueError:
            raise errors.CertificateRejected(f"{sixid}: a certificate given is not a DER X.509 certificate") from None
        try:
            leaf_key = spki_der(chain[0].public_key())
        except (ValueError, TypeError):
            raise errors.CertificateRejected(f"{sixid}: the certificate's key cannot be read") from None
        if leaf_key != signed.spki:
            raise errors.CertificateRejected(f"{sixid}: the certificate given is not for the registration's key")
        try:
            identity = await self.check_certificate(chain, float(now))
        except pki_errors.PKIError as error:
            raise errors.from_pki(error, about=f"{sixid}: the certificate given is refused") from None
        if identity.domain != self.domain:
            raise errors.CertificateRejected(f"{sixid}: the certificate is of a user of {identity.domain}, not of {self.domain}")
        return str(identity)

    async def _check_new_id(self, sixid: str, client: Client) -> None:
        settings = self.settings
        if settings.policy == "open" and not self.new_ids.allow(address_key(client.peer_host)):
            raise errors.RateLimited(
                f"{sixid}: at most {settings.new_ids_per_address_per_hour} new IDs per hour from one address (an IPv6 /64)"
            )
        if await self._ids_held() >= settings.max_ids:
            raise errors.NotAllowed(f"{sixid}: the registry of {self.domain} holds its maximum of {settings.max_ids} IDs")

    async def _ids_held(self) -> int:
        """How many IDs the store holds: read at most every COUNT_REFRESH seconds,
        counted here in between."""
        now = self.clock.seconds()
        if self._held is None or now - self._held_read_at >= COUNT_REFRESH:
            self._held = await self.store.count_sixids()
            self._held_read_at = now
        return self._held


def _record_answer(stored: StoredRecord | None, sixid: str) -> RecordAnswer:
    if stored is None:
        raise errors.UnknownId(f"no current record for {sixid}")
    # sixid.wire.record_base64 in one call: canonical base64 (padded, no new line).
    return RecordAnswer(b2a_base64(stored.record, newline=False))


def _replayed(sixid: str, stored_seq: int, seq: int) -> errors.Replayed:
    """The one place a stored sequence number at or above the new one becomes 406."""
    return errors.Replayed(f"{sixid}: seq {seq} is not above the seq {stored_seq} accepted already")
