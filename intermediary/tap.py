"""``twistd intermediary``: run a domain's SixChat intermediary from a profile folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.python import usage

from common.cliutil import EndpointOptions
from common.pki.keyfiles import KeyFileError
from common.profile import Profile, ProfileError, default_profile_path
from common.startup import ReportingParent, describe_start_failure, fail_start, own_pidfile
from intermediary import ACCOUNT, DEFAULT_JOIN_PORT, DEFAULT_PORT
from intermediary.server.connection import ConnectionLimits
from intermediary.server.operations import Limits
from intermediary.server.service import IntermediaryService, IntermediarySettings
from intermediary.server.store import Quotas
from irp.client import IRPError

#: twistd's pid file, in the profile folder (unless --pidfile is given).
PIDFILE = "intermediary.pid"


def _port_range(text: str) -> range:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise usage.UsageError(f"--relay-ports must be LOW-HIGH, not {text!r}") from None
    if not 1 <= first <= last <= 65535:
        raise usage.UsageError("--relay-ports must be a range of ports from 1 to 65535, LOW-HIGH")
    return range(first, last + 1)


class Options(EndpointOptions):
    """Options of ``twistd intermediary``."""

    plugin = "intermediary"
    default_port = DEFAULT_PORT
    synopsis = "[--profile DIR] [options]"
    longdesc = (
        "Run your domain's SixChat intermediary as the registry account"
        f" '{ACCOUNT}@DOMAIN' of a profile folder (made with 'irp init --user {ACCOUNT}' and"
        " 'irp enrol'). It stores sealed messages for your domain's users until their"
        " agents fetch them, hands out their prekeys to senders of trusted domains, and"
        " relays connections for agents that cannot accept any. It registers its address"
        " with your registry so that agents find it."
    )
    optParameters = [
        ["profile", "p", None, f"Profile folder of {ACCOUNT}@DOMAIN (default: $IRP_PROFILE or ~/.irp); twistd's pid file"
         f" defaults to PROFILE/{PIDFILE}."],
        ["database", None, None, "Database URL: a SQLite file (default PROFILE/intermediary.sqlite3) or postgresql://..."],
        ["relay-ports", None, "46050-46099", "Ports the relay may give agents, LOW-HIGH."],
        ["relay-interface", None, "::", "Address the relay ports and the join port listen on."],
        ["relay-join-port", None, DEFAULT_JOIN_PORT, "Port (plain TCP) where agents join their relay circuits.", int],
        ["relay-address", None, None, "Relay address given to agents (default: the interface, or the first --advertise"
         " address, or the host's primary address)."],
        ["ttl", None, 300, "Seconds the registered address stays valid (refreshed at half that).", int],
        ["max-messages", None, 1000, "Messages one mailbox may hold.", int],
        ["max-mailbox-bytes", None, 50 * 1024 * 1024, "Bytes one mailbox may hold.", int],
        ["max-sender-messages", None, 200, "Messages one sender may have stored for one recipient.", int],
        ["max-sender-bytes", None, 10 * 1024 * 1024, "Bytes one sender may have stored for one recipient.", int],
        ["deposits-per-hour", None, 600, "Messages one sender may deposit per hour.", int],
        ["fetches-per-hour", None, 60, "Prekeys one requester may fetch per user per hour.", int],
        ["max-lifetime", None, 30, "Days a message may be stored at most.", int],
        ["idle-timeout", None, 600.0, "Seconds an idle connection (no subscription or reservation) is kept.", float],
        ["connections-per-address", None, 32, "Connections per IPv4 address or IPv6 /64.", int],
    ]
    optFlags = [["no-register", None, "Do not register the address with the registry."]]

    def postOptions(self) -> None:  # noqa: N802
        """Check the options (the profile is checked by makeService)."""
        self["profile"] = os.path.abspath(self["profile"] or default_profile_path())
        self["relay-ports"] = _port_range(str(self["relay-ports"]))
        if not 1 <= self["relay-join-port"] <= 65535:
            raise usage.UsageError("--relay-join-port must be a port from 1 to 65535")
        if self["relay-join-port"] in self["relay-ports"]:
            raise usage.UsageError("--relay-join-port must be outside --relay-ports")
        if self["ttl"] < 30:
            raise usage.UsageError("--ttl must be at least 30 seconds")
        for name in ("max-messages", "max-mailbox-bytes", "max-sender-messages", "max-sender-bytes",
                     "deposits-per-hour", "fetches-per-hour", "max-lifetime", "connections-per-address"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["idle-timeout"] <= 0:
            raise usage.UsageError("--idle-timeout must be positive")
        own_pidfile(self, os.path.join(self["profile"], PIDFILE))
        if not self["listen"]:
            self["listen"] = [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"]

    def settings(self) -> IntermediarySettings:
        """The settings these options describe."""
        return IntermediarySettings(
            profile_dir=self["profile"],
            listen=self["listen"],
            database=self["database"],
            advertise=self["advertise"] or None,
            relay_ports=self["relay-ports"],
            relay_interface=self["relay-interface"],
            relay_join_port=self["relay-join-port"],
            relay_address=self["relay-address"],
            register=not self["no-register"],
            register_ttl=self["ttl"],
            quotas=Quotas(
                recipient_messages=self["max-messages"],
                recipient_bytes=self["max-mailbox-bytes"],
                pair_messages=self["max-sender-messages"],
                pair_bytes=self["max-sender-bytes"],
            ),
            limits=Limits(
                max_lifetime=self["max-lifetime"] * 86400,
                fetches_per_hour=self["fetches-per-hour"],
                deposits_per_hour=self["deposits-per-hour"],
            ),
            connection_limits=ConnectionLimits(
                idle_timeout=self["idle-timeout"], max_connections_per_address=self["connections-per-address"]
            ),
        )


def makeService(options: Options, reactor: Any = None, at_exit: Callable[..., Any] | None = None) -> service.IService:  # noqa: N802
    """Build the intermediary service (a profile that cannot be used ends twistd with one line)."""
    profile = Profile(options["profile"], "irp")
    try:
        identity = profile.identity()
        profile.credentials()
    except (ProfileError, IRPError, KeyFileError, ValueError, OSError) as error:
        raise SystemExit(f"twistd intermediary: {error}") from None
    if identity.username != ACCOUNT:
        raise SystemExit(
            f"twistd intermediary: the profile is {identity}'s; the intermediary runs as {ACCOUNT}@{identity.domain}"
            f" (irp --profile DIR init ... --user {ACCOUNT}, then irp --profile DIR enrol)"
        )
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    intermediary = IntermediaryService(options.settings(), reactor)
    parent = ReportingParent.for_options(options)
    intermediary.setServiceParent(parent)

    def start_failed(failure: Any) -> None:
        fail_start(reactor, "twistd intermediary", describe_start_failure(failure.value), at_exit=at_exit)

    intermediary.ready.addErrback(start_failed)
    return parent
