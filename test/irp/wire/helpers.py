"""Shared fixtures for the IRP wire tests and the fuzzers: a certificate from another issuer."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from test import pki


def external_certificate(username: str, domain: str = "example.org") -> x509.Certificate:
    """A self-signed certificate from "another issuer" naming ``username@domain``."""
    certificate, _key = pki.build_certificate(
        None,
        None,
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Elsewhere Inc."),
                x509.NameAttribute(NameOID.COMMON_NAME, username),
            ]
        ),
        san=[x509.UniformResourceIdentifier(f"irp:{username}@{domain}")],
        not_before=datetime.timedelta(hours=-1),
        not_after=datetime.timedelta(days=30),
    )
    return certificate
