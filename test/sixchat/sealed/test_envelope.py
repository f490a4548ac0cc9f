"""Tests for sixchat.sealed.envelope: sealing, opening, and every refusal."""

from __future__ import annotations

import base64
import dataclasses

from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from twisted.trial.unittest import TestCase

from sixchat import errors
from sixchat.sealed import envelope, prekeys
from sixchat.sealed.sequence import Outcome, SequenceTracker
from test.sixchat.sealed.helpers import (
    ALICE,
    BOB,
    CAROL,
    DAY,
    KEY_TYPES,
    MESSAGE_ID,
    NOW,
    PAYLOAD,
    credentials,
    edit,
    flip_base64,
    prekey_for,
    resign,
    sealed,
    set_attribute,
)


def set_chain_text(data: bytes, index: int, text: str) -> bytes:
    """The envelope with the text of its ``index``-th ``<chain>`` replaced."""

    def change(root: etree._Element) -> None:
        root.findall("chain")[index].text = text

    return edit(data, change)


def set_body_text(data: bytes, text: str) -> bytes:
    """The envelope with the text of its ``<body>`` replaced."""

    def change(root: etree._Element) -> None:
        body = root.find("body")
        assert body is not None
        body.text = text

    return edit(data, change)


class RoundTripTests(TestCase):
    """What is sealed opens to the same message, for every key type."""

    def test_every_key_type(self) -> None:
        for key_type in KEY_TYPES:
            alice = credentials("alice", key_type)
            bob = credentials("bob", key_type)
            prekey, secret = prekey_for(bob)
            data = sealed(alice, prekey, seq=7)
            opened = envelope.open_sealed(data, recipient=BOB, secret=secret, now=NOW + 60)
            self.assertEqual(opened.payload, PAYLOAD, key_type)
            self.assertEqual(opened.sender, ALICE)
            self.assertEqual(opened.sender_fingerprint, alice.fingerprint)
            self.assertEqual(opened.chain[0], alice.certificate)
            self.assertEqual(len(opened.chain), 1 + len(alice.chain))
            self.assertEqual((opened.message_id, opened.seq), (MESSAGE_ID, 7))
            self.assertEqual((opened.sent_at, opened.expires_at), (NOW, NOW + 7 * DAY))
            self.assertEqual(opened.prekey_id, prekey.id)
            self.assertTrue(opened.one_time)

    def test_mixed_key_types(self) -> None:
        """Sender and recipient need not share a key type."""
        prekey, secret = prekey_for(credentials("bob", "rsa3072"))
        data = sealed(credentials("alice", "ed25519"), prekey)
        opened = envelope.open_sealed(data, recipient=BOB, secret=secret, now=NOW)
        self.assertEqual(opened.payload, PAYLOAD)

    def test_last_resort_and_empty_and_largest_payloads(self) -> None:
        prekey, secret = prekey_for(credentials("bob"), kind=prekeys.LAST_RESORT)
        alice = credentials("alice")
        for payload in (b"", bytes(envelope.MAX_PAYLOAD)):
            data = sealed(alice, prekey, payload=payload)
            self.assertLessEqual(len(data), envelope.MAX_ENVELOPE_SIZE)
            opened = envelope.open_sealed(data, recipient=BOB, secret=secret, now=NOW)
            self.assertEqual(opened.payload, payload)
            self.assertFalse(opened.one_time)

    def test_fresh_keys_every_time(self) -> None:
        """Two envelopes of the same message share no ephemeral, KEM ciphertext or body."""
        prekey, _ = prekey_for(credentials("bob"))
        first = etree.fromstring(sealed(credentials("alice"), prekey))
        second = etree.fromstring(sealed(credentials("alice"), prekey))
        for name in ("ephemeral", "kem"):
            self.assertNotEqual(first.get(name), second.get(name))
        self.assertNotEqual(first.findtext("body"), second.findtext("body"))

    def test_nothing_readable(self) -> None:
        """The payload appears nowhere in the envelope."""
        prekey, _ = prekey_for(credentials("bob"))
        data = sealed(credentials("alice"), prekey, payload=b"attack at dawn, attack at dawn")
        self.assertNotIn(b"attack", data)
        self.assertNotIn(base64.b64encode(b"attack at dawn")[:12], data)

    def test_peek(self) -> None:
        prekey, _ = prekey_for(credentials("bob"))
        header = envelope.peek(sealed(credentials("alice"), prekey, seq=3))
        self.assertEqual(
            header,
            envelope.Header(ALICE, BOB, prekey.id, MESSAGE_ID, 3, NOW, NOW + 7 * DAY),
        )

    def test_open_with(self) -> None:
        prekey, secret = prekey_for(credentials("bob"))
        data = sealed(credentials("alice"), prekey)
        store = {secret.prekey_id: secret}
        opened = envelope.open_with(data, recipient=BOB, lookup=store.get, now=NOW)
        self.assertEqual(opened.payload, PAYLOAD)
        self.assertRaises(
            errors.SealedUnknownPrekey,
            envelope.open_with, data, recipient=BOB, lookup={}.get, now=NOW,
        )

    def test_open_with_checks_the_recipient_first(self) -> None:
        """Delivered to the wrong user, the envelope is refused as misaddressed, whatever
        that user's store holds."""
        prekey, secret = prekey_for(credentials("bob"))
        data = sealed(credentials("alice"), prekey)
        looked_up: list[str] = []

        def lookup(prekey_id: str) -> prekeys.PrekeySecret | None:
            looked_up.append(prekey_id)
            return secret

        self.assertRaises(
            errors.SealedWrongRecipient,
            envelope.open_with, data, recipient=CAROL, lookup=lookup, now=NOW,
        )
        self.assertEqual(looked_up, [])
        self.assertRaises(
            errors.SealedMalformed,
            envelope.open_with, data[:-1], recipient=BOB, lookup=lookup, now=NOW,
        )
        self.assertEqual(looked_up, [])
        envelope.open_with(data, recipient=BOB, lookup=lookup, now=NOW)
        self.assertEqual(looked_up, [prekey.id])

    def test_package_exports(self) -> None:
        import sixchat.sealed as package

        self.assertIs(package.seal, envelope.seal)
        self.assertIs(package.make_prekey, prekeys.make_prekey)
        self.assertEqual(sorted(package.__all__), sorted(set(package.__all__)))
        for name in package.__all__:
            self.assertTrue(hasattr(package, name), name)

    def test_the_recipient_may_reformat_xml(self) -> None:
        """Hashes cover decoded values, not XML bytes: attribute order and white space may
        change on the way."""
        prekey, secret = prekey_for(credentials("bob"))
        data = sealed(credentials("alice"), prekey)
        root = etree.fromstring(data)
        attributes = dict(root.attrib)
        reordered = etree.Element("sealed", dict(reversed(attributes.items())))
        for child in root:
            reordered.append(child)
        text = etree.tostring(reordered).replace(b"><", b">\n  <")
        opened = envelope.open_sealed(text, recipient=BOB, secret=secret, now=NOW)
        self.assertEqual(opened.payload, PAYLOAD)


