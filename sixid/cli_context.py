"""What the ``sixid`` command's subcommands share: the command's context (the profile, the
root CA trusted for a domain, where its sixid server is, the connections opened), and how
records are shown."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from cryptography import x509

from common.cliutil import CommandError, Context
from common.endpoint import Endpoint, split_host_port
from common.identity import InvalidIdentity, check_domain
from common.pki import keyfiles
from common.pki.trust import check_anchor
from common.profile import TRUSTED_DIRECTORY, Profile
from common.timeutil import format_timestamp
from sixid import DEFAULT_PORT
from sixid.client import SixidClient, connect_sixid, fetch_root
from sixid.ids import InvalidSixId, SixIdAddress
from sixid.records import VerifiedRecord

#: The profile's file noting each domain's sixid server (``sixid trust --server``).
SERVERS_FILE = "sixid-servers.json"


def show(text: str = "") -> None:
    """Print one line of output (at once: watchers read it as it comes)."""
    print(text, flush=True)


def note(text: str) -> None:
    """Print a progress line on standard error (output stays clean for scripts)."""
    print(text, file=sys.stderr, flush=True)


class SixidContext(Context):
    """The command's profile, options, and the connections it opened (closed at the end)."""

    program = "sixid"

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        super().__init__(reactor, args)
        # An IRP profile: its own messages name the irp command that fixes it.
        self.profile = Profile(args.profile, "irp")
        self.clients: list[SixidClient] = []

    def server(self, domain: str) -> tuple[str, int] | None:
        """Where ``domain``'s sixid server is: ``--server HOST[:PORT]`` (port 4606 by
        default); else the server ``sixid trust --server`` noted in the profile; else, for
        the profile's own domain, its registry's host on port 4606; else None (found by
        DNS SRV, or DOMAIN port 4606)."""
        text = self.args.server or self.known_servers().get(domain)
        if not text and self.profile.exists:
            config = self.profile.load_config()
            if config.domain == domain and config.server is not None:
                return config.server, DEFAULT_PORT
        if not text:
            return None
        try:
            return split_host_port(text, DEFAULT_PORT)
        except ValueError as error:
            raise CommandError(f"--server: {error}") from None

    def known_servers(self) -> dict[str, str]:
        """The sixid servers noted in the profile, by domain."""
        path = self.profile.file(SERVERS_FILE)
        if not os.path.exists(path):
            return {}
        try:
            data = json.loads(keyfiles.read_bytes_private(path, max_size=1024 * 1024).decode("utf-8"))
            return {check_domain(str(domain)): str(server) for domain, server in dict(data).items()}
        except (ValueError, TypeError, InvalidIdentity) as error:
            raise CommandError(f"{path} is unreadable: {error}") from None

    def note_server(self, domain: str, host: str, port: int) -> None:
        """Note in the profile where ``domain``'s sixid server is."""
        servers = self.known_servers()
        servers[domain] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        keyfiles.ensure_private_directory(str(self.profile.path))
        keyfiles.write_bytes_private(self.profile.file(SERVERS_FILE), json.dumps(servers, indent=2, sort_keys=True).encode("utf-8") + b"\n")

    async def root(self, domain: str) -> x509.Certificate:
        """The root CA trusted for ``domain``: ``--ca-file`` (with ``--ca-fingerprint``,
        they must agree), ``--ca-fingerprint`` alone (the root fetched from the domain's
        sixid server and accepted only with that fingerprint), else the profile's: its
        own domain's pinned root, or one trusted with ``sixid trust``."""
        args = self.args
        expected = _fingerprint_argument(args.ca_fingerprint) if getattr(args, "ca_fingerprint", None) else None
        if getattr(args, "ca_file", None):
            root = _load_root(args.ca_file)
            if expected is not None and keyfiles.fingerprint(root) != expected:
                raise CommandError(f"{args.ca_file} does not have the fingerprint given: refusing to trust it")
        elif expected is not None:
            root = await fetch_root(self.reactor, domain, expected, server=self.server(domain), resolver=self.resolver, timeout=args.timeout)
        else:
            root = self._profile_root(domain)
        _check_anchor(root, domain)
        return root

    def _profile_root(self, domain: str) -> x509.Certificate:
        profile = self.profile
        if profile.exists and profile.load_config().domain == domain:
            return profile.root()
        path = profile.file(os.path.join(TRUSTED_DIRECTORY, f"{domain}.pem"))
        if os.path.exists(path):
            return _load_root(path)
        raise CommandError(
            f"no root CA of {domain} is trusted yet: give --ca-file ROOT.pem or --ca-fingerprint FP,"
            f" or trust it once with 'sixid --profile {shlex.quote(str(profile.path))} trust --domain {domain} --ca-file ROOT.pem'"
        )

    async def connect(self, domain: str) -> SixidClient:
        """A verified connection to ``domain``'s sixid server (closed when the command ends)."""
        root = await self.root(domain)
        client = await connect_sixid(
            self.reactor, domain, trust=root, server=self.server(domain), resolver=self.resolver, timeout=self.args.timeout
        )
        self.clients.append(client)
        return client

    async def finish(self) -> None:
        """Close every connection still open."""
        clients, self.clients = self.clients, []
        for client in clients:
            await client.close()


