"""Registrations and records: layouts, strict parsing, signatures of every key type, and
every tampering refused."""

from __future__ import annotations

import dataclasses
import struct

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.trial.unittest import TestCase

from common.endpoint import Endpoint
from common.identity import Identity
from sixid import errors
from sixid.ids import SixId, SixIdAddress, id_of_spki
from sixid.records import (
    MAX_ENDPOINTS,
    RECORD_PREFIX,
    REGISTRATION_PREFIX,
    Record,
    Registration,
    SignedRecord,
    SignedRegistration,
    field_bytes,
    sign_record,
    sign_registration,
    verify_record,
)
from test.pki import rsa_key
from test.sixid.helpers import (
    DOMAIN,
    ENDPOINTS,
    EXPIRES,
    KEY_TYPES,
    NOW,
    address_of,
    device_key,
    record_of,
    registration,
    registry_key,
    signed_record,
    signed_registration,
)


def registration_bytes(*fields: bytes, prefix: bytes = REGISTRATION_PREFIX) -> bytes:
    """Registration bytes made by hand from ``fields``."""
    return prefix + b"".join(field_bytes(value) for value in fields)


def good_fields() -> list[bytes]:
    """The fields of a valid registration (two endpoints)."""
    sixid = str(address_of("p256").sixid).encode()
    return [DOMAIN.encode(), sixid, b"7", str(NOW).encode(), str(EXPIRES).encode(), b"2", b"2001:db8::7 4605", b"192.0.2.7 4605"]


