"""Network endpoints: one address a user's agent listens on, and ``host[:port]`` text.

Shared by IRP (which registers and serves endpoints in signed address records) and SixChat
(which listens on them and dials them). Bad input raises :class:`InvalidEndpoint`, a
``ValueError`` with a readable ``message`` and no wire code: each protocol turns it into
its own error where it reads endpoints off the wire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from common.integers import is_decimal, parse_decimal


class InvalidEndpoint(ValueError):
    """An address or port that cannot be an endpoint; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, order=True)
class Endpoint:
    """One address a user's agent listens on."""

    address: str
    port: int

    @classmethod
    def parse(cls, address: str, port: int | str) -> Endpoint:
        """Validate and normalise an IPv6 or IPv4 address and a TCP port, for registering.

        IPv4-mapped (``::ffff:192.0.2.1``) and IPv4-compatible (``::192.0.2.1``) IPv6
        addresses are refused: the IPv4 address itself is registered instead (and Python
        versions write such addresses differently, see gh-87799, while the record's
        signature covers the text).
        """
        ip = _check_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and (
            ip.ipv4_mapped is not None or (int(ip) >> 32 == 0 and int(ip) > 1)
        ):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            raise InvalidEndpoint(
                f"{address} is an IPv4 address written as IPv6: register {embedded} instead"
            )
        return cls(ip.compressed, _check_port(port))

    @classmethod
    def received(cls, address: str, port: str) -> Endpoint:
        """Validate an endpoint of a record received from a registry, keeping the address
        text exactly as sent: the record's signature covers that text."""
        _check_address(address)
        return cls(address, _check_port(port))

    @property
    def family(self) -> str:
        """``"ipv6"`` or ``"ipv4"``."""
        return "ipv6" if ":" in self.address else "ipv4"


def _check_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an endpoint address; refuse zones, multicast and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidEndpoint(f"{address!r} is not an IPv6 or IPv4 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # A zone (%eth0) means nothing off the registering host, and is free text.
        raise InvalidEndpoint("addresses with a zone (%...) cannot be registered")
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidEndpoint(f"{address} cannot be registered (multicast or unspecified)")
    return ip


def _check_port(port: int | str) -> int:
    """A TCP port, 1-65535 (as text: a wire integer, see :func:`common.integers.parse_decimal`)."""
    number = parse_decimal(port, 5) if isinstance(port, str) else port
    if not isinstance(number, int) or isinstance(number, bool):
        raise InvalidEndpoint(f"{port!r} is not a port number")
    if not 1 <= number <= 65535:
        raise InvalidEndpoint(f"port {number} is outside 1-65535")
    return number


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address (a ValueError
    when there is no host or the port is not 1-65535)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port and (not is_decimal(port, 5) or not 1 <= int(port) <= 65535):
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port) if port else default_port
