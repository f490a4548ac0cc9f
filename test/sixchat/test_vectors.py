# mypy: allow-untyped-calls
"""Tests for the published known-answer vectors (docs/vectors/handshake.json).

The vectors are regenerated from their inputs and compared byte for byte; then they are
checked a second time by a small independent implementation written here from the
specification (docs/sixchat.rst) with the standard library, lxml and cryptography's
primitives only, which is what another implementation would do with the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from twisted.trial.unittest import TestCase

from test.helpers import REPOSITORY
from tools import kat, kat_extra

VECTORS_FOLDER = os.path.join(REPOSITORY, "docs", "vectors")
VECTORS_PATH = os.path.join(VECTORS_FOLDER, "handshake.json")
HANDSHAKE_FILES = ("handshake.json", "handshake-p384.json", "handshake-ed25519.json")


def load_vectors(name: str = "handshake.json") -> dict[str, Any]:
    """The published vectors of one file."""
    with open(os.path.join(VECTORS_FOLDER, name), encoding="utf-8") as stream:
        vectors: dict[str, Any] = json.load(stream)
    return vectors


class RegenerationTests(TestCase):
    """The generator reproduces the published file exactly."""

    def test_regenerate(self) -> None:
        with open(VECTORS_PATH, encoding="utf-8") as stream:
            published = stream.read()
        self.assertEqual(kat.render(kat.generate_vectors()), published)

    def test_every_file_is_reproduced(self) -> None:
        """Each published file is exactly what the generator writes, and nothing else is
        published."""
        published = [name for name in os.listdir(VECTORS_FOLDER) if not name.startswith(("sealed-", "sixid-", "audit-"))]
        self.assertEqual(sorted(published), sorted(kat_extra.FILES))
        folder = self.mktemp()
        os.mkdir(folder)
        self.assertEqual(kat.main(["--write-all", folder]), 0)
        for name in kat_extra.FILES:
            with (
                open(os.path.join(folder, name), encoding="utf-8") as written,
                open(os.path.join(VECTORS_FOLDER, name), encoding="utf-8") as published,
            ):
                self.assertEqual(written.read(), published.read(), name)

    def test_decapsulation(self) -> None:
        """The fixed ML-KEM ciphertext decapsulates to the fixed shared secret."""
        vectors = load_vectors()
        seed = bytes.fromhex(vectors["inputs"]["initiator"]["mlkem768_seed"])
        encapsulation = vectors["inputs"]["responder"]["mlkem768_encapsulation"]
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self.assertEqual(
            key.decapsulate(bytes.fromhex(encapsulation["ciphertext"])),
            bytes.fromhex(encapsulation["shared_secret"]),
        )
        self.assertEqual(
            key.public_key().public_bytes_raw().hex(),
            vectors["public_values"]["initiator_mlkem768_encapsulation_key"],
        )

    def test_inputs_follow_their_labels(self) -> None:
        vectors = load_vectors()
        for role in ("initiator", "responder"):
            values = vectors["inputs"][role]
            self.assertEqual(
                values["random"], kat.fixed_bytes(kat.LABELS[f"{role}_random"], 32).hex()
            )

    def test_main_writes_the_file(self) -> None:
        path = self.mktemp()
        self.assertEqual(kat.main(["--write", path]), 0)
        with open(path, encoding="utf-8") as written, open(VECTORS_PATH, encoding="utf-8") as ref:
            self.assertEqual(written.read(), ref.read())


# ---------------------------------------------------------------------------------------
# An independent verifier


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    full = b"sixchat1 " + label.encode()
    info = struct.pack(">HB", length, len(full)) + full + bytes([len(context)]) + context
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.digest(secret, block + info + bytes([counter]), "sha384")
        output += block
        counter += 1
    return output[:length]


def key_and_iv(secret: bytes) -> tuple[bytes, bytes]:
    return expand_label(secret, "key", b"", 32), expand_label(secret, "iv", b"", 12)


def frames_of(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length = int.from_bytes(data[:4], "big")
        frames.append(data[: 4 + length])
        data = data[4 + length :]
    return frames


def verify_leaf_signature(leaf: x509.Certificate, algorithm: str, signature: bytes, content: bytes) -> None:
    """Sign() as the specification states it: the message itself (not a prehash); ECDSA
    with the curve's hash, Ed25519 pure, RSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt."""
    public_key = leaf.public_key()
    if algorithm == "ed25519":
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signature, content)
    elif algorithm == "rsa-pss-sha384":
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signature, content, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        expected = {"secp256r1": ("ecdsa-p256-sha256", hashes.SHA256()), "secp384r1": ("ecdsa-p384-sha384", hashes.SHA384())}
        name, hash_algorithm = expected[public_key.curve.name]
        assert algorithm == name, (algorithm, name)
        public_key.verify(signature, content, ec.ECDSA(hash_algorithm))


