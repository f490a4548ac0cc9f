"""SIGKILL of the intermediary while deposits and deliveries run (issue 12).

A registry, the intermediary and two users run as the installed commands with the shipped
defaults; ``mailbox_driver.py`` deposits sealed messages as Alice and takes them as Bob,
both reconnecting whenever the connection ends. The intermediary is killed with SIGKILL
several times, at moments read from the driver's own progress (never guessed by sleeping),
and restarted on the same database. What must hold:

* nothing acknowledged is lost: every deposit that was answered is delivered;
* nothing is delivered twice to the user: each message is accepted once (a push repeated
  because its acknowledgement died with the server is judged a replay and only acked);
* no deposit is stored twice: a deposit retried after a kill names the stored message.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import COMMAND_TIMEOUT, Deployment, Output, Service, stop_process

MESSAGES = 240
#: Kill when the driver has printed this many deposit answers / accepted deliveries.
KILL_AT = ((re.compile(r"^deposited ", re.M), 40), (re.compile(r"^delivered \d+ \S+ (new|gap|late)$", re.M), 60),
           (re.compile(r"^deposited ", re.M), 150), (re.compile(r"^acked ", re.M), 160))
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mailbox_driver.py")


class KillTests(SynchronousTestCase):
    """The intermediary survives SIGKILL without losing or repeating a message."""

    def test_sigkill_during_deposits_and_deliveries(self) -> None:
        deployment = Deployment(self)
        registry = deployment.start_registry()
        _admin, profiles = deployment.enrol_users(registry, {"intermediary": "irp", "alice": "sixchat", "bob": "sixchat"})
        arguments = deployment.intermediary_arguments(profiles["intermediary"])

        def start(generation: int) -> Service:
            return deployment.start_intermediary(arguments, f"intermediary-{generation}")

        service = start(0)
        driver = subprocess.Popen(
            [sys.executable, DRIVER, profiles["alice"], profiles["bob"], str(MESSAGES)], cwd=deployment.home,
            env=deployment.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.addCleanup(stop_process, driver, 2.0)
        output = Output(driver.stdout.fileno())  # type: ignore[union-attr]
        kills = 0
        for pattern, at_least in KILL_AT:
            seen = output.count(pattern, at_least, COMMAND_TIMEOUT)
            if seen < at_least:
                deployment.fail(f"the driver stalled before {at_least} '{pattern.pattern}' lines:\n{output.text[-3000:]}")
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(10)
            kills += 1
            service = start(kills)
        if output.wait_for(r"^done$", COMMAND_TIMEOUT * 2) is None:
            deployment.fail(f"the driver did not finish:\n{output.text[-3000:]}")
        self.assertEqual(driver.wait(10), 0, output.text[-3000:])
        lines = output.text.splitlines()
        deposited = collections.defaultdict(set)
        accepted = collections.Counter()
        pushes = collections.Counter()
        for line in lines:
            parts = line.split()
            if parts[:1] == ["deposited"]:
                deposited[int(parts[1])].add(parts[2])
            elif parts[:1] == ["delivered"]:
                pushes[int(parts[1])] += 1
                if parts[3] != "replay":
                    accepted[int(parts[1])] += 1
        # Nothing answered is lost; every message accepted exactly once.
        self.assertEqual(sorted(deposited), list(range(MESSAGES)))
        self.assertEqual(sorted(accepted), list(range(MESSAGES)))
        self.assertEqual(max(accepted.values()), 1)
        # A retried deposit named the stored message: one server id per message.
        self.assertEqual({index for index, ids in deposited.items() if len(ids) > 1}, set())
        # Every acknowledged message was deleted; nothing else is left in the store.
        service.stop()
        database_path = os.path.join(profiles["intermediary"], "intermediary.sqlite3")
        self.assertEqual(stat.S_IMODE(os.stat(database_path).st_mode), 0o600)
        with contextlib.closing(sqlite3.connect(database_path)) as database:
            self.assertEqual(database.execute("SELECT COUNT(*) FROM messages").fetchone()[0], 0)
        figures = {
            "kills": kills,
            "deposits answered": len(deposited),
            "retried deposits": sum(1 for line in lines if line.startswith("retry ")),
            "pushes": sum(pushes.values()),
            "pushed again (ack lost with the server)": sum(pushes.values()) - MESSAGES,
            "reconnections": sum(1 for line in lines if line.startswith("reconnected ")),
        }
        print("\nSIGKILL figures: " + ", ".join(f"{name} {value}" for name, value in figures.items()))
