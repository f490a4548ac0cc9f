"""The ``sixid`` command: make an ID's key, register where the ID can be reached, look IDs
up and watch them.

An ID is the hash of a public key (``sixid keygen`` makes one). Its holder signs where it
can be reached and registers that at a domain's registry (``sixid register``); anyone can
then ask that registry by ``ID@domain`` (``sixid lookup``, ``sixid watch``), and every
answer is checked: signed by the registry (whose chain must end at the domain's pinned root
CA) and by the ID's own key. With an IRP profile's key and certificate (``--profile`` of an
enrolled ``irp`` user, without ``--key``) the registration is certified: the record names
its owner.

Every subcommand has ``--help``. Expected failures print one readable line to stderr and
exit non-zero:

    1  the server refused the request       4  the ID has no current record
    2  bad command line or local problem    5  could not reach or verify the server or a record
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, race
from twisted.internet.task import deferLater

from common.cliutil import CommandError, Context, parse_endpoint, run_until_done
from common.endpoint import Endpoint, split_host_port
from common.identity import InvalidIdentity, check_domain, identity_from_certificate
from common.pki import keyfiles
from common.pki.errors import PKIError
from common.pki.keyfiles import PrivateKey
from common.pki.keys import KEY_TYPES, generate_key
from common.pki.trust import check_anchor
from common.profile import TRUSTED_DIRECTORY, Profile, ProfileError, default_profile_path
from common.timeutil import format_timestamp
from sixid import DEFAULT_PORT, errors
from sixid.client import SixidClient, connect_sixid, fetch_root
from sixid.ids import InvalidSixId, SixIdAddress, derive_id
from sixid.records import Registration, VerifiedRecord, sign_registration

Command = Callable[["SixidContext"], Coroutine[Any, Any, int]]

#: Seconds a registration stays valid unless --lifetime says otherwise.
DEFAULT_LIFETIME = 3600
#: Longest wait between two attempts of ``sixid watch`` to reconnect.
MAX_RECONNECT_DELAY = 60.0


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

    def server(self) -> tuple[str, int] | None:
        """``--server HOST[:PORT]`` (port 4606 by default), or None: found by DNS."""
        if not self.args.server:
            return None
        try:
            return split_host_port(self.args.server, DEFAULT_PORT)
        except ValueError as error:
            raise CommandError(f"--server: {error}") from None

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
            root = await fetch_root(self.reactor, domain, expected, server=self.server(), resolver=self.resolver, timeout=args.timeout)
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
            self.reactor, domain, trust=root, server=self.server(), resolver=self.resolver, timeout=self.args.timeout
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


def _domain_argument(text: str) -> str:
    try:
        return check_domain(text)
    except InvalidIdentity as error:
        raise CommandError(str(error)) from None


def _addresses(texts: Sequence[str]) -> list[SixIdAddress]:
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
        return "not reachable (withdrawn)"
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
    return f"{stamp} {address}: {where_text(record)} (until {format_timestamp(record.expires)}, seq {record.seq}, {owner_text(record)})"


# -- keys ------------------------------------------------------------------------------------


async def cmd_keygen(ctx: SixidContext) -> int:
    """Make a new key for an ID (mode 0600) and print its ID."""
    args = ctx.args
    if os.path.lexists(args.key) and not args.force:
        raise CommandError(f"{args.key} exists; use --force to replace it (its ID would be lost)")
    key = generate_key(args.type)
    keyfiles.write_private_key(args.key, key)
    sixid = derive_id(key.public_key())
    note(f"Wrote a new {args.type} key to {args.key} (mode 0600). Keep it: whoever holds it holds the ID.")
    show(f"ID: {sixid.grouped()}")
    return 0


def _signing_credentials(ctx: SixidContext) -> tuple[PrivateKey, list[x509.Certificate]]:
    """The key to sign with and its certificate chain (leaf first; empty: uncertified)."""
    args = ctx.args
    if args.key:
        key = keyfiles.load_private_key(args.key)
        chain = keyfiles.load_certificates(args.certificate) if args.certificate else []
        return key, chain
    if args.certificate:
        raise CommandError("--certificate needs --key (the key it certifies)")
    if not ctx.profile.enrolled:
        raise CommandError(
            f"give --key FILE (made with 'sixid keygen'), or use an IRP profile with a key and certificate"
            f" (--profile; {ctx.profile.path} holds none)"
        )
    key, certificate, chain = ctx.profile.credentials()
    return key, [certificate, *chain]


async def cmd_id(ctx: SixidContext) -> int:
    """Print the ID of a key, of a certificate's key, or of the profile's certificate."""
    args = ctx.args
    if args.key and args.certificate:
        raise CommandError("give --key or --certificate, not both")
    if args.certificate:
        public_key = keyfiles.load_certificates(args.certificate)[0].public_key()
    elif args.key:
        public_key = keyfiles.load_private_key(args.key).public_key()
    elif ctx.profile.enrolled:
        _key, certificate, _chain = ctx.profile.credentials()
        public_key = certificate.public_key()
    else:
        raise CommandError(f"give --key FILE or --certificate FILE (or --profile of an enrolled IRP user; {ctx.profile.path} holds no key)")
    sixid = derive_id(public_key)
    text = sixid.grouped() if args.grouped else str(sixid)
    show(f"{text}@{_domain_argument(args.domain)}" if args.domain else text)
    return 0


# -- trust -----------------------------------------------------------------------------------


async def cmd_trust(ctx: SixidContext) -> int:
    """Trust a domain's root CA for sixid (stored in the profile's trusted roots)."""
    args = ctx.args
    domain = _domain_argument(args.domain)
    if not args.ca_file and not args.ca_fingerprint:
        raise CommandError("give --ca-fingerprint FP (checked with the domain's operator) or --ca-file ROOT.pem")
    root = await ctx.root(domain)
    if args.ca_file and not args.ca_fingerprint:
        # Nobody confirmed this file: trust it only if the domain's sixid server proves
        # itself with it (its TLS certificate and its record-signing chain end there).
        client = await ctx.connect(domain)
        await client.signer()
        checked = f"the sixid server of {domain} at {client.host} port {client.port} proves itself with it"
    elif args.ca_file:
        checked = "its fingerprint is the one you gave"
    else:
        checked = f"fetched from the sixid server of {domain}, with the fingerprint you gave"
    profile = ctx.profile
    if profile.exists and profile.load_config().domain == domain:
        if profile.root() != root:
            raise CommandError(f"{domain} is your profile's own domain, pinned to another root CA by 'irp init': refusing")
        show(f"{domain} is your profile's own domain: its root CA is pinned already.")
        return 0
    path = profile.trust_domain(domain, root)
    show(f"Trusting {domain} (root {keyfiles.format_fingerprint(keyfiles.fingerprint(root))}; {checked}), in {path}.")
    return 0


# -- register --------------------------------------------------------------------------------


def _endpoints(args: argparse.Namespace) -> tuple[Endpoint, ...]:
    if args.withdraw:
        if args.address:
            raise CommandError("--withdraw registers no address: leave out --address")
        return ()
    if not args.address:
        raise CommandError("give --address A (repeatable) where the ID can be reached, or --withdraw")
    endpoints = []
    for text in args.address:
        explicit = (text.startswith("[") and "]:" in text) or text.count(":") == 1
        if not explicit and args.port is None:
            raise CommandError(f"{text}: give --port P (or write the port with the address, as [v6]:port or v4:port)")
        endpoints.append(parse_endpoint(text, args.port or 0))
    if len(set(endpoints)) != len(endpoints):
        raise CommandError("an address is given twice")
    return tuple(endpoints)


async def cmd_register(ctx: SixidContext) -> int:
    """Sign where the ID can be reached and register it at its domain's registry."""
    args = ctx.args
    endpoints = _endpoints(args)
    if not 1 <= args.lifetime <= 10**9:
        raise CommandError("--lifetime must be a positive number of seconds")
    key, chain = _signing_credentials(ctx)
    if chain and derive_id(chain[0].public_key()) != derive_id(key.public_key()):
        raise CommandError("the certificate is not for this key")
    if args.domain:
        domain = _domain_argument(args.domain)
    elif chain:
        try:
            domain = identity_from_certificate(chain[0]).domain
        except InvalidIdentity as error:
            raise CommandError(f"give --domain: the certificate names no user of a domain ({error})") from None
    elif ctx.profile.exists:
        domain = ctx.profile.load_config().domain
    else:
        raise CommandError("give --domain D: the domain whose registry serves the ID")
    now = time.time()
    signed_at = int(now)
    registration = Registration(
        domain=domain,
        sixid=derive_id(key.public_key()),
        seq=int(now * 1000),
        signed_at=signed_at,
        expires=signed_at + args.lifetime,
        endpoints=endpoints,
    )
    signed = sign_registration(key, registration, tuple(certificate.public_bytes(Encoding.DER) for certificate in chain))
    client = await ctx.connect(domain)
    record = await client.register(signed)
    show("Withdrawn:" if not endpoints else "Registered:")
    for line in record_lines(record):
        show(line)
    return 0


