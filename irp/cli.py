"""The ``irp`` command: enrol, log in, publish addresses, look users up, manage certificates.

Every subcommand has ``--help``. Expected failures (wrong password, unknown user, server
unreachable, revoked certificate...) print one readable line to stderr and exit non-zero:

    1  the registry refused the request     3  login failed or was refused
    2  bad command line or local problem    4  no such user, certificate or file
    5  could not reach or verify the registry
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.defer import Deferred

from common.identity import InvalidIdentity, check_domain, check_username
from common.pki import keyfiles
from common.ports import SIXCHAT_PORT
from common.profile import Profile, ProfileConfig, ProfileError, default_profile_path
from common.timeutil import format_timestamp
from irp import errors
from irp.client.api import (
    RegistryClient,
    connect,
    connect_domain,
    parse_ca_chain,
    split_server,
    verify_ca_chain,
)
from irp.server.ca import KEY_TYPES, REVOCATION_REASONS, generate_key, signature_hash
from irp.wire.elements import CertificateEntry
from irp.wire.records import AddressRecord, Endpoint, UserRecord


class CommandError(Exception):
    """A readable failure of the command itself; ``exit_code`` says which kind."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(error: errors.IRPError) -> int:
    """Map an IRP error to the command's exit code."""
    if isinstance(error, (errors.ServerVerificationFailed, errors.ConnectionLost, errors.Timeout)):
        return 5
    if isinstance(error, errors.NotAuthenticated):
        return 3
    if isinstance(error, errors.NotFound):
        return 4
    return 1


# -- reading secrets -----------------------------------------------------------------


#: Times a person may mistype the repeated entry of a new password before the command gives up.
CONFIRM_ATTEMPTS = 3


def read_secret_file(path: str) -> str:
    """The first line of a password file. Like a key file, it is refused (with the
    ``chmod`` that fixes it) when the group or others may read or write it."""
    data = keyfiles.read_bytes_private(path, max_size=64 * 1024)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text") from None
    return text.split("\n", 1)[0].rstrip("\r")


def read_secret(args: argparse.Namespace, prompt: str, *, file_option: str = "password_file", confirm: bool = False) -> str:
    """Read a password: from ``--password-file``, from stdin when not a terminal, or a prompt
    (asked twice when ``confirm``; a mistyped repetition asks again)."""
    path = getattr(args, file_option, None)
    if path:
        return read_secret_file(path)
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise CommandError(f"{prompt.rstrip(': ')} is needed: give --password-file or type it at a terminal")
        return line.rstrip("\r\n")
    for attempt in range(CONFIRM_ATTEMPTS):
        try:
            secret = getpass.getpass(prompt)
            if not confirm or getpass.getpass("Again: ") == secret:
                return secret
        except EOFError:
            print(file=sys.stderr)
            raise CommandError("no password was typed (end of input); nothing was done") from None
        if attempt + 1 < CONFIRM_ATTEMPTS:
            print("The two entries differ; please type it again.", file=sys.stderr)
    raise CommandError(f"the two entries differed {CONFIRM_ATTEMPTS} times; nothing was changed")


# -- connection context --------------------------------------------------------------


def server_argument(text: str) -> tuple[str, int]:
    """Parse ``--server HOST[:PORT]`` (a readable error, not a traceback, when bad)."""
    try:
        return split_server(text)
    except ValueError as error:
        raise CommandError(f"--server: {error}") from None


class Context:
    """Profile, options and (lazily) a connection for one command run."""

    #: The command being run (named in messages that say how to fix a profile).
    program = "irp"

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.profile = Profile(args.profile, self.program)
        self.client: RegistryClient | None = None
        #: The DNS resolver for finding registries by SRV (None: the system's).
        self.resolver: Any = None

    def config(self) -> ProfileConfig:
        """The profile's configuration, with ``--server`` and ``--user`` applied."""
        config = self.profile.load_config()
        if self.args.server:
            config.server, config.port = server_argument(self.args.server)
        user = getattr(self.args, "user", None)
        if user:
            config.username = user
        return config

    async def connect(self, *, login: bool = True, use_certificate: bool = True) -> RegistryClient:
        """Connect to the profile's registry; log in with the certificate if enrolled, else
        with a password when ``login`` is true."""
        config = self.config()
        key = certificate = None
        chain: list[x509.Certificate] = []
        if use_certificate and self.profile.enrolled and not getattr(self.args, "password_file", None):
            key, certificate, chain = self.profile.credentials()
        client = await connect(
            self.reactor,
            config.server,
            config.port,
            domain=config.domain,
            trust_roots=[self.profile.root()],
            client_key=key,
            client_certificate=certificate,
            client_chain=chain,
            timeout=self.args.timeout,
        )
        self.client = client
        if login and certificate is None:
            if not config.username:
                raise CommandError("no user name: pass --user NAME (or enrol first)")
            password = read_secret(self.args, f"Password for {config.username}@{config.domain}: ")
            await client.login(config.username, password)
        return client

    def close(self) -> None:
        """Close the connection, if any."""
        if self.client is not None:
            self.client.close()


