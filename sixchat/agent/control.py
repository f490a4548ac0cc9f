"""The agent's local control socket: how the ``sixchat`` command drives a running agent.

A UNIX socket in the profile (mode 0600, in a 0700 folder; connections from any other user
id are refused by checking the peer's credentials). One JSON object per line each way:

    -> {"id": 1, "op": "send", "to": "bob@example.org", "text": "hi"}
    <- {"id": 1, "ok": true, "result": {"id": "<message id>"}}
    <- {"id": 2, "ok": false, "error": "bob@example.org is not a contact", "name": "..."}
    <- {"event": "receipt", "id": "<message id>", "to": "bob@example.org"}   (after subscribe)

Operations: status (with the outgoing queue), send ("to": user@domain or a device's
ID@domain, parsed by :func:`sixchat.recipients.parse_recipient`; "at": Unix seconds to
deliver at; the result's "to" is the user the message is for), cancel ("message": its id),
contacts (presence asked of the registry first unless "fresh": false), add-contact,
remove-contact, block, unblock, history, lookup, find (a device's verified sixid record:
"who": ID@domain), reload (take up the profile's renewed certificate now), subscribe.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from common.factory import QuietFactory
from common.identity import Identity
from common.pki.keyfiles import ensure_private_directory, parse_fingerprint
from irp.client import IRPError
from sixchat import errors
from sixchat.recipients import InvalidRecipient, Recipient, parse_recipient
from sixid.ids import SixIdAddress

log = Logger()

MAX_LINE = 1024 * 1024
SOCKET_NAME = "agent.sock"
_UNIX_PATH_LIMIT = 100


def control_socket_path(profile_dir: str) -> str:
    """Where the agent of ``profile_dir`` listens (a short private path if the profile's is
    too long for a UNIX socket)."""
    path = os.path.join(os.path.abspath(profile_dir), SOCKET_NAME)
    if len(path.encode()) <= _UNIX_PATH_LIMIT:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join("/tmp", f"sixchat-{os.getuid()}")
    digest = hashlib.sha256(os.path.abspath(profile_dir).encode()).hexdigest()[:20]
    return os.path.join(runtime, f"{digest}.sock")


class ControlError(Exception):
    """A control request failed; ``name`` is a stable identifier."""

    def __init__(self, message: str, name: str = "control-error") -> None:
        super().__init__(message)
        self.name = name


def _recipient(value: Any) -> Recipient:
    try:
        return parse_recipient(str(value))
    except InvalidRecipient as error:
        raise ControlError(str(error), "invalid-identity") from None


def _identity(value: Any) -> Identity:
    recipient = _recipient(value)
    if not isinstance(recipient, Identity):
        raise ControlError(f"{value} is a device ID: this needs the user (user@domain); 'find' names them", "invalid-identity")
    return recipient


def _device(value: Any) -> SixIdAddress:
    recipient = _recipient(value)
    if not isinstance(recipient, SixIdAddress):
        raise ControlError(f"{recipient} is a user, not a device ID@domain", "invalid-identity")
    return recipient


def _integer(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ControlError(f"{name} must be a whole number", "bad-request") from None


def _fingerprints(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ControlError("fingerprints must be a list", "bad-request")
    try:
        return [parse_fingerprint(str(item)) for item in value]
    except ValueError as error:
        raise ControlError(str(error), "bad-request") from None


class ControlServerProtocol(LineOnlyReceiver):
    """One local client of the agent."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, agent: Any, clients: set[ControlServerProtocol] | None = None) -> None:
        self.agent = agent
        self._unsubscribe: Callable[[], None] | None = None
        self._clients = clients if clients is not None else set()

    def connectionMade(self) -> None:
        """Refuse other users (SO_PEERCRED)."""
        self._clients.add(self)
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        try:
            credentials = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", credentials)
        except (OSError, AttributeError):
            uid = os.getuid()
        if uid != os.getuid():
            log.warn("Refused a control connection from user id {uid}", uid=uid)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Stop the event stream."""
        self._clients.discard(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def lineLengthExceeded(self, line: bytes) -> None:
        """Refuse oversized requests."""
        self._send({"id": None, "ok": False, "error": "request too long", "name": "too-long"})
        self.transport.loseConnection()  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        """Run one request."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send({"id": None, "ok": False, "error": "requests are JSON objects, one per line", "name": "bad-request"})
            return
        request_id = request.get("id")
        result = Deferred.fromCoroutine(self._dispatch(request))
        result.addCallbacks(
            lambda value: self._send({"id": request_id, "ok": True, "result": value}),
            lambda failure: self._failed(failure, request_id),
        )

    def _failed(self, failure: Failure, request_id: Any) -> None:
        error = failure.value
        if isinstance(error, (errors.SixChatError, IRPError)):
            self._send({"id": request_id, "ok": False, "error": error.message, "name": error.name})
        elif isinstance(error, ControlError):
            self._send({"id": request_id, "ok": False, "error": str(error), "name": error.name})
        else:
            log.failure("Control request failed", failure)
            self._send({"id": request_id, "ok": False, "error": "the agent failed; see its log", "name": "internal-error"})

    def _send(self, data: dict[str, Any]) -> None:
        if self.transport is not None:
            self.sendLine(json.dumps(data, separators=(",", ":")).encode("utf-8"))

    async def _dispatch(self, request: dict[str, Any]) -> Any:
        if request.get("op") == "subscribe":
            if self._unsubscribe is None:
                self._unsubscribe = self.agent.subscribe(self._send)
            return True
        return await run_command(self.agent, request)