# -- lookup and watch --------------------------------------------------------------------------


def _one_domain_per_server(ctx: SixidContext, addresses: Sequence[SixIdAddress]) -> None:
    if ctx.args.server and len({address.domain for address in addresses}) > 1:
        raise CommandError("--server names one domain's server: give addresses of one domain only")


async def cmd_lookup(ctx: SixidContext) -> int:
    """Look IDs up: where each can be reached now, verified."""
    addresses = _addresses(ctx.args.address)
    _one_domain_per_server(ctx, addresses)
    clients: dict[str, SixidClient] = {}
    missing = 0
    for index, address in enumerate(addresses):
        if address.domain not in clients:
            clients[address.domain] = await ctx.connect(address.domain)
        try:
            record = await clients[address.domain].lookup(address)
        except errors.UnknownId as error:
            if len(addresses) == 1:
                raise
            note(f"sixid: {address}: {error.message} [{error.name}]")
            missing += 1
            continue
        if index:
            show()
        for line in record_lines(record):
            show(line)
    return 4 if missing else 0


async def cmd_watch(ctx: SixidContext) -> int:
    """Watch IDs: a line per change, until interrupted (Ctrl-C)."""
    addresses = _addresses(ctx.args.address)
    _one_domain_per_server(ctx, addresses)
    stopping: Deferred[None] = Deferred()
    ctx.reactor.addSystemEventTrigger("before", "shutdown", lambda: None if stopping.called else stopping.callback(None))
    by_domain: dict[str, list[SixIdAddress]] = {}
    for address in dict.fromkeys(addresses):
        by_domain.setdefault(address.domain, []).append(address)
    watchers = [Deferred.fromCoroutine(_watch_domain(ctx, domain, watched, stopping)) for domain, watched in by_domain.items()]
    first = race([stopping, *watchers])
    try:
        await first
    except BaseException:
        if not stopping.called:
            stopping.callback(None)
        raise
    return 0


