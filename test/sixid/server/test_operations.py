"""The sixid operations on an in-memory store and a fake clock: the checks of a
registration and their order, the policies, the limits, look-ups and watches."""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sixid import errors
from sixid.ids import SixId, SixIdAddress
from sixid.records import SignedRegistration, verify_record
from sixid.server.operations import Operations, RecordAnswer, RepeatLimit, SixidSettings, WatchingAnswer
from sixid.server.store import StoredRecord
from sixid.server.watches import WatchHub
from sixid.wire import Lookup, Ping, Pong, Register, Signer, SignerChain, Unwatch, Unwatched, Watch
from test import pki
from test.sixid.server.helpers import DOMAIN, Device, MemoryStore, certified_device, registry_keys


class FakeClient:
    """A connection as the operations see it: what it was told."""

    def __init__(self, peer_host: str = "192.0.2.7") -> None:
        self.peer_host = peer_host
        self.watching: list[bool] = []
        self.events: list[tuple[str, Any]] = []

    def set_watching(self, watching: bool) -> None:
        self.watching.append(watching)

    def changed(self, stored: StoredRecord) -> None:
        self.events.append(("changed", stored.seq))

    def gone(self, sixid: str) -> None:
        self.events.append(("gone", sixid))


class OperationsTestCase(TestCase):
    """An Operations on a MemoryStore, the clock at the real time."""

    policy = "open"

    def setUp(self) -> None:
        self.keys = registry_keys()
        self.clock = Clock()
        self.now = int(time.time())
        self.clock.advance(self.now)
        self.store = MemoryStore()
        self.hub = WatchHub(self.store, self.clock)
        self.settings = SixidSettings(policy=self.policy)
        self.operations = self.make_operations()
        self.client = FakeClient()

    def make_operations(self) -> Operations:
        return self.keys.operations(store=self.store, settings=self.settings, hub=self.hub, clock=self.clock)

    def run_op(self, operation: Any, client: FakeClient | None = None) -> Any:
        """The operation's result (it completes at once on the memory store)."""
        outcome = self.operations.run(client or self.client, operation)
        if hasattr(outcome, "addCallback"):
            return self.successResultOf(outcome)
        return outcome

    def refused(self, operation: Any, client: FakeClient | None = None) -> errors.SixidError:
        """The error the operation fails with."""
        try:
            outcome = self.operations.run(client or self.client, operation)
        except errors.SixidError as error:
            return error
        failure = self.failureResultOf(outcome, errors.SixidError)
        return failure.value  # type: ignore[no-any-return]

    def register(self, signed: SignedRegistration, client: FakeClient | None = None) -> RecordAnswer:
        answer = self.run_op(Register(signed), client)
        assert isinstance(answer, RecordAnswer)
        return answer

    def assert_refused(self, signed: SignedRegistration, name: str, text: str = "") -> errors.SixidError:
        error = self.refused(Register(signed))
        self.assertEqual(error.name, name, error.message)
        self.assertIn(text, error.message)
        return error


def decoded(answer: RecordAnswer) -> bytes:
    """The record bytes of an answer."""
    return base64.b64decode(answer.record_b64, validate=True)


