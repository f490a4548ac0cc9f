"""sixid's Twisted protocol: a thin adapter from TLS bytes to the operations.

:class:`common.rpc.protocol.RpcProtocol` feeds the connection core
(:mod:`sixid.server.connection`) and performs its actions; this adapter adds what is
sixid's own: every client is anonymous (no certificate is asked for: the ID looked up
travels only inside TLS), requests run on :class:`~sixid.server.operations.Operations`,
the connection is a :class:`~sixid.server.watches.Watcher` whose pushes the watch hub
calls, and its watches end with it. A failure of the registry's database (its
``unavailable`` error) is answered as sixid's ``unavailable``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from common.errors import ProtocolError
from common.rpc.connection import ConnectionLimits
from common.rpc.protocol import RpcFactory, RpcProtocol
from sixid import errors, wire
from sixid.ids import SixId
from sixid.server.connection import CODEC
from sixid.server.operations import Operations, TextLookup, default_connection_limits
from sixid.server.store import StoredRecord

_OPERATION_NAMES: dict[type, str] = {
    TextLookup: "lookup",
    wire.Register: "register",
    wire.Lookup: "lookup",
    wire.Watch: "watch",
    wire.Unwatch: "unwatch",
    wire.Signer: "signer",
    wire.Ping: "ping",
}


class SixidProtocol(RpcProtocol):
    """One client connection (a watcher of the IDs it watches)."""

    factory: SixidFactory

    def run(self, request: wire.Request | TextLookup) -> Any:
        """Run ``request`` on the operations (a plain look-up straight away)."""
        if type(request) is TextLookup:
            return self.factory.operations.lookup(request.sixid)
        return self.factory.operations.run(self, request.operation)

    def who(self) -> str:
        """Every sixid client is anonymous (its address is logged beside)."""
        return "an anonymous client"

    def describe(self, request: wire.Request | TextLookup) -> str:
        """The operation's name (and ID: never key material)."""
        op = request.operation
        name = _OPERATION_NAMES.get(type(op), "request")
        sixid = getattr(op, "sixid", None)
        return name if sixid is None else f"{name} {sixid}"

    def refusal(self, failure: Failure) -> errors.SixidError | None:
        """sixid's errors as they are; the database's ``unavailable`` as sixid's."""
        if failure.check(errors.SixidError):
            return failure.value  # type: ignore[return-value]
        if failure.check(ProtocolError) and getattr(failure.value, "name", None) == "unavailable":
            return errors.Unavailable()
        return None

    def released(self) -> None:
        """The connection's watches end."""
        self.factory.operations.connection_lost(self)

    # -- the watcher ----------------------------------------------------------------------

    def set_watching(self, watching: bool) -> None:
        """Watching connections are kept open while they ping."""
        self._do(self.core.set_kept(watching))

    def changed(self, stored: StoredRecord) -> None:
        """Push a watched ID's new record."""
        self._do(self.core.push(self.factory.changed_push(stored)))

    def gone(self, sixid: str) -> None:
        """Push a watched ID's expiry."""
        self._do(self.core.push(wire.encode_gone_push(SixId.from_canonical(sixid))))


class SixidFactory(RpcFactory):
    """Builds :class:`SixidProtocol` connections sharing one set of operations."""

    protocol = SixidProtocol  # type: ignore[assignment]

    def __init__(self, operations: Operations, clock: IReactorTime, limits: ConnectionLimits | None = None) -> None:
        super().__init__(CODEC, errors, clock, limits or default_connection_limits())
        self.operations = operations
        self._last_changed: tuple[StoredRecord, bytes] | None = None

    def changed_push(self, stored: StoredRecord) -> bytes:
        """The ``<changed>`` push of ``stored``, encoded once for all its watchers."""
        last = self._last_changed
        if last is not None and last[0] is stored:
            return last[1]
        push = wire.encode_record_push(wire.record_base64(stored.record))
        self._last_changed = (stored, push)
        return push
