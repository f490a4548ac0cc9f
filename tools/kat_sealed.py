"""Known-answer vectors for SixChat sealed messages: ``python -m tools.kat_sealed``.

Writes ``docs/vectors/sealed-<keytype>.json`` for every leaf key type the handshake supports
(P-256, P-384, P-521, Ed25519, RSA-3072): one prekey of bob@example.org and one envelope
from alice@example.org sealed to it, with every input fixed, every intermediate value (the
prekey's signed bytes, the header bytes and hash, both shared secrets, the HKDF output, key,
nonce, the signed bytes) and every output (the encoded prekey, the serialised secret, the
envelope). docs/sealed.rst states every rule they follow; ``--write DIR`` writes elsewhere,
``--print KEYTYPE`` prints one file.

How the inputs are fixed (as in :mod:`tools.kat`):

* Every secret byte string is SHAKE256("SixChat 1 known-answer vectors: " + label); the
  labels are in :data:`LABELS`. The CA and the P-256, P-384 and Ed25519 leaf keys are those
  of :mod:`tools.kat`; P-521 leaf scalars come from the labels "<role> leaf key p521" (66
  bytes) read as big-endian x, then (x mod (n - 1)) + 1.
* RSA keys cannot be derived from a label: the sender's is the RSA key of
  :mod:`tools.kat_extra`, the recipient's :data:`RESPONDER_RSA_KEY_PKCS8`; RSA-PSS salts come
  from labels, so RSA signatures are reproducible (ECDSA is deterministic, RFC 6979).
* ML-KEM-768 encapsulation is randomised, so its result is an input: made once to the
  prekey's key (the tests check that the prekey's secret decapsulates it).
"""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Callable
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

from sixchat.credentials import LocalCredentials, PrivateKey
from sixchat.sealed import envelope, prekeys
from sixchat.wire import application as wire_application
from tools import kat, kat_extra

#: The leaf key types of the vector files, in file-name form.
KEY_TYPES: Final = ("p256", "p384", "p521", "ed25519", "rsa3072")
FILES: Final = tuple(f"sealed-{key_type}.json" for key_type in KEY_TYPES)
VECTORS_FOLDER: Final = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "vectors")

SENDER: Final = kat.INITIATOR
RECIPIENT: Final = kat.RESPONDER

#: Labels of the fixed secret inputs.
LABELS: Final = {
    "prekey_id": "sealed prekey id",
    "prekey_x25519_private_key": "sealed prekey x25519 private key",
    "prekey_mlkem768_seed": "sealed prekey mlkem768 seed",
    "ephemeral_x25519_private_key": "sealed ephemeral x25519 private key",
    "prekey_rsa_pss_salt": "sealed prekey rsa-pss salt",
    "envelope_rsa_pss_salt": "sealed envelope rsa-pss salt",
}

#: Times of the vectors (Unix seconds): the prekey is made at 2026-01-02T03:04:05Z.
PREKEY_CREATED: Final = int(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp())
PREKEY_LIFETIME: Final = 37 * 86400
SENT_AT: Final = PREKEY_CREATED + 3600
EXPIRES_AT: Final = SENT_AT + 7 * 86400
OPENED_AT: Final = SENT_AT + 60
SEQ: Final = 1
MESSAGE_ID: Final = kat.FIRST_MESSAGE.id
PAYLOAD: Final = wire_application.encode_application(kat.FIRST_MESSAGE)