class RegisterTests(OperationsTestCase):
    """Registrations under the policy 'open'."""

    def test_register_and_look_up(self) -> None:
        device = Device()
        answer = self.register(device.register(self.now))
        record = verify_record(
            decoded(answer), expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN), signer=self.keys.signing_key.public_key(), now=self.now
        )
        self.assertIsNone(record.owner)
        self.assertEqual((record.seq, record.accepted_at), (1, self.now))
        stored, signed_at, keep_until = self.store.rows[device.sixid]
        self.assertEqual((stored.seq, stored.expires_at, signed_at, keep_until), (1, self.now + 3600, self.now, self.now + 3600))
        looked_up = self.run_op(Lookup(SixId.parse(device.sixid)))
        self.assertEqual(looked_up, answer)

    def test_p384_key(self) -> None:
        device = Device(key=ec.generate_private_key(ec.SECP384R1()))
        self.register(device.register(self.now))
        self.assertIn(device.sixid, self.store.rows)

    def test_keep_until_covers_the_replay_window(self) -> None:
        device = Device()
        self.register(device.register(self.now, lifetime=10))
        self.assertEqual(self.store.rows[device.sixid][2], self.now + 300)

    def test_withdrawal_is_a_record(self) -> None:
        device = Device()
        self.register(device.register(self.now))
        answer = self.register(device.register(self.now, endpoints=()))
        record = verify_record(
            decoded(answer), expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN), signer=self.keys.signing_key.public_key(), now=self.now
        )
        self.assertEqual((record.seq, record.endpoints), (2, ()))

    def test_other_domain(self) -> None:
        self.assert_refused(Device().register(self.now, domain="example.net"), "invalid-argument", "serves IDs of example.org")

    def test_key_not_of_the_id(self) -> None:
        device, other = Device(), Device()
        signed = device.register(self.now)
        forged = SignedRegistration(signed.registration_bytes, other.register(self.now).spki, signed.signature)
        self.assert_refused(forged, "invalid-argument", "does not match the ID")

    def test_forged_signature(self) -> None:
        signed = Device().register(self.now)
        forged = SignedRegistration(signed.registration_bytes, signed.spki, Device().register(self.now).signature)
        self.assert_refused(forged, "bad-signature")
        self.assertEqual(self.store.rows, {})

    def test_malformed_registration(self) -> None:
        signed = Device().register(self.now)
        broken = SignedRegistration(signed.registration_bytes + b"x", signed.spki, signed.signature)
        error = self.assert_refused(broken, "malformed-message")
        self.assertFalse(error.fatal)

    def test_stale_signed_at(self) -> None:
        device = Device()
        self.assert_refused(device.register(self.now, signed_at=self.now - 301), "stale", "check the device's clock")
        self.assert_refused(device.register(self.now, signed_at=self.now + 301), "stale")
        self.register(device.register(self.now, signed_at=self.now - 300))

    def test_expired(self) -> None:
        self.assert_refused(Device().register(self.now, signed_at=self.now - 100, expires=self.now), "stale", "expired")

    def test_lifetime_too_long(self) -> None:
        self.assert_refused(Device().register(self.now, lifetime=86_401), "invalid-argument", "at most 86400 s")

    def test_replayed_seq(self) -> None:
        device = Device()
        self.register(device.register(self.now, seq=5))
        self.assert_refused(device.register(self.now, seq=5), "replayed", "seq 5")
        self.assert_refused(device.register(self.now, seq=4), "replayed")
        self.register(device.register(self.now, seq=6))

    def test_replay_found_by_the_store(self) -> None:
        # Another process stored seq 9 after this one read the row: the store refuses.
        device = Device()
        self.store.rows[device.sixid] = (StoredRecord(device.sixid, 9, self.now + 10, "", b"x"), self.now, self.now + 10)
        self.store.get_sixid_record = lambda sixid, now: succeed(None)  # type: ignore[method-assign]
        self.assert_refused(device.register(self.now, seq=2), "replayed", "seq 9")

    def test_replayed_across_expiry(self) -> None:
        device = Device()
        signed = device.register(self.now, lifetime=60)
        self.register(signed)
        self.clock.advance(120)  # expired, but within the replay window
        self.assert_refused(signed, "stale")  # its own times refuse it first
        self.assert_refused(device.register(self.now + 120, seq=1), "replayed")

    def test_order_of_checks(self) -> None:
        device = Device()
        signed = device.register(self.now, domain="example.net", signed_at=self.now - 1000)
        forged = SignedRegistration(signed.registration_bytes, signed.spki, b"\x00" * 64)
        self.assert_refused(forged, "invalid-argument")  # the domain before the signature
        signed = device.register(self.now, signed_at=self.now - 1000)
        forged = SignedRegistration(signed.registration_bytes, signed.spki, b"\x00" * 64)
        self.assert_refused(forged, "bad-signature")  # the signature before the times
        other_ca = pki.make_ca(DOMAIN, label="impostor")
        impostor = certified_device(other_ca)
        self.assert_refused(impostor.register(self.now, signed_at=self.now - 1000), "stale")  # times before certificates

    def test_certificate_sets_owner_under_open(self) -> None:
        device = certified_device(self.keys.ca, "carol")
        answer = self.register(device.register(self.now))
        record = verify_record(
            decoded(answer), expected=SixIdAddress(SixId.parse(device.sixid), DOMAIN), signer=self.keys.signing_key.public_key(), now=self.now
        )
        self.assertEqual(str(record.owner), "carol@example.org")
        self.assertEqual(self.store.rows[device.sixid][0].owner, "carol@example.org")

    def test_certificate_of_another_key(self) -> None:
        device = certified_device(self.keys.ca)
        other = Device(certificates=device.certificates)
        self.assert_refused(other.register(self.now), "certificate-rejected", "not for the registration's key")

    def test_certificate_of_another_ca(self) -> None:
        device = certified_device(pki.make_ca(DOMAIN, label="impostor"))
        self.assert_refused(device.register(self.now), "certificate-rejected", "unknown-issuer")

    def test_certificate_not_der(self) -> None:
        device = Device(certificates=(b"\x30\x03junk",))
        self.assert_refused(device.register(self.now), "certificate-rejected", "not a DER X.509")

    def test_registrations_per_id_per_minute(self) -> None:
        device = Device()
        for _ in range(30):
            self.register(device.register(self.now))
        self.assert_refused(device.register(self.now), "rate-limited", "per minute")
        self.clock.advance(60)
        self.register(device.register(self.now + 60))

    def test_per_id_limit_state(self) -> None:
        limit = RepeatLimit(self.clock, limit=3, window=60.0)
        self.assertEqual([limit.allow("a") for _ in range(2)], [True, True])
        self.clock.advance(30)
        self.assertEqual([limit.allow("a") for _ in range(2)], [True, False])  # 3 in the window
        for key in "bcd":
            self.assertTrue(limit.allow(key))
        self.clock.advance(30)  # the two at 0 left the window; the one at 30 is in it
        self.assertEqual([limit.allow("a") for _ in range(3)], [True, True, False])
        self.clock.advance(120)
        limit.allow("e")
        self.assertEqual(sorted(limit._first), ["e"])  # the others were swept

    def test_new_ids_per_address(self) -> None:
        self.settings.new_ids_per_address_per_hour = 3
        self.operations = self.make_operations()
        v6 = FakeClient("2001:db8:1:2::5")
        same_64 = FakeClient("2001:db8:1:2::99")
        for _ in range(3):
            self.register(Device().register(self.now), v6)
        error = self.refused(Register(Device().register(self.now)), same_64)
        self.assertEqual(error.name, "rate-limited")
        self.register(Device().register(self.now), FakeClient("2001:db8:1:3::5"))
        device = Device()
        self.register(device.register(self.now), FakeClient("192.0.2.200"))
        # Renewing an ID held already is not a new ID.
        self.register(device.register(self.now), same_64)

    def test_max_ids(self) -> None:
        self.settings.max_ids = 2
        self.operations = self.make_operations()
        first = Device()
        self.register(first.register(self.now))
        self.register(Device().register(self.now))
        self.assert_refused(Device().register(self.now), "not-allowed", "holds its maximum of 2 IDs")
        self.register(first.register(self.now))  # renewals go on

    def test_signer_and_ping(self) -> None:
        signer = self.run_op(Signer())
        assert isinstance(signer, SignerChain)
        self.assertEqual(len(signer.certificates), 3)
        self.assertEqual(self.run_op(Ping()), Pong())


