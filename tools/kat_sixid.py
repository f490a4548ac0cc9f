"""Known-answer vectors for sixid: ``python -m tools.kat_sixid``.

Writes ``docs/vectors/sixid-<keytype>.json`` for every key type an ID may have (P-256,
P-384, P-521, Ed25519, RSA-3072): the device's fixed key, its SubjectPublicKeyInfo and ID
(both text forms), a certified registration (its bytes and the device's signature), the
registry's fixed Ed25519 record-signing key, the record (signing bytes, registry
signature, signed record), and three frames: the register request, a look-up request and
the padded look-up answer. docs/sixid.rst states every rule they follow; ``--write DIR``
writes elsewhere, ``--print KEYTYPE`` prints one file.

How the inputs are fixed:

* Every secret byte string is SHAKE256("sixid 1 known-answer vectors: " + label); the
  labels are in :data:`LABELS`. An EC device key's scalar is the label's output (the
  curve's size plus 8 bytes) read as big-endian x, then (x mod (n - 1)) + 1; an Ed25519
  key is the label's 32 bytes; the registry's Ed25519 key likewise.
* RSA keys cannot be derived from a label: the RSA-3072 device key is the one of
  :mod:`tools.kat_extra`. RSA-PSS is randomised: its salt here comes from a label so that
  the files are reproducible, but an implementation's own signatures differ, and the
  vectors' RSA signature is to be verified, not reproduced.
* The device certificate (``alice@example.org``, making the record's owner) is issued by
  the issuing CA of :mod:`tools.kat`, serial 0x5100 + the key type's index.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from common.endpoint import Endpoint
from common.pki.keyfiles import PrivateKey
from common.wire.framing import encode_frame
from sixid import PROTOCOL_VERSION
from sixid.ids import SixIdAddress, derive_id, spki_der
from sixid.records import Record, Registration, SignedRegistration, sign_record, sign_registration, verify_record
from sixid.wire import Lookup, Register, Request, encode_record_response, encode_request, pad_length, record_base64
from tools import kat, kat_extra

#: The key types of the vector files, in file-name form.
KEY_TYPES: Final = ("p256", "p384", "p521", "ed25519", "rsa3072")
FILES: Final = tuple(f"sixid-{key_type}.json" for key_type in KEY_TYPES)
VECTORS_FOLDER: Final = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "vectors")

#: The prefix of every label.
LABEL_PREFIX: Final = "sixid 1 known-answer vectors: "
#: Labels of the fixed secret inputs.
LABELS: Final = {
    "device_key_p256": "device key p256",
    "device_key_p384": "device key p384",
    "device_key_p521": "device key p521",
    "device_key_ed25519": "device key ed25519",
    "registry_record_signing_key": "registry record-signing key ed25519",
    "rsa_pss_salt": "device signature rsa-pss salt",
}

DOMAIN: Final = kat.DOMAIN
OWNER: Final = kat.INITIATOR
#: The registration is signed at 2026-01-02T03:04:05Z, valid for an hour.
SIGNED_AT: Final = int(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp())
EXPIRES: Final = SIGNED_AT + 3600
ACCEPTED_AT: Final = SIGNED_AT + 1
#: seq: Unix time in milliseconds, as clients without a counter use.
SEQ: Final = SIGNED_AT * 1000 + 250
ENDPOINTS: Final = (Endpoint.parse("2001:db8::4605", 4605), Endpoint.parse("192.0.2.10", 4605))
REGISTER_REQUEST_ID: Final = 1
LOOKUP_REQUEST_ID: Final = 2
#: When the look-up's answer is verified.
VERIFIED_AT: Final = SIGNED_AT + 60

#: The group orders of the curves (SEC 2).
CURVE_ORDERS: Final = {
    "p256": int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16),
    "p384": int(
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
    ),
    "p521": int(
        "01ff" + "ffffffff" * 7 + "fffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409", 16
    ),
}
_CURVES: Final = {"p256": (ec.SECP256R1, 32), "p384": (ec.SECP384R1, 48), "p521": (ec.SECP521R1, 66)}


def fixed_bytes(label: str, length: int) -> bytes:
    """SHAKE256(LABEL_PREFIX + label), ``length`` bytes."""
    return hashlib.shake_256((LABEL_PREFIX + label).encode("ascii")).digest(length)


def device_key(key_type: str) -> PrivateKey:
    """The fixed device key of ``key_type``."""
    if key_type in _CURVES:
        curve, size = _CURVES[key_type]
        raw = fixed_bytes(LABELS[f"device_key_{key_type}"], size + 8)
        scalar = int.from_bytes(raw, "big") % (CURVE_ORDERS[key_type] - 1) + 1
        return ec.derive_private_key(scalar, curve())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(fixed_bytes(LABELS["device_key_ed25519"], 32))
    if key_type == "rsa3072":
        key = serialization.load_der_private_key(kat_extra.RSA_LEAF_KEY_PKCS8, None)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 3072:
            raise TypeError("the RSA vector key is not an RSA-3072 key")
        return key
    raise ValueError(f"no vectors for key type {key_type!r}")


def registry_key() -> ed25519.Ed25519PrivateKey:
    """The registry's fixed record-signing key."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(fixed_bytes(LABELS["registry_record_signing_key"], 32))


