"""The README's registry tour, command by command, with the installed commands."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment


class RegistryTourTests(SynchronousTestCase):
    """README "Tour: a registry and its users", against ``twistd -n irp`` as shipped."""

    def test_tour(self) -> None:
        """Start a registry; the administrator pins its root and creates Alice with a
        password; Alice enrols, logs in with her certificate, registers addresses; the
        administrator looks her up; directory entry, certificates, CRL; password login
        disabled."""
        deployment = Deployment(self)
        registry = deployment.start_registry()
        self.assertEqual(stat.S_IMODE(os.stat(registry.admin_password_file).st_mode), 0o600)

        # 1. The administrator's profile, pinned to the root the registry wrote.
        admin = deployment.init(registry, "admin-profile", "admin")
        # 2. Alice, with a password read from a file.
        alice_password = deployment.secret("alice-password", "alice-password-1")
        created = deployment.create_user(registry, admin, "alice", alice_password, "--email", "alice@example.org")
        self.assertIn("alice@example.org", created.out)
        # 3. Alice enrols: a key made here (mode 0600) and a certificate, in her profile.
        alice = deployment.init(registry, "alice", "alice")
        enrolled = deployment.irp("--profile", alice, "enrol", "--password-file", alice_password)
        self.assertIn("Enrolled alice@example.org", enrolled.out)
        keys = [name for name in os.listdir(alice) if name.endswith(".pem") and "key" in name]
        self.assertTrue(keys, f"no key file in Alice's profile: {os.listdir(alice)}")
        for name in keys:
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(alice, name)).st_mode), 0o600, name)
        # 4. From now on she logs in with the certificate.
        whoami = deployment.irp("--profile", alice, "whoami")
        self.assertEqual(whoami.out.strip(), "alice@example.org (certificate)", whoami.describe())
        # 5. She registers her addresses; the administrator looks her up (signature checked).
        deployment.irp("--profile", alice, "register", "--address", "2001:db8::7", "--address", "192.0.2.7")
        lookup = deployment.irp("--profile", admin, "lookup", "alice", "--password-file", registry.admin_password_file)
        for expected in ("alice@example.org: online", "[2001:db8::7]:4605", "192.0.2.7:4605", "signature verified"):
            self.assertIn(expected, lookup.out, lookup.describe())
        # 6. Directory entry, certificates, CRL.
        deployment.irp("--profile", alice, "info", "--display-name", "Alice Example")
        info = deployment.irp("--profile", alice, "info")
        self.assertIn("Alice Example", info.out, info.describe())
        certificates = deployment.irp("--profile", alice, "certificates")
        self.assertTrue(certificates.out.strip(), certificates.describe())
        crl = deployment.path("crl.pem")
        deployment.irp("--profile", alice, "crl", "--out", crl)
        with open(crl, encoding="ascii") as handle:
            self.assertIn("-----BEGIN X509 CRL-----", handle.read())
        # 7. Certificates become the only way in for Alice.
        deployment.irp("--profile", admin, "admin", "--password-file", registry.admin_password_file, "disable-password-login", "alice")
        refused = deployment.irp("--profile", admin, "whoami", "--user", "alice", "--password-file", alice_password, expect=None)
        self.assertNotEqual(refused.code, 0, refused.describe())
        self.assertIn("alice@example.org (certificate)", deployment.irp("--profile", alice, "whoami").out)
