"""Credentials and TLS settings shared by the baselines and the load generators.

The baselines get their keys and certificates from a CA made with the product's own
:class:`irp.server.ca.CertificateAuthority` (so they have exactly the shape of the registry's: a
root, an issuing CA, leaf certificates with the same extensions), of the key type the
suite runs with (the product's default, P-384). Everything crosses process boundaries as
PEM in a plain dict (:class:`Pki`).

The baseline servers use the product's TLS settings (:func:`common.tls.make_server_context`:
TLS 1.2 minimum, AES-256-GCM/SHA-384 suites, TLS 1.3 ``TLS_AES_256_GCM_SHA384``).
The load generators' client contexts offer the same suites but do not verify the server
(the generator is not what is measured, and verifying would only make it slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DOMAIN = "example.org"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pem:
    """One leaf: its key, certificate and chain (issuing CA) as PEM bytes."""

    name: str
    key: bytes
    certificate: bytes
    chain: tuple[bytes, ...]


@dataclass(frozen=True)
class Pki:
    """A CA of one domain, a server leaf and user leaves, as PEM (picklable)."""

    domain: str
    key_type: str
    root: bytes
    issuing: bytes
    server: Pem
    users: tuple[Pem, ...]
    #: The issuing CA's current (empty) CRL, PEM.
    crl: bytes
    #: The root's and the issuing CA's private keys, PEM (for :func:`issue_users`).
    ca_keys: tuple[bytes, bytes] | None = None


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate_pem(certificate: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)  # type: ignore[no-any-return]


def make_pki(key_type: str = "p384", users: int = 1, domain: str = DOMAIN, server_user: str | None = None) -> Pki:
    """A fresh CA with a server certificate for 127.0.0.1/localhost and ``users`` users.

    With ``server_user``, the server leaf is a user certificate for that user name (the
    SixChat responder proves a user identity, not a host name).
    """
    from common.identity import Identity
    from irp.server.ca import CertificateAuthority, generate_key

    ca = CertificateAuthority.create(domain, key_type=key_type)
    issuing = _certificate_pem(ca.issuing_certificate)
    server_key = generate_key(key_type)
    if server_user is None:
        server_certificate = ca.issue_server_certificate(["localhost", HOST], server_key.public_key())
        server_name = "localhost"
    else:
        server_certificate = ca.issue_user_certificate(Identity(server_user, domain), server_key.public_key())
        server_name = server_user
    leaves = _issue(ca, [f"user{index:05d}" for index in range(users)], key_type)
    crl = ca.build_crl([], 1)
    from cryptography.hazmat.primitives import serialization

    return Pki(
        domain=domain,
        key_type=key_type,
        root=_certificate_pem(ca.root_certificate),
        issuing=issuing,
        server=Pem(server_name, _key_pem(server_key), _certificate_pem(server_certificate), (issuing,)),
        users=tuple(leaves),
        crl=crl.public_bytes(serialization.Encoding.PEM),
        ca_keys=(_key_pem(ca.root_key), _key_pem(ca.issuing_key)),
    )


def _issue(ca: Any, names: list[str], key_type: str) -> tuple[Pem, ...]:
    """A fresh key of ``key_type`` and a user certificate from ``ca`` for each of ``names``."""
    from common.identity import Identity
    from irp.server.ca import generate_key

    issuing = _certificate_pem(ca.issuing_certificate)
    leaves = []
    for name in names:
        key = generate_key(key_type)
        certificate = ca.issue_user_certificate(Identity(name, ca.domain), key.public_key())
        leaves.append(Pem(name, _key_pem(key), _certificate_pem(certificate), (issuing,)))
    return tuple(leaves)


def issue_users(pki: Pki, names: list[str]) -> tuple[Pem, ...]:
    """New users of ``pki``'s CA (a fresh key and certificate each), for runs that must
    never present the same certificate twice."""
    from irp.server.ca import CertificateAuthority

    if pki.ca_keys is None:
        raise ValueError("this PKI was made without its CA keys")
    root_key, issuing_key = pki.ca_keys
    ca = CertificateAuthority(
        pki.domain,
        load_certificate(pki.root),
        load_key(root_key),
        load_certificate(pki.issuing),
        load_key(issuing_key),
    )
    return _issue(ca, names, pki.key_type)


def load_key(pem: bytes) -> Any:
    """A private key from PEM."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem, None)


def load_certificate(pem: bytes) -> Any:
    """A certificate from PEM."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem)


def server_context(pki: Pki, *, tls13_only: bool = False, verify_clients: bool = False) -> Any:
    """The product's server TLS context (:func:`common.tls.make_server_context`) for the
    baseline servers.

    ``tls13_only`` raises the minimum to TLS 1.3; ``verify_clients`` makes OpenSSL verify
    the client's chain to the root and refuse a handshake without a good certificate (the
    SixChat comparison, where the responder checks the initiator's chain).
    """
    from OpenSSL import SSL

    from common.tls import make_server_context

    root = load_certificate(pki.root)
    context = make_server_context(
        load_key(pki.server.key),
        load_certificate(pki.server.certificate),
        [load_certificate(pem) for pem in pki.server.chain],
        client_ca_names=[root],
    )
    if tls13_only:
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
    if verify_clients:
        from OpenSSL import crypto

        context.get_cert_store().add_cert(crypto.X509.from_cryptography(root))  # type: ignore[union-attr]
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return context


def client_context(leaf: Pem | None, *, tls13_only: bool = False) -> Any:
    """A load generator's client context: the product's suites, the leaf as client
    certificate (with its chain), no server verification, no session resumption."""
    from OpenSSL import SSL, crypto

    from common.tls import TLS12_CIPHERS, TLS13_CIPHERSUITES

    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION if tls13_only else SSL.TLS1_2_VERSION)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
    # pyOpenSSL already enables partial writes and moving write buffers.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_verify(SSL.VERIFY_NONE)
    if leaf is not None:
        context.use_certificate(crypto.X509.from_cryptography(load_certificate(leaf.certificate)))
        context.use_privatekey(crypto.PKey.from_cryptography_key(load_key(leaf.key)))
        for pem in leaf.chain:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(load_certificate(pem)))
        context.check_privatekey()
    return context


def source_addresses(count: int, first: int = 1) -> list[str]:
    """``count`` distinct loopback addresses (127.0.x.y, never 127.0.0.1) to connect from.

    The registry allows a limited number of connections per client address; clients of
    a real registry come from many addresses, so the load generator spreads its
    connections over several loopback addresses.
    """
    addresses = []
    for index in range(first, first + count):
        high, low = divmod(index, 250)
        addresses.append(f"127.0.{high + 1}.{low + 1}")
    return addresses


def shared_pki(ctx: Any, users: int = 50) -> Pki:
    """The baselines' PKI, made once per suite run (``ctx`` is the harness context)."""
    return ctx.shared(f"pki-{users}", lambda: make_pki(ctx.settings.key_type, users))  # type: ignore[no-any-return]
