"""``irp-ca``: the operator's local command for a registry's CA folder (``DATA_DIR/ca``).

It works on files only (no network, no database) and holds the data directory's lock while
it changes anything, so a registry process starting meanwhile sees the CA before or after,
never half-changed. Running registries pick a rotation up when they are restarted.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from cryptography import x509

from common.pki import keyfiles
from common.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES
from common.version import describe_version
from irp.server.ca import CertificateAuthorityError
from irp.server.ca.issuance import PublicationURLs
from irp.server.ca.ondisk import RETIRED_DIRECTORY, ROOT_CRL_FILE, holds_ca, read_crl_file, retired_folders
from irp.server.ca.rotation import (
    DEFAULT_OFFLINE_ROOT_CRL_DAYS,
    key_files,
    protect_keys,
    root_key_for,
    rotate_issuing,
    sign_root_crl,
    take_root_offline,
)
from irp.server.ca_host import PASSPHRASE_FILE_VARIABLE, read_passphrase_file
from irp.server.credentials import data_directory_lock


def _http_url(value: str) -> str:
    """An ``--http-url`` as the registry takes it (``http://`` or ``https://``; a ``/`` is
    added at the end)."""
    url = value if value.endswith("/") else value + "/"
    try:
        PublicationURLs(url)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return url


class CommandError(Exception):
    """A failure to report in one line (exit status 1)."""


class Passphrase:
    """The CA keys' passphrase, asked for only when a key needs it: from
    ``--passphrase-file``, ``IRP_KEY_PASSPHRASE_FILE``, or typed at a terminal."""

    def __init__(self, path: str | None, *, confirm: bool = False) -> None:
        self.path = path or os.environ.get(PASSPHRASE_FILE_VARIABLE) or None
        self.confirm = confirm
        self._value: bytes | None = None

    def get(self) -> bytes:
        """The passphrase (read once)."""
        if self._value is None:
            if self.path is not None:
                self._value = read_passphrase_file(self.path)
            elif sys.stdin.isatty():
                typed = getpass.getpass("Passphrase of the CA keys: ").encode("utf-8")
                if self.confirm and getpass.getpass("Again: ").encode("utf-8") != typed:
                    raise CommandError("the two entries differ; nothing was done")
                if not typed:
                    raise CommandError("an empty passphrase; nothing was done")
                self._value = typed
            else:
                raise CommandError(f"a passphrase is needed: give --passphrase-file FILE (or {PASSPHRASE_FILE_VARIABLE}), or run at a terminal")
        return self._value

    def for_key(self, path: str) -> bytes | None:
        """The passphrase if the key file at ``path`` is encrypted, else None."""
        return self.get() if keyfiles.is_encrypted_private_key(path) else None


def _ca_dir(args: argparse.Namespace) -> str:
    directory = os.path.join(os.path.abspath(args.data_dir), "ca")
    if not holds_ca(directory):
        raise CommandError(f"{directory} holds no CA (start the registry once to create one, or check --data-dir)")
    return directory


def _ca_keys_passphrase(directory: str, passphrase: Passphrase) -> bytes | None:
    """The passphrase if any key of the CA folder is encrypted, else None."""
    encrypted = any(keyfiles.is_encrypted_private_key(path) for path in key_files(directory))
    return passphrase.get() if encrypted else None


def _validity(certificate: x509.Certificate) -> str:
    return f"{certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d}"


def command_status(args: argparse.Namespace) -> None:
    """Print the CA's state."""
    directory = _ca_dir(args)
    root = keyfiles.load_certificates(os.path.join(directory, "root.pem"))[0]
    print(f"CA folder:        {directory}")
    print(f"Root:             {root.subject.rfc4514_string()}")
    print(f"Root fingerprint: {keyfiles.format_fingerprint(keyfiles.fingerprint(root))}")
    print(f"Root valid:       {_validity(root)}")
    root_key = os.path.join(directory, "root.key")
    if os.path.exists(root_key):
        state = "encrypted" if keyfiles.is_encrypted_private_key(root_key) else "NOT encrypted"
        print(f"Root key:         online ({root_key}, {state})")
    else:
        print("Root key:         offline (not in the CA folder)")
    issuing_key = os.path.join(directory, "issuing.key")
    issuing = keyfiles.load_certificates(os.path.join(directory, "issuing.pem"))[0]
    state = "encrypted" if keyfiles.is_encrypted_private_key(issuing_key) else "NOT encrypted"
    print(f"Issuing CA:       {issuing.subject.rfc4514_string()}, valid {_validity(issuing)}, key {state}")
    now = datetime.datetime.now(datetime.UTC)
    for number, folder in retired_folders(directory):
        retired = keyfiles.load_certificates(os.path.join(folder, "issuing.pem"))[0]
        state = "encrypted" if keyfiles.is_encrypted_private_key(os.path.join(folder, "issuing.key")) else "NOT encrypted"
        still = "still valid" if retired.not_valid_after_utc > now else "expired"
        print(f"Retired ({RETIRED_DIRECTORY}/{number}): {retired.subject.rfc4514_string()}, valid {_validity(retired)} ({still}), key {state}")
    crl_path = os.path.join(directory, ROOT_CRL_FILE)
    if os.path.exists(crl_path):
        crl = read_crl_file(crl_path)
        ends = crl.next_update_utc
        print(f"Root CRL:         {crl_path}, signed offline, next update {ends:%Y-%m-%d %H:%M} UTC" if ends else f"Root CRL: {crl_path}")
    elif os.path.exists(root_key):
        print("Root CRL:         signed by the registry (the root key is online)")
    else:
        print(f"Root CRL:         MISSING: sign one with irp-ca sign-root-crl --root-key PATH --data-dir {args.data_dir}")