async def run_command(agent: Any, request: dict[str, Any]) -> Any:
    """Run one control request (other than subscribe) against ``agent``; return its result."""
    store = agent.store
    op = request.get("op")
    if op == "status":
        status = agent.status()
        status["queue"] = [] if store is None else [_queue_json(message) for message in await store.pending()]
        return status
    if op == "cancel":
        message_id = str(request.get("message", ""))
        cancelled = await agent.cancel(message_id)
        if cancelled is None:
            raise ControlError(f"no queued message has the id {message_id!r} (see 'sixchat status')", "not-found")
        return {"id": cancelled.id, "to": str(cancelled.peer), "state": "cancelled", "was": cancelled.state}
    if op == "reload":
        changed = agent.reload_credentials(force=True)
        return {"changed": changed, "fingerprint": agent.credentials.fingerprint}
    if op == "send":
        at = request.get("at")
        deliver_at = None if at is None else _integer(at, "at")
        message = await agent.send_text(_recipient(request.get("to")), str(request.get("text", "")), deliver_at)
        return {"id": message.id, "deliver_at": message.deliver_at, "to": str(message.peer)}
    if op == "contacts":
        if request.get("fresh", True) and agent.directory is not None:
            await agent.refresh_presence()
        return [_contact_json(contact) for contact in await store.contacts()]
    if op == "add-contact":
        who = _identity(request.get("who"))
        pins = _fingerprints(request.get("fingerprints", []))
        current = sorted(await agent.expected_fingerprints(who)) if request.get("check", True) else []
        if request.get("pin") and not pins:
            pins = current
        contact = await store.add_contact(who, str(request.get("name", "")), pins)
        return {"contact": _contact_json(contact), "registry_fingerprints": current}
    if op in ("remove-contact", "block", "unblock"):
        who = _identity(request.get("who"))
        if op == "remove-contact":
            return await store.remove_contact(who)
        if op == "block":
            await agent.block(who)
        else:
            await store.set_blocked(who, False)
        return True
    if op == "history":
        peer = request.get("who")
        limit = _integer(request.get("limit", 50), "limit")
        rows = await store.history(None if peer is None else _identity(peer), max(1, min(limit, 1000)))
        return [_message_json(message) for message in rows]
    if op == "lookup":
        who = _identity(request.get("who"))
        record = await agent.directory.lookup(who)
        current = record.is_current(agent.clock.seconds())
        return {
            "who": str(who),
            "presence": record.presence if current else "offline",
            "endpoints": [[endpoint.address, endpoint.port] for endpoint in record.endpoints] if current else [],
        }
    if op == "find":
        device = _device(request.get("who"))
        found = await agent.sixid.find(device, fresh=True)
        return {
            "who": str(device),
            "grouped": f"{device.sixid.grouped()}@{device.domain}",
            "owner": str(found.owner),
            "endpoints": [[endpoint.address, endpoint.port] for endpoint in found.endpoints],
            "expires": found.expires,
        }
    raise ControlError(f"unknown operation {op!r}", "unknown-operation")