class CertifiedPolicyTests(OperationsTestCase):
    """The default policy: only keys the domain's CA certified."""

    policy = "certified"

    def test_certified_key(self) -> None:
        device = certified_device(self.keys.ca, "dave")
        self.register(device.register(self.now))
        self.assertEqual(self.store.rows[device.sixid][0].owner, "dave@example.org")

    def test_uncertified_key(self) -> None:
        self.assert_refused(Device().register(self.now), "not-allowed", "policy of example.org is 'certified'")

    def test_certificate_of_another_domain(self) -> None:
        other = pki.make_ca("example.net")
        device = certified_device(other)
        self.assert_refused(device.register(self.now), "certificate-rejected")

    def test_expired_certificate(self) -> None:
        user = pki.bad_user(self.keys.ca, "expired")
        device = Device(key=user.key, certificates=tuple(c.public_bytes(serialization.Encoding.DER) for c in (user.certificate, *user.intermediates)))
        self.assert_refused(device.register(self.now), "certificate-rejected", "expired")


class ListedPolicyTests(OperationsTestCase):
    """Only IDs on the allow list."""

    policy = "listed"

    def test_listed(self) -> None:
        device, stranger = Device(), Device()
        self.successResultOf(self.store.allow_sixid(device.sixid, "lab", "admin@example.org"))
        self.register(device.register(self.now))
        self.assert_refused(stranger.register(self.now), "not-allowed", "irp admin sixid-allow")
        certified = certified_device(self.keys.ca)
        self.assert_refused(certified.register(self.now), "not-allowed", "'listed'")


class LookupTests(OperationsTestCase):
    """Look-ups."""

    def test_unknown(self) -> None:
        sixid = Device().sixid
        error = self.refused(Lookup(SixId.parse(sixid)))
        self.assertEqual(error.name, "unknown-id")
        self.assertIn(sixid, error.message)

    def test_expired_record_is_unknown(self) -> None:
        device = Device()
        self.register(device.register(self.now, lifetime=60))
        self.clock.advance(60)
        self.assertEqual(self.refused(Lookup(SixId.parse(device.sixid))).name, "unknown-id")

    def test_found(self) -> None:
        device = Device()
        answer = self.register(device.register(self.now))
        self.assertEqual(self.run_op(Lookup(SixId.parse(device.sixid))), answer)

    def test_store_unavailable(self) -> None:
        """A failing read fails the look-up (the protocol answers it as unavailable)."""
        device = Device()
        self.register(device.register(self.now))
        self.store.unavailable = RuntimeError("database gone")
        try:
            outcome = self.operations.run(self.client, Lookup(SixId.parse(device.sixid)))
        except RuntimeError:
            return
        self.failureResultOf(outcome, RuntimeError)