class RegistrationLayoutTests(TestCase):
    """The registration's bytes are exactly the documented layout."""

    def test_layout(self) -> None:
        parsed = registration("p256", seq=7)
        self.assertEqual(parsed.to_bytes(), registration_bytes(*good_fields()))
        self.assertEqual(Registration.from_bytes(registration_bytes(*good_fields())), parsed)

    def test_withdrawal(self) -> None:
        empty = registration("p256", endpoints=())
        self.assertEqual(Registration.from_bytes(empty.to_bytes()), empty)
        self.assertTrue(empty.to_bytes().endswith(field_bytes(b"0")))

    def test_most_endpoints(self) -> None:
        endpoints = tuple(Endpoint.parse(f"2001:db8:ffff:ffff:ffff:ffff:ffff:{index:x}", 65535) for index in range(MAX_ENDPOINTS))
        full = registration("p256", endpoints=endpoints, domain="a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61)
        full = dataclasses.replace(full, seq=2**63 - 1, signed_at=2**63 - 1, expires=2**63 - 1)
        self.assertEqual(Registration.from_bytes(full.to_bytes()), full)

    def test_encoding_refuses(self) -> None:
        good = registration("p256")
        for changes in (
            {"seq": 0},
            {"seq": 2**63},
            {"signed_at": -1},
            {"expires": True},
            {"domain": "Example.org"},
            {"endpoints": ENDPOINTS + ENDPOINTS[:1]},
            {"endpoints": tuple(Endpoint.parse(f"192.0.2.{index + 1}", 1) for index in range(MAX_ENDPOINTS + 1))},
            {"endpoints": (Endpoint("2001:DB8::1", 4605),)},
        ):
            self.assertRaises(errors.MalformedRecord, dataclasses.replace(good, **changes).to_bytes)  # type: ignore[arg-type]


class RegistrationStrictTests(TestCase):
    """Anything but the canonical bytes is MalformedRecord."""

    def assertRefused(self, data: bytes) -> None:
        self.assertRaises(errors.MalformedRecord, Registration.from_bytes, data)

    def with_field(self, index: int, value: bytes) -> bytes:
        fields = good_fields()
        fields[index] = value
        return registration_bytes(*fields)

    def test_trailing_and_truncated(self) -> None:
        good = registration_bytes(*good_fields())
        self.assertRefused(good + b"\x00")
        self.assertRefused(good + field_bytes(b""))
        for cut in (1, 4, 5, len(good) - len(REGISTRATION_PREFIX) - 1):
            self.assertRefused(good[:-cut])
        self.assertRefused(good[: len(REGISTRATION_PREFIX)])
        self.assertRefused(b"")

    def test_prefix(self) -> None:
        self.assertRefused(registration_bytes(*good_fields(), prefix=b"SIXID-REGISTRATION-V2\x00"))
        self.assertRefused(registration_bytes(*good_fields(), prefix=RECORD_PREFIX))

    def test_length_past_end(self) -> None:
        good = registration_bytes(*good_fields())
        start = len(REGISTRATION_PREFIX)
        self.assertRefused(good[:start] + struct.pack(">I", 2**32 - 1) + good[start + 4 :])

    def test_non_canonical_decimals(self) -> None:
        for index in (2, 3, 4, 5):  # seq, signed_at, expires, count
            for value in (b"07", b"+7", b" 7", b"7 ", b"", b"0x7", "\u0667".encode(), b"7.0", b"-1"):
                self.assertRefused(self.with_field(index, value))
        self.assertRefused(self.with_field(2, b"0"))  # seq starts at 1
        self.assertRefused(self.with_field(2, str(2**63).encode()))
        self.assertRefused(self.with_field(3, b"1" * 20))

    def test_wrong_counts(self) -> None:
        for count in (b"0", b"1", b"3", b"9"):
            self.assertRefused(self.with_field(5, count))
        fields = good_fields()[:6]
        fields[5] = b"9"
        self.assertRefused(registration_bytes(*fields, *(f"192.0.2.{n} 1".encode() for n in range(1, 10))))

    def test_non_canonical_addresses(self) -> None:
        for endpoint in (
            b"2001:DB8::7 4605",
            b"2001:db8:0::7 4605",
            b"2001:0db8::7 4605",
            b"[2001:db8::7] 4605",
            b"2001:db8::7:4605",
            b"2001:db8::7  4605",
            b"2001:db8::7 04605",
            b"2001:db8::7 0",
            b"2001:db8::7 65536",
            b"2001:db8::7",
            b"::ffff:192.0.2.7 4605",
            b"fe80::1%eth0 4605",
            b"ff02::1 4605",
            b":: 4605",
            b"192.0.2.07 4605",
            b"192.000.2.7 4605",
            b"example.org 4605",
            b"2001:db8::7 4605 ",
        ):
            self.assertRefused(self.with_field(6, endpoint))
        self.assertRefused(self.with_field(7, good_fields()[6]))  # a duplicate

    def test_non_canonical_texts(self) -> None:
        sixid = good_fields()[1]
        for domain in (b"Example.org", b"example.org.", b"", b"exa mple.org", b"\xff"):
            self.assertRefused(self.with_field(0, domain))
        for text in (sixid.upper(), sixid[:-1], sixid + b"a", SixId(bytes(20)).grouped().encode()):
            self.assertRefused(self.with_field(1, text))


class SignedRegistrationTests(TestCase):
    """The device's signature, every key type; each tampering refused."""

    def test_every_key_type(self) -> None:
        for key_type in KEY_TYPES:
            signed = signed_registration(key_type)
            self.assertEqual(signed.verify(), registration(key_type), key_type)
            self.assertEqual(id_of_spki(signed.spki), address_of(key_type).sixid)

    def test_key_must_match(self) -> None:
        self.assertRaises(errors.InvalidArgument, sign_registration, device_key("p384"), registration("p256"))
        signed = signed_registration("p256")
        other = signed_registration("p384")
        swapped = dataclasses.replace(signed, spki=other.spki)
        with self.assertRaises(errors.InvalidArgument) as caught:
            swapped.verify()
        self.assertIn("does not match the ID", caught.exception.message)

    def test_tampering(self) -> None:
        for key_type in KEY_TYPES:
            signed = signed_registration(key_type)
            data = signed.registration_bytes
            # Every field of the registration changed: the signature no longer covers it.
            for changed in (
                dataclasses.replace(signed.registration, seq=2),
                dataclasses.replace(signed.registration, signed_at=NOW + 1),
                dataclasses.replace(signed.registration, expires=EXPIRES + 1),
                dataclasses.replace(signed.registration, endpoints=ENDPOINTS[:1]),
                dataclasses.replace(signed.registration, endpoints=ENDPOINTS[::-1]),
                dataclasses.replace(signed.registration, domain="example.com"),
            ):
                forged = dataclasses.replace(signed, registration_bytes=changed.to_bytes())
                self.assertRaises(errors.BadSignature, forged.verify)
            flipped = bytearray(signed.signature)
            flipped[len(flipped) // 2] ^= 1
            self.assertRaises(errors.BadSignature, dataclasses.replace(signed, signature=bytes(flipped)).verify)
            self.assertRaises(errors.BadSignature, dataclasses.replace(signed, signature=b"").verify)
            self.assertRaises(errors.MalformedRecord, dataclasses.replace(signed, registration_bytes=data + b"\x00").verify)

    def test_keys_refused(self) -> None:
        signed = signed_registration("ed25519")
        for spki in (b"", b"\x30\x00", signed.spki + b"\x00", signed.spki[:-1]):
            self.assertRaises(errors.InvalidArgument, dataclasses.replace(signed, spki=spki).verify)
        weak = rsa_key(2048)
        weak_registration = Registration(DOMAIN, id_of_spki(b"x"), 1, NOW, EXPIRES)
        from sixid.ids import spki_der

        spki = spki_der(weak.public_key())
        forged = SignedRegistration(dataclasses.replace(weak_registration, sixid=id_of_spki(spki)).to_bytes(), spki, b"sig")
        with self.assertRaises(errors.InvalidArgument) as caught:
            forged.verify()
        self.assertIn("3072", caught.exception.message)


class RecordTests(TestCase):
    """The registry's record: layout, strict parsing, verification."""

    def test_layout(self) -> None:
        signed = signed_registration("ed25519")
        record = record_of(signed, owner="alice@example.org", accepted_at=NOW + 1)
        expected = RECORD_PREFIX + b"".join(
            field_bytes(value)
            for value in (DOMAIN.encode(), str(address_of("ed25519").sixid).encode(), b"alice@example.org",
                          str(NOW + 1).encode(), signed.registration_bytes, signed.spki, signed.signature)
        )
        self.assertEqual(record.signing_bytes(), expected)
        sealed = sign_record(registry_key(), record)
        self.assertEqual(sealed.to_bytes(), expected + field_bytes(sealed.signature))
        registry_key().public_key().verify(sealed.signature, expected)
        self.assertEqual(SignedRecord.from_bytes(sealed.to_bytes()), sealed)

    def test_verify_every_key_type(self) -> None:
        for key_type in KEY_TYPES:
            data = signed_record(key_type, owner="alice@example.org").to_bytes()
            verified = verify_record(data, expected=address_of(key_type), signer=registry_key().public_key(), now=NOW + 2)
            self.assertEqual(verified.address, address_of(key_type))
            self.assertEqual(verified.owner, Identity("alice", DOMAIN))
            self.assertEqual((verified.seq, verified.signed_at, verified.expires, verified.accepted_at), (1, NOW, EXPIRES, NOW + 1))
            self.assertEqual(verified.endpoints, ENDPOINTS)
            self.assertEqual(verified.data, data)
        unowned = verify_record(signed_record("p256").to_bytes(), expected=address_of("p256"), signer=registry_key().public_key(), now=NOW)
        self.assertIsNone(unowned.owner)

    def assertFails(self, data: bytes, words: str, *, expected: SixIdAddress | None = None, now: float = NOW + 2,
                    signer: ed25519.Ed25519PublicKey | None = None) -> None:
        with self.assertRaises(errors.VerificationFailed) as caught:
            verify_record(data, expected=expected or address_of("p256"), signer=signer or registry_key().public_key(), now=now)
        self.assertIn(words, caught.exception.message)

    def test_verification_refusals(self) -> None:
        good = signed_record("p256")
        data = good.to_bytes()
        self.assertFails(data, "expired", now=EXPIRES)
        self.assertFails(data + b"\x00", "does not parse")
        self.assertFails(data, "registry's signature", signer=ed25519.Ed25519PrivateKey.generate().public_key())
        self.assertFails(data, "ID", expected=address_of("p384"))
        self.assertFails(data, "domain", expected=SixIdAddress(address_of("p256").sixid, "example.com"))

    def resigned(self, record: Record) -> bytes:
        """``record`` signed by the registry (as a dishonest or mistaken registry would)."""
        return sign_record(registry_key(), record).to_bytes()

    def test_each_field_tampered(self) -> None:
        """Every field changed after signing breaks the registry's signature; changed and
        re-signed by the registry, it breaks the rule that covers it."""
        good = signed_record("p256")
        record = good.record
        other = signed_registration("p384")
        changes: list[tuple[dict[str, object], str]] = [
            ({"domain": "example.com"}, "domain"),
            ({"sixid": address_of("p384").sixid}, "ID"),
            ({"owner": "alice@example.com"}, "owner"),
            ({"accepted_at": NOW + 5}, ""),
            ({"registration_bytes": registration("p256", seq=2).to_bytes()}, "device signature"),
            ({"registration_bytes": registration("p256", domain="example.com").to_bytes()}, "domain"),
            ({"spki": other.spki}, "does not hash"),
            ({"device_signature": other.signature}, "device signature"),
        ]
        for change, words in changes:
            tampered = dataclasses.replace(record, **change)  # type: ignore[arg-type]
            self.assertFails(SignedRecord(tampered, good.signature).to_bytes(), "registry's signature")
            if words:
                self.assertFails(self.resigned(tampered), words)
        signature = bytearray(good.signature)
        signature[0] ^= 0x80
        self.assertFails(SignedRecord(record, bytes(signature)).to_bytes(), "registry's signature")

    def test_strict_parse(self) -> None:
        data = signed_record("p256").to_bytes()
        for bad in (data + b"\x00", data[:-1], data[:-68], b"", RECORD_PREFIX, REGISTRATION_PREFIX + data[len(RECORD_PREFIX):]):
            self.assertRaises(errors.MalformedRecord, SignedRecord.from_bytes, bad)
        good = signed_record("p256").record
        for change in ({"owner": "alice"}, {"owner": "Alice@example.org"}, {"registration_bytes": b"junk"},
                       {"domain": "EXAMPLE.org"}):
            bad_record = dataclasses.replace(good, **change)  # type: ignore[arg-type]
            self.assertRaises(errors.MalformedRecord, SignedRecord.from_bytes, self.resigned(bad_record))
        short = SignedRecord(good, b"\x00" * 63).to_bytes()
        self.assertRaises(errors.MalformedRecord, SignedRecord.from_bytes, short)
        non_canonical = good.signing_bytes().replace(field_bytes(str(NOW + 1).encode()), field_bytes(b"0" + str(NOW + 1).encode()))
        self.assertRaises(errors.MalformedRecord, SignedRecord.from_bytes, non_canonical + field_bytes(bytes(64)))
