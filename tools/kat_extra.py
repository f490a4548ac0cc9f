"""More SixChat 1 known-answer vectors: leaf key types, the exporter, alerts and closes.

Written by ``python -m tools.kat --write-all docs/vectors`` next to ``handshake.json``:

* ``handshake-p384.json`` and ``handshake-ed25519.json``: the handshake of
  ``handshake.json`` (same CA, randoms, ephemeral keys and records) with P-384 leaf keys (the
  agent's default) or Ed25519 leaf keys; see :func:`tools.kat.fixed_leaf_key`.
* ``extra.json``: an RSA-PSS leaf and its transcript signature (RSA key generation cannot be
  derived from a label, so the 3072-bit key is an input; the PSS salt is fixed so that the
  signature is reproducible), an exporter output, the close and alert records that follow
  the records of ``handshake.json``, and the clear alert frame of a refused connection.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from common.wire.framing import encode_frame
from sixchat import errors
from sixchat.handshake import INITIATOR_SIGNATURE_LABEL, LocalCredentials, signed_content
from sixchat.wire import application as wire_application
from sixchat.wire import handshake as wire_handshake
from tools import kat

#: The fixed RSA-3072 leaf key of the RSA-PSS vector (PKCS#8 DER), an input.
RSA_LEAF_KEY_PKCS8: Final = bytes.fromhex(
    "308206fd020100300d06092a864886f70d0101010500048206e7308206e30201000282018100eaec3740"
    "279e52640bad34d912f0f56d1b723628939d510dc11a6bbeeb06fc6015f6f04ea0f35368007d4422a8cf"
    "15348fea6958ab77dab4876e32e9d6bf2c1438a3c66feabaf63a0c2d651cddc711450a802fe5c094af04"
    "531edb84ef6135d99ac010957a424d5fe7e76220ca603c33612f82f6e83da7887165c87ec38acd75e9d3"
    "5bd7e55577bcaac45f9fb5c7ea799e180c668f656d71d44cfa64464ce7333eee46a5da0d8df5b164d463"
    "83c2b020c2272d34e5f8f6c8dde3e018f20576d49ec8f7defbf1ac532c726fce18f337cf7711fbf4b6ea"
    "b069358fd3ef265cb0e3e4d69b6844ae2fe9dd3431cb873125e77d1cd6f45112de2804dc949e22f9e619"
    "80bfcaaca41a910433ce72a67d380e4af1f6b62598c6ed174de364961bebc1ba6855f1a039972c5c1b93"
    "fe75ce1d60040a287719ac66a50639bcc444190ba3bde6037e372c9bbf5c663d54eab48c25368e7241b8"
    "362b27d6afd77b607db8ecac5db78b010e56ad7c661ee3b303b78bfa13537eb7fa8b24d86dff6a55f090"
    "16f30203010001028201805f6a8af45543224ebd495ff62d11ce753ed9103341e57b26dd80383406acc3"
    "33d9a7ff29c8889c1f595787a5962fe9fa7bdba7671ad9e6ec3d379e99489e442e8064d0b3e34085c2c4"
    "f06929a4d0766cb6dba2d8abf417f3e738d8cb7118e830d6805d1c0158cda97efd0567b11b0e48861830"
    "96cd744148135ad668da4e55ae27472ffe0c093f45538cc8140bd6c39f1afdc487a1857e42e60a50070b"
    "60afe52a11c88313823edf046aa2333b3087adfe7dc00844c1eea65e2d70776151a3d5e7c836747354c3"
    "2940ab8896ed8145986771fa388bf78c66480e2649bcd98d428c3cb263b7f800de07c3f56cee14a205c8"
    "94149d57fad15601e2a63b7fe9bbc7618d48d1fa4d9e051545b6a9349745eedc9468f53d82ee69bf4fa3"
    "7eb25d77dae2f1918a3574260001327f14dda9be3e9a0d78fadf2b04f71c67e8f29eafbd1c6486f7c160"
    "81e287018bb496415e82bbf2ecad8a2a4b473763436d7e11748c18a5001b971339e8cd2148a4238b4c69"
    "970e388eedf5bf9d240e25ce8a68a8f24d0281c100fd764e92e38e30cb159e7f3947f5c66982274b9c28"
    "951ecf124d84cd51cf815e4232cd1e81f5c07c46565ad013e9c386690d864d6083b5a2333656d167d0c5"
    "9bca18974a30c0e9961fd4d9342dfb60caf0c7ffe8157d9e1146348c2c0569541ad14f624354a9bd1478"
    "7c3bf0fa3c68d396f550b34fb4b1e2738e62b3d58e20765e3a380d435539779f4a4a8a7d61ccc91301b1"
    "67632751b0f02091589a99c17d14564f194bef46bb57838a202d1a1599aeff44d9bf7971b7d298f055cb"
    "7c3a350281c100ed4663244a80af8e7ef7830de377c663dd52591c7f9e6703618d286636990af4afe798"
    "f23984533ac8c6a8fa85ad201f02c759e8d8bc45354e13d212f99829954c02625e22d1780c4f50ee3aaf"
    "5e1f35afaea7fd9ec07e20b2633b0c0457371a9a559d6e2fb433c06b74d0999a8782af97f62452f17529"
    "7166e94a93e5d04a9e0e7bd15f3199b40da401e7249a4651097f9b8c85eed923dd248a3d3137e5d4554c"
    "6200a567f65952b619b1ad32026710e448403fc104e8e092616a80066c71870281c0215c5b07367056b7"
    "c446b25425c691b0fd72929f21304f77cddeea25e428bdcc5c46377d5679b4362743e27c14c2e5fb6104"
    "68b2f28b23730fee8d0acef149b131ae7eeb42f3814b43314ecd7167eedb8749abc32e60f4572db868e2"
    "ba6b9ca852f871e48ed6308eeb34dee6dee8e89b40f954ffe4f3d19e0ebba4fe2a93a46e3004d5afd936"
    "f4736c41e901c57303f34b4f23bc89ee78f0230b06567532dba6ccf07744cb1bd9617b29531add14dbd6"
    "f8939cca544b75ce4e27d72a53b82c290281c031ae1d300a116bb0b050eeb5c7bcda632a82057a7c1614"
    "8796b351942536621edd7de67e4120bdb47f3969441b1d26ae978c59fcf0f46aa14099d1d07b462adec1"
    "ad761f33b71c25a7add053a54855cc8dde49fa46751373912649c4b85bf283b570dba7a881589c9f6334"
    "121552ee4009d755bfb022d1ec96999e2ddd5e81611ab33e216a673e55e4d3292c76c8e64ad0d726d31c"
    "3186dad4bdc5163b17fa1f6a00d315cef0bbbf1fb5bd88000294c5eaa65e1d7b32a5f7ef6e4a38482008"
    "9d0281c1008bbe8d94336590b25e7be91cc61e5093bc18c2a19f86173c78736af391981f34248f6c72f3"
    "0ca0cf39a2b151736e1405971f8a1dfb14539f1b8c780f001307ca8815fc383d5911f24ded48e55e9304"
    "5dfae44c0c6d9a6c360bd7675a584f95f85b97ae1edd2450b5b7f7084c9ea9563d65087459157b86a1e6"
    "fee2a2e5f84beaa3497e9177c1bcb88d70a1fe77066908af113ded7a8d6e6783f09cecce3d50ece84814"
    "5b6c5fbb1f6f014e965c899b10b1c6179270eab806f316444984da4e37"
)

#: The exporter call of the vectors.
EXPORTER_LABEL: Final = "EXPORTER-SixChat test"
EXPORTER_CONTEXT: Final = b"SixChat 1 exporter context"
EXPORTER_LENGTH: Final = 32

#: What each vector file holds, by file name.
FILES: Final = ("handshake.json", "handshake-p384.json", "handshake-ed25519.json", "extra.json")


def pss_sign(key: rsa.RSAPrivateKey, message: bytes, salt: bytes) -> bytes:
    """RSASSA-PSS (RFC 8017 section 8.1) with SHA-384, MGF1-SHA-384 and the given salt."""
    numbers = key.private_numbers()
    modulus = numbers.public_numbers.n
    em_bits = modulus.bit_length() - 1
    em_length = (em_bits + 7) // 8
    m_hash = hashlib.sha384(message).digest()
    h = hashlib.sha384(bytes(8) + m_hash + salt).digest()
    db = bytes(em_length - len(salt) - len(h) - 2) + b"\x01" + salt
    mask = b"".join(
        hashlib.sha384(h + counter.to_bytes(4, "big")).digest()
        for counter in range((len(db) + 47) // 48)
    )[: len(db)]
    masked = bytearray(a ^ b for a, b in zip(db, mask, strict=True))
    masked[0] &= 0xFF >> (8 * em_length - em_bits)
    encoded = int.from_bytes(bytes(masked) + h + b"\xbc", "big")
    return pow(encoded, numbers.d, modulus).to_bytes((modulus.bit_length() + 7) // 8, "big")


def _rsa_pss() -> dict[str, Any]:
    key = serialization.load_der_private_key(RSA_LEAF_KEY_PKCS8, None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the RSA vector key is not an RSA key")
    pki = kat.make_pki()
    leaf = kat._certificate(
        subject=kat._name(kat.INITIATOR.username), key=key, issuer=pki["issuing"].subject,
        issuer_key=kat.fixed_p256_key(kat.LABELS["issuing_ca_key"]), serial=0x1003,
        ca_path_length=None, identity=kat.INITIATOR,
    )
    credentials = LocalCredentials(kat.INITIATOR, leaf, [pki["issuing"]], key)
    transcript_hash = kat.fixed_bytes("rsa-pss transcript hash", 48)
    salt = kat.fixed_bytes("rsa-pss salt", 48)
    content = signed_content(INITIATOR_SIGNATURE_LABEL, transcript_hash)
    signature = pss_sign(key, content, salt)
    key.public_key().verify(
        signature, content, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384()
    )
    return {
        "leaf_key_pkcs8": RSA_LEAF_KEY_PKCS8.hex(),
        "leaf_certificate_der": kat._der(leaf),
        "signature_algorithm": credentials.signature_algorithm,
        "role": "initiator",
        "transcript_hash": transcript_hash.hex(),
        "transcript_hash_label": "rsa-pss transcript hash",
        "salt": salt.hex(),
        "salt_label": "rsa-pss salt",
        "signed_content": content.hex(),
        "signature": signature.hex(),
    }


def generate_extra() -> dict[str, Any]:
    """The extra vectors (see the module documentation)."""
    _, alice, bob = kat.run_vectors()
    exported = alice.export_keying_material(EXPORTER_LABEL, EXPORTER_CONTEXT, EXPORTER_LENGTH)
    if bob.export_keying_material(EXPORTER_LABEL, EXPORTER_CONTEXT, EXPORTER_LENGTH) != exported:
        raise AssertionError("the two sides export different values")
    responder_close = bob.close("bye")
    events = alice.receive_data(responder_close)
    initiator_alert = alice.abort(errors.UnexpectedMessage())
    events += bob.receive_data(initiator_alert)
    if [type(event).__name__ for event in events] != ["CloseReceived", "AlertReceived"]:
        raise AssertionError(f"the close and alert records did not open: {events!r}")
    return {
        "title": "SixChat 1 known-answer vectors: RSA-PSS leaf, exporter, close and alerts",
        "regenerate": "python -m tools.kat --write-all docs/vectors",
        "rsa_pss_leaf": _rsa_pss(),
        "exporter": {
            "from": "handshake.json (secrets.exporter_secret)",
            "label": EXPORTER_LABEL,
            "context": EXPORTER_CONTEXT.hex(),
            "length": EXPORTER_LENGTH,
            "output": exported.hex(),
        },
        "records": {
            "after": "handshake.json (records)",
            "responder_close": {
                "record": responder_close.hex(),
                "traffic_secret": "responder_application_traffic_secret",
                "sequence": 1,
                "inner_type": 4,
                "body": wire_application.encode_close("bye").decode(),
            },
            "initiator_alert": {
                "record": initiator_alert.hex(),
                "traffic_secret": "initiator_application_traffic_secret_1",
                "sequence": 1,
                "inner_type": 5,
                "body": wire_handshake.alert_for(errors.UnexpectedMessage()).decode(),
            },
        },
        "clear_alert_frame": {
            "when": "a connection refused before the handshake (over a handshake budget)",
            "frame": encode_frame(wire_handshake.alert_for(errors.RateLimited())).hex(),
        },
    }


def generate_all() -> dict[str, dict[str, Any]]:
    """Every published vector file, by name."""
    return {
        "handshake.json": kat.generate_vectors(),
        "handshake-p384.json": kat.generate_vectors("p384"),
        "handshake-ed25519.json": kat.generate_vectors("ed25519"),
        "extra.json": generate_extra(),
    }


def write_all(folder: str) -> None:
    """Write every vector file into ``folder``."""
    for name, vectors in generate_all().items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as output:
            output.write(kat.render(vectors))
