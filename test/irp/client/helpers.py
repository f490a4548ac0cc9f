"""Shared fixtures for the discovery tests and the tests that serve DNS SRV records: an in-memory zone."""

from __future__ import annotations

from typing import Any

from twisted.names import authority, dns


class ZoneAuthority(authority.FileAuthority):
    """An in-memory zone (FileAuthority without a file)."""

    def __init__(self, origin: str, records: dict[bytes, list[Any]]) -> None:
        authority.FileAuthority.__init__(self, None)  # type: ignore[arg-type]
        self.soa = (
            origin.encode(),
            dns.Record_SOA(mname=b"ns." + origin.encode(), rname=b"hostmaster." + origin.encode(), serial=1, refresh=60, retry=60, expire=60, minimum=60, ttl=60),
        )
        self.records = records

    def loadFile(self, filename: Any) -> None:
        """Nothing to load."""


def srv(priority: int, weight: int, port: int, target: str) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target.encode(), ttl=60)