# -- output --------------------------------------------------------------------------


def show(text: str = "") -> None:
    """Print one line of normal output."""
    print(text)


def describe_user(record: UserRecord) -> None:
    """Print a directory entry."""
    show(f"{record.identity}")
    if record.display_name:
        show(f"  name:  {record.display_name}")
    if record.email:
        show(f"  email: {record.email}")
    for name, value in record.attributes:
        show(f"  {name}: {value}")
    show(f"  (entry version {record.seq}, signed by the registry {format_timestamp(record.signed_at)})")


def describe_addresses(record: AddressRecord, now: float) -> None:
    """Print an address record."""
    current = record.is_current(now)
    presence = record.presence if current else "offline"
    show(f"{record.identity}: {presence}")
    if current:
        for endpoint in record.endpoints:
            host = f"[{endpoint.address}]" if endpoint.family == "ipv6" else endpoint.address
            show(f"  {host}:{endpoint.port}")
        show(f"  (valid until {format_timestamp(record.expires_at)}; signature verified)")
    else:
        show("  (no current addresses; signature verified)")


def describe_certificate(entry: CertificateEntry) -> None:
    """Print one certificate's summary line."""
    line = (
        f"{entry.serial:x}  {entry.status:<8} {entry.origin:<8} "
        f"{format_timestamp(entry.not_before)[:10]} .. {format_timestamp(entry.not_after)[:10]}"
    )
    if entry.reason:
        line += f"  ({entry.reason})"
    show(line)
    show(f"    {keyfiles.format_fingerprint(entry.fingerprint)}")


