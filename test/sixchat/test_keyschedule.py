# mypy: allow-untyped-calls
"""Tests for sixchat.keyschedule: HKDF-SHA384 and the TLS 1.3-shaped schedule."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sixchat import keyschedule
from sixchat.keyschedule import (
    EARLY_SECRET,
    ITEM_CERTIFICATE,
    KeySchedule,
    Transcript,
    certificate_item_body,
    derive_secret,
    export_keying_material,
    finished_mac,
    hkdf_expand,
    hkdf_expand_label,
    hkdf_extract,
    hkdf_label,
    next_traffic_secret,
    traffic_keys,
)

EMPTY_HASH = hashlib.sha384(b"").digest()


def reference_expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label written out from RFC 8446 with cryptography's HKDFExpand."""
    full = b"sixchat1 " + label.encode()
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hashes.SHA384(), length, info).derive(secret)


class HKDFTests(TestCase):
    """Our HMAC-based HKDF matches cryptography's."""

    @settings(max_examples=50, deadline=None)
    @given(
        st.binary(max_size=80),
        st.binary(min_size=1, max_size=80),
        st.binary(max_size=60),
        st.integers(min_value=1, max_value=300),
    )
    def test_matches_cryptography(
        self, salt: bytes, key_material: bytes, info: bytes, length: int
    ) -> None:
        expected = HKDF(hashes.SHA384(), length, salt or None, info).derive(key_material)
        self.assertEqual(hkdf_expand(hkdf_extract(salt, key_material), info, length), expected)

    def test_extract_is_hmac(self) -> None:
        self.assertEqual(
            hkdf_extract(b"salt", b"ikm"), hmac.digest(b"salt", b"ikm", "sha384")
        )
        self.assertEqual(hkdf_extract(b"", b"ikm"), hmac.digest(bytes(48), b"ikm", "sha384"))

    def test_expand_length_limits(self) -> None:
        self.assertRaises(ValueError, hkdf_expand, bytes(48), b"", 0)
        self.assertRaises(ValueError, hkdf_expand, bytes(48), b"", 255 * 48 + 1)
        self.assertEqual(len(hkdf_expand(bytes(48), b"", 255 * 48)), 255 * 48)

    def test_label_encoding(self) -> None:
        """HkdfLabel: uint16 length, label with 'sixchat1 ' prefix, context, each sized."""
        self.assertEqual(
            hkdf_label("key", b"", 32),
            b"\x00\x20" + b"\x0csixchat1 key" + b"\x00",
        )
        self.assertEqual(
            hkdf_label("iv", b"\x01\x02", 12), b"\x00\x0c\x0bsixchat1 iv\x02\x01\x02"
        )

    def test_label_limits(self) -> None:
        self.assertRaises(ValueError, hkdf_label, "x" * 247, b"", 32)
        self.assertRaises(ValueError, hkdf_label, "key", bytes(256), 32)
        self.assertRaises(ValueError, hkdf_label, "key", b"", 65536)

    def test_expand_label(self) -> None:
        secret = os.urandom(48)
        for label, context, length in (("key", b"", 32), ("iv", b"", 12), ("x y", b"c", 48)):
            self.assertEqual(
                hkdf_expand_label(secret, label, context, length),
                reference_expand_label(secret, label, context, length),
            )

    def test_derive_secret_takes_the_hash(self) -> None:
        secret, transcript_hash = os.urandom(48), os.urandom(48)
        self.assertEqual(
            derive_secret(secret, "i hs traffic", transcript_hash),
            reference_expand_label(secret, "i hs traffic", transcript_hash, 48),
        )


