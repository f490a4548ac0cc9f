"""A sender and a recipient working an intermediary that gets killed (run as a script).

``python mailbox_driver.py SENDER_PROFILE RECIPIENT_PROFILE COUNT`` (run by path, so that it
imports the installed packages): the recipient publishes a last-resort prekey and keeps a
subscription, acknowledging every delivery once it has opened it and judged it with a
:class:`~sixchat.sealed.SequenceTracker`; the sender seals ``COUNT`` messages to that prekey
and deposits them, eight at a time. Both reconnect whenever the connection ends (the test
SIGKILLs the intermediary), and a deposit whose answer did not come is deposited again with
the same bytes. Every event is one line on stdout, for the test to read and count::

    deposited I SERVER_ID           the deposit of message I was answered (durable)
    retry I                         the connection ended before the answer: again
    delivered I SERVER_ID VERDICT   pushed to the recipient; VERDICT new|gap|late|replay
    acked I SERVER_ID               the acknowledgement was answered (deleted)
    reconnected ROLE                a new connection after a loss
    done                            every message was accepted once and acknowledged

It exits 0 after ``done``, 1 on an unexpected error, 2 if a message was accepted twice.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.task import deferLater, react

from common.identity import Identity
from common.profile import Profile
from intermediary.client import IntermediaryClient, connect_intermediary
from intermediary.errors import IntermediaryError
from irp.client import Directory
from sixchat.handshake import LocalCredentials
from sixchat.sealed import LAST_RESORT, SequenceTracker, decode_prekey, make_prekey, open_sealed, seal

#: Seconds between attempts to reach the intermediary while it is down.
RECONNECT_DELAY = 0.2
#: Deposits in flight at once.
CONCURRENCY = 8


def say(line: str) -> None:
    """One event line, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Party:
    """One user's credentials, registry directory and (re)connection to the intermediary."""

    def __init__(self, reactor: Any, path: str, role: str) -> None:
        self.reactor = reactor
        self.role = role
        self.profile = Profile(path, "sixchat")
        self.identity = self.profile.identity()
        key, certificate, chain = self.profile.credentials()
        self.credentials = LocalCredentials(self.identity, certificate, chain, key)
        self.directory = Directory(reactor, self.profile, key, certificate, chain)
        self.client: IntermediaryClient | None = None
        self._connecting: Deferred[IntermediaryClient] | None = None
        self.connections = 0

    async def lookup(self, identity: Identity) -> tuple[Any, set[str]]:
        return await self.directory.lookup(identity), await self.directory.certificate_fingerprints(identity)

    async def connected(self) -> IntermediaryClient:
        """The current connection, or a new one (retried until the intermediary answers;
        one attempt at a time, every caller waits for it)."""
        if self.client is not None:
            return self.client
        if self._connecting is None:
            self._connecting = Deferred.fromCoroutine(self._connect())
        waiter: Deferred[IntermediaryClient] = Deferred()
        self._connecting.addBoth(lambda result: (waiter.callback(result), result)[1])
        return await waiter

    async def _connect(self) -> IntermediaryClient:
        while self.client is None:
            try:
                key, certificate, chain = self.profile.credentials()
                self.client = await connect_intermediary(
                    self.reactor, self.identity.domain, directory_lookup=self.lookup,
                    key=key, certificate=certificate, chain=chain, roots=self.profile.trusted_roots(),
                )
            except (IntermediaryError, OSError):
                await deferLater(self.reactor, RECONNECT_DELAY, lambda: None)
                continue
            self.connections += 1
            if self.connections > 1:
                say(f"reconnected {self.role}")
            self.client.when_lost().addBoth(self._lost, self.client)
        self._connecting = None
        return self.client

    def _lost(self, _: object, client: IntermediaryClient) -> None:
        self.forget(client)

    def forget(self, client: IntermediaryClient) -> None:
        """``client``'s connection is gone: the next call makes a new one."""
        if self.client is client:
            self.client = None


