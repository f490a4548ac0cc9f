"""The command line of ``irp``: every command, its options and its ``--help`` text."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from common.cliutil import Context
from common.ports import SIXCHAT_PORT
from common.profile import default_profile_path
from common.version import describe_version
from irp.cli.account import (
    cmd_admin,
    cmd_info,
    cmd_login,
    cmd_lookup,
    cmd_passwd,
    cmd_register,
    cmd_user,
    cmd_users,
    cmd_whoami,
)
from irp.cli.audit import add_audit_action
from irp.cli.certificates import (
    PKCS12_HELP,
    cmd_ca,
    cmd_certificate,
    cmd_certificates,
    cmd_crl,
    cmd_pkcs12,
    cmd_renew,
    cmd_revoke,
    cmd_status,
    cmd_upload_certificate,
)
from irp.client import enrol, initialise
from irp.server.ca import KEY_TYPES, REVOCATION_REASONS

Command = Callable[[Context], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``irp``."""
    parser = argparse.ArgumentParser(
        prog="irp",
        description="Client of an IRP identity registry (TCP 4604): enrol, log in, publish"
        " your addresses, look users up, manage certificates.",
        epilog="Start with 'irp init', then 'irp enrol'. Every command has --help.",
    )
    # Global options work before or after the command name.
    parser.add_argument("--version", action="version", version=describe_version("irp"))
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument(
            "--profile",
            default=default_profile_path() if default is None else default,
            help="profile folder (default: $IRP_PROFILE or ~/.irp)",
        )
        target.add_argument("--server", default=default, help="registry HOST[:PORT], overriding the profile")
        target.add_argument(
            "--dns-server",
            default=default,
            metavar="ADDRESS[:PORT]",
            help="DNS server to ask for the registry's SRV records (_irp._tcp.DOMAIN), overriding"
            " the profile's (default: the system's resolver); 'irp init' keeps it in the profile",
        )
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
        " found by DNS SRV (_irp._tcp.DOMAIN), and the profile keeps the domain: each command"
        " looks the registry up again (SRV failover works). --dns-server names the DNS server to ask.",
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
    action = admin_action("sixid-allow", "put a device ID on sixid's allow list (served under --sixid-policy listed)")
    action.add_argument("sixid", metavar="ID", help="the device ID, in either form (xxxx-xxxx-... or 32 characters)")
    action.add_argument("--note", default="", help="a note kept with the entry (whose device it is, say)")
    action = admin_action("sixid-disallow", "take a device ID off sixid's allow list")
    action.add_argument("sixid", metavar="ID", help="the device ID, in either form")
    action = admin_action("sixid-list", "list sixid's allow list")
    action.add_argument("--offset", type=int, default=0, help="entries to skip (default 0)")
    action.add_argument("--limit", type=int, default=1000, help="entries to show (default 1000, at most 10000)")
    add_audit_action(admin_action)
    return parser