#: The fixed ML-KEM-768 encapsulation to the prekey's encapsulation key.
MLKEM768_SHARED_SECRET: Final = bytes.fromhex(
    "7e8e792fb1875bbfc033686b922912f2df754c1cb0344c7f66907b3ae4a6e52a"
)
MLKEM768_CIPHERTEXT: Final = bytes.fromhex(
    "18f262e4c4a79682b573f86287c9b2bf4219f82a947298f4af20d80bca3212a4534667dc"
    "5ff6cdc935ba5d921c556e4c2640e2ec6a88a1908daa96dc4b3ab2c0b5961bad64a71c7d"
    "1f9a37b7339863a246948ad5c45d7fae55a350d169061c80b797092e1db004262eda18f8"
    "4a67735626725e55c9016dec9b7e586ba40585eb5bc8d9080ea27db4c312b2f5af8e02f0"
    "42e5d8b31e649a3fde77c17a67d0a5ef3d8d15d150e0d60b1a64b88db4d6484b30f8c8f6"
    "e9b070fde51607101b8f0f2e70b5801b96d65e63350639544b4bd666ef25c2a6db7fdd29"
    "eb791584950fe50e5df2fbcbcd9c490ac5fc18eecfb789d7e3001e64c09e1ea1e21b0591"
    "1121328e1a8d8c399877039813f415b7d5a855c1861c1b338664aa870e925eb713b4fa3e"
    "86bf9d8f466563558e20735cab0d1f6b628d9e717e9106916fdad062b50fa82f76e9cb92"
    "090f8b54228b1c1c6b8a73af71c2a0190845317ba1ed998488e5bacd0930c81dd344994e"
    "0940e9fa42797946e320f4bba07bc43d99aed7b9ffb06ba613172ade0d6fb2e94af3afe6"
    "fa5cfb168a71e77cd46a7d97a916bfeda7014ffebedf4b02c4ad6b86ae0393f18dd3df31"
    "ddcfe7c143885732239d8398412ad6dff56d8fa27540860f3c10e2ca1458a06bd28f6fe7"
    "8328ae2ab6d8d0682485276f91682d3e9f09916658d391a82e66a301255cc879ee220230"
    "a9486fd7d180bff64ddef6cd0a2d516a75c4e24045419808f927420883825a8b9c311cad"
    "d573e5a0dffa8c5c6ae7607a20e2b6c8945a82797833835ed5aa2b7e9db47b0b04c6bbef"
    "f5bf38c0a15e5610b3526bd4b46121ebb7212bf121272963cc17524e4f7aecdaf0b9d26c"
    "bdb5ebb38fc39c67e89183a3c77537e5925e3bdb7f39a012044308690b79e28293bfe2fe"
    "6516343cfa78950ce0d809b2ad692a25a06e28c7feeedcc70462fa72c5824f0a00380970"
    "1d1da4ea46771cd1387f77e925cc6b362599b4607805915213de05b5f18fdcbac690582c"
    "13bcdbf7f1db0209b079ae76e8e37225a5af08cbe7c4498ea8fbc2b6c0b504b9586f5226"
    "481353caab46910fb3f36059a4dfd363dc5b2be3675eac2eb6bf88e44e60f3ec15590707"
    "e3979497232227290e75b8850f9ba93be9b965511cd6b8d7658a1cdbb8533921c566ccea"
    "9b59290ccc7f16ece595b76037e46c445fd1c326bff789d132a8f406ad437aa5d59bde92"
    "eaa64970b38a161c55e0ce936764b9d8d8e52d8eef12015b741da52bf1ad683504663dd2"
    "b4db8a24e7792faaeaea50c6c51a538697874f863a28adcc2eb0e309d1bfee21662be078"
    "58d7b6ee3bacf1c1d4c8144a0db69f168f2880ae93c2fdccd5ed0bd87257aad687488c5e"
    "e00b4b7292ebd398ba87f3554b0116626f4128c628d57afa3b71be7532a5cc2e8d7d94cd"
    "688f6a1c0983527196d8351df09bf3a2e3f801ba9884cae16dd03ee7e16571c9b53e8f94"
    "aebaebd2539b020383d5975a96269849c68957c1876ab092079492f90de8061a4048a4a7"
    "dae8b2255fc1b8f6"
)