def _key_input(key_type: str, key: PrivateKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        width = _CURVES[key_type][1] * 2
        return {"scalar": f"{key.private_numbers().private_value:0{width}x}"}
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"ed25519_private_key": key.private_bytes_raw().hex()}
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {"pkcs8": der.hex()}


def _sign(key: PrivateKey, registration: Registration, certificates: tuple[bytes, ...]) -> SignedRegistration:
    """The library's signature, except RSA-PSS: with the vectors' fixed salt."""
    if not isinstance(key, rsa.RSAPrivateKey):
        return sign_registration(key, registration, certificates)
    data = registration.to_bytes()
    signature = kat_extra.pss_sign(key, data, fixed_bytes(LABELS["rsa_pss_salt"], 48))
    return SignedRegistration(data, spki_der(key.public_key()), signature, certificates)


def generate_vectors(key_type: str) -> dict[str, Any]:
    """Make the vectors of ``key_type``; return them, JSON-ready."""
    key = device_key(key_type)
    pki = kat.make_pki()
    issuing_key = kat.fixed_p256_key(kat.LABELS["issuing_ca_key"])
    leaf = kat._certificate(
        subject=kat._name(OWNER.username), key=key, issuer=pki["issuing"].subject, issuer_key=issuing_key,
        serial=0x5100 + KEY_TYPES.index(key_type), ca_path_length=None, identity=OWNER,
    )
    der = serialization.Encoding.DER
    certificates = (leaf.public_bytes(der), pki["issuing"].public_bytes(der))
    spki = spki_der(key.public_key())
    sixid = derive_id(key.public_key())
    address = SixIdAddress(sixid, DOMAIN)
    registration = Registration(DOMAIN, sixid, SEQ, SIGNED_AT, EXPIRES, ENDPOINTS)
    signed = _sign(key, registration, certificates)
    if signed.verify() != registration:
        raise AssertionError("the registration does not verify")
    record = Record(DOMAIN, sixid, str(OWNER), ACCEPTED_AT, signed.registration_bytes, spki, signed.signature)
    signed_record = sign_record(registry_key(), record)
    record_bytes = signed_record.to_bytes()
    verified = verify_record(record_bytes, expected=address, signer=registry_key().public_key(), now=VERIFIED_AT)
    if verified.owner != OWNER or verified.endpoints != ENDPOINTS:
        raise AssertionError("the record does not verify to what was registered")
    register = encode_request(Request(REGISTER_REQUEST_ID, Register(signed)))
    lookup = encode_request(Request(LOOKUP_REQUEST_ID, Lookup(sixid)))
    answer = encode_record_response(LOOKUP_REQUEST_ID, record_base64(record_bytes))
    return {
        "title": f"sixid known-answer vectors ({key_type} device key)",
        "version": PROTOCOL_VERSION,
        "regenerate": "python -m tools.kat_sixid",
        "notes": (
            "RSA-PSS signatures are randomised: the device signature of the rsa3072 file uses the"
            " salt of the label rsa_pss_salt so that the file is reproducible; implementations"
            " verify it. ECDSA (RFC 6979, the curve's hash) and Ed25519 signatures are"
            " deterministic and reproduced exactly."
            if key_type == "rsa3072"
            else "ECDSA signatures are deterministic (RFC 6979, with the curve's hash); Ed25519 is"
            " deterministic: every value is reproduced exactly."
        ),
        "inputs": {
            "input_derivation": f"SHAKE256('{LABEL_PREFIX}' + label)",
            "labels": dict(LABELS),
            "key_type": key_type,
            "device_key": _key_input(key_type, key),
            "registry_record_signing_key": registry_key().private_bytes_raw().hex(),
            "certificates_der": {
                "root_ca": kat._der(pki["root"]),
                "issuing_ca": kat._der(pki["issuing"]),
                "device": leaf.public_bytes(der).hex(),
            },
            "domain": DOMAIN,
            "owner": str(OWNER),
            "seq": SEQ,
            "signed_at": SIGNED_AT,
            "expires": EXPIRES,
            "endpoints": [f"{endpoint.address} {endpoint.port}" for endpoint in ENDPOINTS],
            "accepted_at": ACCEPTED_AT,
            "register_request_id": REGISTER_REQUEST_ID,
            "lookup_request_id": LOOKUP_REQUEST_ID,
            "verified_at": VERIFIED_AT,
        },
        "id": {
            "spki": spki.hex(),
            "digest": sixid.digest.hex(),
            "canonical": str(sixid),
            "grouped": sixid.grouped(),
            "address": str(address),
        },
        "registration": {
            "bytes": signed.registration_bytes.hex(),
            "device_signature": signed.signature.hex(),
            "registry_public_key": registry_key().public_key().public_bytes_raw().hex(),
        },
        "record": {
            "signing_bytes": record.signing_bytes().hex(),
            "registry_signature": signed_record.signature.hex(),
            "signed_record": record_bytes.hex(),
            "signed_record_base64": record_base64(record_bytes).decode("ascii"),
        },
        "frames": {
            "register_request": register.decode("ascii"),
            "register_request_frame": encode_frame(register).hex(),
            "lookup_request": lookup.decode("ascii"),
            "lookup_request_frame": encode_frame(lookup).hex(),
            "lookup_answer": answer.decode("ascii"),
            "lookup_answer_pad": _pad_of(answer),
            "lookup_answer_length": len(answer),
            "lookup_answer_frame": encode_frame(answer).hex(),
        },
    }


def _pad_of(document: bytes) -> int:
    """The number of ``x`` in the document's ``pad`` attribute (0 to 255)."""
    start = document.index(b' pad="') + len(b' pad="')
    count = document.index(b'"', start) - start
    if len(document) % 256 or count != pad_length(len(document) - count):
        raise AssertionError("the answer is not padded to a multiple of 256 bytes")
    return count


def write_all(folder: str) -> None:
    """Write every vector file into ``folder``."""
    kat.write_per_key_type(folder, generate_vectors, KEY_TYPES, FILES)


def main(argv: list[str] | None = None) -> int:
    """Write every file into docs/vectors (or --write DIR), or print one (--print KEYTYPE)."""
    return kat.per_key_type_main(argv, __doc__, generate_vectors, KEY_TYPES, FILES, VECTORS_FOLDER)


if __name__ == "__main__":
    raise SystemExit(main())

