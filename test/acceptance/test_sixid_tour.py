"""The README's sixid tour with the installed commands (issue 13): a registry serving sixid
with the open policy; a device makes its key (``sixid keygen``), registers where it can be
reached, and is looked up and watched by ID; an enrolled IRP user registers a certified ID
with their profile's key and certificate, and the record names them."""

from __future__ import annotations

import os
import re
import signal

from twisted.trial.unittest import SynchronousTestCase

from common.pki.keyfiles import fingerprint, format_fingerprint, load_certificates
from test.acceptance.processes import COMMAND_TIMEOUT, Deployment, Service, command_path

#: The registry's log line once sixid listens (its port read from it).
SIXID_SERVING = re.compile(r"sixid serving on \S*?:(\d+)\b")
#: Seconds a watcher has to print a change.
CHANGE = 30.0
ADDRESS = re.compile(r"^[a-z2-7]{32}@example\.org$")


class SixidTourTests(SynchronousTestCase):
    """README "Tour: sixid, IDs that are keys"."""

    def test_tour(self) -> None:
        deployment = Deployment(self)
        deployment.commands["sixid"] = command_path("sixid")
        registry = deployment.start_registry(
            "example.org", "registry", "--sixid-listen", "tcp:0:interface=127.0.0.1", "--sixid-policy", "open"
        )
        port = deployment.wait_for(registry.service, SIXID_SERVING, "sixid's listening line").group(1)
        server = ("--server", f"127.0.0.1:{port}")
        profile = ("--profile", deployment.path("device-profile"))

        def sixid(*args: str, expect: int | None = 0) -> str:
            return deployment.run("sixid", *profile, *args, expect=expect).out

        # A device makes its key; its ID is the key's hash.
        key = deployment.path("device.key")
        made = sixid("keygen", "--key", key)
        self.assertRegex(made, r"^ID: [a-z2-7]{4}(-[a-z2-7]{4}){7}\n$")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        address = sixid("id", "--key", key, "--domain", "example.org").strip()
        self.assertRegex(address, ADDRESS)
        self.assertEqual(made.split()[1].replace("-", ""), address.split("@")[0])

        # Trust example.org's root for sixid; nothing is registered for the ID yet.
        trusted = sixid("trust", "--domain", "example.org", "--ca-file", registry.root_file, *server)
        self.assertIn("Trusting example.org", trusted)
        missing = deployment.run("sixid", *profile, "lookup", address, *server, expect=4)
        self.assertIn("[unknown-id]", missing.err)

        # Someone watches the ID; the device registers; the watcher sees it. (The profile
        # noted the server: no --server from now on.)
        watcher = Service(
            "sixid-watch", deployment.argv("sixid", *profile, "watch", address), deployment.home, deployment.environment()
        )
        deployment.services.append(watcher)
        deployment.wait_for(watcher, re.compile(re.escape(f"{address}: no current record")), "the watcher's first line", CHANGE)
        registered = sixid("register", "--key", key, "--domain", "example.org",
                           "--address", "2001:db8::7", "--address", "192.0.2.7", "--port", "4605")
        self.assertIn("Registered:", registered)
        self.assertIn("not certified", registered)
        deployment.wait_for(watcher, re.compile(re.escape(f"{address}: [2001:db8::7]:4605, 192.0.2.7:4605 (until")), "the change", CHANGE)

        # Anyone can look it up, with the root given by its fingerprint alone.
        root_fingerprint = format_fingerprint(fingerprint(load_certificates(registry.root_file)[0]))
        found = deployment.run("sixid", "lookup", address, *server, "--ca-fingerprint", root_fingerprint).out
        self.assertIn("reachable at  [2001:db8::7]:4605, 192.0.2.7:4605", found)

        # Alice, enrolled with irp, registers her profile's key: a certified ID.
        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        alice = ("--profile", profiles["alice"])
        certified = deployment.run("sixid", *alice, "register", "--address", "192.0.2.8", "--port", "4605", *server).out
        self.assertIn("owner alice@example.org", certified)
        alice_address = deployment.run("sixid", *alice, "id", "--domain", "example.org").out.strip()
        self.assertRegex(alice_address, ADDRESS)
        found = sixid("lookup", alice_address)
        self.assertIn("owner alice@example.org", found)

        # The device withdraws; the watcher sees it; Ctrl-C ends the watch.
        sixid("register", "--key", key, "--domain", "example.org", "--withdraw")
        deployment.wait_for(watcher, re.compile(re.escape(f"{address}: withdrawn, not reachable (until")), "the withdrawal", CHANGE)
        os.killpg(watcher.process.pid, signal.SIGINT)
        code = watcher.exited(COMMAND_TIMEOUT)
        self.assertEqual(code, 0, watcher.describe())
        self.assertNotIn("Traceback", watcher.output.text)
