"""Known-answer vectors for SixChat 1: ``python -m tools.kat --write PATH``.

One complete handshake between alice@example.org (initiator) and bob@example.org
(responder) with every input fixed, and the first records after it. The published file,
``docs/vectors/handshake.json``, lists the inputs and every output: each frame's exact
bytes, the transcript hashes, all secrets, traffic keys and IVs, the decrypted ``<auth>``
contents and the first records. An independent implementation can check itself against it.
The same handshake with P-384 and Ed25519 leaf keys, and the RSA-PSS, exporter, close and
alert vectors, are written by ``python -m tools.kat --write-all docs/vectors`` (see
:mod:`tools.kat_extra`); docs/sixchat.rst states every rule they follow.

How the inputs are fixed:

* Every secret byte string is SHAKE256("SixChat 1 known-answer vectors: " + label); the
  labels are in :data:`LABELS`. ECDSA scalars are such strings (32 bytes for P-256, 48 for
  P-384) read as big-endian integers x and mapped to (x mod (n - 1)) + 1.
* Certificates (root CA, issuing CA, two users) use fixed serials and dates and
  deterministic ECDSA (RFC 6979), so they are byte-for-byte reproducible.
* ML-KEM-768 encapsulation is randomised, so its result is an input: the ciphertext and
  shared secret below were made once by encapsulating to the initiator's key (the tests
  check that the initiator's key decapsulates the ciphertext to that shared secret).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.identity import Identity
from sixchat.handshake import (
    EphemeralKeys,
    Handshake,
    HandshakeComplete,
    HandshakeEvent,
    LocalCredentials,
    PeerNeedsVerification,
    Role,
    SendData,
)
from sixchat.keyschedule import finished_key, traffic_keys
from sixchat.record import DataReceived, MessageReceived, Session
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake

DOMAIN: Final = "example.org"
INITIATOR: Final = Identity("alice", DOMAIN)
RESPONDER: Final = Identity("bob", DOMAIN)

#: Labels of the fixed secret inputs (see the module documentation).
LABELS: Final = {
    "root_ca_key": "root CA key",
    "issuing_ca_key": "issuing CA key",
    "initiator_leaf_key": "initiator leaf key",
    "responder_leaf_key": "responder leaf key",
    "initiator_x25519_private_key": "initiator x25519 private key",
    "responder_x25519_private_key": "responder x25519 private key",
    "initiator_mlkem768_seed": "initiator mlkem768 seed",
    "initiator_random": "initiator random",
    "responder_random": "responder random",
}

#: The fixed ML-KEM-768 encapsulation to the initiator's key.
MLKEM768_SHARED_SECRET: Final = bytes.fromhex(
    "de14e779092e90d151b35c8c8bc3df590f0b47592f797508e33315505a5adf64"
)
MLKEM768_CIPHERTEXT: Final = bytes.fromhex(
    "97567d087661525dd3ad1cf25bbee62730333ffac28d5c34eb8b005f16863f87369b05f6"
    "a5489e3d1915fe20e5f820aa641f70e5140debd445c28e5563fbc3d7327c6a1802526295"
    "87fc58a3e85bbccd2b1676a9da840e17fc373f92662b408bc585327c29becf3afb67aeee"
    "ce74e841b5ac4b3f02df999b99b243639cbbdd24be5a4133245f3b45cc48d1204776f5f9"
    "ae039951514be7d45528bb1aa68461a15ec4f579969e92f1e3bcb83aa5291d66f02ff6f2"
    "e9b9af73cdcbb28f302b88bdca25c912b6c15c920989b423fd30f009fda196bbd17e9e41"
    "9557c7bae3e2e5c9a7f0bc5a7ca43ddb9f158f95e819da610e1623ff6586f4a4a50c4850"
    "772eafb3a329156eb6a1c4c6b18b8f421674a97f27ef4f5dd2ba231816f641a83af26881"
    "4cd1f5100e389079c29016be6771d3e94047513cdfd29e966e8ba24c4dbc9309b0d69432"
    "bd6e60a3ce6762c30ecd11a8e8066be3cb564580052118fd38465d695925eecfbc15227c"
    "e1fe1f108fe68803d02705f612cfaf594b6bd5f4384d7538adee9795651d0c6a5c0e262b"
    "877bb19726116f0ee12b24b2c07c6ab46c1d6c6327373eb2a0c2f11cd305fa0a392181d6"
    "b546ff51b70d2f7995225fd2254cf088f56252f78c7f25dcee874781072e8fbdfbdebd15"
    "8bfe646c30b64d944c77856f9460f231e6fe514f71319c7a915e9afd69f16a9b7fa8f5f9"
    "092300186a5066bf73ba346e5a5d925bcfb5d5d868c598db4b3a4744a8bb61deb6dcb950"
    "aaa1e735d5d5b275c2beb986b4b041f1f1742417eb81bd68305503a905568e0cb0f3fed1"
    "df2b572c0d77b8e9318c47ff090d2fc044d470772f2fe774fb35eaa8136551887cd9bd28"
    "0167dd4d751f51a7603368c280a28e5a0550eb88ad0117dbda08e9a6468403bb126d48b0"
    "46fad7990ec15210949f80e07e8eef504edba44de4dae3935d1da0fddc81fb7e77216eff"
    "ce5f07a6c321d903b63e837c6066dc5f0c521539fa78467a11d9b42f63977cb31adb5862"
    "9aaf9adbb9490389158661cb4f66faf8964c56b1c47429327c9657b3b00c6f6b17cf6bd6"
    "3ec59670fbee393a7983b964aee095fc6045c046af3bca91a8b9c9e25d7fe1c6dbd49401"
    "bb0a355be903047e851e6510dd4ea8042502512abdd8f3893e9f60572318eaad1c408e43"
    "c90227ddb2f0ed7cb3a089d116d3c0bdfc764f6ed58c2a0c006200073b37d7be21ff00d4"
    "4bc32a97be7c14d03c4b280f9a16692b3de1190de413ddeb5bf15426fd6a9a4fd7379e45"
    "f14e74496c8ff2b349b81fad2c0c822b10e2fe6d62a2e18bf8439e036ad435d57ed02b01"
    "4c3aece91e7017bce3938c75ca79e98650d52874914b3d03c6a22c1b01e80a9078febe69"
    "c6c0e557abfc8fb7383ebdd25d3f8639c8da2a6b6e3740b35fdfcc67cc3bd0c1e5d88944"
    "fbc951e5a8d7d59c366d1aa29f20bf3ecfa2f8b7464f3f06b859507cc23fc83d532fa957"
    "f3f59bde4ffdc88cd67d8694300d67a8a7d97ac573cc48e31b97310317e7bfa0dd89eb74"
    "62f47ef8fc07d4f0"
)

NOT_BEFORE: Final = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER: Final = datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC)

#: The application traffic of the vectors.
FIRST_MESSAGE: Final = wire_application.ChatMessage(
    text="Hello, Bob!",
    id="00000000-0000-4000-8000-000000000001",
    sent=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
)
FIRST_REPLY: Final = wire_application.Receipt(id="00000000-0000-4000-8000-000000000001")
DATA_AFTER_KEY_UPDATE: Final = b"SixChat 1 data after a key update"

_P256_ORDER: Final = int(
    "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16
)


def fixed_bytes(label: str, length: int) -> bytes:
    """SHAKE256("SixChat 1 known-answer vectors: " + label), ``length`` bytes."""
    return hashlib.shake_256(
        b"SixChat 1 known-answer vectors: " + label.encode("ascii")
    ).digest(length)


def fixed_p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose scalar is fixed_bytes(label, 32) reduced into [1, n-1]."""
    scalar = int.from_bytes(fixed_bytes(label, 32), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DOMAIN),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    *,
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    ca_path_length: int | None,
    identity: Identity | None = None,
) -> x509.Certificate:
    is_ca = identity is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if identity is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


