"""Agents across an issuing-CA rotation of their registry (issue 14): a user whose
certificate the retired issuing CA issued and a user enrolled under the new one talk both
ways, each agent checking the other's revocation against the CRL of the issuer that signed
(the retired one's fetched by name). Real registry, agents, sockets, keys and files."""

from __future__ import annotations

import os

from common.profile import Profile, ProfileConfig
from irp.server.ca.rotation import root_key_for, rotate_issuing
from test.helpers import RunningRegistry, start_agent
from test.sixchat.agent.helpers import ALICE, BOB, AgentTestCase


class RotationTests(AgentTestCase):
    async def test_retired_and_new_issuer_talk(self) -> None:
        alice = await self.user("alice")
        old_issuer = self.registry.ca.issuing_certificate
        ca_dir = os.path.join(self.registry.data_dir, "ca")
        rotate_issuing(ca_dir, root_key_for(ca_dir, None, None), key_type="p256")
        assert self.registry.service is not None
        await self.registry.service.stopService()
        self.registry = await RunningRegistry(self, data_dir=self.registry.data_dir).start()
        self.assertNotEqual(self.registry.ca.issuing_certificate, old_issuer)
        # Alice's profile, as her enrolment left it: her certificate and the old issuing CA.
        profile = Profile(self.paths["alice"])
        profile.create(
            ProfileConfig(server=self.registry.connect_host, port=self.registry.port, domain="example.org", username="alice"),
            self.registry.root,
        )
        profile.save_credentials(alice.key, [alice.certificate, old_issuer])
        bob = await self.user("bob")
        self.assertEqual(bob.certificate.issuer, self.registry.ca.issuing_certificate.subject)
        alice_agent, alice_events = await start_agent(self, self.registry, alice, path=self.paths["alice"])
        bob_agent, bob_events = await self.agent("bob", listen=("::1",), contacts=("alice",))
        assert alice_agent.store is not None
        await alice_agent.store.add_contact(BOB)
        await self.deliver(alice_agent, alice_events, bob_events, BOB, "signed by the retired CA")
        await self.deliver(bob_agent, bob_events, alice_events, ALICE, "signed by the new one")
