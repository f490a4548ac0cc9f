"""The sixid figures' workloads (13a, 13b): what their requests and their data are made of.

No server and no timing: the look-ups spread over every ID and never repeat within a pass,
every registration carries fresh bytes and verifies, and the generated records are real
(each verifies as a served record does, with the registry's signing key).
"""

from __future__ import annotations

import os
import sqlite3
import time
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import TestCase

from bench import sixid_data
from bench.sixid_load import REQUEST_IDS, FreshRegistrations, UniformLookups, device_keys, frame, frames_of, stride_for
from sixid.ids import SixId, SixIdAddress
from sixid.records import SignedRecord, verify_record
from sixid.wire import Lookup, Register, parse_request


def digests(count: int) -> bytes:
    """``count`` distinct made-up digests, joined."""
    return b"".join(index.to_bytes(4, "big") * 5 for index in range(count))


class UniformLookupsTests(TestCase):
    """Figure 13a's look-ups."""

    def test_every_id_once_per_pass(self) -> None:
        """Any ``count`` consecutive look-ups name every ID exactly once, from any start."""
        count = 1009
        ids = digests(count)
        expected = {sixid_data.id_text(ids[at : at + 20]) for at in range(0, len(ids), 20)}
        for start in (0, 17, count * 3 + 5):
            lookups = UniformLookups(ids, start=start)
            named = [str(self._lookup(lookups[index]).sixid) for index in range(count)]
            self.assertEqual(len(set(named)), count)
            self.assertEqual(set(named), expected)

    def test_spread_over_the_whole_list(self) -> None:
        """Consecutive look-ups are far apart in the list (the database's order is the IDs'
        own, unrelated; this keeps even the list's order from clustering): each tenth of
        the list gets a tenth of any thousand consecutive look-ups."""
        count = 100_000
        lookups = UniformLookups(digests(count))
        tenths = [0] * 10
        for index in range(1000):
            tenths[lookups.position(index) * 10 // count] += 1
        self.assertTrue(all(90 <= share <= 110 for share in tenths), tenths)

    def test_runs_go_on_where_the_last_stopped(self) -> None:
        """A run started at ``start + issued`` of the previous one repeats none of its IDs."""
        ids = digests(500)
        first = UniformLookups(ids)
        seen = {first[index] for index in range(120)}
        self.assertEqual(first.issued, 120)
        second = UniformLookups(ids, start=first.start + first.issued)
        named = {self._lookup(frame_) for frame_ in seen} | {self._lookup(second[index]) for index in range(380)}
        self.assertEqual(len(named), 500)

    def test_frames_are_valid_requests(self) -> None:
        """Each frame is a length-prefixed ``<lookup>`` the server's codec reads, with a
        request id in 1..REQUEST_IDS."""
        lookups = UniformLookups(digests(50))
        for index in (0, 1, REQUEST_IDS - 1, REQUEST_IDS, 5 * REQUEST_IDS + 3):
            data = lookups[index]
            self.assertEqual(int.from_bytes(data[:4], "big"), len(data) - 4)
            request = parse_request(data[4:])
            self.assertEqual(request.id, 1 + index % REQUEST_IDS)
            self.assertIsInstance(request.operation, Lookup)

    def test_stride_is_coprime(self) -> None:
        for count in (1, 2, 3, 10, 1000, 20_000, 1_000_000):
            stride = stride_for(count)
            self.assertEqual(len({index * stride % count for index in range(count)}), count)

    def _lookup(self, data: bytes) -> Lookup:
        operation = parse_request(data[4:]).operation
        assert isinstance(operation, Lookup)
        return operation


class FreshRegistrationsTests(TestCase):
    """Figure 13b's (and 13c's) registrations."""

    def test_every_registration_carries_fresh_bytes(self) -> None:
        """No two requests share their registration or their signature; each verifies (the
        key's ID, its signature), names the registry's domain and a current time, and the
        sequence numbers of each ID grow."""
        keys = device_keys(7)
        registrations = FreshRegistrations(keys, lifetime=600)
        seen_bytes: set[bytes] = set()
        seen_signatures: set[bytes] = set()
        last: dict[str, int] = {}
        now = time.time()
        for index in range(70):
            operation = parse_request(registrations[index][4:]).operation
            assert isinstance(operation, Register)
            signed = operation.registration
            registration = signed.verify()
            self.assertEqual(registration.domain, sixid_data.DOMAIN)
            self.assertEqual(registration.sixid, registrations.ids[index % 7])
            self.assertLessEqual(abs(registration.signed_at - now), 5)
            self.assertEqual(registration.expires, registration.signed_at + 600)
            self.assertGreater(registration.seq, last.get(str(registration.sixid), 0))
            last[str(registration.sixid)] = registration.seq
            seen_bytes.add(signed.registration_bytes)
            seen_signatures.add(signed.signature)
        self.assertEqual(len(seen_bytes), 70)
        self.assertEqual(len(seen_signatures), 70)
        self.assertEqual(registrations.made, 70)


class FramesTests(TestCase):
    def test_frames_of_splits_and_keeps_the_rest(self) -> None:
        buffer = bytearray(frame(b"one") + frame(b"two") + frame(b"three")[:5])
        self.assertEqual(frames_of(buffer), [b"one", b"two"])
        self.assertEqual(bytes(buffer), frame(b"three")[:5])


class GeneratedDataTests(TestCase):
    """Figure 13a's data."""

    def test_records_are_real(self) -> None:
        """Each generated row holds a record that verifies with the registry's key for
        its ID, current, with the row's columns matching the record."""
        signing_key = Ed25519PrivateKey.generate()
        signed_at = int(time.time())
        rows, joined = sixid_data.make_rows(signing_key.private_bytes_raw(), 40, 5, signed_at, 3600)
        self.assertEqual(len(joined), 5 * 20)
        spkis = set()
        for index, row in enumerate(rows):
            sixid, seq, row_signed_at, expires_at, keep_until, owner, data = row
            self.assertEqual(sixid, sixid_data.id_text(joined[20 * index : 20 * index + 20]))
            verified = verify_record(
                data, expected=SixIdAddress(SixId.parse(sixid), sixid_data.DOMAIN), signer=signing_key.public_key(), now=time.time()
            )
            self.assertEqual((seq, row_signed_at, expires_at, keep_until, owner), (1, signed_at, signed_at + 3600, signed_at + 3600, ""))
            self.assertEqual((verified.seq, verified.expires), (1, expires_at))
            self.assertEqual(len(verified.endpoints), 2)
            spkis.add(verified.spki)
            self.assertEqual(SignedRecord.from_bytes(data).to_bytes(), data)
        self.assertEqual(len(spkis), 5, "every record has its own device key")

    def test_folder_made_once_and_kept(self) -> None:
        """``ensure`` makes the folder (the registry's schema and credentials, every record
        in sixid_records), then keeps it; a new schema remakes the database only, and
        records near their end are made again."""
        root = self.mktemp()
        logged: list[str] = []
        folder = sixid_data.ensure(12, "ed25519", logged.append, root=root)
        database = sqlite3.connect(os.path.join(folder, "registry", "registry.sqlite3"))
        try:
            held = {row[0] for row in database.execute("SELECT sixid FROM sixid_records")}
        finally:
            database.close()
        ids = sixid_data.read_ids(folder)
        self.assertEqual(held, {sixid_data.id_text(ids[at : at + 20]) for at in range(0, len(ids), 20)})
        self.assertEqual(len(held), 12)
        self.assertTrue(os.path.exists(os.path.join(folder, "registry", "ca")))
        logged.clear()
        self.assertEqual(sixid_data.ensure(12, "ed25519", logged.append, root=root), folder)
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("kept", logged[0])
        with mock.patch.object(sixid_data, "schema_fingerprint", lambda: "another"):
            self.assertTrue(sixid_data.records_usable(folder, 12, "ed25519"))
            self.assertFalse(sixid_data.database_usable(folder, 12))
        self.assertFalse(sixid_data.records_usable(folder, 12, "ed25519", now=time.time() + 340 * 86400))
        self.assertFalse(sixid_data.records_usable(folder, 13, "ed25519"))


class WiringTests(TestCase):
    """``python -m bench`` runs the sixid figures, and ``--quick`` keeps them small."""

    def test_selected_by_figure_and_module(self) -> None:
        from bench.__main__ import selected_modules

        self.assertEqual(selected_modules("13a"), ["sixid_lookups"])
        self.assertEqual(selected_modules("13b"), ["sixid_registrations"])
        self.assertEqual(selected_modules("13c-w2"), ["sixid_watch"])
        self.assertIn("sixid_watch", selected_modules(""))

    def test_quick_is_small(self) -> None:
        from bench.harness import Settings

        self.assertEqual(Settings.for_mode(False).sixid_ids, 1_000_000)
        self.assertLessEqual(Settings.for_mode(True).sixid_ids, 20_000)