class SealArgumentTests(TestCase):
    """seal refuses arguments that break the rules (programming errors: ValueError)."""

    def setUp(self) -> None:
        self.alice = credentials("alice")
        self.prekey, _ = prekey_for(credentials("bob"), lifetime=10 * DAY)

    def seal(self, **changes: object) -> bytes:
        arguments: dict[str, object] = {
            "recipient": BOB, "prekey": self.prekey, "payload": PAYLOAD,
            "message_id": MESSAGE_ID, "seq": 1, "sent_at": NOW, "expires_at": NOW + DAY,
        }
        arguments.update(changes)
        return envelope.seal(self.alice, **arguments)  # type: ignore[arg-type]

    def test_refusals(self) -> None:
        for changes in (
            {"recipient": CAROL},
            {"message_id": "0000000A-0000-4000-8000-000000000001"},
            {"message_id": "not-a-uuid"},
            {"seq": 0},
            {"seq": 10**12},
            {"expires_at": NOW},
            {"expires_at": NOW + 31 * DAY},
            {"expires_at": NOW + 11 * DAY},  # after the prekey expires
            {"payload": bytes(envelope.MAX_PAYLOAD + 1)},
            {"entropy": lambda length: bytes(length - 1)},
        ):
            self.assertRaises(ValueError, self.seal, **changes)

    def test_entropy_gives_the_ephemeral_key(self) -> None:
        first = self.seal(entropy=lambda length: b"\x42" * length)
        second = self.seal(entropy=lambda length: b"\x42" * length)
        self.assertEqual(
            etree.fromstring(first).get("ephemeral"), etree.fromstring(second).get("ephemeral")
        )


