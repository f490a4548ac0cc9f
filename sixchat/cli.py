"""The ``sixchat`` command: enrol, manage contacts, send, and chat in the terminal.

Commands that need the agent talk to the running one (``twistd sixchat``) through its
control socket; when none runs, the command runs an agent itself for as long as it needs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from common.cliutil import CommandError, Context, console_main, parse_endpoint, run_command, server_argument
from common.endpoint import split_host_port
from common.identity import Identity, InvalidIdentity, check_domain
from common.pki import keyfiles
from common.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES
from common.pki.trust import check_anchor
from common.profile import Profile, ProfileError, default_profile_path
from common.version import describe_version
from irp.client import IRPError, fetch_root_by_fingerprint, split_server
from irp.client import enrol as cmd_enrol
from irp.client import initialise as cmd_init
from sixchat import DEFAULT_PORT, errors
from sixchat.agent.control import ControlError, InProcessControl, connect_control
from sixchat.agent.service import Agent, AgentSettings
from sixchat.agent.sixid import device_id
from sixchat.recipients import InvalidRecipient, Recipient, parse_recipient
from sixchat.schedule import parse_at, state_text, when_text
from sixid import DEFAULT_PORT as SIXID_PORT
from sixid.ids import SixIdAddress

Command = Callable[["ChatContext"], Coroutine[Any, Any, int]]


def parse_who(text: str, profile: Profile) -> Recipient:
    """``bob`` (same domain as the profile), ``bob@example.org``, or a device's
    ``ID@example.org`` (see :func:`sixchat.recipients.parse_recipient`)."""
    domain = profile.load_config().domain if "@" not in text else None
    try:
        return parse_recipient(text, domain)
    except InvalidRecipient as error:
        raise CommandError(str(error)) from None


def parse_identity(text: str, profile: Profile) -> Identity:
    """``bob`` (same domain as the profile) or ``bob@example.org`` (not a device)."""
    who = parse_who(text, profile)
    if not isinstance(who, Identity):
        raise CommandError(f"{text} is a device ID: give the user (user@domain) here ('sixchat lookup {text}' names them)")
    return who


class ChatContext(Context):
    """The irp command context plus a handle on the agent."""

    program = "sixchat"

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        super().__init__(reactor, args)
        self.control: Any = None
        self.local_agent: Agent | None = None

    async def agent(self, *, network: bool = False) -> Any:
        """The running agent's control connection, or an agent started here.

        ``network`` asks for an agent that listens and registers (for chat); otherwise an
        agent started here only reads and writes the profile and dials out.
        """
        if self.control is not None:
            return self.control
        control = await connect_control(self.reactor, self.args.profile)
        if control is not None:
            for option, value in (("--server", self.args.server), ("--sixid-server", self.args.sixid_server)):
                if value:
                    transport: Any = control.transport
                    transport.loseConnection()
                    raise CommandError(
                        f"{option} applies only to an agent this command starts, and an agent is running for this"
                        f" profile (it uses its own settings): stop that agent first, or leave out {option}"
                    )
            self.control = control
            return control
        listen = (self.args.listen or [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"]) if network else []
        settings = AgentSettings(
            profile_dir=self.args.profile,
            listen=listen,
            advertise=[parse_endpoint(text, DEFAULT_PORT) for text in self.args.advertise] if self.args.advertise else None,
            register=network,
            mailbox=network,
            control=False,
            server=server_argument(self.args.server) if self.args.server else None,
            sixid_server=_sixid_server(self.args.sixid_server),
        )
        agent = Agent(settings, self.reactor)
        try:
            agent.load_credentials()
        except (ProfileError, keyfiles.KeyFileError, ValueError) as error:
            raise CommandError(str(error)) from None
        agent.startService()
        await agent.ready
        self.local_agent = agent
        self.control = InProcessControl(agent)
        return self.control

    async def finish(self) -> None:
        """Stop an agent started here; close the control connection."""
        if self.local_agent is not None:
            await self.local_agent.stopService()
        elif self.control is not None and hasattr(self.control, "transport"):
            self.control.transport.loseConnection()
        self.close()


def _sixid_server(text: str | None) -> tuple[str, int] | None:
    """``--sixid-server HOST[:PORT]`` (port 4606 by default), or None."""
    if not text:
        return None
    try:
        return split_host_port(text, SIXID_PORT)
    except ValueError as error:
        raise CommandError(f"--sixid-server: {error}") from None


def show(text: str = "") -> None:
    """Print a line of output."""
    print(text, flush=True)


def note(text: str) -> None:
    """Print a progress line (on standard error, so that output stays clean for scripts)."""
    print(text, file=sys.stderr, flush=True)


def clock_text(seconds: float) -> str:
    """HH:MM in local time."""
    return time.strftime("%H:%M", time.localtime(seconds))


# -- commands ------------------------------------------------------------------------


def _check_anchor(root: Any, domain: str) -> None:
    try:
        check_anchor(root, domain)
    except ValueError as error:
        raise CommandError(f"{error}: refusing to trust it") from None


async def cmd_trust_domain(ctx: ChatContext) -> int:
    """Trust another domain's root CA, for that domain's users only, and note its registry.

    The root is accepted only if it is a self-signed CA certificate whose stated domain
    (its ``O`` attribute) is the domain named, that domain is not the user's own (only the
    profile's pinned root certifies it), and the user confirmed it: either its fingerprint
    was given (checked with the domain's operator), or the domain's registry serves that
    very root (fetched and compared). It is stored bound to that domain.
    """
    args = ctx.args
    try:
        domain = check_domain(args.domain)
    except InvalidIdentity as error:
        raise CommandError(str(error)) from None
    config = ctx.profile.load_config()
    if domain == config.domain:
        raise CommandError(
            f"{domain} is your own domain: only your registry's root (pinned by 'sixchat init') certifies its users"
        )
    host, port = split_server(args.server)
    expected = keyfiles.parse_fingerprint(args.ca_fingerprint) if args.ca_fingerprint else None
    if args.ca_file:
        try:
            root = keyfiles.load_certificates(args.ca_file)[0]
        except (OSError, ValueError, IndexError, keyfiles.KeyFileError) as error:
            raise CommandError(f"cannot read a root CA from {args.ca_file}: {error}") from None
        _check_anchor(root, domain)
        if expected is not None:
            if keyfiles.fingerprint(root) != expected:
                raise CommandError("the CA file does not have the fingerprint given: refusing to trust it")
            checked = "its fingerprint is the one you gave"
        else:
            # Nobody confirmed this file: trust it only if the domain's registry serves it.
            served = await fetch_root_by_fingerprint(ctx, host, port, domain, keyfiles.fingerprint(root))
            if served != root:
                raise CommandError(f"the registry of {domain} serves another root CA: refusing to trust the file")
            checked = f"the registry of {domain} serves this root"
    elif expected is not None:
        root = await fetch_root_by_fingerprint(ctx, host, port, domain, expected)
        _check_anchor(root, domain)
        checked = "fetched from its registry, with the fingerprint you gave"
    else:
        raise CommandError("give --ca-fingerprint FP (checked with that domain's operator) or --ca-file")
    ctx.profile.trust_domain(domain, root)
    config.registries[domain] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ctx.profile.save_config(config)
    show(
        f"Trusting {domain} (root {keyfiles.format_fingerprint(keyfiles.fingerprint(root))}; {checked})"
        f" for users of {domain} only, registry {host} port {port}."
    )
    return 0


async def cmd_contacts(ctx: ChatContext) -> int:
    """List contacts."""
    control = await ctx.agent()
    contacts = await control.call("contacts")
    for contact in contacts:
        flags = " (blocked)" if contact["blocked"] else ""
        pinned = f", {len(contact['fingerprints'])} pinned" if contact["fingerprints"] else ""
        show(f"{contact['who']:<32} {contact['presence']:<8} {contact['name']}{pinned}{flags}")
    if not contacts:
        show("(no contacts: add one with 'sixchat add user@domain')")
    return 0


async def cmd_add(ctx: ChatContext) -> int:
    """Add a contact; show the fingerprints their registry vouches for."""
    who = parse_identity(ctx.args.who, ctx.profile)
    control = await ctx.agent()
    result = await control.call(
        "add-contact", who=str(who), name=ctx.args.name or "", fingerprints=ctx.args.fingerprint or [], pin=ctx.args.pin
    )
    show(f"Added {who}.")
    for digest in result["registry_fingerprints"]:
        show(f"  certificate {keyfiles.format_fingerprint(digest)}")
    if result["contact"]["fingerprints"]:
        show("  pinned: only these certificates will be accepted for this contact.")
    else:
        show("  Compare the fingerprint with them by another channel; --pin keeps exactly these.")
    return 0


async def cmd_simple(ctx: ChatContext) -> int:
    """remove, block, unblock."""
    who = parse_identity(ctx.args.who, ctx.profile)
    control = await ctx.agent()
    op = {"remove": "remove-contact", "block": "block", "unblock": "unblock"}[ctx.args.command]
    await control.call(op, who=str(who))
    show(f"{ctx.args.command.capitalize()}ed {who}." if ctx.args.command != "remove" else f"Removed {who}.")
    return 0


async def cmd_send(ctx: ChatContext) -> int:
    """Send one message and wait for its receipt (or until it is stored or scheduled)."""
    recipient = parse_who(ctx.args.who, ctx.profile)
    text = " ".join(ctx.args.text) if ctx.args.text else sys.stdin.read().rstrip("\n")
    if not text:
        raise CommandError("nothing to send")
    at = parse_at(ctx.args.at, time.time()) if ctx.args.at else None
    control = await ctx.agent()
    outcome: Deferred[dict[str, Any]] = Deferred()
    message_id: dict[str, str] = {}

    early: list[dict[str, Any]] = []

    def event(data: dict[str, Any]) -> None:
        if "id" not in message_id:
            early.append(data)  # before the agent answered with the id
            return
        if data.get("event") == "progress" and data.get("to") == str(who) and data.get("id") in (None, message_id["id"]):
            if not ctx.args.no_wait and not outcome.called:
                note(f"... {data['text']}")
            return
        if data.get("id") == message_id["id"] and data.get("event") in FINAL_EVENTS and not outcome.called:
            outcome.callback(data)

    control.on_event = event
    await control.call("subscribe")
    result = await control.call("send", to=str(recipient), text=text, **({} if at is None else {"at": at}))
    # A device's message is for its owner: the agent's events name them.
    who = Identity.parse(result["to"]) if result.get("to") else recipient
    if isinstance(recipient, SixIdAddress):
        note(f"Device {recipient.sixid.grouped()}@{recipient.domain} is {who}'s.")
    message_id["id"] = result["id"]
    for data in early:
        event(data)
    if ctx.args.no_wait and not outcome.called:
        show(f"Queued message {result['id']} for {who}.")
        return 0

    outcome.addTimeout(ctx.args.wait, ctx.reactor, onTimeoutCancel=lambda _result, _timeout: {"event": "timeout"})
    data = await outcome
    if data["event"] == "receipt":
        show(f"Delivered to {who}.")
        return 0
    if data["event"] == "stored":
        show(f"Stored at {who.domain}'s intermediary; it will be delivered when {who} is online.")
        return 0
    if data["event"] == "not-scheduled":
        show(f"Not scheduled: {data.get('reason')}.")
        return 1
    if data["event"] == "scheduled":
        show(f"Scheduled for {when_text(data.get('deliver_at') or at or 0)}: held at {who.domain}'s intermediary until then.")
        return 0
    if data["event"] == "undelivered":
        show(f"Not delivered to {who}: {data.get('reason') or 'gave up'}.")
        return 1
    if data["event"] == "cancelled":
        show(f"Cancelled; not delivered to {who}.")
        return 1
    if ctx.local_agent is not None:
        show(f"Not delivered yet: {who} is not reachable now. The message stays queued and your agent will deliver it later.")
    else:
        show(f"Not delivered yet; your agent keeps trying for {who}.")
    show(f"  ('sixchat status' shows the queue; 'sixchat cancel {result['id']}' cancels this message.)")
    return 1


#: The events that end ``sixchat send``'s wait.
FINAL_EVENTS = ("receipt", "undelivered", "cancelled", "stored", "scheduled", "not-scheduled")


async def cmd_cancel(ctx: ChatContext) -> int:
    """Cancel queued messages."""
    control = await ctx.agent()
    for message_id in ctx.args.id:
        result = await control.call("cancel", message=message_id)
        extra = " (it was already sent once; it may have reached them)" if result["was"] == "sent" else ""
        show(f"Cancelled message {result['id']} to {result['to']}{extra}.")
    return 0


async def cmd_history(ctx: ChatContext) -> int:
    """Show the message history."""
    who = parse_identity(ctx.args.who, ctx.profile) if ctx.args.who else None
    control = await ctx.agent()
    rows = await control.call("history", who=None if who is None else str(who), limit=ctx.args.limit)
    for row in rows:
        arrow = "->" if row["direction"] == "out" else "<-"
        state = "" if row["direction"] == "in" else f"  [{state_text(row)}]"
        show(f"{clock_text(row['sent'])} {arrow} {row['peer']}: {row['text']}{state}")
    if not rows:
        show("(no messages)")
    return 0


async def cmd_status(ctx: ChatContext) -> int:
    """Show the agent's status."""
    control = await ctx.agent()
    status = await control.call("status")
    show(f"{status['identity']}  ({'running agent' if ctx.local_agent is None else 'no agent running'})")
    show(f"  certificate {keyfiles.format_fingerprint(status['fingerprint'])}")
    if status.get("device"):
        show(f"  device ID   {status['device']} ({status.get('sixid') or 'not published'})")
    for line in status["listening"]:
        show(f"  listening on {line}")
    if status.get("registering", True) and not status.get("registered", True):
        show(f"  NOT published: {status.get('registration_error') or 'not registered'} (others cannot reach you)")
        for line in status["advertised"]:
            show(f"  would publish {line}")
    else:
        for line in status["advertised"]:
            show(f"  published   {line}")
    show(f"  sessions: {', '.join(status['sessions']) or 'none'}; accepting: {status['policy']}")
    queue = status.get("queue", [])
    show(f"  queued messages: {len(queue) or 'none'}")
    for item in queue:
        why = f"  ({item['reason']})" if item.get("reason") else ""
        show(f"    {item['id']}  {clock_text(item['created'])} -> {item['to']}  [{state_text(item)}]{why}")
    if status.get("intermediary") is not None:
        show(f"  intermediary: {status['intermediary']}")
    if status.get("relay"):
        show(f"  relay: reachable through {status['relay']}")
    return 0


async def cmd_lookup(ctx: ChatContext) -> int:
    """Ask the registry where someone is (or a device's domain's sixid server where it is)."""
    who = parse_who(ctx.args.who, ctx.profile)
    control = await ctx.agent()
    if isinstance(who, SixIdAddress):
        found = await control.call("find", who=str(who))
        show(f"{found['grouped']}: device of {found['owner']}, until {time.strftime('%Y-%m-%d %H:%M', time.localtime(found['expires']))}")
        if not found["endpoints"]:
            show("  offline (no address)")
        for address, port in found["endpoints"]:
            show(f"  {'[' + address + ']' if ':' in address else address}:{port}")
        return 0
    result = await control.call("lookup", who=str(who))
    show(f"{result['who']}: {result['presence']}")
    for address, port in result["endpoints"]:
        show(f"  {'[' + address + ']' if ':' in address else address}:{port}")
    return 0


async def cmd_chat(ctx: ChatContext) -> int:
    """Interactive chat with one contact."""
    from sixchat.chatui import run_chat

    who = parse_who(ctx.args.who, ctx.profile)
    control = await ctx.agent(network=True)
    if isinstance(who, SixIdAddress):
        found = await control.call("find", who=str(who))
        note(f"Device {found['grouped']} is {found['owner']}'s.")
        return await run_chat(ctx.reactor, control, Identity.parse(found["owner"]), history=ctx.args.history, send_to=str(who))
    return await run_chat(ctx.reactor, control, who, history=ctx.args.history)


async def cmd_id(ctx: ChatContext) -> int:
    """Print this profile's device ID (its certificate's key's), as ID@domain and grouped."""
    try:
        _key, certificate, _chain = ctx.profile.credentials()
        domain = ctx.profile.load_config().domain
        sixid = device_id(certificate)
    except (ProfileError, keyfiles.KeyFileError, ValueError) as error:
        raise CommandError(f"no device ID: {error}") from None
    show(f"{sixid}@{domain}")
    show(f"{sixid.grouped()}@{domain}")
    return 0


# -- parsing and running -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``sixchat``."""
    parser = argparse.ArgumentParser(
        prog="sixchat",
        description="SixChat End2End Direct: chat directly and end-to-end encrypted with people"
        " whose identity an IRP registry vouches for.",
        epilog="First 'sixchat init' and 'sixchat enrol'; then run your agent with 'twistd -n sixchat'"
        " (or let each command start one). Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=describe_version("sixchat"))
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument("--profile", default=default_profile_path() if default is None else default, help="profile folder (default: $IRP_PROFILE or ~/.irp)")
        target.add_argument("--server", default=default, help="your registry HOST[:PORT], overriding the profile")
        target.add_argument("--sixid-server", default=default, help="your domain's sixid server HOST[:PORT] for an agent this"
                            " command starts (default: your registry's host on port 4606)")
        target.add_argument("--timeout", type=float, default=30.0 if default is None else default, help="seconds to wait for a registry (default 30)")
        target.add_argument("--listen", action="append", default=default, help="endpoint for an agent this command starts (chat)")
        target.add_argument("--advertise", action="append", default=default, help="address such an agent publishes")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, function: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(function=function)
        return sub

    sub = command("init", cmd_init, "Create your profile, pinned to your registry's root CA.")  # type: ignore[arg-type]
    sub.add_argument("--domain", required=True, help="your domain")
    sub.add_argument("--user", required=True, help="your user name")
    sub.add_argument("--ca-fingerprint", help="SHA-256 fingerprint of the registry's root CA")
    sub.add_argument("--ca-file", help="the registry's root CA (PEM) instead")
    sub.add_argument("--force", action="store_true", help="replace an existing profile")
    sub = command("enrol", cmd_enrol, "Log in with your password, make your key here and get its certificate.")  # type: ignore[arg-type]
    sub.add_argument("--user", help="your user name (default: the profile's)")
    sub.add_argument("--password-file", help="read the password from this file")
    sub.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE)
    sub.add_argument("--force", action="store_true")
    commands._name_parser_map["enroll"] = sub

    sub = command(
        "trust-domain",
        cmd_trust_domain,
        "Trust another domain's CA, for that domain's users only (it must name that domain; confirm it by fingerprint).",
    )
    sub.add_argument("domain", help="the domain (not your own)")
    sub.add_argument("--registry", dest="server", required=True, help="that domain's registry HOST[:PORT]")
    sub.add_argument("--ca-fingerprint", help="its root CA fingerprint, checked with its operator")
    sub.add_argument("--ca-file", help="its root CA (PEM); without --ca-fingerprint it must be the root that registry serves")

    command("contacts", cmd_contacts, "List your contacts.")
    sub = command("add", cmd_add, "Add a contact (shows the certificate fingerprints to compare).")
    sub.add_argument("who", help="user@domain (or a user of your domain)")
    sub.add_argument("--name", help="a name to show")
    sub.add_argument("--fingerprint", action="append", help="pin this certificate fingerprint (repeatable)")
    sub.add_argument("--pin", action="store_true", help="pin the certificates the registry vouches for now")
    for name, text in (("remove", "Forget a contact (history stays)."), ("block", "Refuse connections from someone."), ("unblock", "Accept someone again.")):
        sub = command(name, cmd_simple, text)
        sub.add_argument("who")

    command("id", cmd_id, "Print your device ID (ID@domain, then grouped): others can send to it ('twistd sixchat --sixid' publishes it).")
    sub = command("send", cmd_send, "Send one message and wait for the receipt.")
    sub.add_argument("who", help="user@domain, a user name of your own domain, or a device's ID@domain")
    sub.add_argument("text", nargs="*", help="the message (default: read stdin)")
    sub.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the receipt (default 30)")
    sub.add_argument("--no-wait", action="store_true", help="queue and return at once")
    sub.add_argument("--at", metavar="TIME", help="deliver at TIME: HH:MM (local, next occurrence) or ISO 8601 with zone;"
                     " held by the recipient's intermediary until then")

    sub = command("cancel", cmd_cancel, "Cancel queued messages (their ids are in 'sixchat status').")
    sub.add_argument("id", nargs="+", help="message id")

    sub = command("chat", cmd_chat, "Chat with someone in this terminal.")
    sub.epilog = (
        "In the chat, /help lists the commands and /quit leaves; a line starting with // sends"
        " one starting with /. Full Unicode is typed and shown (the terminal must use UTF-8)."
        " From a pipe, each line read is a message."
    )
    sub.add_argument("who", help="user@domain, a user name of your own domain, or a device's ID@domain")
    sub.add_argument("--history", type=int, default=20, help="earlier messages to show first (default 20)")
    sub = command("history", cmd_history, "Show your message history.")
    sub.add_argument("who", nargs="?")
    sub.add_argument("--limit", type=int, default=50)
    command("status", cmd_status, "Show your agent's status.")
    sub = command("lookup", cmd_lookup, "Ask the registry where someone is (a device ID@domain: its sixid server).")
    sub.add_argument("who", help="user@domain, a user name of your own domain, or a device's ID@domain")
    return parser


def run(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    for name, default in (("user", None), ("password_file", None), ("listen", None), ("advertise", None), ("server", None), ("sixid_server", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return run_command("sixchat", args, reactor, ChatContext, explain_failure)


def explain_failure(error: BaseException) -> tuple[str, int] | None:
    """The readable line and exit code of an expected failure of ``sixchat``."""
    if isinstance(error, (IRPError, errors.SixChatError)):
        return f"{error.message} [{error.name}]", 1
    if isinstance(error, ControlError) and error.name not in ("control-error", "None"):
        return f"{error} [{error.name}]", 1
    if isinstance(error, (CommandError, ControlError, ProfileError, keyfiles.KeyFileError, OSError)):
        return str(error), getattr(error, "exit_code", 1)
    return None


def main() -> None:
    """Console entry point."""
    console_main(run)


if __name__ == "__main__":
    main()
