# mypy: allow-untyped-calls
"""What the CA tests share: a hand-moved clock, and ``openssl verify`` on the CA's output."""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from common.identity import Identity
from irp.server.ca import (
    CertificateAuthority,
)

ALICE = Identity("alice", "example.org")
START = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


class FakeClock:
    """A clock a test moves by hand."""

    def __init__(self, start: datetime.datetime = START) -> None:
        self.time = start

    def __call__(self) -> datetime.datetime:
        return self.time

    def advance(self, delta: datetime.timedelta) -> None:
        self.time += delta


def _pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(serialization.Encoding.PEM)


_Extension = TypeVar("_Extension", bound=x509.ExtensionType)


def _extension_value(certificate: x509.Certificate, kind: type[_Extension]) -> _Extension:
    return certificate.extensions.get_extension_for_class(kind).value


class _OpenSSLMixin(unittest.TestCase):
    """Run ``openssl verify`` on certificates written to a temporary directory."""

    def openssl_verify(
        self,
        ca: CertificateAuthority,
        leaf: x509.Certificate,
        *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
        untrusted: Sequence[x509.Certificate] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        directory = self.mktemp()
        os.mkdir(directory)
        files = {
            "root.pem": _pem(ca.root_certificate),
            "untrusted.pem": b"".join(
                _pem(c) for c in ([ca.issuing_certificate] if untrusted is None else untrusted)
            ),
            "leaf.pem": _pem(leaf),
        }
        for index, crl in enumerate(crls):
            files[f"crl{index}.pem"] = _pem(crl)
        for name, data in files.items():
            with open(os.path.join(directory, name), "wb") as output:
                output.write(data)
        command = ["openssl", "verify", "-x509_strict", "-CAfile", "root.pem"]
        command += ["-untrusted", "untrusted.pem"] if files["untrusted.pem"] else []
        for index in range(len(crls)):
            command += ["-CRLfile", f"crl{index}.pem"]
        command += [*options, "leaf.pem"]
        return subprocess.run(
            command, cwd=directory, capture_output=True, text=True, check=False
        )

    def assertOpenSSLAccepts(
        self, ca: CertificateAuthority, leaf: x509.Certificate, *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
    ) -> None:
        result = self.openssl_verify(ca, leaf, *options, crls=crls)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("leaf.pem: OK", result.stdout)

    def assertOpenSSLRejects(
        self, ca: CertificateAuthority, leaf: x509.Certificate, *options: str,
        crls: Sequence[x509.CertificateRevocationList] = (),
        expected: str = "",
    ) -> None:
        result = self.openssl_verify(ca, leaf, *options, crls=crls)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn(expected, result.stdout + result.stderr)
