"""The registry serving sixid, in a server process (figures 13a and 13b).

:func:`serve_sixid` (run by the harness in a process pinned to the server core) starts the
product as ``twistd irp --sixid`` does: :class:`irp.server.service.RegistryService` with
sixid on, its own CA (or the one of a data folder made by :mod:`bench.sixid_data`), TLS
on loopback ports, a SQLite file (WAL, ``synchronous=FULL``) and its log in the data
folder at level info. Its IRP port serves nobody here; the sixid port takes the load.

The settings are the product's defaults but where a figure says otherwise: the policy
``open`` (any key may register; the look-ups do not depend on it), and for the
registration figure limits raised so that the load's rate is not refused (it registers a
few thousand IDs from 50 addresses, thousands of times a minute). Every connection limit
not named stays as shipped.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Any

from bench.fixtures import HOST
from bench.processes import Commands, serve_twisted
from bench.sixid_data import DOMAIN, HOSTNAMES

#: Limits lifted for the registration figure (the load is one well-behaved population of
#: devices registering fast, not an attack).
UNLIMITED = {
    "registrations_per_id_per_minute": 10**9,
    "new_ids_per_address_per_hour": 10**9,
}


def serve_sixid(connection: Connection, params: dict[str, Any]) -> None:
    """Server process: the registry with sixid on ``params["data_dir"]``.

    ``params``: ``data_dir`` (a new folder, or a copy of :mod:`bench.sixid_data`'s),
    ``key_type``, ``policy`` (default ``open``), ``sixid`` (further
    :class:`sixid.server.operations.SixidSettings` fields), ``connections_per_address``.
    """
    data_dir = params["data_dir"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)

    async def setup(reactor: Any) -> tuple[dict[str, Any], Commands]:
        import dataclasses

        from cryptography.hazmat.primitives.serialization import Encoding

        from irp.server.service import RegistryService, RegistrySettings
        from sixid.server.service import SixidSettings
        from test.helpers import TEST_PARAMETERS

        sixid_settings = SixidSettings(policy=params.get("policy", "open"), **params.get("sixid", {}))
        if params.get("connections_per_address"):
            sixid_settings.limits = dataclasses.replace(
                sixid_settings.limits, max_connections_per_address=params["connections_per_address"]
            )
        service = RegistryService(
            RegistrySettings(
                domain=DOMAIN,
                data_dir=data_dir,
                listen=[f"tcp:0:interface={HOST}"],
                hostnames=list(HOSTNAMES),
                key_type=params.get("key_type", "p384"),
                argon2=TEST_PARAMETERS,
                sixid_listen=[f"tcp:0:interface={HOST}"],
                sixid=sixid_settings,
            ),
            reactor,
        )
        service.startService()
        await service.ready
        assert service.store is not None and service.credentials is not None
        store = service.store

        async def count() -> int:
            return await store.count_sixids()  # type: ignore[no-any-return]

        info = {
            "port": service.sixid_ports[0].getHost().port,  # type: ignore[attr-defined]
            "irp_port": service.ports[0].getHost().port,  # type: ignore[attr-defined]
            "domain": DOMAIN,
            "root": service.credentials.ca.root_certificate.public_bytes(Encoding.PEM),
            "policy": sixid_settings.policy,
        }
        return info, {"count": count}

    serve_twisted(connection, setup, log_path=os.path.join(data_dir, "registry.log"))