async def _watch_domain(ctx: SixidContext, domain: str, addresses: list[SixIdAddress], stopping: Deferred[None]) -> None:
    """Watch ``addresses`` of one domain, reconnecting (with a growing delay) when the
    connection is lost, until ``stopping`` fires."""
    told: dict[SixIdAddress, tuple[int, bool] | None] = {}

    def changed(address: SixIdAddress, record: VerifiedRecord | None) -> None:
        state = None if record is None else (record.seq, bool(record.endpoints))
        if address in told and told[address] == state:
            return  # told already (a reconnection found it unchanged)
        told[address] = state
        show(change_line(address, record, ctx.reactor.seconds()))

    delay = 1.0
    root = await ctx.root(domain)
    while not stopping.called:
        try:
            client = await connect_sixid(
                ctx.reactor, domain, trust=root, server=ctx.server(), resolver=ctx.resolver, timeout=ctx.args.timeout
            )
        except (errors.ConnectionLost, errors.Timeout, errors.Unavailable) as error:
            note(f"sixid: cannot reach the sixid server of {domain}: {error.message}; trying again in {delay:g} s")
            await _pause(ctx, delay, stopping)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
            continue
        ctx.clients.append(client)
        try:
            for address in addresses:
                changed(address, await client.watch(address, changed))
        except (errors.ConnectionLost, errors.Timeout) as error:
            note(f"sixid: the connection to the sixid server of {domain} was lost: {error.message}; reconnecting")
            continue
        delay = 1.0
        await race([client.when_lost(), stopping])
        if stopping.called:
            return
        why = client.failure.message if client.failure is not None else "closed by the server"
        if isinstance(client.failure, errors.ServerVerificationFailed | errors.VerificationFailed):
            raise client.failure
        note(f"sixid: the connection to the sixid server of {domain} was lost ({why}); reconnecting")


async def _pause(ctx: SixidContext, seconds: float, stopping: Deferred[None]) -> None:
    await race([deferLater(ctx.reactor, seconds), stopping])


