"""Baseline: bare Twisted TLS handshakes with client certificates, same key types.

The server is :mod:`bench.tls_echo`'s (Twisted's ``TLSMemoryBIOProtocol`` with the
product's TLS context); the load generator opens connections as fast as the server takes
them, ``concurrency`` at a time, each one: TCP connect, TLS handshake presenting a client
certificate (with its issuing CA), one exchange, close_notify, close.

Two variants:

* for IRP (figure 2): the product's TLS 1.2+ settings, the server accepting any client
  certificate at the TLS layer (the registry checks it in the application layer), then one
  request/answer of the sizes of an IRP look-up;
* for SixChat (figure 5): TLS 1.3 only, OpenSSL verifying the client's chain to the root
  (as the SixChat responder verifies the initiator's), and the server's first frame sent
  on completion of the handshake, of the size of the SixChat responder's first record.

Both use the suite's key type (P-384 by default) for the CA, the server and the clients;
the key exchange is OpenSSL's default, X25519MLKEM768 (hybrid, like SixChat's).

First-contact runs (figure 5) give every connection a client of its own, never seen
before: :func:`fresh_tls_sessions` sets a fresh user's certificate and key on each
connection (:class:`FreshClientExchange`), from a pool made before the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.fixtures import HOST, Pem, Pki, client_context, load_certificate, load_key, source_addresses
from bench.loadgen import LoadError, TLSExchange, handshake_loop
from bench.sampling import Sample

#: Handshakes in flight at once.
CONCURRENCY = 16
#: Loopback addresses the short-lived connections come from (ports are reused sooner
#: when they are spread).
SOURCES = 64


def handshake_server(ctx: Any, pki: Pki, *, key: str, **options: Any) -> Any:
    """A bare TLS server for handshake runs (``options`` as for ``serve_echo``)."""
    return ctx.server(key, "bench.tls_echo:serve_echo", {"pki": pki, **options})


def tls_sessions(
    port: int,
    server_pid: int,
    contexts: Sequence[Any],
    request: bytes | None,
    *,
    warmup: float,
    duration: float,
    check: bytes | None = None,
    concurrency: int = CONCURRENCY,
) -> Sample:
    """One run of TLS sessions/s against ``port`` (load generator side)."""
    sources = source_addresses(SOURCES)

    def open_session(index: int) -> TLSExchange:
        return TLSExchange(
            HOST,
            port,
            contexts[index % len(contexts)],
            request,
            check=check,
            source=sources[index % len(sources)],
        )

    return handshake_loop(open_session, concurrency=concurrency, warmup=warmup, duration=duration, server_pid=server_pid)


def user_contexts(pki: Pki, tls13_only: bool = False) -> list[Any]:
    """Client contexts for every user of ``pki``."""
    return [client_context(user, tls13_only=tls13_only) for user in pki.users]


def fresh_at(pool: Sequence[Any], index: int) -> Any:
    """Item ``index`` of a pool of never-used clients; :class:`LoadError` past its end
    (a first-contact run never presents a client twice, so it cannot wrap around)."""
    if index >= len(pool):
        raise LoadError(
            f"out of fresh clients after {len(pool)} sessions: the pool is too small for this machine's rate"
        )
    return pool[index]


def chain_context(pki: Pki, tls13_only: bool = False) -> Any:
    """A client context with the issuing CA as chain but no leaf: each connection sets its
    own certificate and key (:class:`FreshClientExchange`)."""
    from OpenSSL import crypto

    context = client_context(None, tls13_only=tls13_only)
    context.add_extra_chain_cert(crypto.X509.from_cryptography(load_certificate(pki.issuing)))
    return context


def openssl_credentials(leaves: Sequence[Pem]) -> list[tuple[Any, Any]]:
    """Each leaf's certificate and key as pyOpenSSL objects (converted before a run, so
    that the timed window only hands them to OpenSSL)."""
    from OpenSSL import crypto

    return [
        (
            crypto.X509.from_cryptography(load_certificate(leaf.certificate)),
            crypto.PKey.from_cryptography_key(load_key(leaf.key)),
        )
        for leaf in leaves
    ]


class FreshClientExchange(TLSExchange):
    """A :class:`TLSExchange` presenting a certificate set on its own connection."""

    def __init__(self, port: int, context: Any, credentials: tuple[Any, Any], request: bytes | None, source: str) -> None:
        super().__init__(HOST, port, context, request, source=source)
        certificate, key = credentials
        self.framed.tls.use_certificate(certificate)
        self.framed.tls.use_privatekey(key)


def fresh_tls_sessions(
    port: int,
    server_pid: int,
    context: Any,
    credentials: Sequence[tuple[Any, Any]],
    request: bytes | None,
    *,
    warmup: float,
    duration: float,
    concurrency: int = CONCURRENCY,
) -> Sample:
    """One run of TLS sessions/s, each from a client never seen before (``credentials``
    from :func:`openssl_credentials`, one per session of the warm-up and the window;
    ``context`` from :func:`chain_context`)."""
    sources = source_addresses(SOURCES)

    def open_session(index: int) -> TLSExchange:
        return FreshClientExchange(port, context, fresh_at(credentials, index), request, sources[index % len(sources)])

    return handshake_loop(open_session, concurrency=concurrency, warmup=warmup, duration=duration, server_pid=server_pid)