def write_output(path: str | None, data: bytes, *, private: bool = False) -> None:
    """Write to a file (0600 when private) or to stdout."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if private:
        keyfiles.write_bytes_private(path, data)
    else:
        with open(path, "wb") as handle:
            handle.write(data)
    print(f"wrote {path}", file=sys.stderr)


def pem(certificate: x509.Certificate) -> bytes:
    """PEM bytes of a certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_csr(key: Any) -> bytes:
    """A CSR for ``key`` (its subject is a placeholder: the registry decides the subject)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irp enrolment")])
    )
    return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM)


# -- commands ------------------------------------------------------------------------

Command = Callable[[Context], Coroutine[Any, Any, int]]


async def cmd_init(ctx: Context) -> int:
    """Create a profile pinned to a registry's root CA.

    Without ``--server`` the registry is found by DNS SRV (``_irp._tcp.<domain>``): the
    targets are tried in order and the profile keeps the one that answered.
    """
    args = ctx.args
    host: str | None = None
    port: int | None = None
    if args.server:
        host, port = server_argument(args.server)
    try:
        domain = check_domain(args.domain)
        username = check_username(args.user) if args.user else None
    except InvalidIdentity as error:
        raise CommandError(str(error)) from None
    if not args.ca_fingerprint and not args.ca_file:
        raise CommandError("give the registry's root CA: --ca-fingerprint FP (from its operator) or --ca-file root.pem")
    expected = None
    if args.ca_fingerprint:
        try:
            expected = keyfiles.parse_fingerprint(args.ca_fingerprint)
        except ValueError as error:
            raise CommandError(str(error)) from None
    if ctx.profile.exists and not args.force:
        raise CommandError(f"{ctx.profile.path} already holds a profile; use --force to replace it")
    if args.ca_file:
        root = keyfiles.load_certificates(args.ca_file)[0]
        if expected and keyfiles.fingerprint(root) != expected:
            raise CommandError("the CA file does not have the fingerprint given")
        if host is not None:
            # Check now that it is this registry's root (not at the first command, with an
            # OpenSSL message).
            await fetch_root_by_fingerprint(ctx, host, port, domain, keyfiles.fingerprint(root), given=f"that of {args.ca_file}")
        else:
            # Find a registry that answers and proves itself with this root.
            ctx.client = await connect_domain(
                ctx.reactor, domain, trust_roots=[root], timeout=args.timeout, resolver=ctx.resolver
            )
    else:
        root = await fetch_root_by_fingerprint(ctx, host, port, domain, expected or "")
    if host is None or port is None:
        assert ctx.client is not None and ctx.client.host is not None and ctx.client.port is not None
        host, port = ctx.client.host, ctx.client.port
        show(f"Found the registry of {domain} by DNS SRV: {host} port {port}.")
    ctx.profile.create(ProfileConfig(server=host, port=port, domain=domain, username=username), root)
    show(f"Profile {ctx.profile.path} created for {domain} at {host} port {port}.")
    show(f"Trusted root CA: {keyfiles.format_fingerprint(keyfiles.fingerprint(root))}")
    return 0


async def fetch_root_by_fingerprint(
    ctx: Context, host: str | None, port: int | None, domain: str, expected: str, *, given: str = "the one given"
) -> x509.Certificate:
    """Fetch the CA chain without trusting anything yet, and accept it only if the root has
    the expected fingerprint and the server's own certificate descends from it.

    With ``host`` None the registry is found by DNS SRV (see
    :func:`irp.client.api.connect_domain`); ``ctx.client`` tells which target answered.
    """

    def unverified(*_args: Any) -> Any:
        return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    if host is None or port is None:
        client = await connect_domain(
            ctx.reactor, domain, trust_roots=[], tls_options=unverified, timeout=ctx.args.timeout, resolver=ctx.resolver
        )
    else:
        client = await connect(ctx.reactor, host, port, domain=domain, trust_roots=[], tls_options=unverified, timeout=ctx.args.timeout)
    ctx.client = client
    chain = parse_ca_chain((await client._call("ca-chain")).single("ca-chain"))
    if chain.domain != domain:
        raise CommandError(f"that registry serves {chain.domain}, not {domain}", 5)
    if keyfiles.fingerprint(chain.root) != expected:
        raise CommandError(
            "the registry's root CA has fingerprint"
            f" {keyfiles.format_fingerprint(keyfiles.fingerprint(chain.root))}, not {given}: refusing to trust it",
            5,
        )
    verify_ca_chain(chain, [chain.root], datetime.now(timezone.utc))
    server_certificate = client.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
    try:
        server_certificate.verify_directly_issued_by(chain.issuing)
    except Exception:  # noqa: BLE001
        raise CommandError("the registry's TLS certificate was not issued by its CA", 5) from None
    return chain.root


async def cmd_enrol(ctx: Context) -> int:
    """Log in with a password, make a key here, and get a certificate for it."""
    config = ctx.config()
    if ctx.profile.enrolled and not ctx.args.force:
        raise CommandError(f"{ctx.profile.path} already holds a key and certificate; use --force to replace them")
    if not config.username:
        raise CommandError("pass --user NAME")
    client = await ctx.connect(use_certificate=False)
    print(f"Generating a {ctx.args.key_type} key...", file=sys.stderr)
    key = generate_key(ctx.args.key_type)
    entry = await client.request_certificate(make_csr(key))
    chain = await client.ca_chain()
    assert entry.certificate is not None
    ctx.profile.save_credentials(key, [entry.certificate, chain.issuing])
    ctx.profile.save_config(config)
    show(f"Enrolled {entry.user}: certificate {entry.serial:x}, valid until {format_timestamp(entry.not_after)}")
    show(f"Key and certificate stored in {ctx.profile.path} (key mode 0600). Later commands log in with the certificate.")
    return 0


async def cmd_login(ctx: Context) -> int:
    """Check that logging in works and show how."""
    client = await ctx.connect()
    session = await client.whoami()
    show(f"Logged in as {session.user} with a {session.method}{' (administrator)' if session.is_admin else ''}.")
    return 0


async def cmd_whoami(ctx: Context) -> int:
    """Show who the registry takes you for."""
    client = await ctx.connect(login=not ctx.args.anonymous)
    session = await client.whoami()
    if session.user is None:
        show("Not logged in.")
    else:
        show(f"{session.user} ({session.method}{', administrator' if session.is_admin else ''})")
    return 0


async def cmd_info(ctx: Context) -> int:
    """Show or change your directory entry."""
    client = await ctx.connect()
    args = ctx.args
    attributes = None
    if args.attribute is not None:
        attributes = {}
        for item in args.attribute:
            name, separator, value = item.partition("=")
            if not separator:
                raise CommandError(f"--attribute needs NAME=VALUE, got {item!r}")
            attributes[name] = value
    if args.display_name is None and args.email is None and attributes is None:
        session = await client.whoami()
        record, _account = await client.get_user(str(session.user))
    else:
        record = await client.update_user(display_name=args.display_name, email=args.email, attributes=attributes)
    describe_user(record)
    return 0


async def cmd_user(ctx: Context) -> int:
    """Show a user's directory entry."""
    client = await ctx.connect()
    record, account = await client.get_user(ctx.args.name)
    describe_user(record)
    if account is not None:
        show(
            f"  account: admin={account.is_admin} password-login={account.password_login}"
            f" has-password={account.has_password}"
        )
    return 0