# -- parsing and running -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``sixid``."""
    parser = argparse.ArgumentParser(
        prog="sixid",
        description="sixid (TCP 4606): IDs that are keys. Register where your ID can be reached at a"
        " domain's registry, and look IDs up, every answer verified.",
        epilog="Start with 'sixid keygen --key my.key'. Every command has --help.",
    )
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument(
            "--profile", default=default_profile_path() if default is None else default,
            help="IRP profile folder: its key and certificate, its pinned root, the roots trusted with"
            " 'sixid trust' (default: $IRP_PROFILE or ~/.irp)",
        )
        target.add_argument(
            "--server", default=default,
            help="the sixid server HOST[:PORT] (port 4606 by default); default: found by DNS SRV"
            " (_sixid._tcp.DOMAIN), else DOMAIN port 4606",
        )
        target.add_argument("--timeout", type=float, default=15.0 if default is None else default, help="seconds to wait for the server (default 15)")
    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument("--ca-file", help="the domain's root CA (PEM) to check the server with")
    trust.add_argument("--ca-fingerprint", help="the SHA-256 fingerprint of the domain's root CA (fetched from its server and checked)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, function: Command, help_text: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common, *parents])
        sub.set_defaults(function=function)
        return sub

    sub = command("keygen", cmd_keygen, "Make a new key for an ID (file mode 0600) and print the ID.")
    sub.add_argument("--key", required=True, help="the key file to write")
    sub.add_argument("--type", choices=KEY_TYPES, default="p256", help="key type (default p256)")
    sub.add_argument("--force", action="store_true", help="replace an existing key file")

    sub = command("id", cmd_id, "Print the ID of a key, of a certificate's key, or of your profile's certificate.")
    sub.add_argument("--key", help="a private key file")
    sub.add_argument("--certificate", help="a certificate (PEM) instead")
    sub.add_argument("--domain", help="print ID@DOMAIN")
    sub.add_argument("--grouped", action="store_true", help="print the ID in groups of four (xxxx-xxxx-...)")

    sub = command(
        "trust", cmd_trust,
        "Trust a domain's root CA for sixid (kept in the profile's trusted roots). With --ca-file only,"
        " the domain's sixid server must prove itself with that root.",
        trust,
    )
    sub.add_argument("--domain", required=True, help="the domain")

    sub = command(
        "register", cmd_register,
        "Register where your ID can be reached (signed with its key) at its domain's registry."
        " Without --key: your IRP profile's key and certificate (a certified registration).",
        trust,
    )
    sub.add_argument("--key", help="the ID's key (made with 'sixid keygen'); default: the profile's")
    sub.add_argument("--certificate", help="the key's certificate chain (PEM, leaf first) from the domain's CA: certifies the ID")
    sub.add_argument("--domain", help="the registry's domain (default: the certificate's, else the profile's)")
    sub.add_argument("--address", action="append", metavar="ADDR", help="IPv6 or IPv4 address, or [v6]:port or v4:port (repeatable, up to 8)")
    sub.add_argument("--port", type=int, help="the port of addresses given without one")
    sub.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help=f"seconds the registration stays valid (default {DEFAULT_LIFETIME})")
    sub.add_argument("--withdraw", action="store_true", help="register no address: the ID is not reachable now")

    sub = command("lookup", cmd_lookup, "Look IDs up: where each can be reached now (verified).", trust)
    sub.add_argument("address", nargs="+", metavar="ID@DOMAIN")

    sub = command("watch", cmd_watch, "Watch IDs: print a line per change until interrupted (Ctrl-C).", trust)
    sub.add_argument("address", nargs="+", metavar="ID@DOMAIN")
    return parser


def exit_code_for(error: errors.SixidError) -> int:
    """The exit code of a sixid error (see the module docs)."""
    if isinstance(error, errors.UnknownId):
        return 4
    if isinstance(error, errors.ServerVerificationFailed | errors.VerificationFailed | errors.ConnectionLost | errors.Timeout | errors.Unavailable):
        return 5
    if isinstance(error, errors.ClientError):
        return 2
    return 1


def explain_failure(error: BaseException) -> tuple[str, int] | None:
    """The readable line and exit code of an expected failure of ``sixid``."""
    if isinstance(error, errors.SixidError):
        return f"{error.message} [{error.name}]", exit_code_for(error)
    if isinstance(error, CommandError):
        return str(error), error.exit_code
    if isinstance(error, InvalidSixId):
        return error.message, 2
    if isinstance(error, PKIError):
        return str(error), 2
    if isinstance(error, (ProfileError, keyfiles.KeyFileError, OSError)):
        return str(error), 2
    return None


def run(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    ctx = SixidContext(reactor, args)

    async def command() -> int:
        try:
            code: int = await args.function(ctx)
            return code
        finally:
            await ctx.finish()

    return run_until_done(reactor, "sixid", command, explain_failure)


def main() -> None:
    """Console entry point."""
    os.umask(0o077)
    sys.exit(run())


if __name__ == "__main__":
    main()
