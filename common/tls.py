"""TLS settings for the registry: TLS 1.2 minimum, forward-secret AES-256-GCM/SHA-384 only.

The server accepts any client certificate at the TLS layer (with proof of possession of
its key, which TLS always checks) and decides in the application layer, where the
refusal can be a readable ``certificate-rejected`` error instead of a bare TLS alert: the
registry only accepts certificates it issued itself (exact fingerprint match), good now.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITCPTransport
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

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
    # Free each connection's read and write buffers (some 34 KiB) while it is idle.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
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
    if not disable_session_tickets(context):
        log.warn(
            "This TLS library cannot be told to issue no TLS 1.3 session tickets: clients"
            " receive some, which resume nothing (there is no session cache)"
        )
    return context


def make_client_context(
    private_key: CertificateIssuerPrivateKeyTypes,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
) -> SSL.Context:
    """A client context presenting ``certificate`` (and ``chain``) with the suite's
    versions, ciphers and groups, for a server whose certificate the application checks
    after the handshake (a user's certificate, such as a SixChat intermediary's, names no
    host): every server certificate passes the TLS layer."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _set_groups(context, KEY_EXCHANGE_GROUPS)
    context.use_certificate(crypto.X509.from_cryptography(certificate))
    context.use_privatekey(crypto.PKey.from_cryptography_key(private_key))  # type: ignore[arg-type]
    for extra in chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    return context


# -- session tickets ------------------------------------------------------------------
#
# OP_NO_TICKET only switches TLS 1.3 to stateful tickets: OpenSSL still sends
# SSL_CTX_get_num_tickets() of them (2 by default) after every handshake. Only
# SSL_CTX_set_num_tickets(ctx, 0) stops them, and neither pyOpenSSL nor cryptography's
# bindings expose it. cryptography links OpenSSL statically into its _rust module without
# exporting it, but the module keeps its symbol table: the two functions are found there
# and called on the very OpenSSL that pyOpenSSL uses (the getter must read a plausible
# count before the setter is trusted, and 0 after it).

_NumTickets = tuple[Callable[[int], int], Callable[[int, int], int]]


def _context_pointer(context: SSL.Context) -> int:
    from OpenSSL._util import ffi

    return int(ffi.cast("uintptr_t", context._context))  # noqa: SLF001


@functools.cache
def _num_tickets_functions() -> _NumTickets | None:
    """(get, set) for SSL_CTX_{get,set}_num_tickets on an SSL_CTX address, or None."""
    from OpenSSL._util import lib

    getter = getattr(lib, "SSL_CTX_get_num_tickets", None)
    setter = getattr(lib, "SSL_CTX_set_num_tickets", None)
    if getter is not None and setter is not None:  # a future binding: use it
        from OpenSSL._util import ffi

        return (
            lambda address: int(getter(ffi.cast("SSL_CTX *", address))),
            lambda address, count: int(setter(ffi.cast("SSL_CTX *", address), count)),
        )
    try:
        from cryptography.hazmat.bindings import _rust

        path = _rust.__file__
        if path is None:
            return None
        wanted = (b"SSL_CTX_get_num_tickets", b"SSL_CTX_set_num_tickets", b"PyInit__rust")
        found = _elf_symbols(path, wanted)
        if found is None or len(found) != len(wanted):
            return None
        module = ctypes.CDLL(path)
        base = ctypes.cast(module.PyInit__rust, ctypes.c_void_p).value
        if base is None:
            return None
        base -= found[b"PyInit__rust"]
        get = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(base + found[b"SSL_CTX_get_num_tickets"])
        set_ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)(base + found[b"SSL_CTX_set_num_tickets"])
    except (OSError, ValueError, AttributeError, struct.error):
        return None
    return (lambda address: int(get(address)), lambda address, count: int(set_(address, count)))


def _elf_symbols(path: str, wanted: Sequence[bytes]) -> dict[bytes, int] | None:
    """The values of ``wanted`` symbols in the symbol table of a 64-bit little-endian ELF
    file (None when the file is not one, e.g. on macOS or Windows)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + index * entry_size) for index in range(count)]
    names = set(wanted)
    found: dict[bytes, int] = {}
    for _name, kind, _flags, _address, offset, size, link, _info, _align, _entry in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for position in range(offset, offset + size - 23, 24):
            name_offset, _sym_info, _other, _section, value, _size = struct.unpack_from("<IBBHQQ", data, position)
            start = strings + name_offset
            name = data[start : data.index(b"\0", start)]
            if name in names and value:
                found[name] = value
    return found


def session_tickets(context: SSL.Context) -> int | None:
    """How many TLS 1.3 session tickets ``context`` issues per handshake (None when the
    TLS library cannot tell)."""
    functions = _num_tickets_functions()
    return None if functions is None else functions[0](_context_pointer(context))


def disable_session_tickets(context: SSL.Context) -> bool:
    """Make ``context`` issue no TLS 1.3 session tickets; False if that is impossible here."""
    functions = _num_tickets_functions()
    if functions is None:
        return False
    get, set_ = functions
    address = _context_pointer(context)
    if not 0 <= get(address) <= 64:  # not OpenSSL's field: touch nothing
        return False
    return bool(set_(address, 0)) and get(address) == 0


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
