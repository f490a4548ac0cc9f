"""``irp`` commands about the user: login, whoami, directory entries, addresses, password,
and the administrator's commands."""

from __future__ import annotations

from common.cliutil import CommandError, Context, parse_endpoint, read_secret, show
from common.timeutil import format_timestamp
from irp.cli.audit import cmd_audit
from irp.cli.output import (
    describe_addresses,
    describe_certificate,
    describe_user,
    parse_serial_argument,
)
from irp.client import open_registry
from sixid.ids import InvalidSixId, SixId


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
    if args.admin_action.startswith("sixid-"):
        return await cmd_sixid_admin(ctx)
    if args.admin_action == "audit":
        return await cmd_audit(ctx)
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


async def cmd_sixid_admin(ctx: Context) -> int:
    """sixid's allow list: sixid-allow, sixid-disallow, sixid-list."""
    args = ctx.args
    action = args.admin_action
    if action == "sixid-list":
        client = await open_registry(ctx)
        entries = await client.sixid_list(args.offset, args.limit)
        for entry in entries:
            show(f"{SixId.parse(entry.sixid).grouped()}  {format_timestamp(entry.added_at)}  {entry.added_by}  {entry.note}")
        show(f"({len(entries)} shown from {args.offset})")
        return 0
    try:
        sixid = SixId.parse(args.sixid)
    except InvalidSixId as error:
        raise CommandError(str(error)) from None
    client = await open_registry(ctx)
    if action == "sixid-allow":
        added = await client.sixid_allow(str(sixid), args.note)
        show(f"{sixid.grouped()} {'is now' if added else 'was already'} on the sixid allow list.")
    else:
        removed = await client.sixid_disallow(str(sixid))
        show(f"{sixid.grouped()} {'is no longer' if removed else 'was not'} on the sixid allow list.")
    return 0
