"""Finding a domain's registry by DNS SRV (``_irp._tcp.<domain>``), as RFC 2782 says.

Targets are tried by priority (lowest first) and, within one priority, in a random order
weighted by weight. A single target of ``.`` means the domain offers no registry. With no
SRV records at all, the domain name itself on port 4604 is the fallback.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.names.error import DNSNameError, DomainError

from common.endpoint import split_host_port
from common.identity import check_domain
from irp import DEFAULT_PORT, errors

SERVICE = "_irp._tcp"
#: The port of a DNS server named without one.
DNS_PORT = 53


def parse_dns_server(text: str) -> tuple[str, int]:
    """Parse a DNS server ``ADDRESS[:PORT]`` (an IP address: ``192.0.2.53``,
    ``192.0.2.53:5353``, ``[2001:db8::53]:5353`` or a bare IPv6 address; port 53 by
    default); ValueError saying why when bad."""
    host, port = split_host_port(text, DNS_PORT)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a DNS server is given by its IP address, not {host!r}") from None
    return host, port


def resolver_for(dns_server: str | None, reactor: Any = None) -> Any:
    """A ``twisted.names`` resolver asking only ``dns_server`` (``HOST[:PORT]``); None
    (the system's resolver, from /etc/resolv.conf) when it is None."""
    if dns_server is None:
        return None
    from twisted.names import client

    return client.Resolver(servers=[parse_dns_server(dns_server)], reactor=reactor)


def srv_name(domain: str, service: str = SERVICE) -> str:
    """The SRV owner name of ``service`` (default: IRP's) for ``domain``."""
    return f"{service}.{check_domain(domain)}"


def order_targets(records: Sequence[tuple[int, int, str, int]], rng: random.Random | None = None) -> list[tuple[str, int]]:
    """Order ``(priority, weight, target, port)`` records as RFC 2782 asks."""
    rng = rng or random.Random()
    ordered: list[tuple[str, int]] = []
    for priority in sorted({record[0] for record in records}):
        group = [record for record in records if record[0] == priority]
        # Zero-weight records first in the list, as the RFC's selection algorithm expects.
        group.sort(key=lambda record: record[1] != 0)
        while group:
            total = sum(record[1] for record in group)
            if total == 0:
                chosen = group[0]
            else:
                threshold = rng.uniform(0, total)
                running = 0
                chosen = group[-1]
                for record in group:
                    running += record[1]
                    if running >= threshold and record[1] > 0:
                        chosen = record
                        break
            group.remove(chosen)
            ordered.append((chosen[2], chosen[3]))
    return ordered


async def discover(
    domain: str,
    resolver: Any = None,
    rng: random.Random | None = None,
    *,
    service: str = SERVICE,
    default_port: int | None = DEFAULT_PORT,
    timeout: tuple[int, ...] | None = None,
) -> list[tuple[str, int]]:
    """The servers of ``service`` (default: IRP's registries) of ``domain`` to try, in
    order: ``[(host, port), ...]``; with no SRV record, the domain name itself on
    ``default_port`` (nothing when that is None).

    ``resolver`` is a ``twisted.names`` resolver (default: the system's, from
    /etc/resolv.conf); ``timeout`` its retry timeouts in seconds (default: its own).
    """
    name = srv_name(domain, service)
    fallback = [] if default_port is None else [(check_domain(domain), default_port)]
    if resolver is None:
        from twisted.names import client

        resolver = client.getResolver()  # the process-wide one, from /etc/resolv.conf
    try:
        answers, _authority, _additional = await Deferred.fromCoroutine(_lookup(resolver, name, timeout))
    except (DNSNameError, DomainError):
        return fallback
    records = [
        (answer.payload.priority, answer.payload.weight, str(answer.payload.target), answer.payload.port)
        for answer in answers
        if answer.type == dns.SRV and str(answer.name).lower() == name.lower()
    ]
    if not records:
        return fallback
    if len(records) == 1 and records[0][2] in ("", "."):
        what = "IRP registry" if service == SERVICE else f"server for {service}"
        raise errors.NotFound(f"{domain} publishes that it has no {what}")
    return order_targets([record for record in records if record[2] not in ("", ".")], rng)


async def _lookup(resolver: Any, name: str, timeout: tuple[int, ...] | None = None) -> Any:
    if timeout is None:
        return await resolver.lookupService(name)
    return await resolver.lookupService(name, timeout=timeout)
