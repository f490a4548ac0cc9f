"""Fixtures of the sixid server's tests: stores, registry keys, signed registrations, a
raw TLS client.

:class:`MemoryStore` is an in-memory :class:`~sixid.server.store.SixidStore` for unit tests
(already-fired Deferreds, like the SQLite direct reader), keeping the interface's rules:
look-ups see only ``expires_at > now``, a put with a sequence number not above the
stored one fails with :class:`~sixid.server.store.Replayed`. The integration tests use the
registry's real store (:mod:`irp.server.store.sixid`) on a SQLite file.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol

from common.endpoint import Endpoint
from common.identity import Identity
from common.pki.errors import PKIError
from common.tls import make_server_context
from common.wire.framing import FrameDecoder, encode_frame
from irp.server.ca import CertificateAuthority, generate_key
from sixid import wire
from sixid.ids import derive_id
from sixid.records import Registration, SignedRegistration, sign_registration
from sixid.server.operations import CertificateChecker, Operations, SixidSettings
from sixid.server.store import NOT_NOW, AllowedSixid, Replayed, StoredRecord, Unread
from sixid.server.watches import WatchHub
from test import pki
from test.sixid.helpers import DOMAIN

#: A fixed moment for the fake clocks (Unix seconds).
NOW = 1_800_000_000


class MemoryStore:
    """An in-memory SixidStore (see the module docs). ``unavailable`` makes every call
    fail with it; ``tell`` plays another process's commit to the followers; ``reads_now``
    answers the look-up's fast path at once (as the registry's store with a direct
    reader), else it says NOT_NOW (as without one)."""

    def __init__(self, reads_now: bool = False) -> None:
        self.reads_now = reads_now
        self.rows: dict[str, tuple[StoredRecord, int, int]] = {}
        self.allowed: dict[str, AllowedSixid] = {}
        self.followers: list[Callable[[str, int], None]] = []
        self.unavailable: Exception | None = None
        self.reads = 0

    def _check(self) -> None:
        if self.unavailable is not None:
            raise self.unavailable

    def _answer(self, compute: Callable[[], Any]) -> Deferred[Any]:
        try:
            self._check()
            return succeed(compute())
        except Exception as error:  # noqa: BLE001 - a store fails its Deferred
            return fail(error)

    def sixid_record_now(self, sixid: str, now: int) -> bytes | Unread | None:
        if not self.reads_now:
            return NOT_NOW
        self.reads += 1
        self._check()
        row = self.rows.get(sixid)
        return row[0].record if row is not None and row[0].expires_at > now else None

    def get_sixid_record(self, sixid: str, now: int) -> Deferred[StoredRecord | None]:
        self.reads += 1

        def read() -> StoredRecord | None:
            row = self.rows.get(sixid)
            return row[0] if row is not None and row[0].expires_at > now else None

        return self._answer(read)

    def get_sixid_records(self, sixids: Sequence[str], now: int) -> Deferred[dict[str, StoredRecord]]:
        return self._answer(lambda: {s: r[0] for s in sixids if (r := self.rows.get(s)) is not None and r[0].expires_at > now})

    def put_sixid_record(self, stored: StoredRecord, signed_at: int, keep_until: int) -> Deferred[None]:
        def put() -> None:
            row = self.rows.get(stored.sixid)
            if row is not None and row[0].seq >= stored.seq:
                raise Replayed(stored.sixid, row[0].seq)
            self.rows[stored.sixid] = (stored, signed_at, keep_until)

        return self._answer(put)

    def count_sixids(self) -> Deferred[int]:
        return self._answer(lambda: len(self.rows))

    def sixid_allowed(self, sixid: str) -> Deferred[bool]:
        return self._answer(lambda: sixid in self.allowed)

    def allow_sixid(self, sixid: str, note: str, by: str) -> Deferred[bool]:
        def allow() -> bool:
            if sixid in self.allowed:
                return False
            self.allowed[sixid] = AllowedSixid(sixid, note, NOW, by)
            return True

        return self._answer(allow)

    def disallow_sixid(self, sixid: str) -> Deferred[bool]:
        return self._answer(lambda: self.allowed.pop(sixid, None) is not None)

    def list_allowed_sixids(self) -> Deferred[list[AllowedSixid]]:
        return self._answer(lambda: list(self.allowed.values()))

    def sweep_sixids(self, now: int) -> Deferred[int]:
        def sweep() -> int:
            old = [sixid for sixid, (_, _, keep_until) in self.rows.items() if keep_until <= now]
            for sixid in old:
                del self.rows[sixid]
            return len(old)

        return self._answer(sweep)

    def follow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        self.followers.append(callback)

    def unfollow_sixid_changes(self, callback: Callable[[str, int], None]) -> None:
        if callback in self.followers:
            self.followers.remove(callback)

    def tell(self, sixid: str, seq: int) -> None:
        """Another process committed ``seq`` of ``sixid``."""
        for follower in self.followers:
            follower(sixid, seq)


# -- the registry's keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryKeys:
    """A domain's CA, its record-signing key and chain, its TLS server credentials."""

    ca: CertificateAuthority
    signing_key: ed25519.Ed25519PrivateKey
    signer_chain: tuple[x509.Certificate, ...]
    server_key: Any
    server_certificate: x509.Certificate

    def tls_context(self) -> Any:
        """The registry's TLS server context (it asks for client certificates: sixid
        turns that off per connection)."""
        return make_server_context(self.server_key, self.server_certificate, self.ca.chain[:1], client_ca_names=[self.ca.root_certificate])

    def check_certificate(self) -> CertificateChecker:
        """The registry's certificate check: its CA's chains, valid at the time given."""
        trust = pki.trust_store(self.ca)

        def check(chain: Sequence[x509.Certificate], now: float) -> Deferred[Identity]:
            moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
            try:
                return succeed(trust.verify_user_certificate(chain[0], chain[1:], now=moment).identity)
            except PKIError as error:
                return fail(error)

        return check

    def operations(self, *, store: Any, settings: SixidSettings, hub: WatchHub, clock: Any, domain: str = DOMAIN) -> Operations:
        """The server's operations for this registry on ``store`` (its signer chain, its
        certificate check)."""
        return Operations(
            domain=domain,
            store=store,
            signing_key=self.signing_key,
            signer_chain=[certificate.public_bytes(serialization.Encoding.DER) for certificate in self.signer_chain],
            check_certificate=self.check_certificate(),
            settings=settings,
            hub=hub,
            clock=clock,
        )


