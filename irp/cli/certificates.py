"""``irp`` commands about certificates: list, download, upload, PKCS#12 files, renew,
revoke, CRLs, status and the CA chain."""

from __future__ import annotations

import sys

from cryptography.hazmat.primitives import serialization

from common.cliutil import CommandError, Context, read_secret, show
from common.pki import keyfiles
from common.timeutil import format_timestamp
from irp.cli.output import (
    describe_certificate,
    parse_serial_argument,
    pem,
    write_output,
)
from irp.client import make_csr, open_registry
from irp.server.ca import generate_key


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