def _fingerprint_argument(text: str) -> str:
    try:
        return keyfiles.parse_fingerprint(text)
    except ValueError as error:
        raise CommandError(f"--ca-fingerprint: {error}") from None


def _load_root(path: str) -> x509.Certificate:
    try:
        return keyfiles.load_certificates(path)[0]
    except (OSError, ValueError, IndexError, keyfiles.KeyFileError) as error:
        raise CommandError(f"cannot read a root CA from {path}: {error}") from None


def _check_anchor(root: x509.Certificate, domain: str) -> None:
    try:
        check_anchor(root, domain)
    except ValueError as error:
        raise CommandError(f"{error}: refusing to trust it") from None


def domain_argument(text: str) -> str:
    try:
        return check_domain(text)
    except InvalidIdentity as error:
        raise CommandError(str(error)) from None


def parse_addresses(texts: Sequence[str]) -> list[SixIdAddress]:
    try:
        return [SixIdAddress.parse(text) for text in texts]
    except InvalidSixId as error:
        raise CommandError(error.message) from None


# -- output --------------------------------------------------------------------------------


def endpoint_text(endpoint: Endpoint) -> str:
    """``[v6]:port`` or ``v4:port``."""
    return f"[{endpoint.address}]:{endpoint.port}" if ":" in endpoint.address else f"{endpoint.address}:{endpoint.port}"


def where_text(record: VerifiedRecord) -> str:
    """The endpoints of a record, or that it was withdrawn."""
    if not record.endpoints:
        return "nowhere (withdrawn)"
    return ", ".join(endpoint_text(endpoint) for endpoint in record.endpoints)


def owner_text(record: VerifiedRecord) -> str:
    """Who the domain's CA certified the key to, or that nobody vouches for it."""
    return f"owner {record.owner}" if record.owner is not None else "not certified"


def record_lines(record: VerifiedRecord) -> list[str]:
    """The lines ``sixid lookup`` and ``sixid register`` print about a record."""
    return [
        f"{record.address}",
        f"  reachable at  {where_text(record)}",
        f"  valid until   {format_timestamp(record.expires)} (signed {format_timestamp(record.signed_at)}, seq {record.seq})",
        f"  {owner_text(record)}",
    ]


def change_line(address: SixIdAddress, record: VerifiedRecord | None, now: float) -> str:
    """One line of ``sixid watch``."""
    stamp = format_timestamp(int(now))
    if record is None:
        return f"{stamp} {address}: no current record"
    where = ", ".join(endpoint_text(endpoint) for endpoint in record.endpoints) or "withdrawn, not reachable"
    return f"{stamp} {address}: {where} (until {format_timestamp(record.expires)}, seq {record.seq}, {owner_text(record)})"