class ScheduleTests(TestCase):
    """The schedule's structure, secrets and labels."""

    def test_early_secret(self) -> None:
        self.assertEqual(EARLY_SECRET, hmac.digest(bytes(48), bytes(48), "sha384"))

    def test_schedule_by_hand(self) -> None:
        """Every secret recomputed from RFC 8446 section 7.1 with our labels."""
        shared = os.urandom(64)
        reply_hash, final_hash = os.urandom(48), os.urandom(48)
        trace: dict[str, bytes] = {}
        schedule = KeySchedule(shared, trace.__setitem__)
        initiator_hs, responder_hs = schedule.handshake_traffic_secrets(reply_hash)
        initiator_ap, responder_ap, exporter = schedule.application_traffic_secrets(final_hash)

        def extract(salt: bytes, ikm: bytes) -> bytes:
            return hmac.digest(salt, ikm, "sha384")

        derived = reference_expand_label(EARLY_SECRET, "derived", EMPTY_HASH, 48)
        handshake_secret = extract(derived, shared)
        self.assertEqual(trace["handshake_secret"], handshake_secret)
        self.assertEqual(
            initiator_hs, reference_expand_label(handshake_secret, "i hs traffic", reply_hash, 48)
        )
        self.assertEqual(
            responder_hs, reference_expand_label(handshake_secret, "r hs traffic", reply_hash, 48)
        )
        master = extract(
            reference_expand_label(handshake_secret, "derived", EMPTY_HASH, 48), bytes(48)
        )
        self.assertEqual(trace["master_secret"], master)
        for value, label in (
            (initiator_ap, "i ap traffic"),
            (responder_ap, "r ap traffic"),
            (exporter, "exp master"),
        ):
            self.assertEqual(value, reference_expand_label(master, label, final_hash, 48))
        self.assertEqual(len({initiator_hs, responder_hs, initiator_ap, responder_ap}), 4)
        self.assertEqual(trace["shared_secret"], shared)
        self.assertEqual(
            set(trace),
            {
                "shared_secret",
                "early_secret",
                "handshake_secret",
                "initiator_handshake_traffic_secret",
                "responder_handshake_traffic_secret",
                "master_secret",
                "initiator_application_traffic_secret",
                "responder_application_traffic_secret",
                "exporter_secret",
            },
        )

    def test_transcript_binds_application_secrets(self) -> None:
        schedule = KeySchedule(os.urandom(64))
        first = schedule.application_traffic_secrets(bytes(48))
        second = schedule.application_traffic_secrets(b"\x01" + bytes(47))
        self.assertNotEqual(first, second)

    def test_traffic_keys(self) -> None:
        secret = os.urandom(48)
        keys = traffic_keys(secret)
        self.assertEqual(keys.key, reference_expand_label(secret, "key", b"", 32))
        self.assertEqual(keys.iv, reference_expand_label(secret, "iv", b"", 12))

    def test_key_update(self) -> None:
        secret = os.urandom(48)
        following = next_traffic_secret(secret)
        self.assertEqual(following, reference_expand_label(secret, "traffic upd", b"", 48))
        self.assertNotEqual(traffic_keys(following), traffic_keys(secret))

    def test_finished(self) -> None:
        secret, transcript_hash = os.urandom(48), os.urandom(48)
        finished_key = reference_expand_label(secret, "finished", b"", 48)
        self.assertEqual(
            finished_mac(secret, transcript_hash),
            hmac.digest(finished_key, transcript_hash, "sha384"),
        )

    def test_exporter(self) -> None:
        secret = os.urandom(48)
        derived = reference_expand_label(secret, "label", EMPTY_HASH, 48)
        expected = reference_expand_label(
            derived, "exporter", hashlib.sha384(b"context").digest(), 20
        )
        self.assertEqual(export_keying_material(secret, "label", b"context", 20), expected)


class TranscriptTests(TestCase):
    """The running transcript hash over exact bytes and typed items."""

    def test_items(self) -> None:
        transcript = Transcript()
        transcript.add(b"frame one")
        body = certificate_item_body([b"\x30\x01", b"\x30\x02\x00"])
        self.assertEqual(body, b"\x00\x00\x00\x02\x30\x01\x00\x00\x00\x03\x30\x02\x00")
        transcript.add_item(ITEM_CERTIFICATE, body)
        expected = hashlib.sha384(
            b"frame one" + bytes([ITEM_CERTIFICATE]) + struct.pack(">I", len(body)) + body
        ).digest()
        self.assertEqual(transcript.digest(), expected)
        # digest() does not end the running hash.
        transcript.add(b"more")
        self.assertNotEqual(transcript.digest(), expected)

    def test_item_types(self) -> None:
        self.assertEqual(
            (
                keyschedule.ITEM_CERTIFICATE,
                keyschedule.ITEM_CERTIFICATE_VERIFY,
                keyschedule.ITEM_FINISHED,
            ),
            (11, 15, 20),
        )
