# mypy: allow-untyped-calls
"""Tests for the sixid known-answer vectors (docs/vectors/sixid-*.json).

Every value of every file is recomputed by a small independent implementation written
here from docs/sixid.rst with the standard library and cryptography's primitives only (no
``sixid``, ``common`` or ``tools`` import in it): the fixed keys from their labels, the ID
in both text forms, the registration bytes from the fields, the device signature (verified
for every key type, and reproduced exactly where the scheme is deterministic or the salt
is given), the record, the registry's signature, the three frames and the padding. Then
the library (``sixid.*``) must reproduce the same values and accept the published ones,
and ``tools.kat_sixid`` must write the published files again byte for byte. Changing any
published value makes the independent check fail (:class:`MutationTests`).
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from twisted.trial.unittest import TestCase

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "vectors")
KEY_TYPES = ("p256", "p384", "p521", "ed25519", "rsa3072")
FILES = tuple(f"sixid-{key_type}.json" for key_type in KEY_TYPES)


def load(name: str) -> dict[str, Any]:
    """One published file."""
    with open(os.path.join(FOLDER, name), encoding="utf-8") as stream:
        vectors: dict[str, Any] = json.load(stream)
    return vectors


# ---------------------------------------------------------------------------------------
# An independent implementation of docs/sixid.rst

LABEL_PREFIX = "sixid 1 known-answer vectors: "
LABELS = {
    "device_key_p256": "device key p256",
    "device_key_p384": "device key p384",
    "device_key_p521": "device key p521",
    "device_key_ed25519": "device key ed25519",
    "registry_record_signing_key": "registry record-signing key ed25519",
    "rsa_pss_salt": "device signature rsa-pss salt",
}
#: Curve, scalar bytes, group order (SEC 2) and ECDSA hash of each EC key type.
CURVES: dict[str, tuple[ec.EllipticCurve, int, int, hashes.HashAlgorithm]] = {
    "p256": (
        ec.SECP256R1(), 32,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        hashes.SHA256(),
    ),
    "p384": (
        ec.SECP384R1(), 48,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
        hashes.SHA384(),
    ),
    "p521": (
        ec.SECP521R1(), 66,
        int("01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
        hashes.SHA512(),
    ),
}
SIGNED_AT = 1767323045  # 2026-01-02T03:04:05Z


def fixed(label: str, length: int) -> bytes:
    """SHAKE256(prefix + label), ``length`` bytes."""
    return hashlib.shake_256((LABEL_PREFIX + label).encode("ascii")).digest(length)


def F(value: bytes) -> bytes:  # noqa: N802 - the specification's name
    """A field: 4-byte big-endian length, then the bytes."""
    return struct.pack(">I", len(value)) + value


def decimal(number: int) -> bytes:
    return str(number).encode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def frame(document: str) -> bytes:
    payload = document.encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


def sixid_of(spki: bytes) -> tuple[bytes, str, str]:
    """(digest, canonical text, grouped text) of a DER SubjectPublicKeyInfo."""
    digest = hashlib.sha256(b"sixid-id-v1\x00" + spki).digest()[:20]
    canonical = base64.b32encode(digest).decode("ascii").rstrip("=").lower()
    grouped = "-".join(canonical[start : start + 4] for start in range(0, 32, 4))
    return digest, canonical, grouped


def pss_encode_sign(key: rsa.RSAPrivateKey, message: bytes, salt: bytes) -> bytes:
    """RSASSA-PSS-SIGN (RFC 8017 8.1.1, 9.1.1): SHA-384, MGF1-SHA-384, the salt given."""
    numbers = key.private_numbers()
    modulus = numbers.public_numbers.n
    em_bits = modulus.bit_length() - 1
    em_length = (em_bits + 7) // 8
    m_hash = hashlib.sha384(message).digest()
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_length - len(salt) - len(h) - 2) + b"\x01" + salt
    mask = bytearray()
    counter = 0
    while len(mask) < len(db):
        mask += hashlib.sha384(h + struct.pack(">I", counter)).digest()
        counter += 1
    masked = bytearray(x ^ y for x, y in zip(db, mask, strict=False))
    masked[0] &= 0xFF >> (8 * em_length - em_bits)
    encoded = int.from_bytes(bytes(masked) + h + b"\xbc", "big")
    return pow(encoded, numbers.d, modulus).to_bytes((modulus.bit_length() + 7) // 8, "big")


def verify_device_signature(public_key: Any, signature: bytes, data: bytes) -> None:
    """The device signature scheme of the key's type (InvalidSignature if it fails)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = {"secp256r1": hashes.SHA256(), "secp384r1": hashes.SHA384(), "secp521r1": hashes.SHA512()}
        public_key.verify(signature, data, ec.ECDSA(digest[public_key.curve.name]))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