async def run(reactor: Any, sender_path: str, recipient_path: str, count: int) -> int:
    sender = Party(reactor, sender_path, "sender")
    recipient = Party(reactor, recipient_path, "recipient")
    now = int(reactor.seconds())
    prekey, secret = make_prekey(recipient.credentials, kind=LAST_RESORT, now=now, lifetime=7 * 86400)
    while True:
        try:
            await (await recipient.connected()).publish_prekeys([_encoded(prekey)])
            break
        except IntermediaryError:
            await deferLater(reactor, RECONNECT_DELAY, lambda: None)
    # Sealed once, before any deposit: a retry sends exactly the same bytes.
    envelopes = [
        seal(sender.credentials, recipient=recipient.identity, prekey=decode_prekey(_encoded(prekey)), payload=f"message {index}".encode(),
             message_id=str(uuid.uuid4()), seq=index + 1, sent_at=now, expires_at=now + 86400)
        for index in range(count)
    ]
    tracker = SequenceTracker()
    accepted: set[int] = set()
    finished: Deferred[int] = Deferred()

    def delivered(delivery: Any) -> None:
        Deferred.fromCoroutine(receive(delivery)).addErrback(finished.errback)

    async def receive(delivery: Any) -> None:
        opened = open_sealed(delivery.envelope, recipient=recipient.identity, secret=secret, now=int(reactor.seconds()))
        index = opened.seq - 1
        verdict = tracker.accept(opened.sender, opened.seq, opened.message_id)
        say(f"delivered {index} {delivery.id} {verdict.outcome.name.lower()}")
        if verdict.accepted:
            if index in accepted and not finished.called:
                finished.callback(2)
                return
            accepted.add(index)
        client = recipient.client
        if client is None:
            return  # pushed again on the next subscription
        try:
            await client.ack(delivery.id)
        except IntermediaryError:
            return
        say(f"acked {index} {delivery.id}")
        if len(accepted) == count and not finished.called:
            finished.callback(0)

    async def subscribe_forever() -> None:
        while not finished.called:
            client = await recipient.connected()
            try:
                await client.subscribe(delivered)
            except IntermediaryError:
                recipient.forget(client)
                await deferLater(reactor, RECONNECT_DELAY, lambda: None)
                continue
            await client.when_lost()
            recipient.forget(client)

    async def deposit(index: int) -> None:
        while True:
            client = await sender.connected()
            try:
                server_id = await client.deposit(recipient.identity, envelopes[index], now + 86400)
            except IntermediaryError as error:
                if error.name == "quota-exceeded":
                    # The recipient's mailbox is full until it drains (its deliveries lag
                    # when the machine is busy): a sender waits and deposits again.
                    say(f"retry {index} (mailbox full)")
                    await deferLater(reactor, RECONNECT_DELAY, lambda: None)
                    continue
                if error.name not in ("connection-lost", "unavailable", "timeout"):
                    raise
                sender.forget(client)
                say(f"retry {index}")
                await deferLater(reactor, RECONNECT_DELAY, lambda: None)
                continue
            say(f"deposited {index} {server_id}")
            return

    Deferred.fromCoroutine(subscribe_forever()).addErrback(lambda failure: finished.called or finished.errback(failure))
    limit = DeferredSemaphore(CONCURRENCY)
    await DeferredList([limit.run(lambda i=index: Deferred.fromCoroutine(deposit(i))) for index in range(count)], fireOnOneErrback=True, consumeErrors=True)
    status = await finished
    if status == 0:
        say("done")
    for party in (sender, recipient):
        if party.client is not None:
            await party.client.close()
        await party.directory.close()
    return status


def _encoded(prekey: Any) -> bytes:
    from sixchat.sealed import encode_prekey

    return encode_prekey(prekey)


def main(reactor: Any, sender_path: str, recipient_path: str, count: str) -> Deferred[None]:
    async def go() -> None:
        status = await run(reactor, sender_path, recipient_path, int(count))
        if status:
            raise SystemExit(status)

    return Deferred.fromCoroutine(go())


if __name__ == "__main__":
    react(main, sys.argv[1:4])
