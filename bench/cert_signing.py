"""Baseline: raw ``cryptography`` certificate signing, CSR in, certificate out.

A plain loop on the server core: parse a PEM CSR, check its self-signature, build the same
certificate the registry issues (subject ``CN=<user>, O=<domain>``, the ``irp:`` URI, the
same extensions, random serial, one year), sign it with an issuing key of the same type
(ECDSA P-384 with SHA-384 by default) and encode it as DER. No database, no network.
"""

from __future__ import annotations

import datetime
import itertools
from typing import Any

from bench.sampling import Sample, measure_loop


def signing_rate(key_type: str, csrs: list[bytes], warmup: float, duration: float) -> Sample:
    """One run: certificates signed per second (runs on the server core)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from irp.server.ca import generate_key

    issuing_key: Any = generate_key(key_type)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "example.org IRP Issuing CA")])
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_key.public_key())
    digest: Any = None
    if isinstance(issuing_key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if issuing_key.curve.key_size >= 384 else hashes.SHA256()
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )

    def issue(index: int) -> bytes:
        csr = x509.load_pem_x509_csr(csrs[index % len(csrs)])
        if not csr.is_signature_valid:
            raise ValueError("bad CSR")
        public_key = csr.public_key()
        now = datetime.datetime.now(datetime.UTC)
        name = f"user{index % 1000:05d}"
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"irp:{name}@example.org")]), critical=False)
            .add_extension(authority, critical=False)
            .sign(issuing_key, digest)
        )
        return certificate.public_bytes(Encoding.DER)

    issued = itertools.count()

    def one() -> dict[str, int]:
        issue(next(issued))
        return {"certificates": 1}

    window, counts = measure_loop(one, warmup, duration)  # measured here, on the server core
    return window.sample(counts["certificates"] / window.wall, **counts)


def make_csrs(key_type: str, count: int = 32) -> list[bytes]:
    """PEM CSRs of fresh keys, as the ``irp`` command makes them."""
    from bench.irp_server import make_csr
    from irp.server.ca import generate_key

    return [make_csr(generate_key(key_type)) for _ in range(count)]