async def cmd_users(ctx: Context) -> int:
    """List users, a page at a time."""
    client = await ctx.connect()
    total, records = await client.list_users(ctx.args.offset, ctx.args.limit, ctx.args.prefix or "")
    for record in records:
        show(f"{record.identity.username:<24} {record.display_name:<30} {record.email}")
    show(f"({len(records)} of {total} shown from {ctx.args.offset})")
    return 0


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """Parse ``ADDRESS``, ``IPv4:PORT`` or ``[IPv6]:PORT``."""
    try:
        if text.startswith("[") or text.count(":") == 1:
            host, port = split_server(text, default_port)
            return Endpoint.parse(host, port)
        return Endpoint.parse(text, default_port)
    except (ValueError, errors.InvalidArgument) as error:
        raise CommandError(f"bad address {text!r}: {getattr(error, 'message', error)}") from None


async def cmd_register(ctx: Context) -> int:
    """Publish your current addresses and presence."""
    args = ctx.args
    endpoints = [parse_endpoint(text, args.port) for text in args.address or []]
    if not endpoints and args.presence != "offline":
        raise CommandError("give at least one --address (or --presence offline)")
    client = await ctx.connect()
    record = await client.register_addresses(endpoints, args.presence, args.ttl)
    describe_addresses(record, ctx.reactor.seconds())
    return 0


async def cmd_lookup(ctx: Context) -> int:
    """Look a user's addresses and presence up."""
    client = await ctx.connect()
    record = await client.lookup(ctx.args.name)
    describe_addresses(record, ctx.reactor.seconds())
    return 0


async def cmd_certificates(ctx: Context) -> int:
    """List certificates: yours, a user's (administrators), or a user's current ones."""
    client = await ctx.connect()
    if ctx.args.current:
        entries = await client.user_certificates(ctx.args.current)
    else:
        entries = await client.list_certificates(ctx.args.of)
    for entry in entries:
        describe_certificate(entry)
    if not entries:
        show("(no certificates)")
    return 0


async def cmd_certificate(ctx: Context) -> int:
    """Download one certificate as PEM."""
    try:
        # 64 hex digits (or SHA256:...) cannot be a serial number, which has at most 40.
        digest: str | None = keyfiles.parse_fingerprint(ctx.args.serial)
    except ValueError:
        digest = None
    serial = None if digest is not None else parse_serial_argument(ctx.args.serial)
    client = await ctx.connect()
    entry = await client.get_certificate(serial, fingerprint=digest)
    assert entry.certificate is not None
    write_output(ctx.args.out, pem(entry.certificate))
    return 0


def parse_serial_argument(text: str) -> int:
    """Parse a hex serial number typed by a person."""
    cleaned = text.lower().replace(":", "")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise CommandError(f"{text!r} is not a hexadecimal serial number") from None


async def cmd_upload_certificate(ctx: Context) -> int:
    """Publish a certificate from another issuer that names you."""
    try:
        certificate = keyfiles.load_certificates(ctx.args.file)[0]
    except (OSError, ValueError, IndexError) as error:
        raise CommandError(f"cannot read a certificate from {ctx.args.file}: {error}") from None
    client = await ctx.connect()
    describe_certificate(await client.upload_certificate(certificate))
    return 0