class IndependentVerificationTests(TestCase):
    """Recompute every published value from the specification."""

    vectors: dict[str, Any]

    def hex(self, *path: str) -> bytes:
        value: Any = self.vectors
        for name in path:
            value = value[name]
        return bytes.fromhex(value)

    def test_full_derivation(self) -> None:
        for name in HANDSHAKE_FILES:
            self.vectors = load_vectors(name)
            self.check_full_derivation()

    def check_full_derivation(self) -> None:
        v = self.vectors
        m1, m2, m2b, m3 = (self.hex("frames", name) for name in ("m1", "m2", "m2b", "m3"))

        # M1 and M2 carry the public values.
        hello = etree.fromstring(m1[4:])
        reply = etree.fromstring(m2[4:])
        self.assertEqual(hello.get("to"), "bob@example.org")
        self.assertEqual([e.text for e in hello.find("versions")], ["1"])
        self.assertEqual(
            [e.text for e in hello.find("suites")], ["SIXCHAT1-X25519MLKEM768-AES256GCM-SHA384"]
        )
        self.assertEqual(
            base64.b64decode(hello.findtext("random")), self.hex("inputs", "initiator", "random")
        )
        self.assertEqual(
            base64.b64decode(reply.findtext("mlkem768-ciphertext")),
            self.hex("inputs", "responder", "mlkem768_encapsulation", "ciphertext"),
        )

        # Key agreement: shared secret = ML-KEM-768 secret || X25519 secret.
        initiator_x25519 = x25519.X25519PrivateKey.from_private_bytes(
            self.hex("inputs", "initiator", "x25519_private_key")
        )
        responder_public = x25519.X25519PublicKey.from_public_bytes(
            base64.b64decode(reply.findtext("x25519-key"))
        )
        shared = self.hex(
            "inputs", "responder", "mlkem768_encapsulation", "shared_secret"
        ) + initiator_x25519.exchange(responder_public)
        self.assertEqual(shared, self.hex("secrets", "shared_secret"))

        # Handshake secrets from the transcript of the two clear frames.
        empty = hashlib.sha384(b"").digest()
        early = hmac.digest(bytes(48), bytes(48), "sha384")
        handshake_secret = hmac.digest(expand_label(early, "derived", empty, 48), shared, "sha384")
        self.assertEqual(handshake_secret, self.hex("secrets", "handshake_secret"))
        transcript = hashlib.sha384(m1 + m2)
        self.assertEqual(
            transcript.digest(), self.hex("transcript_hashes", "reply_transcript_hash")
        )
        secrets = {
            role: expand_label(handshake_secret, f"{role[0]} hs traffic", transcript.digest(), 48)
            for role in ("initiator", "responder")
        }
        self.assertEqual(secrets["initiator"], self.hex("secrets", "initiator_handshake_traffic_secret"))

        chains = {}
        for role, frame in (("responder", m2b), ("initiator", m3)):
            key, iv = key_and_iv(secrets[role])
            sealed = base64.b64decode(etree.fromstring(frame[4:]).text)
            plaintext = AESGCM(key).decrypt(iv, sealed, b"sixchat1 sealed")
            self.assertEqual(plaintext.decode(), v["auth_plaintexts"][role])
            auth = etree.fromstring(plaintext)
            certificates = [base64.b64decode(e.text) for e in auth.findall("certificate")]
            signature = base64.b64decode(auth.findtext("signature"))
            finished = base64.b64decode(auth.findtext("finished"))
            body = b"".join(struct.pack(">I", len(der)) + der for der in certificates)
            transcript.update(struct.pack(">BI", 11, len(body)) + body)
            self.assertEqual(
                transcript.digest(),
                self.hex("transcript_hashes", f"{role}_certificate_transcript_hash"),
            )
            leaf = x509.load_der_x509_certificate(certificates[0])
            label = f"SixChat 1 {role} signature".encode()
            verify_leaf_signature(
                leaf, auth.find("signature").get("algorithm"), signature,
                label + b"\x00" + transcript.digest(),
            )
            transcript.update(struct.pack(">BI", 15, len(signature)) + signature)
            finished_key = expand_label(secrets[role], "finished", b"", 48)
            self.assertEqual(finished_key, self.hex("finished_keys", role))
            self.assertEqual(finished, hmac.digest(finished_key, transcript.digest(), "sha384"))
            transcript.update(struct.pack(">BI", 20, len(finished)) + finished)
            chains[role] = [x509.load_der_x509_certificate(der) for der in certificates]

        final_hash = transcript.digest()
        self.assertEqual(final_hash, self.hex("transcript_hashes", "final_transcript_hash"))
        master = hmac.digest(
            expand_label(handshake_secret, "derived", empty, 48), bytes(48), "sha384"
        )
        application = {
            role: expand_label(master, f"{role[0]} ap traffic", final_hash, 48)
            for role in ("initiator", "responder")
        }
        for role in ("initiator", "responder"):
            self.assertEqual(
                application[role], self.hex("secrets", f"{role}_application_traffic_secret")
            )
            key, iv = key_and_iv(application[role])
            self.assertEqual(
                {"key": key.hex(), "iv": iv.hex()},
                v["traffic_keys"][f"{role}_application_traffic"],
            )

        # The first records, the key update and the record under the next key.
        def open_record(secret: bytes, sequence: int, record: bytes) -> bytes:
            key, iv = key_and_iv(secret)
            nonce = (int.from_bytes(iv, "big") ^ sequence).to_bytes(12, "big")
            self.assertEqual(record[4], 0x17)
            self.assertEqual(int.from_bytes(record[:4], "big"), len(record) - 4)
            return AESGCM(key).decrypt(nonce, record[5:], record[:5])

        application_inputs = v["inputs"]["application"]
        self.assertEqual(
            open_record(application["initiator"], 0, self.hex("records", "initiator_first")),
            b"\x01" + application_inputs["initiator_first_message"].encode(),
        )
        self.assertEqual(
            open_record(application["responder"], 0, self.hex("records", "responder_first")),
            b"\x01" + application_inputs["responder_first_message"].encode(),
        )
        self.assertEqual(
            open_record(application["initiator"], 1, self.hex("records", "initiator_key_update")),
            b"\x03",
        )
        updated = expand_label(application["initiator"], "traffic upd", b"", 48)
        self.assertEqual(updated, self.hex("secrets", "initiator_application_traffic_secret_1"))
        self.assertEqual(
            open_record(updated, 0, self.hex("records", "initiator_after_key_update")),
            b"\x02" + self.hex("inputs", "application", "initiator_data_after_key_update"),
        )

        # The certificates chain up to the published root and name the two users.
        root = x509.load_der_x509_certificate(self.hex("inputs", "certificates_der", "root_ca"))
        for role, identity in (("initiator", "alice"), ("responder", "bob")):
            leaf, issuing = chains[role]
            leaf.verify_directly_issued_by(issuing)
            issuing.verify_directly_issued_by(root)
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            self.assertEqual(
                san.value.get_values_for_type(x509.UniformResourceIdentifier),
                [f"irp:{identity}@example.org"],
            )
        # The initiator pinned the responder's leaf by its SHA-256 fingerprint.
        self.assertEqual(
            hashlib.sha256(chains["responder"][0].public_bytes(Encoding.DER)).hexdigest(),
            v["inputs"]["initiator"]["expected_fingerprint"],
        )