class LookupReadNowTests(LookupTests):
    """The same look-ups on a store that reads at once (the registry's direct reader):
    the fast path, without a Deferred."""

    def setUp(self) -> None:
        super().setUp()
        self.store.reads_now = True


class WatchTests(OperationsTestCase):
    """Watches: answers, pushes on change and expiry, limits."""

    def watch(self, device: Device, client: FakeClient | None = None) -> WatchingAnswer:
        answer = self.run_op(Watch(SixId.parse(device.sixid)), client)
        assert isinstance(answer, WatchingAnswer)
        return answer

    def test_watch_before_registration(self) -> None:
        device = Device()
        self.assertIsNone(self.watch(device).record_b64)
        self.assertEqual(self.client.watching, [True])
        self.register(device.register(self.now))
        self.assertEqual(self.client.events, [("changed", 1)])

    def test_changed_and_gone(self) -> None:
        device = Device()
        self.register(device.register(self.now, lifetime=100))
        self.assertIsNotNone(self.watch(device).record_b64)
        self.clock.advance(50)
        self.register(device.register(self.now + 50, lifetime=100))  # expires at now + 150
        self.assertEqual(self.client.events, [("changed", 2)])
        self.clock.advance(99)
        self.assertEqual(len(self.client.events), 1)
        self.clock.advance(1)
        self.assertEqual(self.client.events, [("changed", 2), ("gone", device.sixid)])
        self.clock.advance(1000)
        self.assertEqual(len(self.client.events), 2)  # told once

    def test_other_process_change(self) -> None:
        device = Device()
        self.store.follow_sixid_changes(self.hub.followed)
        self.watch(device)
        signed = device.register(self.now)
        # Another worker stored it: the feed says so, the hub reads it.
        other = MemoryStore()
        other_ops = Operations(
            domain=DOMAIN,
            store=self.store,
            signing_key=self.keys.signing_key,
            signer_chain=[],
            check_certificate=self.keys.check_certificate(),
            settings=self.settings,
            hub=WatchHub(other, self.clock),
            clock=self.clock,
        )
        self.successResultOf(other_ops.run(FakeClient(), Register(signed)))
        self.assertEqual(self.client.events, [])
        self.store.tell(device.sixid, 1)
        self.assertEqual(self.client.events, [("changed", 1)])
        self.store.tell(device.sixid, 1)  # told twice: pushed once
        self.assertEqual(self.client.events, [("changed", 1)])

    def test_expiry_reads_again(self) -> None:
        # At expiry, a newer record another process stored (not yet told) is pushed as a
        # change, not as gone.
        device = Device()
        self.register(device.register(self.now, lifetime=100))
        self.watch(device)
        later = device.register(self.now, lifetime=200)
        stored = self.store.rows[device.sixid][0]
        self.store.rows[device.sixid] = (StoredRecord(device.sixid, later.registration.seq, self.now + 200, "", stored.record), self.now, self.now + 200)
        self.clock.advance(100)
        self.assertEqual(self.client.events, [("changed", 2)])
        self.clock.advance(100)
        self.assertEqual(self.client.events, [("changed", 2), ("gone", device.sixid)])

    def test_unwatch_and_connection_lost(self) -> None:
        device = Device()
        self.watch(device)
        second = FakeClient()
        self.watch(device, second)
        self.assertEqual(self.run_op(Unwatch(SixId.parse(device.sixid))), Unwatched())
        self.assertEqual(self.client.watching, [True, False])
        self.assertEqual(self.run_op(Unwatch(SixId.parse(device.sixid))), Unwatched())  # not watched: fine
        self.register(device.register(self.now))
        self.assertEqual((self.client.events, second.events), ([], [("changed", 1)]))
        self.operations.connection_lost(second)  # type: ignore[arg-type]
        self.assertEqual(self.hub.watched_ids(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # its timer went with it

    def test_too_many_watches(self) -> None:
        self.settings.max_watches = 3
        devices = [Device() for _ in range(4)]
        for device in devices[:3]:
            self.watch(device)
        self.watch(devices[0])  # watched already: not one more
        error = self.refused(Watch(SixId.parse(devices[3].sixid)))
        self.assertEqual((error.name, error.code), ("too-many-watches", 430))
        self.run_op(Unwatch(SixId.parse(devices[0].sixid)))
        self.watch(devices[3])

    def test_failed_read_watches_nothing(self) -> None:
        device = Device()
        self.store.unavailable = RuntimeError("database gone")
        self.failureResultOf(self.operations.run(self.client, Watch(SixId.parse(device.sixid))), RuntimeError)
        self.assertEqual((self.hub.watched_ids(), self.client.watching), (0, [True, False]))

    def test_one_timer_per_watched_id(self) -> None:
        device = Device()
        self.register(device.register(self.now))
        for _ in range(5):
            self.watch(device, FakeClient())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