class TamperingTests(TestCase):
    """A malicious intermediary reads, alters, replays, reorders, redirects and swaps."""

    def setUp(self) -> None:
        self.alice = credentials("alice")
        self.bob = credentials("bob")
        self.prekey, self.secret = prekey_for(self.bob)
        self.envelope = sealed(self.alice, self.prekey)

    def open(self, data: bytes, *, now: int = NOW + 60) -> envelope.Opened:
        return envelope.open_sealed(data, recipient=BOB, secret=self.secret, now=now)

    def assertRefused(self, error: type[errors.SixChatError], data: bytes) -> None:
        self.assertRaises(error, self.open, data)

    def test_altered_body(self) -> None:
        body = etree.fromstring(self.envelope).findtext("body") or ""
        for index in (0, 5, len(base64.b64decode(body)) - 1):
            altered = set_body_text(self.envelope, flip_base64(body, index))
            self.assertRefused(errors.SealedBadSignature, altered)

    def test_altered_body_with_a_valid_signature(self) -> None:
        """Even re-signed by the sender's own key, an altered body does not decrypt."""
        body = etree.fromstring(self.envelope).findtext("body") or ""

        def change(root: etree._Element) -> None:
            root.find("body").text = flip_base64(body, 3)  # type: ignore[union-attr]

        self.assertRefused(
            errors.SealedDecryptFailed, resign(self.envelope, self.alice, self.prekey, change)
        )

    def test_altered_header_fields(self) -> None:
        """Every attribute is bound: each change is refused, with the error named."""
        root = etree.fromstring(self.envelope)
        other_prekey, _ = prekey_for(self.bob)
        cases = {
            "v": ("2", errors.SealedMalformed),
            "suite": ("SIXCHAT-SEALED2", errors.SealedMalformed),
            "from": ("carol@example.org", errors.SealedBadSignature),
            "to": ("carol@example.org", errors.SealedWrongRecipient),
            "prekey": (other_prekey.id, errors.SealedUnknownPrekey),
            "id": ("00000000-0000-4000-8000-000000000002", errors.SealedBadSignature),
            "seq": ("2", errors.SealedBadSignature),
            "sent": (str(NOW - 1), errors.SealedBadSignature),
            "expires": (str(NOW + 7 * DAY + 1), errors.SealedBadSignature),
            "ephemeral": (flip_base64(root.get("ephemeral", "")), errors.SealedBadSignature),
            "kem": (flip_base64(root.get("kem", ""), 100), errors.SealedBadSignature),
            "algorithm": ("ecdsa-p384-sha384", errors.SealedBadSignature),
            "signature": (flip_base64(root.get("signature", ""), 10), errors.SealedBadSignature),
        }
        self.assertEqual(set(cases), set(root.keys()))
        for name, (value, error) in cases.items():
            with self.subTest(attribute=name):
                self.assertRefused(error, set_attribute(self.envelope, name, value))

    def test_altered_chain(self) -> None:
        """Swapping, dropping or adding a certificate breaks the signature."""
        carol = credentials("carol")

        def drop_intermediate(root: etree._Element) -> None:
            root.remove(root.findall("chain")[1])

        def duplicate_leaf(root: etree._Element) -> None:
            element = etree.Element("chain")
            element.text = root.findall("chain")[0].text
            root.insert(1, element)

        for change in (drop_intermediate, duplicate_leaf):
            self.assertRefused(errors.SealedBadSignature, edit(self.envelope, change))
        swapped = set_chain_text(
            self.envelope, 1, base64.b64encode(carol.certificates_der[0]).decode()
        )
        self.assertRefused(errors.SealedBadSignature, swapped)

    def test_swapped_sender_chain(self) -> None:
        """Carol's chain under Alice's name (or her own) with Alice's signature: refused."""
        carol = credentials("carol")

        def carol_chain(root: etree._Element) -> None:
            for element in root.findall("chain"):
                root.remove(element)
            for position, der in enumerate(carol.certificates_der):
                element = etree.Element("chain")
                element.text = base64.b64encode(der).decode()
                root.insert(position, element)

        self.assertRefused(errors.SealedBadSignature, edit(self.envelope, carol_chain))
        self.assertRefused(
            errors.SealedBadSignature,
            set_attribute(edit(self.envelope, carol_chain), "from", str(CAROL)),
        )

    def test_swapped_sender_re_signed(self) -> None:
        """Another genuine user (or the intermediary's own account) takes Alice's envelope
        and signs it as the sender: the signature verifies, but the header names another
        sender, so the key differs and the body does not decrypt."""
        for thief in (credentials("carol"), credentials("intermediary", "p384")):
            forged = resign(self.envelope, thief, self.prekey, lambda root: None, chain=thief)
            self.assertRefused(errors.SealedDecryptFailed, forged)

    def test_wrong_recipient(self) -> None:
        carol = credentials("carol")
        carol_prekey, carol_secret = prekey_for(carol)
        # Delivered to Carol as it is: addressed to Bob.
        self.assertRaises(
            errors.SealedWrongRecipient,
            envelope.open_sealed, self.envelope, recipient=CAROL, secret=carol_secret, now=NOW,
        )
        # Readdressed to Carol: names Bob's prekey; with Carol's prekey id, the signature fails.
        redirected = set_attribute(self.envelope, "to", str(CAROL))
        self.assertRaises(
            errors.SealedUnknownPrekey,
            envelope.open_sealed, redirected, recipient=CAROL, secret=carol_secret, now=NOW,
        )
        redirected = set_attribute(redirected, "prekey", carol_prekey.id)
        self.assertRaises(
            errors.SealedBadSignature,
            envelope.open_sealed, redirected, recipient=CAROL, secret=carol_secret, now=NOW,
        )

    def test_unknown_prekey(self) -> None:
        _, other_secret = prekey_for(self.bob)
        self.assertRaises(
            errors.SealedUnknownPrekey,
            envelope.open_sealed, self.envelope, recipient=BOB, secret=other_secret, now=NOW,
        )

    def test_replay_and_reorder(self) -> None:
        """A replayed envelope opens (the crypto is stateless) but the tracker refuses it,
        and the one-time secret, deleted after the first open, is gone."""
        second = sealed(self.alice, self.prekey, seq=2, message_id="00000000-0000-4000-8000-000000000002")
        store = {self.secret.prekey_id: self.secret}
        tracker = SequenceTracker()
        opened = envelope.open_with(second, recipient=BOB, lookup=store.get, now=NOW)
        self.assertEqual(tracker.accept(opened.sender, opened.seq, opened.message_id).outcome, Outcome.GAP)
        opened = self.open(self.envelope)
        self.assertEqual(tracker.accept(opened.sender, opened.seq, opened.message_id).outcome, Outcome.LATE)
        replayed = self.open(second)
        verdict = tracker.accept(replayed.sender, replayed.seq, replayed.message_id)
        self.assertRaises(errors.SealedReplayed, verdict.check)
        del store[self.secret.prekey_id]  # one-time: deleted after the first open
        self.assertRaises(
            errors.SealedUnknownPrekey,
            envelope.open_with, second, recipient=BOB, lookup=store.get, now=NOW,
        )

    def test_expired(self) -> None:
        self.assertRaises(errors.SealedExpired, self.open, self.envelope, now=NOW + 7 * DAY)
        self.open(self.envelope, now=NOW + 7 * DAY - 1)
        # Sent in the future (beyond the clock skew allowed).
        self.assertRaises(errors.SealedExpired, self.open, self.envelope, now=NOW - 301)
        self.open(self.envelope, now=NOW - 300)

    def test_message_outliving_its_prekey(self) -> None:
        """A sender that ignores the prekey's expiry: refused."""
        stretched = dataclasses.replace(self.prekey, expires=self.prekey.expires + 30 * DAY)
        data = envelope.seal(
            self.alice, recipient=BOB, prekey=stretched, payload=PAYLOAD, message_id=MESSAGE_ID,
            seq=1, sent_at=self.prekey.expires - DAY, expires_at=self.prekey.expires + DAY,
        )
        self.assertRaises(
            errors.SealedExpired, self.open, data, now=self.prekey.expires - DAY
        )

    def test_small_order_ephemeral(self) -> None:
        data = resign(
            self.envelope, self.alice, self.prekey,
            lambda root: root.set("ephemeral", base64.b64encode(bytes(32)).decode()),
        )
        self.assertRefused(errors.SealedMalformed, data)

    def test_signature_by_another_key(self) -> None:
        """Alice's chain with Carol's signature."""
        forged = resign(self.envelope, credentials("carol"), self.prekey, lambda root: None)
        self.assertRefused(errors.SealedBadSignature, forged)