def shake(label: str, length: int) -> bytes:
    """A vector input as the specification derives it."""
    return hashlib.shake_256(b"SixChat 1 known-answer vectors: " + label.encode()).digest(length)


def scalar_of(label: str, length: int, order: int) -> int:
    """The specification's rule for an ECDSA scalar: big-endian integer mod (n - 1), plus 1."""
    return int.from_bytes(shake(label, length), "big") % (order - 1) + 1


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)


class IndependentExtraTests(TestCase):
    """The newer vectors, recomputed from the specification's text rules with hashlib and
    cryptography's primitives only (no SixChat code)."""

    def setUp(self) -> None:
        self.handshake = load_vectors()
        self.extra = load_vectors("extra.json")

    def test_leaf_keys_follow_the_input_rule(self) -> None:
        for role in ("initiator", "responder"):
            label = f"{role} leaf key"
            self.assertEqual(
                int(self.handshake["inputs"][role]["leaf_key_p256_scalar"], 16), scalar_of(label, 32, P256_ORDER)
            )
            p384 = load_vectors("handshake-p384.json")["inputs"][role]["leaf_key_p384_scalar"]
            self.assertEqual(len(p384), 96)
            self.assertEqual(int(p384, 16), scalar_of(f"{label} p384", 48, P384_ORDER))
            certificate = x509.load_der_x509_certificate(
                bytes.fromhex(load_vectors("handshake-p384.json")["inputs"]["certificates_der"][role])
            )
            expected = ec.derive_private_key(int(p384, 16), ec.SECP384R1()).public_key()
            self.assertEqual(certificate.public_key(), expected)
            ed = load_vectors("handshake-ed25519.json")["inputs"][role]["leaf_key_ed25519_private_key"]
            self.assertEqual(bytes.fromhex(ed), shake(f"{label} ed25519", 32))

    def test_exporter_uses_the_label_prefix(self) -> None:
        exporter = self.extra["exporter"]
        secret = bytes.fromhex(self.handshake["secrets"]["exporter_secret"])
        derived = expand_label(secret, exporter["label"], hashlib.sha384(b"").digest(), 48)
        output = expand_label(
            derived, "exporter", hashlib.sha384(bytes.fromhex(exporter["context"])).digest(), exporter["length"]
        )
        self.assertEqual(output.hex(), exporter["output"])

    def test_close_and_alert_records(self) -> None:
        secrets = self.handshake["secrets"]
        for record in (self.extra["records"][name] for name in ("responder_close", "initiator_alert")):
            key, iv = key_and_iv(bytes.fromhex(secrets[record["traffic_secret"]]))
            data = bytes.fromhex(record["record"])
            nonce = (int.from_bytes(iv, "big") ^ record["sequence"]).to_bytes(12, "big")
            plaintext = AESGCM(key).decrypt(nonce, data[5:], data[:5])
            self.assertEqual(plaintext, bytes([record["inner_type"]]) + record["body"].encode())

    def test_clear_alert_frame(self) -> None:
        body = b'<alert code="502" name="rate-limited"/>'
        self.assertEqual(bytes.fromhex(self.extra["clear_alert_frame"]["frame"]), struct.pack(">I", len(body)) + body)

    def test_rsa_pss_leaf(self) -> None:
        vector = self.extra["rsa_pss_leaf"]
        self.assertEqual(bytes.fromhex(vector["salt"]), shake(vector["salt_label"], 48))
        transcript_hash = shake(vector["transcript_hash_label"], 48)
        content = b"SixChat 1 initiator signature\x00" + transcript_hash
        self.assertEqual(vector["signed_content"], content.hex())
        leaf = x509.load_der_x509_certificate(bytes.fromhex(vector["leaf_certificate_der"]))
        issuing = x509.load_der_x509_certificate(bytes.fromhex(self.handshake["inputs"]["certificates_der"]["issuing_ca"]))
        leaf.verify_directly_issued_by(issuing)
        signature = bytes.fromhex(vector["signature"])
        verify_leaf_signature(leaf, vector["signature_algorithm"], signature, content)
        # The salt is the published one: recover it from the encoded message (RFC 8017 9.1.2).
        public = leaf.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        numbers = public.public_numbers()
        encoded = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(384, "big")
        masked, h = encoded[: 384 - 49], encoded[384 - 49 : -1]
        mask = b"".join(hashlib.sha384(h + i.to_bytes(4, "big")).digest() for i in range(8))[: len(masked)]
        db = bytes(a ^ b for a, b in zip(masked, mask, strict=True))
        self.assertEqual(db[-48:], bytes.fromhex(vector["salt"]))


class SpecificationFigureTests(TestCase):
    """Figures docs/sixchat.rst states are the ones the vectors show."""

    def test_hybrid_size_on_the_wire(self) -> None:
        import re

        vectors = load_vectors()
        m1 = bytes.fromhex(vectors["frames"]["m1"])
        m2 = bytes.fromhex(vectors["frames"]["m2"])
        key = re.search(rb"<mlkem768-key>[^<]*</mlkem768-key>", m1)
        ciphertext = re.search(rb"<mlkem768-ciphertext>[^<]*</mlkem768-ciphertext>", m2)
        assert key is not None and ciphertext is not None
        total = len(key.group(0)) + len(ciphertext.group(0))
        spec = os.path.join(REPOSITORY, "docs", "sixchat.rst")
        with open(spec, encoding="utf-8") as stream:
            text = " ".join(stream.read().split())
        self.assertIn(f"It costs {total} more bytes on the wire, about {total / 1024:.1f} KiB", text)
        self.assertIn(f"``<mlkem768-key>`` element is {len(key.group(0))} bytes of M1", text)
