"""What the sender and the blocker see (issue 9, items 10, 12, 13 and 15): blocking ends a
session at once, a renewed certificate is taken up by the running agent, every undelivered
message says why, the queue can be seen and cancelled, and status and contacts tell the
truth. A real registry, agents on loopback, real SQLite files and keys."""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.profile import Profile
from sixchat.agent.control import ControlError, run_command
from test.sixchat.agent.helpers import ALICE, BOB, CAROL, AgentTestCase, log_text

NOBODY = Identity.parse("nobody@example.org")


class BlockTests(AgentTestCase):
    async def test_block_ends_the_open_session(self) -> None:
        """Alice blocks Bob while their session is up: it ends at once, and what Bob sends
        next is refused (not stored, not receipted) and reported to him as refused."""
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(bob, bob_events, alice_events, ALICE, "before")
        await run_command(alice, {"op": "block", "who": str(BOB)})
        self.assertNotIn(BOB, alice.sessions)
        self.assertEqual(alice_events.matching(event="session", who=str(BOB), state="down")[-1]["reason"], "blocked")
        message = await bob.send_text(ALICE, "after the block")
        failed = await bob_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("refused", failed["reason"])
        self.assertEqual([text for _, text, _ in await self.history(alice, BOB)], ["before"])
        self.assertEqual(alice_events.matching(event="message", id=message.id), [])


class RenewalTests(AgentTestCase):
    async def test_running_agent_takes_up_a_renewed_certificate(self) -> None:
        """Alice renews (the old certificate is revoked as superseded) while her agent runs;
        her next session presents the new certificate without a restart."""
        alice, alice_events, bob, bob_events = await self.pair()
        await self.deliver(alice, alice_events, bob_events, BOB, "before")
        old = alice.credentials.fingerprint
        await self.renew("alice")
        for connection in list(alice.connections):
            connection.close("bye")
            await connection.when_lost()
        await self.deliver(alice, alice_events, bob_events, BOB, "after renewal")
        self.assertNotEqual(alice.credentials.fingerprint, old)
        self.assertEqual(bob.sessions[ALICE].session.peer_fingerprint, alice.credentials.fingerprint)  # type: ignore[union-attr]

    async def test_reload_through_the_control_socket(self) -> None:
        alice, _alice_events = await self.agent("alice")
        old = alice.credentials.fingerprint
        await self.renew("alice")
        result = await run_command(alice, {"op": "reload"})
        self.assertTrue(result["changed"])
        self.assertNotEqual(alice.credentials.fingerprint, old)
        self.assertEqual(alice.status()["fingerprint"], alice.credentials.fingerprint)

    async def test_log_says_the_peer_refused_our_certificate(self) -> None:
        """Bob's certificate is revoked and his profile still holds it: Alice refuses him,
        and Bob's log and his message say that it is his certificate that was refused."""
        alice, _alice_events, bob, bob_events = await self.pair()
        client = await self.registry.client(user=self.users["bob"])
        await client.revoke(self.users["bob"].serial, "key-compromise")
        with capturedLogs() as logs:
            message = await bob.send_text(ALICE, "am I still me?")
            failed = await bob_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("revoked", failed["reason"])
        lines = log_text(logs)
        self.assertTrue(any("refused our certificate" in line and "revoked" in line for line in lines), lines)

    async def renew(self, name: str) -> None:
        client = await self.registry.client(user=self.users[name])
        renewed = await client.renew(self.users[name].serial)
        assert renewed.certificate is not None
        Profile(self.paths[name]).save_credentials(None, [renewed.certificate, self.registry.ca.issuing_certificate])