#: Leaf key types of the vector files: the P-256 vectors (handshake.json) and the others.
LEAF_TYPES: Final = ("p256", "p384", "ed25519")

_P384_ORDER: Final = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)


def fixed_leaf_key(role: str, leaf_type: str) -> Any:
    """The leaf key of ``role`` for ``leaf_type``: P-256 from label "<role> leaf key"
    (32 bytes), P-384 from "<role> leaf key p384" (48 bytes), both reduced into [1, n-1];
    Ed25519's 32-byte private key is fixed_bytes("<role> leaf key ed25519", 32)."""
    label = LABELS[f"{role}_leaf_key"]
    if leaf_type == "p256":
        return fixed_p256_key(label)
    if leaf_type == "p384":
        scalar = int.from_bytes(fixed_bytes(f"{label} p384", 48), "big") % (_P384_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP384R1())
    if leaf_type == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(fixed_bytes(f"{label} ed25519", 32))
    raise ValueError(f"no vectors for leaf type {leaf_type!r}")


def make_pki(leaf_type: str = "p256") -> dict[str, Any]:
    """The fixed CA chain and the two users' credentials (leaf keys of ``leaf_type``)."""
    root_key = fixed_p256_key(LABELS["root_ca_key"])
    issuing_key = fixed_p256_key(LABELS["issuing_ca_key"])
    root_name = _name(f"{DOMAIN} root CA")
    issuing_name = _name(f"{DOMAIN} issuing CA")
    root = _certificate(
        subject=root_name, key=root_key, issuer=root_name, issuer_key=root_key,
        serial=1, ca_path_length=1,
    )
    issuing = _certificate(
        subject=issuing_name, key=issuing_key, issuer=root_name, issuer_key=root_key,
        serial=2, ca_path_length=0,
    )
    users = {}
    for role, identity, serial in (
        ("initiator", INITIATOR, 0x1001),
        ("responder", RESPONDER, 0x1002),
    ):
        key = fixed_leaf_key(role, leaf_type)
        leaf = _certificate(
            subject=_name(identity.username), key=key, issuer=issuing_name,
            issuer_key=issuing_key, serial=serial, ca_path_length=None, identity=identity,
        )
        users[role] = LocalCredentials(identity, leaf, [issuing], key)
    return {"root": root, "issuing": issuing, **users}


