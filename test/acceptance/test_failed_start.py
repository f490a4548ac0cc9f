"""Services that cannot start (their port is taken) say so in one line, exit non-zero and
leave nothing behind (issue 9, item 14)."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment, Service, taken_port

#: Seconds a service that cannot start has to give up.
GIVE_UP = 30.0


def check_refusal(testcase: SynchronousTestCase, deployment: Deployment, service: Service, port: int) -> None:
    """``service`` ends within the bound, with a non-zero exit status, no traceback, and a
    line that names the taken port."""
    code = service.exited(GIVE_UP)
    if code is None:
        deployment.fail(f"{service.label} kept running for {GIVE_UP:.0f} s although its port {port} is taken")
    log = service.output.text
    if code == 0:
        deployment.fail(f"{service.label} could not start (port {port} taken) yet exited with status 0")
    if "Traceback" in log:
        deployment.fail(f"{service.label} printed a traceback instead of one readable line")
    reasons = [line for line in log.splitlines() if str(port) in line]
    testcase.assertTrue(reasons, f"no line of {service.label}'s output says that port {port} is taken:\n{log}")


class FailedStartTests(SynchronousTestCase):
    """``twistd -n irp`` and ``twistd -n sixchat`` on a port already taken."""

    def test_registry_port_taken(self) -> None:
        """The registry exits non-zero with one readable line and creates no data folder,
        CA or database (and leaves no twistd.pid)."""
        deployment = Deployment(self)
        holder = taken_port()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        service = deployment.spawn("registry", "-n", "irp", "--domain", "example.org", "--listen", f"tcp:{port}:interface=127.0.0.1")
        check_refusal(self, deployment, service, port)
        left = sorted(os.listdir(service.cwd))
        self.assertEqual(left, [], f"the registry that could not start left {left} in its folder")

    def test_agent_port_taken(self) -> None:
        """An agent exits non-zero with one readable line, leaves no twistd.pid and
        publishes nothing at the registry."""
        deployment = Deployment(self)
        registry = deployment.start_registry()
        admin, profiles = deployment.enrol_users(registry, {"alice": "sixchat"})
        holder = taken_port()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        service = deployment.spawn("agent", "-n", "sixchat", "--profile", profiles["alice"], "--listen", f"tcp:{port}:interface=127.0.0.1")
        check_refusal(self, deployment, service, port)
        left = sorted(os.listdir(service.cwd))
        self.assertEqual(left, [], f"the agent that could not start left {left} in its folder")
        lookup = deployment.irp("--profile", admin, "lookup", "alice", "--password-file", registry.admin_password_file, expect=None)
        self.assertNotIn(f":{port}", lookup.out, f"the agent that could not start published its address:\n{lookup.describe()}")
