"""The SixChat agent's Prometheus metrics (``twistd sixchat --metrics-listen``).

The agent counts in plain integers (:class:`AgentTally`, kept whether or not metrics are
served: counting costs next to nothing) at its hook points: a handshake's end (established,
or failed with the SixChat error's name) and a chat message sent on a session. The rest
comes from the agent's own events (:meth:`~sixchat.agent.service.Agent.subscribe`):
messages received, deposited at an intermediary, confirmed by a receipt, and given up. At
each scrape :class:`AgentCollector` reads the tally and the agent's state (connections and
sessions open, whether the registry took the last registration, whether the intermediary
is connected). No label holds a peer's name or address; outcome labels are SixChat error
names. Every name is listed in docs/sixchat.rst, section "Metrics".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred

from common.metrics import MetricsEndpoint, new_registry
from common.version import VERSION

#: The outcome of a handshake that established a session.
ESTABLISHED = "established"
#: The outcome of a handshake that ended without an error (closed by either side).
CLOSED = "closed"
#: The agent's events counted, and the counter each one moves.
COUNTED_EVENTS = {
    "message": "received",
    "stored": "deposited",
    "scheduled": "deposited",
    "receipt": "receipts",
    "undelivered": "undelivered",
}


@dataclass
class AgentTally:
    """What the agent counts (see the module)."""

    #: Handshakes by (direction: incoming or outgoing, outcome).
    handshakes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Chat messages sent on sessions.
    sent: int = 0
    #: Chat messages received, by path (direct or intermediary).
    received: dict[str, int] = field(default_factory=dict)
    #: Chat messages deposited at an intermediary (stored or scheduled there).
    deposited: int = 0
    #: Receipts received for our messages.
    receipts: int = 0
    #: Messages given up (undelivered).
    undelivered: int = 0

    def handshake_done(self, outgoing: bool, outcome: str) -> None:
        """A handshake ended: :data:`ESTABLISHED`, :data:`CLOSED` or an error name."""
        key = ("outgoing" if outgoing else "incoming", outcome)
        self.handshakes[key] = self.handshakes.get(key, 0) + 1

    def event(self, event: dict[str, Any]) -> None:
        """Count one of the agent's events (a listener of ``Agent.subscribe``)."""
        counter = COUNTED_EVENTS.get(str(event.get("event")))
        if counter is None:
            return
        if counter == "received":
            via = "intermediary" if event.get("via") == "intermediary" else "direct"
            self.received[via] = self.received.get(via, 0) + 1
        else:
            setattr(self, counter, getattr(self, counter) + 1)


class AgentCollector(Collector):
    """Read at each scrape (see the module)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        """The metric families (see docs/sixchat.rst, "Metrics")."""
        agent = self.agent
        tally: AgentTally = agent.tally
        yield GaugeMetricFamily("sixchat_connections_open", "Peer connections open now (handshaking or established).", value=len(agent.connections))
        yield GaugeMetricFamily(
            "sixchat_sessions_open",
            "Established sessions with peers now.",
            value=sum(1 for connection in agent.sessions.values() if connection.is_established),
        )
        handshakes = CounterMetricFamily(
            "sixchat_handshakes",
            "Handshakes ended, by direction and outcome (established, closed, or the SixChat error).",
            labels=["direction", "outcome"],
        )
        for direction in ("incoming", "outgoing"):
            handshakes.add_metric([direction, ESTABLISHED], tally.handshakes.get((direction, ESTABLISHED), 0))
        for (direction, outcome), count in sorted(tally.handshakes.items()):
            if outcome != ESTABLISHED:
                handshakes.add_metric([direction, outcome], count)
        yield handshakes
        yield CounterMetricFamily("sixchat_messages_sent", "Chat messages sent on sessions.", value=tally.sent)
        received = CounterMetricFamily("sixchat_messages_received", "Chat messages received, by path.", labels=["via"])
        for via in ("direct", "intermediary"):
            received.add_metric([via], tally.received.get(via, 0))
        yield received
        yield CounterMetricFamily("sixchat_messages_deposited", "Chat messages left at an intermediary.", value=tally.deposited)
        yield CounterMetricFamily("sixchat_receipts_received", "Receipts received for our messages.", value=tally.receipts)
        yield CounterMetricFamily("sixchat_delivery_failures", "Messages given up as undelivered.", value=tally.undelivered)
        if agent.settings.register:
            yield GaugeMetricFamily(
                "sixchat_registry_registered",
                "1 when the registry took the agent's last registration, else 0.",
                value=1 if agent.registration[0] else 0,
            )
        if agent.settings.intermediary and agent.settings.mailbox:
            yield GaugeMetricFamily(
                "sixchat_intermediary_connected",
                "1 while the agent is connected to its intermediary, else 0.",
                value=1 if str(agent.mailbox.state).startswith("connected") else 0,
            )


class AgentMetricsHost:
    """The agent's metrics, served on ``listen`` (nothing when empty)."""

    def __init__(self, agent: Any, listen: list[str]) -> None:
        self.agent = agent
        self.registry = new_registry()
        self.endpoint = MetricsEndpoint(agent.reactor, listen, self.registry, "SixChat agent")
        if listen:
            Info("sixchat_build", "The agent's version.", registry=self.registry).info({"version": VERSION})
            self.registry.register(AgentCollector(agent))

    def bind(self) -> None:
        """Bind the metrics ports (before the reactor runs)."""
        self.endpoint.bind()

    async def start(self) -> None:
        """Serve the metrics (nothing without a listen endpoint); raises
        CannotListenError when a port cannot be bound."""
        if not self.endpoint.descriptions:
            return
        await self.endpoint.start()

    def stop(self) -> Deferred[Any]:
        """Stop serving."""
        return self.endpoint.stop()