PKCS12_HELP = "PKCS#12 files: list them, get one, upload one, or generate a key and certificate as one."


async def cmd_pkcs12(ctx: Context) -> int:
    """PKCS#12 files: list, get, upload, generate."""
    args = ctx.args
    if args.pkcs12_action == "get" and args.id is None:
        raise CommandError("pkcs12 get needs --id (see 'irp pkcs12 list')")
    if args.pkcs12_action == "upload" and not args.file:
        raise CommandError("pkcs12 upload needs --file FILE.p12")
    client = await ctx.connect()
    if args.pkcs12_action == "list":
        files = await client.list_pkcs12(args.of)
        for info in files:
            show(f"{info.id:>5}  {info.origin:<9} {info.size:>6} bytes  {format_timestamp(info.created_at)}  {info.label}")
        if not files:
            show("(no PKCS#12 files)")
    elif args.pkcs12_action == "get":
        info = await client.get_pkcs12(args.id)
        write_output(args.out, info.data or b"", private=True)
    elif args.pkcs12_action == "upload":
        with open(args.file, "rb") as handle:
            data = handle.read()
        info = await client.upload_pkcs12(data, args.label)
        show(f"Stored PKCS#12 file {info.id} ({info.size} bytes).")
    else:
        passphrase = read_secret(args, "Passphrase for the new PKCS#12 file: ", file_option="passphrase_file", confirm=True)
        print("The registry is generating the key...", file=sys.stderr)
        info, entry = await client.generate_key(passphrase, key_type=args.key_type, label=args.label, user=args.of)
        write_output(args.out, info.data or b"", private=True)
        show(f"Certificate {entry.serial:x} for {entry.user}; PKCS#12 file {info.id} kept by the registry.")
    return 0


async def cmd_renew(ctx: Context) -> int:
    """Renew your certificate (or one given by serial)."""
    client = await ctx.connect()
    args = ctx.args
    own = ctx.profile.enrolled and args.serial is None
    if own:
        _key, certificate, _chain = ctx.profile.credentials()
        serial = certificate.serial_number
    elif args.serial is None:
        raise CommandError("give the serial number of the certificate to renew")
    else:
        serial = parse_serial_argument(args.serial)
    new_key = None
    csr = None
    if args.new_key:
        new_key = generate_key(args.key_type)
        csr = make_csr(new_key)
    entry = await client.renew(serial, csr)
    assert entry.certificate is not None
    if own:
        chain = await client.ca_chain()
        ctx.profile.save_credentials(new_key, [entry.certificate, chain.issuing])
        show(f"Renewed: certificate {entry.serial:x} stored in {ctx.profile.path}; the old one is revoked as superseded.")
    else:
        write_output(args.out, pem(entry.certificate))
    return 0


async def cmd_revoke(ctx: Context) -> int:
    """Revoke a certificate."""
    client = await ctx.connect()
    entry = await client.revoke(parse_serial_argument(ctx.args.serial), ctx.args.reason)
    describe_certificate(entry)
    return 0


async def cmd_crl(ctx: Context) -> int:
    """Download the CA's current CRLs (signatures verified) as PEM."""
    client = await ctx.connect(login=False)
    crls = await client.get_crls()
    data = b"".join(info.crl.public_bytes(serialization.Encoding.PEM) for info in crls)
    for info in crls:
        print(f"{info.issuer} CRL number {info.number}: {len(list(info.crl))} revoked", file=sys.stderr)
    write_output(ctx.args.out, data)
    return 0


async def cmd_status(ctx: Context) -> int:
    """Ask whether a certificate is good, revoked, expired or unknown."""
    if ctx.args.file is None and ctx.args.serial is None:
        raise CommandError("give a serial number or --file CERTIFICATE.pem")
    client = await ctx.connect(login=False)
    if ctx.args.file:
        certificate = keyfiles.load_certificates(ctx.args.file)[0]
        status = await client.certificate_status(certificate=certificate)
    else:
        status = await client.certificate_status(serial=parse_serial_argument(ctx.args.serial))
    line = f"{status.serial:x}: {status.state}"
    if status.user:
        line += f" ({status.user})"
    if status.reason:
        line += f", revoked {status.revoked_at} for {status.reason}"
    show(line)
    return 0 if status.state == "good" else 1


