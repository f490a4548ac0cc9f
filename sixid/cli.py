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
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, DeferredList, FirstError, race
from twisted.internet.task import deferLater

from common.cliutil import CommandError, console_main, parse_endpoint, run_command
from common.endpoint import Endpoint
from common.identity import InvalidIdentity, identity_from_certificate
from common.pki import keyfiles
from common.pki.errors import PKIError
from common.pki.keyfiles import PrivateKey
from common.pki.keys import KEY_TYPES, generate_key
from common.profile import ProfileError, default_profile_path
from common.version import describe_version
from sixid import errors
from sixid.cli_context import (
    SixidContext,
    change_line,
    domain_argument,
    note,
    parse_addresses,
    record_lines,
    show,
)
from sixid.client import SixidClient, connect_sixid
from sixid.ids import InvalidSixId, SixIdAddress, derive_id
from sixid.records import Registration, VerifiedRecord, sign_registration

Command = Callable[["SixidContext"], Coroutine[Any, Any, int]]

#: Seconds a registration stays valid unless --lifetime says otherwise.
DEFAULT_LIFETIME = 3600
#: Longest wait between two attempts of ``sixid watch`` to reconnect.
MAX_RECONNECT_DELAY = 60.0


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
    show(f"{text}@{domain_argument(args.domain)}" if args.domain else text)
    return 0


# -- trust -----------------------------------------------------------------------------------


async def cmd_trust(ctx: SixidContext) -> int:
    """Trust a domain's root CA for sixid (stored in the profile's trusted roots)."""
    args = ctx.args
    domain = domain_argument(args.domain)
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
    if args.server:
        server = ctx.server(domain)
        assert server is not None
        ctx.note_server(domain, *server)
        show(f"Its sixid server: {server[0]} port {server[1]} (later commands use it without --server).")
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
        domain = domain_argument(args.domain)
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
    """Look IDs up: where each can be reached now, verified (the look-ups of one domain
    pipelined on one connection)."""
    addresses = parse_addresses(ctx.args.address)
    _one_domain_per_server(ctx, addresses)
    clients: dict[str, SixidClient] = {}
    for address in addresses:
        if address.domain not in clients:
            clients[address.domain] = await ctx.connect(address.domain)
    lookups = [Deferred.fromCoroutine(clients[address.domain].lookup(address)) for address in addresses]
    missing = 0
    try:
        for index, (address, lookup) in enumerate(zip(addresses, lookups, strict=True)):
            try:
                record = await lookup
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
    finally:
        for lookup in lookups:
            lookup.addErrback(lambda _failure: None)  # those not awaited after a failure
    return 4 if missing else 0


class Stopping:
    """Fires every waiter once the command is to stop (Ctrl-C, SIGTERM: the reactor's
    shutdown)."""

    def __init__(self) -> None:
        self.stopped = False
        self._waiters: list[Deferred[None]] = []

    def stop(self) -> None:
        """Stop now (once)."""
        if not self.stopped:
            self.stopped = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:  # not cancelled by a race an earlier one ended
                    waiter.callback(None)

    def wait(self) -> Deferred[None]:
        """A new Deferred that fires on :meth:`stop` (each waiter its own: one may be
        cancelled without touching the others)."""
        waiter: Deferred[None] = Deferred(lambda cancelled: self._forget(cancelled))
        if self.stopped:
            waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)


async def cmd_watch(ctx: SixidContext) -> int:
    """Watch IDs: a line per change, until interrupted (Ctrl-C)."""
    addresses = parse_addresses(ctx.args.address)
    _one_domain_per_server(ctx, addresses)
    stopping = Stopping()
    ctx.reactor.addSystemEventTrigger("before", "shutdown", stopping.stop)
    by_domain: dict[str, list[SixIdAddress]] = {}
    for address in dict.fromkeys(addresses):
        by_domain.setdefault(address.domain, []).append(address)
    watchers = [Deferred.fromCoroutine(_watch_domain(ctx, domain, watched, stopping)) for domain, watched in by_domain.items()]
    try:
        # The first to end: an interruption, or a watcher's failure (never a success).
        await DeferredList([stopping.wait(), *watchers], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True)
    except FirstError as error:
        error.subFailure.raiseException()
    finally:
        stopping.stop()
    return 0


async def _watch_domain(ctx: SixidContext, domain: str, addresses: list[SixIdAddress], stopping: Stopping) -> None:
    """Watch ``addresses`` of one domain, reconnecting (with a growing delay) when the
    connection is lost, until ``stopping`` stops."""
    told: dict[SixIdAddress, tuple[int, bool] | None] = {}

    def changed(address: SixIdAddress, record: VerifiedRecord | None) -> None:
        state = None if record is None else (record.seq, bool(record.endpoints))
        if address in told and told[address] == state:
            return  # told already (a reconnection found it unchanged)
        told[address] = state
        show(change_line(address, record, ctx.reactor.seconds()))

    delay = 1.0
    root = await ctx.root(domain)
    while not stopping.stopped:
        try:
            client = await connect_sixid(
                ctx.reactor, domain, trust=root, server=ctx.server(domain), resolver=ctx.resolver, timeout=ctx.args.timeout
            )
        except (errors.ConnectionLost, errors.Timeout, errors.Unavailable) as error:
            note(f"sixid: cannot reach the sixid server of {domain}: {error.message}; trying again in {delay:g} s")
            await race([deferLater(ctx.reactor, delay), stopping.wait()])
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
        await race([client.when_lost(), stopping.wait()])
        if stopping.stopped:
            return
        ctx.clients.remove(client)
        if isinstance(client.failure, errors.ServerVerificationFailed | errors.VerificationFailed):
            raise client.failure
        why = client.failure.message if client.failure is not None else "closed by the server"
        note(f"sixid: the connection to the sixid server of {domain} was lost ({why}); reconnecting")


# -- parsing and running -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``sixid``."""
    parser = argparse.ArgumentParser(
        prog="sixid",
        description="sixid (TCP 4606): IDs that are keys. Register where your ID can be reached at a"
        " domain's registry, and look IDs up, every answer verified.",
        epilog="Start with 'sixid keygen --key my.key'. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=describe_version("sixid"))
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
    return run_command("sixid", build_parser().parse_args(argv), reactor, SixidContext, explain_failure)


def main() -> None:
    """Console entry point."""
    console_main(run)


if __name__ == "__main__":
    main()
