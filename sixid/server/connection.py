"""sixid's connection core: the generic :class:`common.rpc.connection.Connection` speaking
:mod:`sixid.wire` with the server's fast answers (:data:`CODEC`) and :mod:`sixid.errors`.

The codec answers a look-up, a registration and a watch from the record's canonical
base64 without building any tree (:func:`sixid.wire.encode_record_response`), and sends a
push encoded once for all its watchers as it is (bytes); every other result and event goes
through :mod:`sixid.wire`'s own encoders.
"""

from __future__ import annotations

from typing import Any

from common.rpc import connection as rpc
from sixid import errors, wire
from sixid.server.operations import RecordAnswer, TextLookup, WatchingAnswer, default_connection_limits
from sixid.wire import match_lookup

__all__ = ["CODEC", "Connection", "ServerCodec", "default_connection_limits"]


class ServerCodec:
    """:mod:`sixid.wire` with the server's fast answers (see the module docs)."""

    Refused = wire.Refused

    @staticmethod
    def parse_request(payload: bytes) -> wire.Request | TextLookup:
        """One request (a plain look-up is read without the XML parser)."""
        fast = match_lookup(payload)
        if fast is not None:
            return TextLookup(*fast)
        return wire.parse_request(payload)

    @staticmethod
    def encode_response(request_id: int, result: Any) -> bytes:
        """The answer to ``request_id``."""
        kind = type(result)
        if kind is RecordAnswer:
            return wire.encode_record_response(request_id, result.record_b64)
        if kind is WatchingAnswer:
            return wire.encode_watching_response(request_id, result.record_b64)
        return wire.encode_response(request_id, result)

    @staticmethod
    def encode_error(request_id: int | None, error: errors.SixidError) -> bytes:
        """The refusal of ``request_id`` (None: of the connection)."""
        return wire.encode_error(request_id, error)

    @staticmethod
    def encode_push(event: bytes | wire.Event) -> bytes:
        """A push: bytes encoded already (once for every watcher), or an event."""
        if type(event) is bytes:
            return event
        return wire.encode_push(event)  # type: ignore[arg-type]


CODEC = ServerCodec()


class Connection(rpc.Connection):
    """The connection core speaking sixid. ``peer_host`` names the client in logs."""

    def __init__(self, limits: rpc.ConnectionLimits, peer_host: str) -> None:
        super().__init__(limits, peer_host, CODEC, errors)