async def cmd_ca(ctx: Context) -> int:
    """Print the domain's CA certificates (verified against the pinned root) as PEM."""
    client = await ctx.connect(login=False)
    chain = await client.ca_chain()
    write_output(ctx.args.out, pem(chain.issuing) + pem(chain.root))
    return 0


async def cmd_passwd(ctx: Context) -> int:
    """Change your password."""
    client = await ctx.connect()
    session = await client.whoami()
    current = None
    if session.method == "password":
        current = read_secret(ctx.args, "Current password: ", file_option="current_password_file")
    new = read_secret(ctx.args, "New password: ", file_option="new_password_file", confirm=True)
    await client.set_password(None, new, current)
    show("Password changed.")
    return 0


async def cmd_admin(ctx: Context) -> int:
    """Administrator commands."""
    args = ctx.args
    client = await ctx.connect()
    action = args.admin_action
    if action == "create-user":
        password = None
        if not args.no_password:
            password = read_secret(args, f"Password for the new user {args.name}: ", file_option="new_password_file", confirm=True)
        record, _account = await client.create_user(
            args.name,
            password=password,
            display_name=args.display_name or "",
            email=args.email or "",
            admin=args.admin,
            password_login=not args.no_password_login,
        )
        show(f"Created {record.identity}.")
    elif action == "set-password":
        password = read_secret(args, f"New password for {args.name}: ", file_option="new_password_file", confirm=True)
        await client.set_password(args.name, password)
        show(f"Password of {args.name} set.")
    elif action in ("disable-password-login", "enable-password-login"):
        enabled = action.startswith("enable")
        await client.set_password_login(args.name, enabled)
        show(f"Password login {'enabled' if enabled else 'disabled'} for {args.name}.")
    elif action == "set-admin":
        await client.set_admin(args.name, args.state == "on")
        show(f"{args.name} is {'now' if args.state == 'on' else 'no longer'} an administrator.")
    elif action == "revoke":
        describe_certificate(await client.revoke(parse_serial_argument(args.serial), args.reason))
    elif action == "delete-user":
        element = await client.delete_user(args.name)
        show(f"Deleted {element.get('user')}; {element.get('revoked')} certificates revoked.")
    elif action == "users":
        return await cmd_users(ctx)
    return 0


