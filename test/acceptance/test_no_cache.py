"""``twistd irp --no-cache`` as an operator runs it: the installed command, separate
processes, shipped defaults otherwise (issue 10: each cache can be switched off, so that
its worth can be measured)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment


class NoCacheTests(SynchronousTestCase):
    """A registry without its caches answers as one with them does."""

    def test_registry_without_caches(self) -> None:
        """With ``--no-cache all`` the registry says so in its log, and enrolment,
        certificate logins, registrations and look-ups work (each twice, so that a second
        answer that a cache would have served comes from the database)."""
        deployment = Deployment(self)
        registry = deployment.start_registry("example.org", "registry", "--no-cache", "all")
        deployment.wait_for(
            registry.service,
            "Running without the caches: answers, certificates, usernames",
            "the line naming the caches switched off",
        )
        admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        alice = profiles["alice"]
        for _ in range(2):
            self.assertEqual(deployment.irp("--profile", alice, "whoami").out.strip(), "alice@example.org (certificate)")
        deployment.irp("--profile", alice, "register", "--address", "192.0.2.7")
        for _ in range(2):
            answer = deployment.irp("--profile", alice, "lookup", "alice").out
            self.assertIn("192.0.2.7:4605", answer)
            self.assertIn("signature verified", answer)
        deployment.irp("--profile", alice, "register", "--address", "192.0.2.8")
        answer = deployment.irp("--profile", alice, "lookup", "alice").out
        self.assertIn("192.0.2.8:4605", answer)
        self.assertNotIn("192.0.2.7", answer)

    def test_unknown_cache_refused(self) -> None:
        """An unknown cache name is refused before anything starts: a readable line that
        names the caches, a non-zero exit status, no traceback."""
        deployment = Deployment(self)
        result = deployment.run("twistd", "-n", "irp", "--domain", "example.org", "--no-cache", "nonsense", expect=None)
        self.assertNotEqual(result.code, 0)
        self.assertIn("unknown cache 'nonsense': the caches are answers, certificates, usernames (or all)", result.out + result.err)
