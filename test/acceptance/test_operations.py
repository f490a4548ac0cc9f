"""An operator's day with the installed commands, as separate processes and the shipped
defaults (issue 14): metrics scraped from ``twistd irp --metrics-listen``, the audit trail
listed and verified with ``irp admin audit``, then altered in the SQLite file and the
alteration named; a second registry process with an empty data folder refused on the
same database; the issuing CA rotated with ``irp-ca`` while the old certificates keep
working."""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.request

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment, free_port

#: The critical line of a second process whose data folder holds no CA.
NO_CA_HERE = re.compile(r"the database belongs to the CA with root fingerprint SHA256:[0-9a-f ]+")



def issuer_name(profile: str) -> str:
    with open(os.path.join(profile, "certificate.pem"), "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    return certificate.issuer.rfc4514_string()


class OperatorTests(SynchronousTestCase):
    """Metrics, the audit trail, one CA per database and rotation, each as a user runs them."""

    def scrape(self, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode("utf-8")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def test_operator_day(self) -> None:
        deployment = Deployment(self)
        metrics_port = free_port()
        registry = deployment.start_registry(
            "example.org", "registry", "--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1"
        )
        admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        admin_login = ("--profile", admin, "admin", "--password-file", registry.admin_password_file)

        # Metrics: the enrolment's password logins and the certificate it issued are counted.
        samples = self.scrape(metrics_port)
        self.assertGreaterEqual(samples[("irp_logins_total", (("method", "password"), ("outcome", "ok")))], 2)
        self.assertEqual(samples[("irp_certificates_issued_total", (("operation", "request-certificate"),))], 1)
        # Read from the database every 15 s: present, whatever the count at this moment.
        self.assertIn(("irp_users_registered", ()), samples)
        deployment.irp("--profile", profiles["alice"], "whoami")
        after = self.scrape(metrics_port)
        self.assertEqual(
            after[("irp_logins_total", (("method", "certificate"), ("outcome", "ok")))],
            samples.get(("irp_logins_total", (("method", "certificate"), ("outcome", "ok"))), 0) + 1,
        )

        # The audit trail: the administrator's creation of alice, and an intact chain.
        listed = deployment.irp(*admin_login, "audit", "--event", "create-user")
        self.assertIn("alice@example.org", listed.out)
        verified = deployment.irp(*admin_login, "audit", "verify")
        self.assertTrue(verified.out.startswith("intact: "), verified.describe())
        database = os.path.join(registry.data_dir, "registry.sqlite3")
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE audit_log SET subject = 'mallory@example.org' WHERE id = 3")
        altered = deployment.irp(*admin_login, "audit", "verify", expect=1)
        self.assertIn("entry 3 was altered", altered.err)

        # A second process on the same database, with a data folder of its own and no CA:
        # refused, naming the database's CA; nothing created.
        second = deployment.spawn(
            "second", "-n", "irp", "--domain", "example.org", "--listen", "tcp:0:interface=127.0.0.1",
            "--database", database,
        )
        self.assertNotEqual(second.exited(60), 0, second.describe())
        self.assertIsNotNone(NO_CA_HERE.search(second.output.text), second.describe())
        self.assertFalse(os.path.exists(os.path.join(second.cwd, "irp-data", "ca", "root.pem")))

        # Rotation of the issuing CA: stop, rotate, start. alice's certificate of the old
        # issuing CA still logs in; bob, enrolled now, gets the new one.
        old_issuer = issuer_name(profiles["alice"])
        self.assertTrue(registry.service.stop(), "the registry did not stop on SIGTERM")
        rotated = deployment.run("irp-ca", "rotate-issuing", "--data-dir", registry.data_dir)
        self.assertIn("New issuing CA:", rotated.out)
        registry = deployment.start_registry("example.org", "registry")
        # (On a port of its own again: --server overrides the one alice's profile names.)
        whoami = deployment.irp("--profile", profiles["alice"], "--server", registry.server, "whoami")
        self.assertTrue(whoami.out.startswith("alice@example.org (certificate"), whoami.describe())
        bob_password = deployment.secret("bob-password", "bob-password-3x")
        deployment.irp("--profile", admin, "--server", registry.server, "admin", "--password-file",
                       registry.admin_password_file, "create-user", "bob", "--new-password-file", bob_password)
        bob = deployment.path("bob")
        deployment.run("irp", "--profile", bob, "init", "--server", registry.server, "--domain", "example.org",
                       "--ca-file", registry.root_file, "--user", "bob")
        deployment.irp("--profile", bob, "enrol", "--password-file", bob_password)
        self.assertNotEqual(issuer_name(bob), old_issuer)
        self.assertIn("IRP Issuing CA 2", issuer_name(bob))
        status = deployment.run("irp-ca", "status", "--data-dir", registry.data_dir)
        self.assertIn("Retired", status.out)
