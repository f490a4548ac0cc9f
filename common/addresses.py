"""Which addresses a service (a SixChat agent, an intermediary) should publish for itself,
and how a client dials a host (:func:`dial_name`)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from common.endpoint import Endpoint

#: Well-known global addresses used only to ask the kernel which source address it would
#: pick (a UDP "connect" sends nothing).
_PROBES = (("2001:4860:4860::8888", socket.AF_INET6), ("8.8.8.8", socket.AF_INET))


def primary_addresses() -> list[str]:
    """This host's preferred global IPv6 and IPv4 source addresses (those it has)."""
    found = []
    for target, family in _PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                address = probe.getsockname()[0]
        except OSError:
            continue
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            found.append(ip.compressed)
    return found


def advertised_endpoints(bound: Sequence[tuple[str, int]], port_hint: int | None = None) -> list[Endpoint]:
    """Endpoints to register, from the (host, port) pairs the agent listens on.

    A listener bound to a specific address publishes that address; one bound to the
    wildcard publishes the host's primary addresses with its port.
    """
    endpoints: list[Endpoint] = []
    for host, port in bound:
        ip = ipaddress.ip_address(host.split("%")[0])
        if ip.is_unspecified:
            for address in primary_addresses():
                if ip.version == 4 and ":" in address:
                    continue
                endpoints.append(Endpoint.parse(address, port))
        else:
            endpoints.append(Endpoint.parse(ip.compressed, port))
    unique: list[Endpoint] = []
    for endpoint in endpoints:
        if endpoint not in unique:
            unique.append(endpoint)
    return unique


def dial_name(host: str) -> str | bytes:
    """What ``HostnameEndpoint`` is given to dial ``host``: an IP address as it is, a host
    name in IDNA."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.encode("idna")
    return host