@functools.cache
def registry_keys(domain: str = DOMAIN) -> RegistryKeys:
    """The same keys on every call (made once: CA keys are slow)."""
    ca = pki.make_ca(domain)
    signing_key = ed25519.Ed25519PrivateKey.generate()
    signing_certificate = ca.issue_signing_certificate(signing_key.public_key())
    server_key = generate_key("p256")
    server_certificate = ca.issue_server_certificate(["localhost", "127.0.0.1"], server_key.public_key())
    return RegistryKeys(ca, signing_key, (signing_certificate, *ca.chain), server_key, server_certificate)


# -- devices ------------------------------------------------------------------------------


@dataclass
class Device:
    """An ID's key (and certificate chain, when certified) and its registrations."""

    key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    certificates: tuple[bytes, ...] = ()
    seq: int = 0

    @property
    def sixid(self) -> str:
        """The ID, canonical."""
        return str(derive_id(self.key.public_key()))

    def register(
        self,
        now: int,
        *,
        domain: str = DOMAIN,
        lifetime: int = 3600,
        endpoints: Sequence[Endpoint] = (Endpoint("2001:db8::1", 4605),),
        seq: int | None = None,
        signed_at: int | None = None,
        expires: int | None = None,
        certificates: tuple[bytes, ...] | None = None,
    ) -> SignedRegistration:
        """A signed registration (the next seq unless given)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        signed_at = now if signed_at is None else signed_at
        registration = Registration(
            domain, derive_id(self.key.public_key()), seq, signed_at, signed_at + lifetime if expires is None else expires, tuple(endpoints)
        )
        return sign_registration(self.key, registration, self.certificates if certificates is None else certificates)


def certified_device(ca: CertificateAuthority, username: str = "alice") -> Device:
    """A device whose key the domain's CA certified for ``username``."""
    user = pki.issue_user(ca, username)
    der = [certificate.public_bytes(serialization.Encoding.DER) for certificate in (user.certificate, *user.intermediates)]
    return Device(key=user.key, certificates=tuple(der))


# -- a raw client ---------------------------------------------------------------------------


class RawClient(Protocol):
    """A client speaking sixid frames: sends requests, keeps every message received in
    order (parsed), and hands them out with :meth:`next`."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(64 * 1024)
        self.messages: list[wire.ServerMessage] = []
        self.waiting: list[Deferred[wire.ServerMessage]] = []
        self.lost: Deferred[None] = Deferred()
        self.next_id = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        for payload in self.decoder.feed(data):
            self.messages.append(wire.parse_answer(payload))
        while self.messages and self.waiting:
            self.waiting.pop(0).callback(self.messages.pop(0))

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        for waiter in self.waiting:
            waiter.errback(ConnectionError("lost"))
        self.waiting.clear()
        self.lost.callback(None)

    def send(self, operation: Any) -> int:
        """Send a request; its id."""
        self.next_id += 1
        self.transport.write(encode_frame(wire.encode_request(wire.Request(self.next_id, operation))))  # type: ignore[union-attr]
        return self.next_id

    def next(self) -> Deferred[wire.ServerMessage]:
        """The next message received."""
        if self.messages:
            return succeed(self.messages.pop(0))
        waiting: Deferred[wire.ServerMessage] = Deferred()
        self.waiting.append(waiting)
        return waiting

    async def ask(self, operation: Any) -> wire.ServerMessage:
        """Send a request and wait for the next message (its answer)."""
        self.send(operation)
        return await self.next()