#: The recipient's fixed RSA-3072 leaf key (PKCS#8 DER), an input.
RESPONDER_RSA_KEY_PKCS8: Final = bytes.fromhex(
    "308206fd020100300d06092a864886f70d0101010500048206e7308206e30201000282018100acb590cc"
    "757e06a0f2bf7b55c62b7c197ed18f3dd8ad9fa8779d5ca176a50953afc832f02319e7a2e24f43051f59"
    "3d02595da5e86420401542d592d98005e910c716ecc7ce1ae3ea110e11afb5c341d28dcee1865c7c9f67"
    "76ced7656383cceda58dafc64b872aa1477addca5777a830a71573fb0e966ad74d148be35f6c722bd4ff"
    "116f5aa9786161518bd7596ac39abbafb45912c662ac4de7d658d559ed5cbe0d6a9d78afe81d58d64c3f"
    "baea5c9e07ca03ce1cf76e4b848ac2fe33af1b21d2adce8a69188df5333ab21c8084593cd5e95468b50e"
    "71ddabc17348210f96dd6b8218bfaf214bb682fcb3c9b0a49b7438cd1c41f1f00e7485b53e3cf9d9ac2a"
    "a082c05b30549dbd84ed7d71bff159a8960efa1d3bed922668304e884c2cf4533761d5209e9c0245a0c5"
    "c691ea4a4daff0033718118d41c3677b45cdb683a1a443457f87e4145bdf4277e5ba773aa7d7132260f3"
    "531f99ecf50bff24efb651c2834c552cb77a865f745c26f01ae24c403ab0ab2b6cddc565af9457c9a900"
    "c3930203010001028201803d51bfa5e0274d2a32d5ca6ff34ab8268330db373da9b370887b8e0a63ca07"
    "cc373290e752c71d47672b7623a8f431a5965e1a0c2f14863c263d1704f31fe61687613bd35af9902728"
    "4403028c39d5b27097ddd9ab17b22ef56f4de99912101de6342e8eec7d02a53d7041b3d8274b476ee33e"
    "890a2e5ca3b1a1d462f79bd4d37c2dcd9e6825987096b171c19565432aba6d914e38ccc7f6de382c91e0"
    "ba2b7ccc9b8dd97822987a66f2bb22bb75ff493a81bea51d02ba9dc462d205980b1949ecc48da64b46e1"
    "30c65c2687d7ed8d0962a9072f646b05331d5c4af42817c177e20358924e6b87597a6bda2f06d07656b0"
    "3a7e80f1f1ce4fc3edaf9727d591fd671a8cab702c7983c28dba2b6b6bb8022769eb475b69c64ebe1d7d"
    "c3268fd63f79de183039ddf5e2467f8905a36f8b40f6240a56981c84764718bea9df4632baa2c68fea8b"
    "75a383fd20501499a1fbb117804c9809647a5fe6d755172d19d036d49e80824652045e533411e71d0ffe"
    "892873567c521f4515f398d231184f9bb90281c100e1f8d686a1084ffa03002f5a0ac982d899ba7c9265"
    "22b8004f80f3a9013a66e1f04a422194350a8b812cf30816819157239744ea78c9eb4de9dcbc4e4a2097"
    "0abba55c73f6e41f1c82ba3f4a111acefc8914824de33f317e47d5ba923f703438cf61b212ba7cbe984a"
    "b5900ca9269205b366c32f0c5f6bd5e04057ed6de55d24582f0d0a27129fcc66af81fa8580e11058081f"
    "6657eb391fce6c46632a9a0b9dd1a13351eb0b23d403a0534630cec106e662138fff9dd8d140ead978bc"
    "551b990281c100c3a8d2d195efb9df7d84b707b931fbe74f8c25b2fd384130129dd8d65bff8727b876b6"
    "be3dfa2007a798d5d7c9a35c10da77f8bd2a4fb76f59f1bd8c66a0f39a0f2560fa1128153a2aaa689254"
    "7048cdf447319ea20918fd523a9312ebc24ac09cb740ea68b75633ad69082964cb8890eeee77a7a9d56f"
    "0ce7c187c117fbae150a12982bfd4476495dca41f97fb49fbc20d9a98b1c6f9c25c0cad6dbb8b8e95703"
    "742491b29acd6036750f8fe51fcf5b8e835bc6ca3a021e89d148d34819b40b0281c00a06dc9e04af35bd"
    "463ccfdd12f57614de5d6401aaf32b6ef81824b7af1244566a2f21581417766c52430855a78a0044f993"
    "50bf86b48ef85a142d56dbfb2e388fb2fab33a954cbc1b20e0860cd43fb2fcf2280604bb5d1ad95d2676"
    "2ed26fbec594f42dd8908874817c24f42add4745717c71d4b89bd3511e2e3cb89053c91a3fbf76b8a89b"
    "2ef406ea6abe0f0674f620b1db92d2fbe101044bd1a3bcd43107c3b17f7177187b7280e6b04b41072b91"
    "7ecf8346b474f095f8677356e42472a10281c07db1d92d977b1817c1551f18311b314f1a45587ab23e0f"
    "72c8a2eb085ab5bfa7fed314f7066dc761e38345ed88b60f912c28627d73cf1e72c47f8e5bc21aa82452"
    "929ac84b794a99c18b13fedd8bfcd98292b207cce4b74f1622571592ab90c6486759a6bd7afa3fdca95a"
    "faecabeca1df3d075588bf7ac5f9a4d48771d6d7b0e075ad98a4edf467917f3bff02d190c494fdfff344"
    "635716d1d1fd51ce4bcc6b7fe67f0fb283cc6880d39719c402397e0201d555d1d88e3ffc1d9d014e9264"
    "9d0281c1008cf4853e4976d5335387b0e63eeb4d988b9c33eddbf042d8d811dfeb6a29ab03563e15bca5"
    "bf3c746450f0d47cce12ca44722cd5563080bd2e2edda091b8ec2423852dc657ca8d56412882972937dd"
    "4cde2c219b71d3c96dfcf63e2691ed7d2268ced93cd30e2c082711bec0abd81c51c045043f3f619caabf"
    "fc7adc6633125e6c4fb055f13f59fd37ac908bf49958f39e82edcde4e481f625d8c102dc4d48120be467"
    "51b56447af7050598493b5e8038219dabff700244f40fd414253fd884d"
)

