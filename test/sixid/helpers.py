"""Fixtures the sixid tests share: one key of each accepted type, signed registrations and
records made with them."""

from __future__ import annotations

import functools
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.endpoint import Endpoint
from common.pki.keyfiles import PrivateKey
from sixid.ids import SixIdAddress, derive_id
from sixid.records import Record, Registration, SignedRecord, SignedRegistration, sign_record, sign_registration
from test.pki import rsa_key

DOMAIN: Final = "example.org"
#: The key types an ID may have.
KEY_TYPES: Final = ("p256", "p384", "p521", "ed25519", "rsa3072")
#: The times of the fixtures: signed at NOW, valid for an hour.
NOW: Final = 1_780_000_000
EXPIRES: Final = NOW + 3600
ENDPOINTS: Final = (Endpoint.parse("2001:db8::7", 4605), Endpoint.parse("192.0.2.7", 4605))


@functools.cache
def device_key(key_type: str) -> PrivateKey:
    """One private key of ``key_type`` (made once per test run)."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa3072":
        return rsa_key(3072)
    raise ValueError(key_type)


@functools.cache
def registry_key() -> ed25519.Ed25519PrivateKey:
    """The registry's record-signing key."""
    return ed25519.Ed25519PrivateKey.generate()


def address_of(key_type: str, domain: str = DOMAIN) -> SixIdAddress:
    """The address of ``key_type``'s ID at ``domain``."""
    return SixIdAddress(derive_id(device_key(key_type).public_key()), domain)


def registration(key_type: str, *, seq: int = 1, signed_at: int = NOW, expires: int = EXPIRES,
                 endpoints: tuple[Endpoint, ...] = ENDPOINTS, domain: str = DOMAIN) -> Registration:
    """A registration of ``key_type``'s ID."""
    return Registration(domain, address_of(key_type).sixid, seq, signed_at, expires, endpoints)


def signed_registration(key_type: str, **fields: object) -> SignedRegistration:
    """A registration of ``key_type``'s ID signed by its key."""
    return sign_registration(device_key(key_type), registration(key_type, **fields))  # type: ignore[arg-type]


def record_of(signed: SignedRegistration, *, owner: str = "", accepted_at: int = NOW + 1) -> Record:
    """The record the registry makes of ``signed``."""
    parsed = signed.registration
    return Record(parsed.domain, parsed.sixid, owner, accepted_at, signed.registration_bytes, signed.spki, signed.signature)


def signed_record(key_type: str, *, owner: str = "", **fields: object) -> SignedRecord:
    """A record of ``key_type``'s ID signed by :func:`registry_key`."""
    return sign_record(registry_key(), record_of(signed_registration(key_type, **fields), owner=owner))
