"""The ``irp`` command: enrol, log in, publish addresses, look users up, manage certificates.

Every subcommand has ``--help``. Expected failures (wrong password, unknown user, server
unreachable, revoked certificate...) print one readable line to stderr and exit non-zero:

    1  the registry refused the request     3  login failed or was refused
    2  bad command line or local problem    4  no such user, certificate or file
    5  could not reach or verify the registry
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.cliutil import CommandError, Context, parse_endpoint, read_secret, run_until_done, show
from common.pki import keyfiles
from common.ports import SIXCHAT_PORT
from common.profile import ProfileError, default_profile_path
from common.timeutil import format_timestamp
from irp import errors
from irp.client import enrol, initialise, make_csr, open_registry
from irp.server.ca import KEY_TYPES, REVOCATION_REASONS, generate_key
from irp.wire.elements import CertificateEntry
from irp.wire.records import AddressRecord, UserRecord


def exit_code_for(error: errors.IRPError) -> int:
    """Map an IRP error to the command's exit code."""
    if isinstance(error, (errors.ServerVerificationFailed, errors.ConnectionLost, errors.Timeout)):
        return 5
    if isinstance(error, errors.NotAuthenticated):
        return 3
    if isinstance(error, errors.NotFound):
        return 4
    return 1


# -- output --------------------------------------------------------------------------


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


# -- commands ------------------------------------------------------------------------

Command = Callable[[Context], Coroutine[Any, Any, int]]


async def cmd_login(ctx: Context) -> int:
    """Check that logging in works and show how."""
    client = await open_registry(ctx)
    session = await client.whoami()
    show(f"Logged in as {session.user} with a {session.method}{' (administrator)' if session.is_admin else ''}.")
    return 0


async def cmd_whoami(ctx: Context) -> int:
    """Show who the registry takes you for."""
    client = await open_registry(ctx, login=not ctx.args.anonymous)
    session = await client.whoami()
    if session.user is None:
        show("Not logged in.")
    else:
        show(f"{session.user} ({session.method}{', administrator' if session.is_admin else ''})")
    return 0


async def cmd_info(ctx: Context) -> int:
    """Show or change your directory entry."""
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
    total, records = await client.list_users(ctx.args.offset, ctx.args.limit, ctx.args.prefix or "")
    for record in records:
        show(f"{record.identity.username:<24} {record.display_name:<30} {record.email}")
    show(f"({len(records)} of {total} shown from {ctx.args.offset})")
    return 0


async def cmd_register(ctx: Context) -> int:
    """Publish your current addresses and presence."""
    args = ctx.args
    endpoints = [parse_endpoint(text, args.port) for text in args.address or []]
    if not endpoints and args.presence != "offline":
        raise CommandError("give at least one --address (or --presence offline)")
    client = await open_registry(ctx)
    record = await client.register_addresses(endpoints, args.presence, args.ttl)
    describe_addresses(record, ctx.reactor.seconds())
    return 0


async def cmd_lookup(ctx: Context) -> int:
    """Look a user's addresses and presence up."""
    client = await open_registry(ctx)
    record = await client.lookup(ctx.args.name)
    describe_addresses(record, ctx.reactor.seconds())
    return 0


async def cmd_certificates(ctx: Context) -> int:
    """List certificates: yours, a user's (administrators), or a user's current ones."""
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
    entry = await client.revoke(parse_serial_argument(ctx.args.serial), ctx.args.reason)
    describe_certificate(entry)
    return 0


async def cmd_crl(ctx: Context) -> int:
    """Download the CA's current CRLs (signatures verified) as PEM."""
    client = await open_registry(ctx, login=False)
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
    client = await open_registry(ctx, login=False)
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
    client = await open_registry(ctx, login=False)
    chain = await client.ca_chain()
    write_output(ctx.args.out, pem(chain.issuing) + pem(chain.root))
    return 0


async def cmd_passwd(ctx: Context) -> int:
    """Change your password."""
    client = await open_registry(ctx)
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
    client = await open_registry(ctx)
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
        initialise,
        "Create a profile pinned to a registry's root CA. Without --server the registry is"
        " found by DNS SRV (_irp._tcp.DOMAIN).",
        password=False,
    )
    sub.add_argument("--domain", required=True, help="the domain the registry serves")
    sub.add_argument("--ca-fingerprint", help="SHA-256 fingerprint of the registry's root CA, from its operator")
    sub.add_argument("--ca-file", help="the registry's root CA certificate (PEM), instead of a fingerprint")
    sub.add_argument("--force", action="store_true", help="replace an existing profile")

    sub = command("enrol", enrol, "Log in with your password, make a key here and get a certificate.")
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