def _root_key(args: argparse.Namespace, directory: str, passphrase: Passphrase) -> keyfiles.PrivateKey:
    path = args.root_key or os.path.join(directory, "root.key")
    if not os.path.exists(path):
        raise CommandError(f"the root key is not in {directory} (the root is offline): give it with --root-key PATH")
    return root_key_for(directory, args.root_key, passphrase.for_key(path))


def command_rotate_issuing(args: argparse.Namespace) -> None:
    """Rotate the issuing CA."""
    directory = _ca_dir(args)
    passphrase = Passphrase(args.passphrase_file)
    with data_directory_lock(args.data_dir):
        root_key = _root_key(args, directory, passphrase)
        rotation = rotate_issuing(
            directory,
            root_key,
            passphrase=_ca_keys_passphrase(directory, passphrase),
            key_type=args.key_type,
            publication=None if args.http_url is None else PublicationURLs(args.http_url),
        )
    print(f"New issuing CA:   {rotation.new.subject.rfc4514_string()}, valid {_validity(rotation.new)}")
    print(f"Retired:          {rotation.old.subject.rfc4514_string()} -> {rotation.retired_to}")
    print(f"                  (its certificates stay valid until they expire, at the latest {rotation.old.not_valid_after_utc:%Y-%m-%d})")
    print("Restart every registry process of the domain (each uses the new issuing CA from its start).")


def command_take_root_offline(args: argparse.Namespace) -> None:
    """Move the root key out of the CA folder."""
    directory = _ca_dir(args)
    passphrase = Passphrase(args.passphrase_file)
    root_key = os.path.join(directory, "root.key")
    if not os.path.exists(root_key):
        raise CommandError(f"{directory} holds no root key: the root is already offline")
    with data_directory_lock(args.data_dir):
        crl = take_root_offline(directory, args.to, passphrase=passphrase.for_key(root_key), days=args.days)
    print(f"Moved the root key to {args.to}: keep it offline (and a copy of it somewhere safe).")
    print(f"Signed the root CRL {os.path.join(directory, ROOT_CRL_FILE)}, next update {crl.next_update_utc:%Y-%m-%d}: sign a new one before then (irp-ca sign-root-crl).")
    print("Restart every registry process of the domain; copy root.crl to their ca/ folders too.")


