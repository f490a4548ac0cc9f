"""sixid with the installed commands, as separate processes, at the shipped defaults
(issue 13): the default policy (``certified``) refuses a bare key with a sentence that says
why and accepts an enrolled user's certified key; with the open policy, many devices
register at once (each its own ``sixid register`` process) while one watcher follows all
of them, and every registration is answered, pushed to the watcher and looked up
afterwards with the addresses it carried."""

from __future__ import annotations

import os
import re
import signal

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import COMMAND_TIMEOUT, Deployment, Service, command_path

#: The registry's log line once sixid listens (its port read from it).
SIXID_SERVING = re.compile(r"sixid serving on \S*?:(\d+)\b")
#: Devices registering at once.
DEVICES = 12
#: Seconds the watcher has to print every change.
CHANGES = 60.0


def _address_of(index: int) -> str:
    return f"192.0.2.{index + 10}"


class DefaultPolicyTests(SynchronousTestCase):
    """``twistd irp --sixid`` with its default policy."""

    def test_bare_key_refused_certified_key_served(self) -> None:
        deployment = Deployment(self)
        deployment.commands["sixid"] = command_path("sixid")
        registry = deployment.start_registry("example.org", "registry", "--sixid-listen", "tcp:0:interface=127.0.0.1")
        port = deployment.wait_for(registry.service, SIXID_SERVING, "sixid's listening line").group(1)
        self.assertIn("(policy certified)", registry.service.output.text)
        server = ("--server", f"127.0.0.1:{port}")
        profile = ("--profile", deployment.path("device-profile"))
        key = deployment.path("device.key")
        deployment.run("sixid", "keygen", "--key", key)
        deployment.run("sixid", *profile, "trust", "--domain", "example.org", "--ca-file", registry.root_file, *server)

        refused = deployment.run(
            "sixid", *profile, "register", "--key", key, "--domain", "example.org",
            "--address", "192.0.2.7", "--port", "4605", expect=1,
        )
        self.assertIn("[not-allowed]", refused.err)
        self.assertIn("certified", refused.err)
        self.assertNotIn("Traceback", refused.err)

        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        alice = ("--profile", profiles["alice"])
        certified = deployment.run("sixid", *alice, "register", "--address", "192.0.2.8", "--port", "4605", *server).out
        self.assertIn("owner alice@example.org", certified)
        alice_address = deployment.run("sixid", *alice, "id", "--domain", "example.org").out.strip()
        found = deployment.run("sixid", *profile, "lookup", alice_address).out
        self.assertIn("reachable at  192.0.2.8:4605", found)
        self.assertIn("owner alice@example.org", found)


class ConcurrentDevicesTests(SynchronousTestCase):
    """Many ``sixid register`` processes at once, one watcher."""

    def test_concurrent_registrations_watched_and_looked_up(self) -> None:
        deployment = Deployment(self)
        deployment.commands["sixid"] = command_path("sixid")
        registry = deployment.start_registry(
            "example.org", "registry", "--sixid-listen", "tcp:0:interface=127.0.0.1", "--sixid-policy", "open"
        )
        port = deployment.wait_for(registry.service, SIXID_SERVING, "sixid's listening line").group(1)
        profile = ("--profile", deployment.path("device-profile"))
        deployment.run("sixid", *profile, "trust", "--domain", "example.org", "--ca-file", registry.root_file,
                       "--server", f"127.0.0.1:{port}")

        keys = [deployment.path(f"device-{index}.key") for index in range(DEVICES)]
        addresses = []
        for key in keys:
            deployment.run("sixid", "keygen", "--key", key)
            addresses.append(deployment.run("sixid", "id", "--key", key, "--domain", "example.org").out.strip())
        self.assertEqual(len(set(addresses)), DEVICES)

        watcher = Service(
            "sixid-watch", deployment.argv("sixid", *profile, "watch", *addresses), deployment.home, deployment.environment()
        )
        deployment.services.append(watcher)
        self.assertEqual(watcher.output.count(re.compile(r": no current record$", re.MULTILINE), DEVICES, CHANGES), DEVICES,
                         watcher.describe())

        # Every device registers at once, each in its own process.
        started = [
            deployment.start("sixid", *profile, "register", "--key", key, "--domain", "example.org",
                             "--address", _address_of(index), "--port", "4605")
            for index, key in enumerate(keys)
        ]
        results = [deployment.finish(process, began, began + COMMAND_TIMEOUT) for process, began in started]
        for result in results:
            deployment.check(result)
            self.assertIn("Registered:", result.out)

        # The watcher was told of every one, with its own address.
        for index, address in enumerate(addresses):
            line = re.compile(re.escape(f"{address}: {_address_of(index)}:4605 (until"))
            deployment.wait_for(watcher, line, f"the change of device {index}", CHANGES)

        # One look-up of them all: each found where it registered.
        found = deployment.run("sixid", *profile, "lookup", *addresses).out
        for index, address in enumerate(addresses):
            self.assertIn(address, found)
            self.assertIn(f"reachable at  {_address_of(index)}:4605", found)

        os.killpg(watcher.process.pid, signal.SIGINT)
        self.assertEqual(watcher.exited(COMMAND_TIMEOUT), 0, watcher.describe())
        self.assertNotIn("Traceback", watcher.output.text + deployment.logs())