def _der(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.DER).hex()


def _leaf_key_input(credentials: LocalCredentials, leaf_type: str) -> dict[str, str]:
    key = credentials.private_key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        width = (key.curve.key_size + 7) // 8 * 2
        return {f"leaf_key_{leaf_type}_scalar": f"{key.private_numbers().private_value:0{width}x}"}
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"leaf_key_ed25519_private_key": key.private_bytes_raw().hex()}
    raise TypeError("the vectors use P-256, P-384 or Ed25519 leaf keys")


def _split_frames(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length = int.from_bytes(data[:4], "big")
        frames.append(data[: 4 + length])
        data = data[4 + length :]
    return frames


def _only(events: list[HandshakeEvent], kind: type[Any]) -> Any:
    found = [event for event in events if isinstance(event, kind)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind.__name__} in {events!r}")
    return found[0]


def _recorder(store: dict[str, bytes]) -> Callable[[str, bytes], None]:
    def record(name: str, value: bytes) -> None:
        if name in store and store[name] != value:
            raise AssertionError(f"{name} traced twice with different values")
        store[name] = value

    return record


def generate_vectors(leaf_type: str = "p256") -> dict[str, Any]:
    """Run the fixed handshake and records; return the vectors as JSON-ready data."""
    return run_vectors(leaf_type)[0]


def run_vectors(leaf_type: str = "p256") -> tuple[dict[str, Any], Session, Session]:
    """The vectors of ``leaf_type`` and the two sessions, after the published records."""
    pki = make_pki(leaf_type)
    alice: LocalCredentials = pki["initiator"]
    bob: LocalCredentials = pki["responder"]
    initiator_x25519 = x25519.X25519PrivateKey.from_private_bytes(
        fixed_bytes(LABELS["initiator_x25519_private_key"], 32)
    )
    responder_x25519 = x25519.X25519PrivateKey.from_private_bytes(
        fixed_bytes(LABELS["responder_x25519_private_key"], 32)
    )
    seed = fixed_bytes(LABELS["initiator_mlkem768_seed"], 64)
    initiator_mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    encapsulation_key = initiator_mlkem.public_key().public_bytes_raw()
    initiator_random = fixed_bytes(LABELS["initiator_random"], 32)
    responder_random = fixed_bytes(LABELS["responder_random"], 32)

    def encapsulate(key: bytes) -> tuple[bytes, bytes]:
        if key != encapsulation_key:
            raise AssertionError("M1 does not carry the fixed ML-KEM-768 key")
        return MLKEM768_SHARED_SECRET, MLKEM768_CIPHERTEXT

    initiator_trace: dict[str, bytes] = {}
    responder_trace: dict[str, bytes] = {}
    initiator = Handshake(
        Role.INITIATOR,
        alice,
        expected_peer=RESPONDER,
        expected_fingerprint=bob.fingerprint,
        entropy=lambda length: initiator_random[:length],
        ephemeral=EphemeralKeys(initiator_x25519, initiator_mlkem),
        trace=_recorder(initiator_trace),
    )
    responder = Handshake(
        Role.RESPONDER,
        bob,
        entropy=lambda length: responder_random[:length],
        ephemeral=EphemeralKeys(responder_x25519),
        mlkem_encapsulate=encapsulate,
        trace=_recorder(responder_trace),
    )
    (m1,) = initiator.start()
    reply = _only(responder.receive_data(m1), SendData).data
    m2, m2b = _split_frames(reply)
    _only(initiator.receive_data(reply), PeerNeedsVerification)
    accepted = initiator.accept_peer()
    m3 = _only(accepted, SendData).data
    alice_session: Session = _only(accepted, HandshakeComplete).session
    _only(responder.receive_data(m3), PeerNeedsVerification)
    bob_session: Session = _only(responder.accept_peer(), HandshakeComplete).session

    initiator_first = alice_session.send_message(FIRST_MESSAGE)
    responder_first = bob_session.send_message(FIRST_REPLY)
    key_update = alice_session.update_keys()
    after_update = alice_session.send_data(DATA_AFTER_KEY_UPDATE)
    received = bob_session.receive_data(initiator_first + key_update + after_update)
    answered = alice_session.receive_data(responder_first)
    if not (
        isinstance(received[0], MessageReceived)
        and received[0].message == FIRST_MESSAGE
        and received[1] == DataReceived(DATA_AFTER_KEY_UPDATE)
        and isinstance(answered[0], MessageReceived)
        and answered[0].message == FIRST_REPLY
    ):
        raise AssertionError("the records did not decrypt to what was sent")

    common = set(initiator_trace) & set(responder_trace)
    for name in common:
        if initiator_trace[name] != responder_trace[name]:
            raise AssertionError(f"the two sides disagree on {name}")
    trace = {**responder_trace, **initiator_trace}

    secret_names = (
        "shared_secret",
        "early_secret",
        "handshake_secret",
        "initiator_handshake_traffic_secret",
        "responder_handshake_traffic_secret",
        "master_secret",
        "initiator_application_traffic_secret",
        "responder_application_traffic_secret",
        "exporter_secret",
        "send_traffic_secret_1",
    )
    secrets = {name: trace[name].hex() for name in secret_names}
    secrets["initiator_application_traffic_secret_1"] = secrets.pop("send_traffic_secret_1")
    keys = {}
    for name in (
        "initiator_handshake_traffic_secret",
        "responder_handshake_traffic_secret",
        "initiator_application_traffic_secret",
        "responder_application_traffic_secret",
        "initiator_application_traffic_secret_1",
    ):
        derived = traffic_keys(bytes.fromhex(secrets[name]))
        keys[name.replace("_secret", "")] = {"key": derived.key.hex(), "iv": derived.iv.hex()}
    finished_keys = {
        role: finished_key(trace[f"{role}_handshake_traffic_secret"]).hex()
        for role in ("initiator", "responder")
    }

    vectors: dict[str, Any] = {
        "title": "SixChat 1 handshake known-answer vectors",
        "version": wire_handshake.VERSION,
        "suite": wire_handshake.SUITE,
        "regenerate": "python -m tools.kat --write docs/vectors/handshake.json",
        "inputs": {
            "input_derivation": "SHAKE256('SixChat 1 known-answer vectors: ' + label)",
            "labels": dict(LABELS),
            "certificates_der": {
                "root_ca": _der(pki["root"]),
                "issuing_ca": _der(pki["issuing"]),
                "initiator": _der(alice.certificate),
                "responder": _der(bob.certificate),
            },
            "initiator": {
                "identity": str(INITIATOR),
                **_leaf_key_input(alice, leaf_type),
                "x25519_private_key": initiator_x25519.private_bytes_raw().hex(),
                "mlkem768_seed": seed.hex(),
                "random": initiator_random.hex(),
                "expected_fingerprint": bob.fingerprint,
            },
            "responder": {
                "identity": str(RESPONDER),
                **_leaf_key_input(bob, leaf_type),
                "x25519_private_key": responder_x25519.private_bytes_raw().hex(),
                "random": responder_random.hex(),
                "mlkem768_encapsulation": {
                    "shared_secret": MLKEM768_SHARED_SECRET.hex(),
                    "ciphertext": MLKEM768_CIPHERTEXT.hex(),
                },
            },
            "application": {
                "initiator_first_message": wire_application.encode_application(FIRST_MESSAGE).decode(),
                "responder_first_message": wire_application.encode_application(FIRST_REPLY).decode(),
                "initiator_data_after_key_update": DATA_AFTER_KEY_UPDATE.hex(),
            },
        },
        "public_values": {
            "initiator_x25519_public_key": initiator_x25519.public_key()
            .public_bytes_raw()
            .hex(),
            "initiator_mlkem768_encapsulation_key": encapsulation_key.hex(),
            "responder_x25519_public_key": responder_x25519.public_key()
            .public_bytes_raw()
            .hex(),
        },
        "frames": {"m1": m1.hex(), "m2": m2.hex(), "m2b": m2b.hex(), "m3": m3.hex()},
        "auth_plaintexts": {
            "responder": trace["responder_auth"].decode(),
            "initiator": trace["initiator_auth"].decode(),
        },
        "transcript_hashes": {
            name: trace[name].hex()
            for name in (
                "reply_transcript_hash",
                "responder_certificate_transcript_hash",
                "responder_verify_transcript_hash",
                "initiator_certificate_transcript_hash",
                "initiator_verify_transcript_hash",
                "final_transcript_hash",
            )
        },
        "secrets": secrets,
        "traffic_keys": keys,
        "finished_keys": finished_keys,
        "records": {
            "initiator_first": initiator_first.hex(),
            "responder_first": responder_first.hex(),
            "initiator_key_update": key_update.hex(),
            "initiator_after_key_update": after_update.hex(),
        },
    }
    if leaf_type != "p256":
        vectors["title"] += f" ({leaf_type} leaf keys)"
        vectors["regenerate"] = "python -m tools.kat --write-all docs/vectors"
    return vectors, alice_session, bob_session


def render(vectors: dict[str, Any]) -> str:
    """The JSON text as published (sorted keys, two-space indent, final newline)."""
    return json.dumps(vectors, indent=2, sort_keys=True) + "\n"


def per_key_type_main(
    argv: list[str] | None,
    doc: str | None,
    generate: Callable[[str], dict[str, Any]],
    key_types: tuple[str, ...],
    files: tuple[str, ...],
    folder: str,
) -> int:
    """The command line of a generator that writes one file per key type (sealed messages,
    sixid): every file into ``folder`` (or ``--write DIR``), or one printed (``--print
    KEYTYPE``)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--write", metavar="DIR", default=folder, help="folder to write")
    parser.add_argument("--print", metavar="KEYTYPE", choices=key_types, help="print one file")
    arguments = parser.parse_args(argv)
    if arguments.print:
        sys.stdout.write(render(generate(arguments.print)))
        return 0
    write_per_key_type(arguments.write, generate, key_types, files)
    return 0


def write_per_key_type(
    folder: str, generate: Callable[[str], dict[str, Any]], key_types: tuple[str, ...], files: tuple[str, ...]
) -> None:
    """Write ``generate(key_type)`` for each key type into its file in ``folder``."""
    for key_type, name in zip(key_types, files, strict=True):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as output:
            output.write(render(generate(key_type)))


def main(argv: list[str] | None = None) -> int:
    """Print the vectors, or write them to a file with --write PATH."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the JSON to PATH")
    parser.add_argument(
        "--write-all", metavar="DIR", help="write every vector file (tools.kat_extra) into DIR"
    )
    arguments = parser.parse_args(argv)
    if arguments.write_all:
        from tools.kat_extra import write_all

        write_all(arguments.write_all)
        return 0
    text = render(generate_vectors())
    if arguments.write:
        with open(arguments.write, "w", encoding="utf-8") as output:
            output.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