# -- argument parsing ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``irp``."""
    parser = argparse.ArgumentParser(
        prog="irp",
        description="Client of an IRP identity registry (TCP 4604): enrol, log in, publish"
        " your addresses, look users up, manage certificates.",
        epilog="Start with 'irp init', then 'irp enrol'. Every command has --help.",
    )
    # Global options work before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument(
            "--profile",
            default=default_profile_path() if default is None else default,
            help="profile folder (default: $IRP_PROFILE or ~/.irp)",
        )
        target.add_argument("--server", default=default, help="registry HOST[:PORT], overriding the profile")
        target.add_argument(
            "--timeout",
            type=float,
            default=30.0 if default is None else default,
            help="seconds to wait for the registry (default 30)",
        )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, function: Command, help_text: str, *, user: bool = True, password: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(function=function)
        if user:
            sub.add_argument("--user", help="user name (default: the profile's)")
        if password:
            sub.add_argument("--password-file", help="read the password from this file instead of asking")
        return sub

    sub = command(
        "init",
        cmd_init,
        "Create a profile pinned to a registry's root CA. Without --server the registry is"
        " found by DNS SRV (_irp._tcp.DOMAIN).",
        password=False,
    )
    sub.add_argument("--domain", required=True, help="the domain the registry serves")
    sub.add_argument("--ca-fingerprint", help="SHA-256 fingerprint of the registry's root CA, from its operator")
    sub.add_argument("--ca-file", help="the registry's root CA certificate (PEM), instead of a fingerprint")
    sub.add_argument("--force", action="store_true", help="replace an existing profile")

    sub = command("enrol", cmd_enrol, "Log in with your password, make a key here and get a certificate.")
    sub.add_argument("--key-type", choices=KEY_TYPES, default="p384", help="key type (default p384)")
    sub.add_argument("--force", action="store_true", help="replace an existing key and certificate")
    commands._name_parser_map["enroll"] = sub  # American spelling

    command("login", cmd_login, "Check that you can log in, and how.")
    sub = command("whoami", cmd_whoami, "Show who the registry takes you for.")
    sub.add_argument("--anonymous", action="store_true", help="do not log in with a password")

    sub = command("info", cmd_info, "Show or change your directory entry.")
    sub.add_argument("--display-name", help="your name as others see it")
    sub.add_argument("--email", help="your email address")
    sub.add_argument("--attribute", action="append", metavar="NAME=VALUE", help="free attribute (repeatable; replaces all)")

    sub = command("user", cmd_user, "Show a user's directory entry.")
    sub.add_argument("name", help="user name or user@domain")
    sub = command("users", cmd_users, "List users.")
    sub.add_argument("--prefix", help="only names starting with this")
    sub.add_argument("--offset", type=int, default=0)
    sub.add_argument("--limit", type=int, default=50)

    sub = command("register", cmd_register, "Publish your current addresses and presence.")
    sub.add_argument("--address", action="append", metavar="ADDR", help="IPv6 or IPv4 address, optionally [v6]:port or v4:port (repeatable)")
    sub.add_argument("--port", type=int, default=SIXCHAT_PORT, help=f"port for addresses given without one (default {SIXCHAT_PORT})")
    sub.add_argument("--presence", choices=("online", "away", "busy", "offline"), default="online")
    sub.add_argument("--ttl", type=int, help="seconds the addresses stay valid (default: the server's, 300)")

    sub = command("lookup", cmd_lookup, "Look up a user's addresses and presence.")
    sub.add_argument("name", help="user name or user@domain")

    sub = command("certificates", cmd_certificates, "List your certificates (or another user's).")
    sub.add_argument("--of", metavar="USER", help="another user's, for administrators")
    sub.add_argument("--current", metavar="USER", help="a user's currently good certificates (anyone may ask)")
    sub = command("certificate", cmd_certificate, "Download a certificate by serial number or fingerprint.")
    sub.add_argument(
        "serial",
        metavar="SERIAL|FINGERPRINT",
        help="hex serial of a certificate issued by the registry, or the SHA-256 fingerprint of any"
        " stored one (uploaded ones too), as 'irp certificates' shows it",
    )
    sub.add_argument("--out", help="file to write (default stdout)")
    sub = command("upload-certificate", cmd_upload_certificate, "Publish a certificate from another issuer that names you.")
    sub.add_argument("file")

    sub = command("pkcs12", cmd_pkcs12, PKCS12_HELP)
    sub.add_argument(
        "pkcs12_action",
        choices=("list", "get", "upload", "generate"),
        metavar="ACTION",
        help="list: your stored PKCS#12 files; get: write one (--id); upload: store one (--file);"
        " generate: the registry makes a key and certificate and returns them as a PKCS#12 file",
    )
    group = sub.add_argument_group("list and generate")
    group.add_argument("--of", metavar="USER", help="another user's files, or a key for another user (administrators)")
    group = sub.add_argument_group("get")
    group.add_argument("--id", type=int, help="the file's id, as 'irp pkcs12 list' shows it (required)")
    group = sub.add_argument_group("get and generate")
    group.add_argument("--out", help="where to write the PKCS#12 file (default stdout), mode 0600")
    group = sub.add_argument_group("upload")
    group.add_argument("--file", help="the PKCS#12 file to store (required)")
    group = sub.add_argument_group("upload and generate")
    group.add_argument("--label", default="cli", help="a label for the stored file (default 'cli')")
    group = sub.add_argument_group("generate")
    group.add_argument("--key-type", choices=KEY_TYPES, default="p384", help="the new key's type (default p384)")
    group.add_argument("--passphrase-file", help="read the new file's passphrase from this file (else asked twice)")

    sub = command("renew", cmd_renew, "Renew your certificate (or one given by serial); the old one is superseded.")
    sub.add_argument("serial", nargs="?")
    sub.add_argument("--new-key", action="store_true", help="make a new key too")
    sub.add_argument("--key-type", choices=KEY_TYPES, default="p384")
    sub.add_argument("--out", help="where to write another user's renewed certificate")

    sub = command("revoke", cmd_revoke, "Revoke a certificate.")
    sub.add_argument("serial")
    sub.add_argument("--reason", choices=sorted(REVOCATION_REASONS), default="unspecified")

    sub = command("crl", cmd_crl, "Download the CA's CRLs (PEM).", user=False, password=False)
    sub.add_argument("--out", help="file to write (default stdout)")
    sub = command("status", cmd_status, "Is a certificate good, revoked, expired or unknown?", user=False, password=False)
    sub.add_argument("serial", nargs="?")
    sub.add_argument("--file", help="a PEM certificate instead of a serial")
    sub = command("ca", cmd_ca, "Print the domain's CA certificates (PEM).", user=False, password=False)
    sub.add_argument("--out", help="file to write (default stdout)")

    sub = command("passwd", cmd_passwd, "Change your password.")
    sub.add_argument("--current-password-file", help="read your current password from this file")
    sub.add_argument("--new-password-file", help="read the new password from this file")

    admin = command("admin", cmd_admin, "Administrator commands.")
    actions = admin.add_subparsers(dest="admin_action", metavar="ACTION")
    actions.required = True

    def admin_action(name: str, text: str) -> argparse.ArgumentParser:
        # --password-file (the administrator's) works after the action too.
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("--password-file", default=argparse.SUPPRESS, help="read your (the administrator's) password from this file")
        return action

    action = admin_action("create-user", "create a user")
    action.add_argument("name")
    action.add_argument("--display-name")
    action.add_argument("--email")
    action.add_argument("--admin", action="store_true", help="make an administrator")
    action.add_argument("--no-password", action="store_true", help="set no password (certificates only, issued by an admin)")
    action.add_argument("--no-password-login", action="store_true", help="disable password login from the start")
    action.add_argument("--new-password-file", help="read the new user's password from this file")
    action = admin_action("set-password", "set a user's password (asked twice, or read from a file)")
    action.add_argument("name", help="the user")
    action.add_argument("--new-password-file", help="read the new password from this file")
    for name, text in (("disable-password-login", "only certificates will log this user in"), ("enable-password-login", "allow password login again")):
        action = admin_action(name, text)
        action.add_argument("name")
    action = admin_action("set-admin", "grant or withdraw administrator rights")
    action.add_argument("name")
    action.add_argument("state", choices=("on", "off"))
    action = admin_action("revoke", "revoke any certificate")
    action.add_argument("serial")
    action.add_argument("--reason", choices=sorted(REVOCATION_REASONS), default="unspecified")
    action = admin_action("delete-user", "delete a user and revoke their certificates")
    action.add_argument("name", help="the user")
    action = admin_action("users", "list users")
    action.add_argument("--prefix")
    action.add_argument("--offset", type=int, default=0)
    action.add_argument("--limit", type=int, default=50)
    return parser