_P521_ORDER: Final = int(
    "01ff" + "ffffffff" * 7 + "fffffffa"
    "51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
    16,
)


def _rsa_key(pkcs8: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_der_private_key(pkcs8, None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the RSA vector key is not an RSA key")
    return key


def leaf_key(role: str, key_type: str) -> PrivateKey:
    """The fixed leaf key of ``role`` (initiator: the sender, responder: the recipient)."""
    if key_type == "p521":
        label = f"{kat.LABELS[f'{role}_leaf_key']} p521"
        scalar = int.from_bytes(kat.fixed_bytes(label, 66), "big") % (_P521_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP521R1())
    if key_type == "rsa3072":
        pkcs8 = kat_extra.RSA_LEAF_KEY_PKCS8 if role == "initiator" else RESPONDER_RSA_KEY_PKCS8
        return _rsa_key(pkcs8)
    key: PrivateKey = kat.fixed_leaf_key(role, key_type)
    return key


def make_pki(key_type: str) -> dict[str, Any]:
    """The CA of :mod:`tools.kat` and the two users' credentials with ``key_type`` leaves
    (serials 0x1001 for the sender, 0x1002 for the recipient)."""
    pki = kat.make_pki()
    issuing_key = kat.fixed_p256_key(kat.LABELS["issuing_ca_key"])
    users = {}
    for role, identity, serial in (("initiator", SENDER, 0x1001), ("responder", RECIPIENT, 0x1002)):
        key = leaf_key(role, key_type)
        leaf = kat._certificate(
            subject=kat._name(identity.username), key=key, issuer=pki["issuing"].subject,
            issuer_key=issuing_key, serial=serial, ca_path_length=None, identity=identity,
        )
        users[role] = LocalCredentials(identity, leaf, [pki["issuing"]], key)
    return {"root": pki["root"], "issuing": pki["issuing"], **users}


def _key_input(credentials: LocalCredentials, key_type: str) -> dict[str, str]:
    key = credentials.private_key
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"leaf_key_pkcs8": der.hex()}
    return kat._leaf_key_input(credentials, key_type)


def _signer(credentials: LocalCredentials, salt_label: str) -> Callable[[bytes], bytes] | None:
    """RSA-PSS with the salt of ``salt_label``; None (the default signer) for other keys."""
    key = credentials.private_key
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    salt = kat.fixed_bytes(salt_label, 48)
    return lambda data: kat_extra.pss_sign(key, data, salt)


def _fixed(label_name: str) -> Callable[[int], bytes]:
    return lambda length: kat.fixed_bytes(LABELS[label_name], length)


def generate_vectors(key_type: str) -> dict[str, Any]:
    """Make the prekey and envelope of ``key_type``; return the vectors, JSON-ready."""
    pki = make_pki(key_type)
    alice: LocalCredentials = pki["initiator"]
    bob: LocalCredentials = pki["responder"]
    fixed_inputs = iter(
        [
            kat.fixed_bytes(LABELS["prekey_id"], prekeys.PREKEY_ID_LENGTH),
            kat.fixed_bytes(LABELS["prekey_x25519_private_key"], prekeys.X25519_PRIVATE_LENGTH),
            kat.fixed_bytes(LABELS["prekey_mlkem768_seed"], prekeys.MLKEM768_SEED_LENGTH),
        ]
    )
    prekey, secret = prekeys.make_prekey(
        bob, kind=prekeys.ONE_TIME, now=PREKEY_CREATED, lifetime=PREKEY_LIFETIME,
        entropy=lambda length: next(fixed_inputs),
        signer=_signer(bob, LABELS["prekey_rsa_pss_salt"]),
    )
    prekeys.verify_prekey(prekey, bob.certificate, owner=RECIPIENT, now=SENT_AT)
    encoded_prekey = prekeys.encode_prekey(prekey)

    def encapsulate(key: bytes) -> tuple[bytes, bytes]:
        if key != prekey.mlkem:
            raise AssertionError("the prekey does not carry the fixed ML-KEM-768 key")
        return MLKEM768_SHARED_SECRET, MLKEM768_CIPHERTEXT

    if secret.mlkem_key().decapsulate(MLKEM768_CIPHERTEXT) != MLKEM768_SHARED_SECRET:
        raise AssertionError("the fixed ML-KEM-768 encapsulation is not to the prekey's key")
    sealed_trace: dict[str, bytes] = {}
    opened_trace: dict[str, bytes] = {}
    data = envelope.seal(
        alice, recipient=RECIPIENT, prekey=prekey, payload=PAYLOAD, message_id=MESSAGE_ID,
        seq=SEQ, sent_at=SENT_AT, expires_at=EXPIRES_AT,
        entropy=_fixed("ephemeral_x25519_private_key"), mlkem_encapsulate=encapsulate,
        signer=_signer(alice, LABELS["envelope_rsa_pss_salt"]), trace=kat._recorder(sealed_trace),
    )
    opened = envelope.open_sealed(
        data, recipient=RECIPIENT, secret=secret, now=OPENED_AT, trace=kat._recorder(opened_trace)
    )
    if opened.payload != PAYLOAD or opened.sender != SENDER:
        raise AssertionError("the envelope did not open to what was sealed")
    for name, value in opened_trace.items():
        if sealed_trace[name] != value:
            raise AssertionError(f"the two sides disagree on {name}")
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(sealed_trace["ephemeral_private_key"])
    body = envelope_body(data)
    return {
        "title": f"SixChat sealed messages known-answer vectors ({key_type} leaf keys)",
        "version": envelope.VERSION,
        "suite": envelope.SUITE,
        "regenerate": "python -m tools.kat_sealed",
        "inputs": {
            "input_derivation": "SHAKE256('SixChat 1 known-answer vectors: ' + label)",
            "labels": dict(LABELS),
            "certificates_der": {
                "root_ca": kat._der(pki["root"]),
                "issuing_ca": kat._der(pki["issuing"]),
                "sender": kat._der(alice.certificate),
                "recipient": kat._der(bob.certificate),
            },
            "sender": {"identity": str(SENDER), **_key_input(alice, key_type)},
            "recipient": {"identity": str(RECIPIENT), **_key_input(bob, key_type)},
            "prekey": {
                "kind": prekey.kind,
                "created": PREKEY_CREATED,
                "lifetime": PREKEY_LIFETIME,
                "id": prekey.id,
                "x25519_private_key": secret.x25519_private.hex(),
                "mlkem768_seed": secret.mlkem_seed.hex(),
            },
            "mlkem768_encapsulation": {
                "shared_secret": MLKEM768_SHARED_SECRET.hex(),
                "ciphertext": MLKEM768_CIPHERTEXT.hex(),
            },
            "message": {
                "payload": PAYLOAD.decode(),
                "message_id": MESSAGE_ID,
                "seq": SEQ,
                "sent_at": SENT_AT,
                "expires_at": EXPIRES_AT,
                "ephemeral_x25519_private_key": sealed_trace["ephemeral_private_key"].hex(),
            },
            "opened_at": OPENED_AT,
        },
        "prekey": {
            "x25519_public_key": prekey.x25519.hex(),
            "mlkem768_encapsulation_key": prekey.mlkem.hex(),
            "algorithm": prekey.algorithm,
            "expires": prekey.expires,
            "signed_bytes": prekey.signed_bytes().hex(),
            "signature": prekey.signature.hex(),
            "encoded": encoded_prekey.decode(),
            "secret_bytes": secret.to_bytes().hex(),
        },
        "envelope": {
            "ephemeral_x25519_public_key": ephemeral.public_key().public_bytes_raw().hex(),
            **{
                name: sealed_trace[name].hex()
                for name in (
                    "x25519_shared_secret",
                    "mlkem_shared_secret",
                    "shared_secret",
                    "header_bytes",
                    "header_hash",
                    "pseudorandom_key",
                    "key",
                    "nonce",
                    "signed_bytes",
                )
            },
            "body": body.hex(),
            "signature": envelope_signature(data).hex(),
            "encoded": data.decode(),
            "encoded_length": len(data),
        },
    }


def envelope_body(data: bytes) -> bytes:
    """The body ciphertext of an envelope."""
    start = data.index(b"<body>") + len(b"<body>")
    return base64.b64decode(data[start : data.index(b"</body>")])


def envelope_signature(data: bytes) -> bytes:
    """The signature attribute of an envelope."""
    start = data.index(b' signature="') + len(b' signature="')
    return base64.b64decode(data[start : data.index(b'"', start)])


def write_all(folder: str) -> None:
    """Write every vector file into ``folder``."""
    kat.write_per_key_type(folder, generate_vectors, KEY_TYPES, FILES)


def main(argv: list[str] | None = None) -> int:
    """Write every file into docs/vectors (or --write DIR), or print one (--print KEYTYPE)."""
    return kat.per_key_type_main(argv, __doc__, generate_vectors, KEY_TYPES, FILES, VECTORS_FOLDER)


if __name__ == "__main__":
    raise SystemExit(main())