def _contact_json(contact: Any) -> dict[str, Any]:
    return {
        "who": str(contact.identity),
        "name": contact.display_name,
        "fingerprints": list(contact.fingerprints),
        "blocked": contact.blocked,
        "presence": contact.presence,
        "last_address": None if contact.last_endpoint is None else [contact.last_endpoint.address, contact.last_endpoint.port],
    }


def _message_json(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "peer": str(message.peer),
        "direction": message.direction,
        "text": message.body,
        "sent": message.sent_at,
        "state": message.state,
        "reason": message.reason,
        "deliver_at": message.deliver_at,
    }


def _queue_json(message: Any) -> dict[str, Any]:
    return {"id": message.id, "to": str(message.peer), "text": message.body, "created": message.created_at, "state": message.state, "reason": message.reason, "deliver_at": message.deliver_at}


class ControlFactory(QuietFactory):
    """Makes the control connections of one agent and can close them all."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.clients: set[ControlServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlServerProtocol:
        """A protocol for one local client."""
        return ControlServerProtocol(self.agent, self.clients)

    def disconnect_all(self) -> None:
        """Close every control connection (the agent is stopping)."""
        for client in list(self.clients):
            transport: Any = client.transport
            transport.loseConnection()


async def listen_control(agent: Any, reactor: Any, profile_dir: str) -> IListeningPort:
    """Listen on the profile's control socket (replacing a stale one); the port's
    ``factory`` is a :class:`ControlFactory`."""
    path = control_socket_path(profile_dir)
    ensure_private_directory(os.path.dirname(path))
    endpoint = UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True)
    port: IListeningPort = await endpoint.listen(ControlFactory(agent))
    return port


class ControlClientProtocol(LineOnlyReceiver):
    """The command's side: requests with replies, plus an event callback."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self.next_id = 1
        self.waiting: dict[int, Deferred[Any]] = {}
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        self.closed: Deferred[None] = Deferred()

    def call(self, op: str, **arguments: Any) -> Deferred[Any]:
        """Send a request; fire with its result or fail with ControlError."""
        request_id = self.next_id
        self.next_id += 1
        waiter: Deferred[Any] = Deferred()
        self.waiting[request_id] = waiter
        self.sendLine(json.dumps({"id": request_id, "op": op, **arguments}).encode("utf-8"))
        return waiter

    def lineReceived(self, line: bytes) -> None:
        """Dispatch replies and events."""
        try:
            data = json.loads(line)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if "event" in data:
            self.on_event(data)
            return
        request_id = data.get("id")
        waiter = self.waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if waiter is None:
            return
        if data.get("ok"):
            waiter.callback(data.get("result"))
        else:
            waiter.errback(ControlError(str(data.get("error")), str(data.get("name"))))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Fail outstanding requests."""
        for waiter in self.waiting.values():
            waiter.errback(ControlError("the agent closed the control connection", "connection-lost"))
        self.waiting.clear()
        if not self.closed.called:
            self.closed.callback(None)


async def connect_control(reactor: Any, profile_dir: str) -> ControlClientProtocol | None:
    """Connect to the running agent of ``profile_dir``, or return None if none runs."""
    path = control_socket_path(profile_dir)
    if not os.path.exists(path):
        return None
    endpoint = UNIXClientEndpoint(reactor, path, timeout=5)
    try:
        protocol: ControlClientProtocol = await endpoint.connect(QuietFactory.forProtocol(ControlClientProtocol))
    except Exception:  # noqa: BLE001 - a stale socket means no agent runs
        return None
    return protocol



class InProcessControl:
    """The control interface of an agent running in this process (same calls as
    :class:`ControlClientProtocol`)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        self._unsubscribe: Callable[[], None] | None = None

    def call(self, op: str, **arguments: Any) -> Deferred[Any]:
        """Run a request against the in-process agent."""
        if op == "subscribe":
            if self._unsubscribe is None:
                self._unsubscribe = self.agent.subscribe(lambda event: self.on_event(event))
            return Deferred.fromCoroutine(_constant(True))

        async def run() -> Any:
            try:
                return await run_command(self.agent, {"op": op, **arguments})
            except (errors.SixChatError, IRPError) as error:
                raise ControlError(error.message, error.name) from None

        return Deferred.fromCoroutine(run())


async def _constant(value: Any) -> Any:
    return value
