"""TLS settings for the registry: TLS 1.2 minimum, forward-secret AES-256-GCM/SHA-384 only.

The server accepts any client certificate at the TLS layer (with proof of possession of
its key, which TLS always checks) and decides in the application layer, where the
refusal can be a readable ``certificate-rejected`` error instead of a bare TLS alert: the
registry only accepts certificates it issued itself (exact fingerprint match), good now.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITCPTransport
from zope.interface import implementer

#: TLS 1.2 suites: ephemeral ECDHE or DHE, AES-256-GCM, SHA-384.
TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384"
#: TLS 1.3 suites (always ephemeral key exchange).
TLS13_CIPHERSUITES = "TLS_AES_256_GCM_SHA384"
#: Key exchange groups, best first: the hybrid post-quantum X25519MLKEM768 where the
#: client supports it, then classical ECDHE. Finite-field groups (ffdhe2048 is only
#: 112-bit strong) are left out.
KEY_EXCHANGE_GROUPS = "X25519MLKEM768:X25519:P-384:P-256"

_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_NO_TICKET
    | SSL.OP_SINGLE_DH_USE
    | SSL.OP_SINGLE_ECDH_USE
)


def _accept_any_certificate(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    # The application layer checks the certificate (see the module docstring).
    return True


def make_server_context(
    private_key: CertificateIssuerPrivateKeyTypes,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    client_ca_names: Sequence[x509.Certificate] = (),
) -> SSL.Context:
    """Build the server's OpenSSL context.

    ``chain`` is sent after the server certificate (the issuing CA); the subjects of
    ``client_ca_names`` are suggested to clients as acceptable certificate issuers.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_OPTIONS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _set_groups(context, KEY_EXCHANGE_GROUPS)
    context.use_certificate(crypto.X509.from_cryptography(certificate))
    context.use_privatekey(crypto.PKey.from_cryptography_key(private_key))  # type: ignore[arg-type]
    for extra in chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    if client_ca_names:
        context.set_client_ca_list(
            [crypto.X509.from_cryptography(ca).get_subject() for ca in client_ca_names]
        )
    context.set_session_id(b"irp-4604")
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


def _set_groups(context: SSL.Context, groups: str) -> None:
    """Restrict key exchange groups (pyOpenSSL has no public call for it yet)."""
    from OpenSSL._util import lib

    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is None:
        return
    if not setter(context._context, groups.encode("ascii")):  # noqa: SLF001
        # An older OpenSSL without ML-KEM: classical groups only.
        setter(context._context, groups.split(":", 1)[1].encode("ascii"))  # noqa: SLF001


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server-side TLS connections from one prepared context."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Twisted's hook: a new connection for one accepted socket."""
        return SSL.Connection(self.context, None)


def client_options(
    hostname: str,
    trust_roots: Sequence[x509.Certificate],
    client_key: CertificateIssuerPrivateKeyTypes | None = None,
    client_certificate: x509.Certificate | None = None,
    client_chain: Sequence[x509.Certificate] = (),
) -> ssl.IOpenSSLClientConnectionCreator:  # type: ignore[name-defined]
    """Client TLS options: verify the server's chain to ``trust_roots`` and its name.

    With ``client_key`` and ``client_certificate`` the client logs in with its
    certificate (strong client authentication).
    """
    roots = [ssl.Certificate(crypto.X509.from_cryptography(root)) for root in trust_roots]
    trust = ssl.trustRootFromCertificates(roots)
    private_certificate = None
    if client_key is not None and client_certificate is not None:
        private_certificate = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(crypto.X509.from_cryptography(client_certificate)),
            ssl.KeyPair(crypto.PKey.from_cryptography_key(client_key)),  # type: ignore[arg-type]
        )
    extra: dict[str, object] = {
        "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
        "acceptableCiphers": ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
    }
    if private_certificate is not None and client_chain:
        extra["extraCertChain"] = [crypto.X509.from_cryptography(c) for c in client_chain]
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=trust,
        clientCertificate=private_certificate,
        extraCertificateOptions=extra,
    )


def send_without_delay(transport: object) -> None:
    """Turn Nagle's algorithm off on the TCP connection under a TLS transport.

    IRP messages are small and answered one by one; with Nagle on, the first request
    after the handshake (written right behind the TLS Finished message) waits for the
    peer's delayed acknowledgement, some 40 ms on every connection.
    """
    lower = getattr(transport, "transport", None)  # TLSMemoryBIOProtocol wraps the TCP one
    for candidate in (transport, lower):
        if candidate is not None and ITCPTransport.providedBy(candidate):
            candidate.setTcpNoDelay(True)
            return