def run_until_done(
    reactor: Any,
    program: str,
    command: Callable[[], Coroutine[Any, Any, int]],
    explain: Callable[[BaseException], tuple[str, int] | None],
) -> int:
    """Run ``command`` in a reactor started for it; return its exit code.

    A failure ``explain`` knows becomes one readable line on stderr and its exit code; any
    other prints a traceback and exits 70. The reactor stops one turn after the command so
    that connections close cleanly. Shared by the ``irp`` and ``sixchat`` commands.
    """
    outcome: dict[str, int] = {}

    def failed(failure: Any) -> None:
        error = failure.value
        if isinstance(error, KeyboardInterrupt):
            outcome["code"] = 130
            return
        explained = explain(error)
        if explained is None:
            print(f"{program}: unexpected failure:", file=sys.stderr)
            failure.printTraceback(file=sys.stderr)
            outcome["code"] = 70
            return
        message, code = explained
        print(f"{program}: {message}", file=sys.stderr)
        outcome["code"] = code

    async def wrapped() -> None:
        outcome["code"] = await command()

    def start() -> None:
        done: Deferred[None] = Deferred.fromCoroutine(wrapped())
        done.addErrback(failed)
        done.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome.get("code", 1)


def explain_failure(error: BaseException) -> tuple[str, int] | None:
    """The readable line and exit code of an expected failure of ``irp``."""
    if isinstance(error, errors.IRPError):
        return f"{error.message} [{error.name}]", exit_code_for(error)
    if isinstance(error, CommandError):
        return str(error), error.exit_code
    if isinstance(error, (ProfileError, keyfiles.KeyFileError, OSError)):
        return str(error), 2
    return None


def run(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    ctx = Context(reactor, args)

    async def command() -> int:
        try:
            code: int = await args.function(ctx)
            return code
        finally:
            ctx.close()

    return run_until_done(reactor, "irp", command, explain_failure)


def main() -> None:
    """Console entry point."""
    os.umask(0o077)
    sys.exit(run())


if __name__ == "__main__":
    main()
