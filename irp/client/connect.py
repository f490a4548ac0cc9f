"""Opening a connection to a registry: over TLS to a host and port (:func:`connect`), or to
a domain's registry found by DNS SRV (:func:`connect_domain`, with :mod:`irp.client.discovery`).

The registry is verified (its chain must end at a pinned root CA, and its certificate must
name the host dialled); with a client key and certificate the connection is logged in with
them at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from common.addresses import dial_name
from common.endpoint import split_host_port
from common.factory import QuietFactory
from common.identity import InvalidIdentity, identity_from_certificate
from common.pki.keyfiles import PrivateKey
from common.tls import client_options
from irp import DEFAULT_PORT, errors
from irp.client.api import RegistryClient
from irp.client.discovery import discover
from irp.client.protocol import DEFAULT_TIMEOUT, RegistryClientProtocol, await_handshake


def split_server(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address (the port
    defaults to IRP's)."""
    return split_host_port(text, default_port)


def connect(
    reactor: Any,
    host: str,
    port: int,
    *,
    domain: str,
    trust_roots: Sequence[x509.Certificate],
    client_key: PrivateKey | None = None,
    client_certificate: x509.Certificate | None = None,
    client_chain: Sequence[x509.Certificate] = (),
    timeout: float = DEFAULT_TIMEOUT,
    tls_options: Callable[..., Any] = client_options,
    bind_address: str | None = None,
) -> Deferred[RegistryClient]:
    """Connect to a registry over TLS; fire with a :class:`RegistryClient` once TLS is up.

    The server's chain must end at one of ``trust_roots`` and its certificate must name
    ``host``. With ``client_key`` and ``client_certificate`` the connection is logged in
    with the certificate at once. ``bind_address`` picks the local source address.
    """
    options = tls_options(host, trust_roots, client_key, client_certificate, client_chain)
    name = dial_name(host)
    bind = None if bind_address is None else (bind_address, 0)
    endpoint = wrapClientTLS(options, HostnameEndpoint(reactor, name, port, timeout=timeout, bindAddress=bind))
    protocol = RegistryClientProtocol(reactor, timeout)

    async def run() -> RegistryClient:
        try:
            await endpoint.connect(QuietFactory.forProtocol(lambda: protocol))
        except Exception as error:  # noqa: BLE001 - every connection failure reads the same way
            raise errors.ConnectionLost(f"cannot connect to the registry at {host} port {port}: {error}") from None
        await await_handshake(reactor, protocol, timeout)
        identity = None
        if client_certificate is not None:
            try:
                identity = identity_from_certificate(client_certificate)
            except InvalidIdentity:
                identity = None
        return RegistryClient(protocol, domain, trust_roots, reactor, host=host, port=port, identity=identity)

    return Deferred.fromCoroutine(run())


def connect_domain(
    reactor: Any,
    domain: str,
    *,
    resolver: Any = None,
    rng: random.Random | None = None,
    **options: Any,
) -> Deferred[RegistryClient]:
    """Connect to the registry of ``domain``, found by DNS SRV (``_irp._tcp.<domain>``).

    The targets :func:`irp.client.discovery.discover` returns are tried in order (by priority,
    then weighted at random), falling back to the next on a failure to connect, to
    complete TLS or to verify the server (each target must present a certificate for its
    own name, chaining to the pinned root), or a timeout; with no SRV records, the domain
    itself on port 4604. A domain that publishes that it has no registry fails with
    ``not-found``. The client's ``host`` and ``port`` tell which target answered.
    ``options`` are those of :func:`connect` (``trust_roots``, ``client_key``...);
    ``resolver`` is a ``twisted.names`` resolver (default: the system's).
    """

    async def run() -> RegistryClient:
        try:
            targets = await discover(domain, resolver, rng)
        except errors.IRPError:
            raise
        except Exception as error:  # noqa: BLE001 - every DNS failure (timeout, SERVFAIL...) reads the same way
            raise errors.ConnectionLost(f"cannot look up the registry of {domain} in the DNS: {error}") from None
        if not targets:
            raise errors.NotFound(f"{domain} publishes no IRP registry")
        failures: list[errors.IRPError] = []
        for host, port in targets:
            try:
                return await connect(reactor, host, port, domain=domain, **options)
            except (errors.ConnectionLost, errors.Timeout, errors.ServerVerificationFailed) as error:
                failures.append(error)
        tried = "; ".join(f"{host} port {port}: {error.message}" for (host, port), error in zip(targets, failures, strict=True))
        raise type(failures[-1])(f"no registry of {domain} could be reached ({tried})")

    return Deferred.fromCoroutine(run())


__all__ = ["connect", "connect_domain", "split_server"]
