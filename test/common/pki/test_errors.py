"""The PKI's own errors, and how each protocol translates them (``from_pki``)."""

from __future__ import annotations

from twisted.trial import unittest

from common.errors import ProtocolError
from common.pki import errors as pki_errors
from irp import errors as irp_errors
from sixchat import errors as sixchat_errors


class PKIErrorTests(unittest.TestCase):
    """The errors carry reasons and messages, and no wire codes."""

    def test_no_wire_codes(self) -> None:
        """No PKI error is a protocol error or carries a code or a wire name."""
        for cls in (pki_errors.PKIError, *pki_errors.PKIError.__subclasses__()):
            self.assertFalse(issubclass(cls, ProtocolError), cls)
            self.assertFalse(hasattr(cls, "code"), cls)
            self.assertFalse(hasattr(cls, "name"), cls)

    def test_messages(self) -> None:
        """The message is the one given, else the class's sentence; str() is the message."""
        error = pki_errors.CertificateRevoked()
        self.assertEqual(error.message, "The certificate has been revoked.")
        self.assertEqual(str(pki_errors.WeakKey("too small")), "too small")

    def test_reasons(self) -> None:
        """CertificateInvalid keeps its reason and refuses reasons outside the vocabulary."""
        error = pki_errors.CertificateInvalid("expired", "it expired")
        self.assertEqual((error.reason, error.message), ("expired", "it expired"))
        self.assertRaises(ValueError, pki_errors.CertificateInvalid, "revoked")


class IRPTranslationTests(unittest.TestCase):
    """irp.errors.from_pki: what a registry's peer is told."""

    def test_certificate_invalid(self) -> None:
        """A refused certificate is certificate-rejected (401), keeping reason and message."""
        wire = irp_errors.from_pki(pki_errors.CertificateInvalid("bad-identity", "no identity"))
        self.assertIs(type(wire), irp_errors.CertificateInvalid)
        self.assertEqual((wire.name, wire.code), ("certificate-rejected", 401))
        self.assertEqual((wire.reason, wire.message), ("bad-identity", "no identity"))

    def test_each_class(self) -> None:
        """Revocation problems are certificate-rejected; a weak key is weak-key (422), an
        unknown key type invalid-argument."""
        cases = [
            (pki_errors.CertificateRevoked("gone"), irp_errors.CertificateRevoked),
            (pki_errors.RevocationUnknown("no CRL"), irp_errors.RevocationUnknown),
            (pki_errors.WeakKey("small"), irp_errors.WeakKey),
            (pki_errors.UnknownKeyType("no such type"), irp_errors.InvalidArgument),
            (pki_errors.PKIError("other"), irp_errors.CertificateRejected),
        ]
        for error, expected in cases:
            wire = irp_errors.from_pki(error)
            self.assertIs(type(wire), expected)
            self.assertEqual(wire.message, error.message)
        self.assertEqual(irp_errors.from_pki(pki_errors.WeakKey()).name, "weak-key")
        self.assertEqual(irp_errors.from_pki(pki_errors.WeakKey()).code, 422)


class SixChatTranslationTests(unittest.TestCase):
    """sixchat.errors.from_pki: what a SixChat peer is told."""

    def test_certificate_invalid(self) -> None:
        """Unknown issuer and expiry are peer-rejected reasons; the rest certificate-invalid."""
        untrusted = sixchat_errors.from_pki(
            pki_errors.CertificateInvalid("unknown-issuer", "who?"), about="alice@example.org"
        )
        assert isinstance(untrusted, sixchat_errors.PeerRejected)
        self.assertEqual(untrusted.reason, "untrusted-ca")
        self.assertEqual(untrusted.message, "alice@example.org: who?")
        expired = sixchat_errors.from_pki(pki_errors.CertificateInvalid("expired", "old"))
        assert isinstance(expired, sixchat_errors.PeerRejected)
        self.assertEqual((expired.reason, expired.message), ("expired", "old"))
        other = sixchat_errors.from_pki(
            pki_errors.CertificateInvalid("wrong-usage", "no clientAuth"), about="bob@example.org"
        )
        self.assertIs(type(other), sixchat_errors.CertificateInvalid)
        self.assertEqual(other.message, "bob@example.org: no clientAuth (wrong-usage)")

    def test_revocation(self) -> None:
        """Revoked is peer-rejected revoked; an unknown status peer-rejected untrusted-ca."""
        revoked = sixchat_errors.from_pki(pki_errors.CertificateRevoked("gone"))
        unknown = sixchat_errors.from_pki(pki_errors.RevocationUnknown("no CRL"))
        assert isinstance(revoked, sixchat_errors.PeerRejected)
        assert isinstance(unknown, sixchat_errors.PeerRejected)
        self.assertEqual((revoked.reason, revoked.message), ("revoked", "gone"))
        self.assertEqual((unknown.reason, unknown.message), ("untrusted-ca", "no CRL"))
        self.assertIs(type(sixchat_errors.from_pki(pki_errors.WeakKey("small"))), sixchat_errors.CertificateInvalid)