class MalformedTests(TestCase):
    """Strict parsing: truncated, oversized, malformed, DTDs and entities."""

    def setUp(self) -> None:
        self.alice = credentials("alice")
        self.prekey, self.secret = prekey_for(credentials("bob"))
        self.envelope = sealed(self.alice, self.prekey)

    def assertMalformed(self, data: bytes) -> None:
        self.assertRaises(errors.SealedMalformed, envelope.peek, data)
        self.assertRaises(
            errors.SealedMalformed,
            envelope.open_sealed, data, recipient=BOB, secret=self.secret, now=NOW,
        )

    def test_truncated(self) -> None:
        for length in (0, 1, 100, len(self.envelope) // 2, len(self.envelope) - 1):
            self.assertMalformed(self.envelope[:length])

    def test_oversized(self) -> None:
        padded = self.envelope.replace(b"<body>", b"<body>" + b" " * envelope.MAX_ENVELOPE_SIZE)
        self.assertMalformed(padded)
        big = envelope.MAX_PAYLOAD + 17
        self.assertMalformed(set_body_text(self.envelope, base64.b64encode(bytes(big)).decode()))

    def test_dtd_entities_comments(self) -> None:
        for data in (
            b'<!DOCTYPE sealed [<!ENTITY x "y">]>' + self.envelope,
            self.envelope.replace(b"<body>", b"<body>&x;"),
            self.envelope.replace(b"<body>", b"<!-- c --><body>"),
            self.envelope.replace(b"<body>", b"<body><![CDATA[x]]>"),
            b"<?xml-stylesheet href='x'?>" + self.envelope,
            b'<sealed xmlns="urn:x"/>',
        ):
            self.assertMalformed(data)

    def test_structure(self) -> None:
        root = etree.fromstring(self.envelope)
        chain = root.findall("chain")

        def add_chain(count: int) -> bytes:
            def change(tree: etree._Element) -> None:
                for _ in range(count):
                    element = etree.Element("chain")
                    element.text = chain[0].text
                    tree.insert(0, element)
            return edit(self.envelope, change)

        def drop(tag: str) -> bytes:
            return edit(self.envelope, lambda tree: [tree.remove(e) for e in tree.findall(tag)])

        for data in (
            b"<prekey/>",
            b"not xml",
            self.envelope.replace(b"<sealed ", b"<sealed extra=\"1\" "),
            edit(self.envelope, lambda tree: tree.attrib.pop("kem")),
            drop("chain"),
            drop("body"),
            add_chain(envelope.MAX_CERTIFICATES + 1 - len(chain)),
            self.envelope.replace(b"</sealed>", b"<extra/></sealed>"),
            self.envelope.replace(b"<body>", b"text<body>"),
            self.envelope.replace(b"</body>", b"<x/></body>"),
            edit(self.envelope, lambda tree: tree.find("body").set("a", "b")),  # type: ignore[union-attr]
        ):
            self.assertMalformed(data)

    def test_field_values(self) -> None:
        ephemeral = etree.fromstring(self.envelope).get("ephemeral", "")
        for name, value in (
            ("from", "Alice@example.org"),
            ("from", "alice"),
            ("to", "bob@EXAMPLE.org"),
            ("prekey", self.prekey.id.upper()),
            ("prekey", self.prekey.id[:-1]),
            ("id", "0000000A-0000-4000-8000-000000000001"),
            ("seq", "0"),
            ("seq", "01"),
            ("seq", "-1"),
            ("seq", "1000000000000"),
            ("sent", str(NOW + 7 * DAY)),
            ("expires", str(NOW + 31 * DAY)),
            ("ephemeral", ephemeral[:-4]),
            ("ephemeral", ephemeral.rstrip("=")),
            ("ephemeral", ephemeral[:-2] + "B="),  # non-canonical: unused bits set
            ("kem", base64.b64encode(bytes(1087)).decode()),
            ("algorithm", "md5-rsa"),
            ("signature", "!!!!"),
        ):
            with self.subTest(attribute=name, value=value):
                self.assertMalformed(set_attribute(self.envelope, name, value))

    def test_certificates(self) -> None:
        """A certificate must load and be in DER (PEM is refused)."""
        pem = self.alice.certificate.public_bytes(Encoding.PEM)
        for der in (b"\x30\x03\x02\x01\x01", pem, self.alice.certificates_der[0] + b"\x00"):
            data = set_chain_text(self.envelope, 0, base64.b64encode(der).decode())
            self.assertRaises(
                errors.SealedMalformed,
                envelope.open_sealed, data, recipient=BOB, secret=self.secret, now=NOW,
            )

    def test_every_refusal_is_a_sealed_error(self) -> None:
        """Flipping any single byte of the envelope is refused with a sealed error, never
        anything else, and never opens."""
        step = max(1, len(self.envelope) // 400)
        for index in range(0, len(self.envelope), step):
            data = bytearray(self.envelope)
            data[index] ^= 0x04
            try:
                envelope.open_sealed(bytes(data), recipient=BOB, secret=self.secret, now=NOW)
            except errors.SEALED_ERRORS:
                continue
            self.fail(f"a flip at byte {index} was accepted")
