"""``twistd sixchat``: run a person's SixChat agent from a profile folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.python import usage

from common.cliutil import EndpointOptions, check_endpoint
from common.endpoint import Endpoint, split_host_port
from common.pki.keyfiles import KeyFileError
from common.profile import Profile, ProfileError, default_profile_path
from common.startup import ReportingParent, describe_start_failure, fail_start, own_pidfile
from irp.client import IRPError
from sixchat import DEFAULT_PORT
from sixchat.agent.service import Agent, AgentSettings
from sixchat.peer.verification import POLICIES
from sixid import DEFAULT_PORT as SIXID_PORT

#: twistd's pid file, in the profile folder (unless --pidfile is given).
PIDFILE = "agent.pid"


class Options(EndpointOptions):
    """Options of ``twistd sixchat``."""

    plugin = "sixchat"
    default_port = DEFAULT_PORT
    synopsis = "[--profile DIR] [options]"
    longdesc = (
        "Run your SixChat agent: it listens on TCP 4605 (IPv6 and IPv4), registers your"
        " addresses and presence with your IRP registry, delivers your messages end-to-end"
        " encrypted and keeps your history. Through your domain's intermediary it collects what"
        " was left for you while you were away, and leaves sealed messages for contacts who are"
        " offline at theirs. Drive it with the 'sixchat' command."
    )
    optParameters = [
        ["profile", "p", None, "Profile folder made by 'sixchat init' and 'sixchat enrol' (default: $IRP_PROFILE or"
         f" ~/.irp); twistd's pid file defaults to PROFILE/{PIDFILE}."],
        ["policy", None, "contacts", f"Who may connect to you: {', '.join(POLICIES)}."],
        ["ttl", None, 300, "Seconds your registered addresses stay valid (refreshed at half that).", int],
        ["undelivered-after", None, 300.0, "Seconds before an undeliverable message is reported.", float],
        ["handshakes-per-address", None, 20, "Incoming handshakes per IPv4 address or IPv6 /64 in 10 seconds.", int],
        ["max-handshakes", None, 64, "Incoming handshakes in progress at once, from everyone.", int],
        ["stranger-messages", None, 100, "With --policy anyone: messages one non-contact may have stored.", int],
        ["stranger-bytes", None, 1 << 20, "With --policy anyone: bytes of text one non-contact may have stored.", int],
        ["sixid-server", None, None, "Your domain's sixid server HOST[:PORT] (default: your registry's host on port"
         " 4606); implies --sixid."],
    ]
    optFlags = [
        ["no-register", None, "Do not publish addresses with the registry."],
        ["relay", None, "Reserve a relay port at your domain's intermediary and publish it (reachable behind NAT)."],
        ["no-listen", None, "Accept no direct connection (as behind NAT): reachable only through the relay (implies --relay)."],
        ["no-intermediary", None, "Use no intermediary: no store and forward, no scheduled messages, no relay."],
        ["sixid", None, "Also publish your addresses under your device ID ('sixchat id') at your domain's sixid server"
         " (certified by your certificate; refreshed every 30 minutes, withdrawn when the agent stops)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["metrics-listen"] = []

    def opt_metrics_listen(self, description: str) -> None:
        """Endpoint serving the agent's Prometheus metrics over plain HTTP at /metrics (repeatable; off by default), e.g. tcp:9605:interface=127.0.0.1."""
        self["metrics-listen"].append(check_endpoint(description))

    def postOptions(self) -> None:
        """Check the options (the profile is checked by makeService)."""
        self["profile"] = os.path.abspath(self["profile"] or default_profile_path())
        if self["policy"] not in POLICIES:
            raise usage.UsageError(f"--policy must be one of {', '.join(POLICIES)}")
        if self["ttl"] < 30:
            raise usage.UsageError("--ttl must be at least 30 seconds")
        for name in ("handshakes-per-address", "max-handshakes", "stranger-messages", "stranger-bytes"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["undelivered-after"] <= 0:
            raise usage.UsageError("--undelivered-after must be positive")
        own_pidfile(self, os.path.join(self["profile"], PIDFILE))
        if self["no-listen"]:
            if self["listen"] or self["advertise"]:
                raise usage.UsageError("--no-listen excludes --listen and --advertise")
            if self["no-intermediary"]:
                raise usage.UsageError("--no-listen needs the intermediary's relay: leave out --no-intermediary")
            self["relay"] = True
        elif self["relay"] and self["no-intermediary"]:
            raise usage.UsageError("--relay needs the intermediary: leave out --no-intermediary")
        if self["sixid-server"] is not None:
            try:
                self["sixid-server"] = split_host_port(self["sixid-server"], SIXID_PORT)
            except ValueError as error:
                raise usage.UsageError(f"--sixid-server: {error}") from None
            self["sixid"] = True
        if self["sixid"] and self["no-register"]:
            raise usage.UsageError("--sixid publishes the addresses the agent registers: leave out --no-register")
        if not self["listen"] and not self["no-listen"]:
            self["listen"] = [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"]

    def settings(self) -> AgentSettings:
        """The agent settings these options describe."""
        advertise: list[Endpoint] | None = self["advertise"] or None
        return AgentSettings(
            profile_dir=self["profile"],
            listen=self["listen"],
            advertise=advertise,
            policy=self["policy"],
            register_ttl=self["ttl"],
            undelivered_after=self["undelivered-after"],
            register=not self["no-register"],
            handshakes_per_address=self["handshakes-per-address"],
            max_handshakes_in_progress=self["max-handshakes"],
            unknown_peer_messages=self["stranger-messages"],
            unknown_peer_bytes=self["stranger-bytes"],
            intermediary=not self["no-intermediary"],
            relay=self["relay"],
            sixid=bool(self["sixid"]),
            sixid_server=self["sixid-server"],
            metrics_listen=self["metrics-listen"],
        )


def makeService(options: Options, reactor: Any = None, at_exit: Callable[..., Any] | None = None) -> service.IService:
    """Build the agent service.

    A profile that cannot be used ends ``twistd`` with one line (no usage text); an agent
    that cannot start (its port is taken) prints one line, stops and exits non-zero
    (``at_exit`` registers that exit; default :func:`atexit.register`).
    """
    profile = Profile(options["profile"], "sixchat")
    try:
        profile.identity()
        profile.credentials()
    except (ProfileError, IRPError, KeyFileError, ValueError, OSError) as error:
        raise SystemExit(f"twistd sixchat: {error}") from None
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    agent = Agent(options.settings(), reactor)
    try:
        agent.load_credentials()
    except Exception as error:  # noqa: BLE001 - a readable message instead of a traceback
        raise SystemExit(f"twistd sixchat: cannot load your credentials: {error}") from None
    parent = ReportingParent.for_options(options)
    agent.setServiceParent(parent)
    if agent.metrics.endpoint.descriptions:  # a metrics port in use is reported too
        agent.metrics.endpoint.setServiceParent(parent)

    def start_failed(failure: Any) -> None:
        # Already logged by the agent; an agent that cannot run must not leave twistd idle.
        fail_start(reactor, "twistd sixchat", describe_start_failure(failure.value), at_exit=at_exit)

    agent.ready.addErrback(start_failed)
    return parent