class WhyNotDeliveredTests(AgentTestCase):
    async def test_unknown_user_fails_at_once(self) -> None:
        alice, alice_events = await self.agent("alice")
        message = await alice.send_text(NOBODY, "hello?")
        failed = await alice_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("no such user", failed["reason"])
        stored = await self.stored(alice, message.id)
        self.assertEqual((stored.state, stored.reason), ("undelivered", failed["reason"]))

    async def test_not_a_contact_is_reported_to_the_sender(self) -> None:
        alice, alice_events = await self.agent("alice")
        carol, carol_events = await self.agent("carol", contacts=("alice",))
        message = await carol.send_text(ALICE, "let me in")
        failed = await carol_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("not their contact", failed["reason"])
        self.assertEqual((await self.stored(carol, message.id)).reason, failed["reason"])
        history = await run_command(carol, {"op": "history", "who": str(ALICE)})
        self.assertEqual(history[-1]["reason"], failed["reason"])

    async def test_pin_mismatch_is_reported_to_the_sender(self) -> None:
        alice, alice_events, bob, bob_events = await self.pair()
        assert alice.store is not None
        await alice.store.add_contact(BOB, "Bob", ["00" * 32])
        message = await alice.send_text(BOB, "is it you?")
        failed = await alice_events.wait_for(event="undelivered", id=message.id)
        self.assertIn("not one you pinned", failed["reason"])

    async def test_offline_peer_stays_queued_with_progress_and_can_be_cancelled(self) -> None:
        alice, alice_events = await self.agent("alice", contacts=("carol",))
        await self.user("carol")
        message = await alice.send_text(CAROL, "when you are back")
        progress = await alice_events.wait_for(event="progress", id=message.id)
        self.assertIn("offline", progress["text"])
        status = await run_command(alice, {"op": "status"})
        self.assertEqual([(item["id"], item["to"]) for item in status["queue"]], [(message.id, str(CAROL))])
        self.assertIn("offline", status["queue"][0]["reason"])
        result = await run_command(alice, {"op": "cancel", "message": message.id})
        self.assertEqual(result["state"], "cancelled")
        await alice_events.wait_for(event="cancelled", id=message.id)
        self.assertEqual((await run_command(alice, {"op": "status"}))["queue"], [])
        self.assertEqual((await self.stored(alice, message.id)).state, "cancelled")
        with self.assertRaises(ControlError):
            await run_command(alice, {"op": "cancel", "message": message.id})

    async def stored(self, agent: Any, message_id: str) -> Any:
        message = await agent.store.get_message(message_id)
        assert message is not None
        return message


class StatusTests(AgentTestCase):
    async def test_status_says_when_registration_failed(self) -> None:
        alice, _alice_events = await self.agent("alice")
        await alice.directory.close()  # type: ignore[union-attr]
        alice.directory.servers["example.org"] = ("127.0.0.1", 1)  # type: ignore[union-attr]
        with capturedLogs():
            await alice._register("online")
        status = alice.status()
        self.assertFalse(status["registered"])
        self.assertTrue(status["registration_error"])

    async def test_contacts_show_what_the_registry_says(self) -> None:
        """Alice's store says Bob is offline (her last dial found him away); the registry
        says he is online now: contacts shows online."""
        alice, _alice_events, _bob, _bob_events = await self.pair()
        assert alice.store is not None
        await alice.store.set_presence(BOB, "offline")
        contacts = await run_command(alice, {"op": "contacts"})
        self.assertEqual({item["who"]: item["presence"] for item in contacts}[str(BOB)], "online")


class ExplainTests(TestCase):
    """The reason each refusal an alert carries gives the sender (sixchat.agent.outcome)."""

    def test_refusals_reported_by_the_peer(self) -> None:
        from sixchat.agent.outcome import explain
        from sixchat.wire.handshake import Alert, error_from_alert

        seen = {}
        for reason in ("policy", "revoked", "expired", "untrusted-ca"):
            problem = explain(error_from_alert(Alert(305, "peer-rejected", reason)), BOB)
            seen[reason] = problem
            self.assertIn(str(BOB), problem.reason)
        self.assertIn("not their contact, or they blocked you", seen["policy"].reason)
        self.assertEqual([seen[name].final for name in ("policy", "revoked", "expired", "untrusted-ca")], [True, True, True, False])
        self.assertIn("refused our certificate: it is revoked", seen["revoked"].reason)
        self.assertIn("has expired", seen["expired"].reason)
        self.assertTrue(seen["revoked"].our_certificate)
        self.assertFalse(seen["policy"].our_certificate)

    def test_our_own_refusal_is_not_theirs(self) -> None:
        from sixchat import errors
        from sixchat.agent.outcome import explain

        problem = explain(errors.PeerRejected("bob@example.org presented a certificate that is not one you pinned", reason="policy"), BOB)
        self.assertTrue(problem.final)
        self.assertIn("we refused", problem.reason)
        self.assertFalse(explain(errors.PeerUnreachable("bob@example.org is offline"), BOB).final)