def device_private_key(key_type: str, given: dict[str, str]) -> Any:
    """The device key the labels fix (RSA: the PKCS#8 given), checked against the file."""
    if key_type in CURVES:
        curve, size, order, _hash = CURVES[key_type]
        scalar = int.from_bytes(fixed(LABELS[f"device_key_{key_type}"], size + 8), "big") % (order - 1) + 1
        if given != {"scalar": f"{scalar:0{size * 2}x}"}:
            raise AssertionError("the device key's scalar differs")
        return ec.derive_private_key(scalar, curve)
    if key_type == "ed25519":
        raw = fixed(LABELS["device_key_ed25519"], 32)
        if given != {"ed25519_private_key": raw.hex()}:
            raise AssertionError("the device's Ed25519 key differs")
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    if set(given) != {"pkcs8"}:
        raise AssertionError("the RSA device key is not given as PKCS#8")
    key = serialization.load_der_private_key(bytes.fromhex(given["pkcs8"]), None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 3072 or key.public_key().public_numbers().e != 65537:
        raise AssertionError("the RSA device key is not an RSA-3072 key with e = 65537")
    return key


def device_signature(key_type: str, key: Any, data: bytes) -> bytes:
    """The device's signature: deterministic ECDSA (RFC 6979), Ed25519, or RSA-PSS with the
    vectors' salt."""
    if key_type in CURVES:
        return bytes(key.sign(data, ec.ECDSA(CURVES[key_type][3], deterministic_signing=True)))
    if key_type == "ed25519":
        return bytes(key.sign(data))
    return pss_encode_sign(key, data, fixed(LABELS["rsa_pss_salt"], 48))


def check(name: str, vectors: dict[str, Any]) -> None:
    """Recompute every value of one file; AssertionError (or the primitive's own error) on
    the first difference."""

    def same(actual: bytes | str | int | list[str] | dict[str, str], published: Any, what: str) -> None:
        if isinstance(actual, bytes):
            actual = actual.hex()
        if type(actual) is not type(published) or actual != published:
            raise AssertionError(f"{name}: {what} differs")

    key_type = name.removeprefix("sixid-").removesuffix(".json")
    same(vectors["title"], f"sixid known-answer vectors ({key_type} device key)", "title")
    same(vectors["version"], 1, "version")
    same(vectors["regenerate"], "python -m tools.kat_sixid", "regenerate")
    inputs = vectors["inputs"]
    same(inputs["key_type"], key_type, "key type")
    same(inputs["input_derivation"], f"SHAKE256('{LABEL_PREFIX}' + label)", "input derivation")
    same(inputs["labels"], LABELS, "labels")

    # The fixed inputs.
    signed_at = inputs["signed_at"]
    same(signed_at, SIGNED_AT, "signed_at")
    same(SIGNED_AT, int(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()), "the date")
    same(inputs["expires"], signed_at + 3600, "expires")
    same(inputs["accepted_at"], signed_at + 1, "accepted_at")
    same(inputs["verified_at"], signed_at + 60, "verified_at")
    same(inputs["seq"], signed_at * 1000 + 250, "seq")
    same(inputs["domain"], "example.org", "domain")
    same(inputs["owner"], "alice@example.org", "owner")
    same(inputs["endpoints"], ["2001:db8::4605 4605", "192.0.2.10 4605"], "endpoints")
    same(inputs["register_request_id"], 1, "register request id")
    same(inputs["lookup_request_id"], 2, "lookup request id")
    domain, owner = inputs["domain"], inputs["owner"]

    # The device key and its ID.
    key = device_private_key(key_type, inputs["device_key"])
    public_key = key.public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    same(spki, vectors["id"]["spki"], "SPKI")
    digest, canonical, grouped = sixid_of(spki)
    same(digest, vectors["id"]["digest"], "ID digest")
    same(canonical, vectors["id"]["canonical"], "canonical ID")
    same(grouped, vectors["id"]["grouped"], "grouped ID")
    same(f"{canonical}@{domain}", vectors["id"]["address"], "ID address")
    if len(canonical) != 32 or len(grouped) != 39 or base64.b32decode(canonical.upper()) != digest:
        raise AssertionError(f"{name}: the ID's text forms do not read back")

    # The certificates: root, issuing CA, the device's certificate for the device key.
    ders = inputs["certificates_der"]
    same(sorted(ders), ["device", "issuing_ca", "root_ca"], "certificates")
    root = x509.load_der_x509_certificate(bytes.fromhex(ders["root_ca"]))
    issuing = x509.load_der_x509_certificate(bytes.fromhex(ders["issuing_ca"]))
    device = x509.load_der_x509_certificate(bytes.fromhex(ders["device"]))
    for certificate, label in ((root, "root_ca"), (issuing, "issuing_ca"), (device, "device")):
        same(certificate.public_bytes(serialization.Encoding.DER), ders[label], f"{label} DER")
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    device.verify_directly_issued_by(issuing)
    same(device.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), spki.hex(),
         "the device certificate's key")
    names = device.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    same(names.get_values_for_type(x509.UniformResourceIdentifier), [f"irp:{owner}"], "the device certificate's identity")
    same(device.serial_number, 0x5100 + KEY_TYPES.index(key_type), "the device certificate's serial")

    # The registration and the device's signature.
    endpoints = [text.encode("ascii") for text in inputs["endpoints"]]
    registration = (
        b"SIXID-REGISTRATION-V1\x00" + F(domain.encode()) + F(canonical.encode()) + F(decimal(inputs["seq"]))
        + F(decimal(signed_at)) + F(decimal(inputs["expires"])) + F(decimal(len(endpoints)))
        + b"".join(F(endpoint) for endpoint in endpoints)
    )
    same(registration, vectors["registration"]["bytes"], "registration bytes")
    signature = bytes.fromhex(vectors["registration"]["device_signature"])
    verify_device_signature(public_key, signature, registration)
    same(device_signature(key_type, key, registration), vectors["registration"]["device_signature"], "device signature")

    # The registry's key and record.
    registry_raw = fixed(LABELS["registry_record_signing_key"], 32)
    same(registry_raw, inputs["registry_record_signing_key"], "registry key")
    registry = ed25519.Ed25519PrivateKey.from_private_bytes(registry_raw)
    same(registry.public_key().public_bytes_raw(), vectors["registration"]["registry_public_key"], "registry public key")
    tbs = (
        b"SIXID-RECORD-V1\x00" + F(domain.encode()) + F(canonical.encode()) + F(owner.encode())
        + F(decimal(inputs["accepted_at"])) + F(registration) + F(spki) + F(signature)
    )
    same(tbs, vectors["record"]["signing_bytes"], "record signing bytes")
    registry_signature = registry.sign(tbs)
    same(registry_signature, vectors["record"]["registry_signature"], "registry signature")
    registry.public_key().verify(bytes.fromhex(vectors["record"]["registry_signature"]), tbs)
    record = tbs + F(registry_signature)
    same(record, vectors["record"]["signed_record"], "signed record")
    same(b64(record), vectors["record"]["signed_record_base64"], "signed record base64")

    # The frames.
    frames = vectors["frames"]
    register = (
        f'<request v="1" id="{inputs["register_request_id"]}"><register>'
        f"<registration>{b64(registration)}</registration><key>{b64(spki)}</key>"
        f"<signature>{b64(signature)}</signature>"
        f"<certificate>{b64(bytes.fromhex(ders['device']))}</certificate>"
        f"<certificate>{b64(bytes.fromhex(ders['issuing_ca']))}</certificate>"
        "</register></request>"
    )
    same(register, frames["register_request"], "register request")
    same(frame(register), frames["register_request_frame"], "register request frame")
    lookup = f'<request v="1" id="{inputs["lookup_request_id"]}"><lookup sixid="{canonical}"/></request>'
    same(lookup, frames["lookup_request"], "look-up request")
    same(frame(lookup), frames["lookup_request_frame"], "look-up request frame")
    head = f'<response id="{inputs["lookup_request_id"]}" pad="'
    tail = f'"><record>{b64(record)}</record></response>'
    pad = (256 - (len(head) + len(tail)) % 256) % 256
    answer = head + "x" * pad + tail
    same(answer, frames["lookup_answer"], "look-up answer")
    same(pad, frames["lookup_answer_pad"], "look-up answer pad")
    same(len(answer), frames["lookup_answer_length"], "look-up answer length")
    if len(answer) % 256 or not 0 <= pad <= 255:
        raise AssertionError(f"{name}: the answer is not padded to a multiple of 256 bytes")
    same(frame(answer), frames["lookup_answer_frame"], "look-up answer frame")

    # Every value was looked at (a new one needs a check here).
    same(sorted(vectors), ["frames", "id", "inputs", "notes", "record", "regenerate", "registration", "title", "version"], "sections")
    same(sorted(frames), sorted([
        "register_request", "register_request_frame", "lookup_request", "lookup_request_frame", "lookup_answer",
        "lookup_answer_pad", "lookup_answer_length", "lookup_answer_frame",
    ]), "frames")
    same(sorted(vectors["record"]), ["registry_signature", "signed_record", "signed_record_base64", "signing_bytes"], "record")
    same(sorted(vectors["registration"]), ["bytes", "device_signature", "registry_public_key"], "registration")
    same(sorted(vectors["id"]), ["address", "canonical", "digest", "grouped", "spki"], "id")
    same(sorted(inputs), sorted([
        "accepted_at", "certificates_der", "device_key", "domain", "endpoints", "expires", "input_derivation",
        "key_type", "labels", "lookup_request_id", "owner", "register_request_id", "registry_record_signing_key",
        "seq", "signed_at", "verified_at",
    ]), "inputs")


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every leaf value of a JSON document."""
    if isinstance(value, dict):
        for key in value:
            yield from leaves(value[key], (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path


def changed_value(value: Any) -> Any:
    """``value`` changed a little: an integer by one, a text in its last character (a hex
    text stays hex)."""
    if isinstance(value, int):
        return value + 1
    assert isinstance(value, str) and value
    return value[:-1] + ("1" if value[-1] == "0" else "0")


# ---------------------------------------------------------------------------------------
# The tests


class IndependentTests(TestCase):
    """Every value recomputed from the specification alone."""

    def test_files(self) -> None:
        published = sorted(name for name in os.listdir(FOLDER) if name.startswith("sixid-"))
        self.assertEqual(published, sorted(FILES))

    def test_recompute(self) -> None:
        for name in FILES:
            with self.subTest(file=name):
                check(name, load(name))

    def test_notes(self) -> None:
        for name in FILES:
            notes = load(name)["notes"]
            self.assertIn("deterministic", notes)
            self.assertEqual("RSA-PSS" in notes, name == "sixid-rsa3072.json")

    def test_record_fits_frame_and_limits(self) -> None:
        for name in FILES:
            vectors = load(name)
            self.assertLessEqual(len(bytes.fromhex(vectors["registration"]["bytes"])), 1024)
            self.assertLessEqual(len(bytes.fromhex(vectors["record"]["signed_record"])), 4096)
            self.assertLessEqual(len(bytes.fromhex(vectors["frames"]["register_request_frame"])) - 4, 32 * 1024)


#: What the check raises for a changed value: its own AssertionError, or the primitives'
#: refusal of a changed key, certificate or signature.
REFUSALS = (AssertionError, ValueError, InvalidSignature)


class MutationTests(TestCase):
    """Changing any single published value (but the notes) makes the check fail."""

    def test_every_value(self) -> None:
        for name in ("sixid-p256.json", "sixid-ed25519.json", "sixid-rsa3072.json"):
            vectors = load(name)
            check(name, vectors)  # unchanged, it passes
            paths = [path for path in leaves(vectors) if path != ("notes",)]
            self.assertGreater(len(paths), 40)
            for path in paths:
                changed = copy.deepcopy(vectors)
                holder = changed
                for key in path[:-1]:
                    holder = holder[key]
                holder[path[-1]] = changed_value(holder[path[-1]])
                with self.subTest(file=name, path=path):
                    self.assertRaises(REFUSALS, check, name, changed)


class LibraryTests(TestCase):
    """The library reproduces the published values and accepts them."""

    def test_library(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from common.endpoint import Endpoint
        from common.identity import Identity
        from common.wire.framing import encode_frame
        from sixid.ids import SixId, SixIdAddress, derive_id, spki_der
        from sixid.records import (
            Record,
            Registration,
            SignedRecord,
            SignedRegistration,
            sign_record,
            sign_registration,
            verify_record,
        )
        from sixid.wire import (
            Lookup,
            RecordResult,
            Register,
            Request,
            Response,
            encode_record_response,
            encode_request,
            encode_response,
            match_lookup,
            parse_answer,
            parse_request,
            record_base64,
        )

        for name in FILES:
            with self.subTest(file=name):
                vectors = load(name)
                inputs = vectors["inputs"]
                key_type = inputs["key_type"]
                key = device_private_key(key_type, inputs["device_key"])
                sixid = derive_id(key.public_key())
                self.assertEqual(spki_der(key.public_key()).hex(), vectors["id"]["spki"])
                self.assertEqual(sixid.digest.hex(), vectors["id"]["digest"])
                self.assertEqual(str(sixid), vectors["id"]["canonical"])
                self.assertEqual(sixid.grouped(), vectors["id"]["grouped"])
                self.assertEqual(SixId.parse(vectors["id"]["grouped"].upper()), sixid)
                address = SixIdAddress.parse(vectors["id"]["address"])
                self.assertEqual(address, SixIdAddress(sixid, inputs["domain"]))
                self.assertEqual(str(address), vectors["id"]["address"])

                endpoints = tuple(Endpoint.parse(*text.split(" ")) for text in inputs["endpoints"])
                registration = Registration(
                    inputs["domain"], sixid, inputs["seq"], inputs["signed_at"], inputs["expires"], endpoints
                )
                data = registration.to_bytes()
                self.assertEqual(data.hex(), vectors["registration"]["bytes"])
                self.assertEqual(Registration.from_bytes(data), registration)
                ders = inputs["certificates_der"]
                certificates = (bytes.fromhex(ders["device"]), bytes.fromhex(ders["issuing_ca"]))
                signature = bytes.fromhex(vectors["registration"]["device_signature"])
                published = SignedRegistration(data, spki_der(key.public_key()), signature, certificates)
                self.assertEqual(published.verify(), registration)
                if key_type != "rsa3072":  # deterministic: the library's own signature is the same
                    self.assertEqual(sign_registration(key, registration, certificates), published)
                else:
                    self.assertEqual(sign_registration(key, registration, certificates).verify(), registration)

                registry = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inputs["registry_record_signing_key"]))
                record = Record(
                    inputs["domain"], sixid, inputs["owner"], inputs["accepted_at"], data, published.spki, signature
                )
                self.assertEqual(record.signing_bytes().hex(), vectors["record"]["signing_bytes"])
                signed = sign_record(registry, record)
                self.assertEqual(signed.signature.hex(), vectors["record"]["registry_signature"])
                record_bytes = bytes.fromhex(vectors["record"]["signed_record"])
                self.assertEqual(signed.to_bytes(), record_bytes)
                self.assertEqual(SignedRecord.from_bytes(record_bytes), signed)
                self.assertEqual(record_base64(record_bytes).decode(), vectors["record"]["signed_record_base64"])
                verified = verify_record(
                    record_bytes, expected=address, signer=registry.public_key(), now=inputs["verified_at"]
                )
                self.assertEqual(verified.owner, Identity.parse(inputs["owner"]))
                self.assertEqual(verified.endpoints, endpoints)
                self.assertEqual((verified.seq, verified.expires), (inputs["seq"], inputs["expires"]))

                frames = vectors["frames"]
                register = encode_request(Request(inputs["register_request_id"], Register(published)))
                self.assertEqual(register.decode(), frames["register_request"])
                self.assertEqual(encode_frame(register).hex(), frames["register_request_frame"])
                self.assertEqual(parse_request(register), Request(inputs["register_request_id"], Register(published)))
                lookup = encode_request(Request(inputs["lookup_request_id"], Lookup(sixid)))
                self.assertEqual(lookup.decode(), frames["lookup_request"])
                self.assertEqual(encode_frame(lookup).hex(), frames["lookup_request_frame"])
                self.assertEqual(match_lookup(lookup), (inputs["lookup_request_id"], str(sixid)))
                self.assertEqual(parse_request(lookup), Request(inputs["lookup_request_id"], Lookup(sixid)))
                answer = encode_record_response(inputs["lookup_request_id"], record_base64(record_bytes))
                self.assertEqual(answer.decode(), frames["lookup_answer"])
                self.assertEqual(encode_response(inputs["lookup_request_id"], RecordResult(record_bytes)), answer)
                self.assertEqual(encode_frame(answer).hex(), frames["lookup_answer_frame"])
                self.assertEqual(
                    parse_answer(answer), Response(inputs["lookup_request_id"], RecordResult(record_bytes))
                )


class RegenerationTests(TestCase):
    """The generator writes the published files again, byte for byte (every value is
    deterministic: RSA-PSS takes its salt from a label)."""

    def test_regenerate(self) -> None:
        from tools import kat_sixid

        self.assertEqual(kat_sixid.FILES, FILES)
        folder = self.mktemp()
        os.mkdir(folder)
        self.assertEqual(kat_sixid.main(["--write", folder]), 0)
        for name in FILES:
            with (
                open(os.path.join(folder, name), encoding="utf-8") as written,
                open(os.path.join(FOLDER, name), encoding="utf-8") as published,
            ):
                self.assertEqual(written.read(), published.read(), name)

    def test_labels(self) -> None:
        from tools import kat_sixid

        self.assertEqual(kat_sixid.LABELS, LABELS)
        self.assertEqual(kat_sixid.LABEL_PREFIX, LABEL_PREFIX)


class SpecificationTests(TestCase):
    """What docs/sixid.rst states agrees with the library and the vectors."""

    def assertStated(self, figure: str, text: str) -> None:  # noqa: N802 - as assertIn
        """``figure`` is in ``text`` (white space normalised); the message names only it."""
        if " ".join(figure.split()) not in " ".join(text.split()):
            self.fail(f"docs/sixid.rst does not state: {figure}")

    def text(self) -> str:
        with open(os.path.join(os.path.dirname(FOLDER), "sixid.rst"), encoding="utf-8") as stream:
            return stream.read()

    def test_errors_table(self) -> None:
        from common.errors import subclasses_of
        from sixid import errors

        text = self.text()
        section = text[text.index("\nErrors\n======\n") :]
        lines = section.splitlines()
        # The table's borders (the title's underline has no column gap).
        borders = [index for index, line in enumerate(lines) if line.startswith("=") and " =" in line]
        rows = set()
        for line in lines[borders[1] + 1 : borders[2]]:
            if line[:1].isdigit():
                code, name, fatal = line.split()[:3]
                rows.add((int(code), name.strip("`"), fatal == "yes"))
        hierarchy: list[type[errors.SixidError]] = [errors.SixidError, *subclasses_of(errors.SixidError)]
        classes = {(cls.code, cls.name, cls.fatal) for cls in hierarchy}
        wire = {row for row in classes if row[0] != 0}
        # The non-fatal too-large is in the hierarchy but never sent (the text says so).
        self.assertEqual(rows, wire - {(413, "too-large", False)})
        self.assertStated("Code 413 also has a non-fatal form in the error hierarchy which version 1 servers do not send", text)
        for _code, name, _fatal in classes - wire:
            self.assertStated(f"``{name}``", text)

    def test_figures(self) -> None:
        from sixid import records, wire

        text = " ".join(self.text().split())
        ed25519 = load("sixid-ed25519.json")
        registration = bytes.fromhex(ed25519["registration"]["bytes"])
        record = bytes.fromhex(ed25519["record"]["signed_record"])
        frames = ed25519["frames"]
        self.assertStated(f"**The registration** ({len(registration)} bytes", text)
        self.assertStated(f"**The record** ({len(record)} bytes", text)
        self.assertStated(f"F(registration) {len(registration):08x} then the {len(registration)} bytes", text)
        self.assertStated(f"``frames.register_request``, {len(frames['register_request'])} bytes", text)
        self.assertStated(f"``{len(frames['register_request']):08x}``", text)
        self.assertStated(f"``{len(frames['lookup_request']):08x}`` + {len(frames['lookup_request'])} bytes", text)
        b64_length = len(ed25519["record"]["signed_record_base64"])
        unpadded = frames["lookup_answer_length"] - frames["lookup_answer_pad"]
        self.assertStated(f"+ {b64_length} + ``len('</record></response>')`` (20) = {unpadded} bytes", text)
        self.assertStated(f"mod 256 = {frames['lookup_answer_pad']}``, so the answer is {frames['lookup_answer_length']} bytes", text)
        self.assertStated(f"``{frames['lookup_answer_length']:08x}``", text)
        lengths = {name: load(name)["frames"]["lookup_answer_length"] for name in FILES}
        self.assertEqual(
            [lengths[f"sixid-{key_type}.json"] for key_type in KEY_TYPES], [768, 1024, 1024, 768, 1792]
        )
        self.assertStated("a look-up answer is 768 bytes for an Ed25519 or P-256 device key, 1024 for P-384 or P-521, and 1792 for RSA-3072", text)
        from sixid.ids import SixId

        gone = wire.encode_gone_push(SixId(bytes(20)))
        pad = len(gone.split(b'"')[1])
        self.assertStated(f"The ``<gone>`` push is always {len(gone)} bytes (``k`` = {pad})", text)
        for figure in (
            f"**{wire.MAX_FRAME}** (32 KiB)",
            f"**{records.MAX_REGISTRATION} bytes**",
            f"**{records.MAX_RECORD} bytes**",
            f"**{records.MAX_SPKI} bytes**",
            f"1 to **{records.MAX_DEVICE_SIGNATURE}** bytes",
            f"at most **{wire.MAX_OUTSTANDING} outstanding**",
            f"multiple of **{wire.PAD_UNIT}** bytes",
            f"at most {wire.MAX_PAD} of them",
            f"0 to {wire.MAX_CERTIFICATES}, each at most {wire.MAX_CERTIFICATE} bytes",
            f"{wire.SIGNER_CERTIFICATES}, each at most {wire.MAX_SIGNER_CERTIFICATE} bytes",
            f"0 to {records.MAX_ENDPOINTS} endpoints",
            "At most 4 levels deep and 10 elements per document",
        ):
            self.assertStated(figure, text)