def command_sign_root_crl(args: argparse.Namespace) -> None:
    """Sign the root CRL with the (offline) root key."""
    directory = _ca_dir(args)
    passphrase = Passphrase(args.passphrase_file)
    with data_directory_lock(args.data_dir):
        crl = sign_root_crl(directory, _root_key(args, directory, passphrase), days=args.days)
    print(f"Signed {os.path.join(directory, ROOT_CRL_FILE)}, next update {crl.next_update_utc:%Y-%m-%d}. Registries serve it from their next get-crl (copy it to every process's ca/ folder).")


def command_protect_keys(args: argparse.Namespace) -> None:
    """Encrypt (or decrypt) the CA keys."""
    directory = _ca_dir(args)
    passphrase = Passphrase(args.passphrase_file, confirm=not args.remove)
    with data_directory_lock(args.data_dir):
        done = protect_keys(directory, passphrase.get(), remove=args.remove)
    for path, what in done:
        print(f"{what}: {path}")
    if not args.remove:
        print("Start the registry with --key-passphrase-file FILE (or IRP_KEY_PASSPHRASE_FILE) from now on.")


def parser() -> argparse.ArgumentParser:
    """The command line of ``irp-ca``."""
    top = argparse.ArgumentParser(
        prog="irp-ca",
        description="Operate a registry's CA folder (DATA_DIR/ca): status, issuing-CA rotation, offline root, key encryption.",
    )
    top.add_argument("--version", action="version", version=describe_version("irp-ca"))
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], None], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--data-dir", default="irp-data", help="the registry's data directory (default: irp-data)")
        sub.add_argument(
            "--passphrase-file",
            help=f"a file (mode 0600) whose first line is the keys' passphrase (default: ${PASSPHRASE_FILE_VARIABLE}, else asked at a terminal when a key is encrypted)",
        )
        sub.set_defaults(run=run)
        return sub

    command("status", command_status, "Show the root fingerprint, the issuing CAs and their validity, where the root key is, which keys are encrypted, and the root CRL's end.")
    rotate = command("rotate-issuing", command_rotate_issuing, "Replace the issuing CA by a new one the root signs; the old one is kept in ca/retired/<n>/ and its certificates stay valid until they expire.")
    rotate.add_argument("--root-key", help="the root key file, when the root is offline (default: ca/root.key)")
    rotate.add_argument(
        "--http-url", type=_http_url, metavar="URL",
        help="the registry's --http-url: the new issuing CA names the root's CRL and certificate there",
    )
    rotate.add_argument("--key-type", default=DEFAULT_KEY_TYPE, choices=KEY_TYPES, help=f"the new issuing key's type (default {DEFAULT_KEY_TYPE})")
    offline = command("take-root-offline", command_take_root_offline, "Sign the root CRL, then move ca/root.key to a file you keep offline; the registry then runs with the issuing key only.")
    offline.add_argument("--to", required=True, help="where to move the root key (never overwritten)")
    offline.add_argument("--days", type=int, default=DEFAULT_OFFLINE_ROOT_CRL_DAYS, help=f"the root CRL's lifetime (default {DEFAULT_OFFLINE_ROOT_CRL_DAYS})")
    sign = command("sign-root-crl", command_sign_root_crl, "Sign the root CRL (ca/root.crl) with the root key, which registries with an offline root serve.")
    sign.add_argument("--root-key", help="the root key file (default: ca/root.key)")
    sign.add_argument("--days", type=int, default=DEFAULT_OFFLINE_ROOT_CRL_DAYS, help=f"the root CRL's lifetime (default {DEFAULT_OFFLINE_ROOT_CRL_DAYS})")
    protect = command("protect-keys", command_protect_keys, "Encrypt the CA keys (root when online, issuing, retired issuing) with a passphrase, each file replaced atomically.")
    protect.add_argument("--remove", action="store_true", help="decrypt them instead")
    return top


def run(argv: Sequence[str] | None = None) -> int:
    """Run ``irp-ca`` with ``argv``; the exit status (0 done, 1 failed, 2 usage)."""
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, CertificateAuthorityError, keyfiles.KeyFileError, ValueError) as error:
        print(f"irp-ca {args.command}: {error}; nothing was changed", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"irp-ca {args.command}: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"irp-ca {args.command}: interrupted", file=sys.stderr)
        return 1
    return 0


def main() -> NoReturn:
    """The ``irp-ca`` console script."""
    sys.exit(run())
