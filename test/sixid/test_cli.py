"""The ``sixid`` command, run in child processes (``python -m sixid.cli``) against a sixid
server on loopback (:mod:`test.sixid.fake_server`, real TLS) served by this test's reactor.
Every run is checked for its exit code and for the absence of a traceback."""

from __future__ import annotations

import io
import os
import re
import stat
import sys
from contextlib import redirect_stdout

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from common.identity import Identity
from common.pki import keyfiles
from common.profile import Profile, ProfileConfig
from sixid.cli import build_parser
from sixid.ids import SixIdAddress, derive_id
from sixid.records import SignedRecord
from test.helpers import REPOSITORY, CommandResult, closed_port, run_module
from test.sixid.fake_server import DOMAIN, device, registry_pki, serve, signed_registration

#: Seconds a watching command has to print what is awaited.
WAIT = 30.0
ID = re.compile(r"[a-z2-7]{32}")


class WatchingCommand(ProcessProtocol):
    """A long-running ``sixid`` child: its output is read as it comes."""

    def __init__(self) -> None:
        self.out = ""
        self.err = ""
        self.waiting: list[tuple[str, Deferred[None]]] = []
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data.decode("utf-8", "replace")
        for item in list(self.waiting):
            if item[0] in self.out:
                self.waiting.remove(item)
                item[1].callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data.decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)

    def wait_for(self, text: str) -> Deferred[None]:
        """Fires once ``text`` was printed (fails after WAIT seconds)."""
        found: Deferred[None] = Deferred()
        if text in self.out:
            found.callback(None)
        else:
            self.waiting.append((text, found))
        return found.addTimeout(WAIT, reactor)


class CommandTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.registry, self.port = await serve(self)
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.root_file = self.path("root.pem")
        keyfiles.write_certificates(self.root_file, [registry_pki().root])

    def path(self, name: str) -> str:
        return os.path.join(self.home, name)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def sixid(self, *args: str, expect: int | None = 0) -> CommandResult:
        result: CommandResult = await run_module("sixid.cli", ["--profile", self.path("profile"), *args], home=self.home)
        self.assertNotIn("Traceback", result.err, f"sixid {' '.join(args)} printed a traceback:\n{result.err}")
        if expect is not None:
            self.assertEqual(result.code, expect, f"sixid {' '.join(args)}: exit {result.code}\nstdout: {result.out}\nstderr: {result.err}")
        return result

    def online(self, *args: str) -> tuple[str, ...]:
        """``args`` with the server and its root."""
        return (*args, "--server", self.server, "--ca-file", self.root_file)

    async def keygen(self, name: str = "device.key") -> str:
        """A new key; returns the ID's address at example.org."""
        await self.sixid("keygen", "--key", self.path(name))
        result = await self.sixid("id", "--key", self.path(name), "--domain", DOMAIN)
        return result.out.strip()

    async def test_keygen_and_id(self) -> None:
        made = await self.sixid("keygen", "--key", self.path("k.pem"), "--type", "ed25519")
        self.assertEqual(stat.S_IMODE(os.stat(self.path("k.pem")).st_mode), 0o600)
        expected = derive_id(keyfiles.load_private_key(self.path("k.pem")).public_key())
        self.assertEqual(made.out.strip(), f"ID: {expected.grouped()}")
        shown = await self.sixid("id", "--key", self.path("k.pem"))
        self.assertEqual(shown.out.strip(), str(expected))
        grouped = await self.sixid("id", "--key", self.path("k.pem"), "--grouped", "--domain", "Example.ORG")
        self.assertEqual(grouped.out.strip(), f"{expected.grouped()}@example.org")
        refused = await self.sixid("keygen", "--key", self.path("k.pem"), expect=2)
        self.assertIn("exists; use --force", refused.err)
        await self.sixid("keygen", "--key", self.path("k.pem"), "--force")
        self.assertNotEqual(derive_id(keyfiles.load_private_key(self.path("k.pem")).public_key()), expected)

    async def test_id_of_a_certificate(self) -> None:
        user = registry_pki().ca.issue_user_certificate(Identity("alice", DOMAIN), device().public_key())
        keyfiles.write_certificates(self.path("alice.pem"), [user])
        shown = await self.sixid("id", "--certificate", self.path("alice.pem"))
        self.assertEqual(shown.out.strip(), str(derive_id(user.public_key())))

    async def test_register_lookup_withdraw(self) -> None:
        address = await self.keygen()
        registered = await self.sixid(
            *self.online("register", "--key", self.path("device.key"), "--domain", DOMAIN,
                         "--address", "2001:db8::7", "--address", "192.0.2.7:7000", "--port", "4605")
        )
        self.assertIn("Registered:", registered.out)
        self.assertIn("[2001:db8::7]:4605, 192.0.2.7:7000", registered.out)
        self.assertIn("not certified", registered.out)
        found = await self.sixid(*self.online("lookup", address))
        self.assertEqual(found.out.splitlines()[0], address)
        self.assertIn("reachable at  [2001:db8::7]:4605, 192.0.2.7:7000", found.out)
        withdrawn = await self.sixid(*self.online("register", "--key", self.path("device.key"), "--domain", DOMAIN, "--withdraw"))
        self.assertIn("Withdrawn:", withdrawn.out)
        found = await self.sixid(*self.online("lookup", address))
        self.assertIn("reachable at  nowhere (withdrawn)", found.out)

    async def test_lookup_of_an_unknown_id(self) -> None:
        address = SixIdAddress(derive_id(device().public_key()), DOMAIN)
        result = await self.sixid(*self.online("lookup", str(address)), expect=4)
        self.assertEqual(result.out, "")
        self.assertRegex(result.err, r"^sixid: .*\[unknown-id\]\n$")

    async def test_lookup_of_several_ids(self) -> None:
        known = [device() for _ in range(3)]
        for key in known:
            self.registry.store(self.registry.record_for(signed_registration(key)))
        addresses = [str(SixIdAddress(derive_id(key.public_key()), DOMAIN)) for key in known]
        unknown = str(SixIdAddress(derive_id(device().public_key()), DOMAIN))
        result = await self.sixid(*self.online("lookup", addresses[0], unknown, *addresses[1:]), expect=4)
        self.assertEqual([line for line in result.out.splitlines() if ID.match(line)], addresses)
        self.assertEqual(result.err, f"sixid: {unknown}: no current record of this ID [unknown-id]\n")
        self.assertEqual(self.registry.seen.count("lookup"), 4)

    async def test_root_by_fingerprint(self) -> None:
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        address = str(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        root = registry_pki().root
        found = await self.sixid("lookup", address, "--server", self.server, "--ca-fingerprint", keyfiles.format_fingerprint(keyfiles.fingerprint(root)))
        self.assertIn("reachable at  [2001:db8::7]:4605", found.out)
        wrong = await self.sixid("lookup", address, "--server", self.server, "--ca-fingerprint", "ab" * 32, expect=5)
        self.assertIn("refusing to trust it", wrong.err)

    async def test_trust_then_lookup_without_ca_options(self) -> None:
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        address = str(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        untrusted = await self.sixid("lookup", address, "--server", self.server, expect=2)
        self.assertIn("no root CA of example.org is trusted yet", untrusted.err)
        trusted = await self.sixid("trust", "--domain", DOMAIN, "--ca-file", self.root_file, "--server", self.server)
        self.assertIn("Trusting example.org", trusted.out)
        self.assertIn("proves itself with it", trusted.out)
        self.assertIn(f"Its sixid server: 127.0.0.1 port {self.port}", trusted.out)
        self.assertTrue(os.path.exists(self.path("profile/trusted/example.org.pem")))
        self.assertEqual(stat.S_IMODE(os.stat(self.path("profile/sixid-servers.json")).st_mode), 0o600)
        # The profile now knows the root and the server.
        found = await self.sixid("lookup", address)
        self.assertIn("reachable at", found.out)

    async def test_trust_refuses_another_domains_root(self) -> None:
        result = await self.sixid("trust", "--domain", "example.net", "--ca-file", self.root_file, "--server", self.server, expect=2)
        self.assertIn("not example.net's", result.err)

    async def test_certified_registration_with_a_profile(self) -> None:
        pki = registry_pki()
        key = device()
        certificate = pki.ca.issue_user_certificate(Identity("alice", DOMAIN), key.public_key())
        profile = Profile(self.path("profile"))
        profile.create(ProfileConfig(server="127.0.0.1", domain=DOMAIN, username="alice"), pki.root)
        profile.save_credentials(key, [certificate, pki.ca.issuing_certificate])
        # The profile pins the root: no --ca-file needed; its key and certificate sign.
        registered = await self.sixid("register", "--address", "192.0.2.9", "--port", "4605", "--server", self.server)
        self.assertIn("owner alice@example.org", registered.out)
        shown = await self.sixid("id")
        self.assertEqual(shown.out.strip(), str(derive_id(key.public_key())))
        (stored,) = self.registry.records.values()
        self.assertEqual(SignedRecord.from_bytes(stored).record.owner, "alice@example.org")
        found = await self.sixid("lookup", f"{shown.out.strip()}@{DOMAIN}", "--server", self.server)
        self.assertIn("owner alice@example.org", found.out)

    async def test_watch_prints_changes_until_interrupted(self) -> None:
        key = device()
        address = str(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        command = WatchingCommand()
        environment = {"PYTHONPATH": REPOSITORY, "HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        arguments = [sys.executable, "-m", "sixid.cli", "--profile", self.path("profile"), *self.online("watch", address)]
        process = reactor.spawnProcess(command, sys.executable, arguments, env=environment, path=self.home)  # type: ignore[attr-defined]
        self.addCleanup(lambda: None if command.ended.called else process.signalProcess("KILL"))
        await command.wait_for(f"{address}: no current record")
        self.registry.store(self.registry.record_for(signed_registration(key, seq=2)))
        await command.wait_for(f"{address}: [2001:db8::7]:4605, 192.0.2.7:4605 (until")
        self.registry.store(self.registry.record_for(signed_registration(key, seq=3, endpoints=())))
        await command.wait_for(f"{address}: withdrawn, not reachable (until")
        # The connection breaks: the command reconnects and watches again, without
        # repeating what it told already (the next change comes as a push or in the new
        # watch's answer, whichever is first).
        for connection in list(self.registry.connections):
            connection.transport.abortConnection()  # type: ignore[union-attr]
        self.registry.store(self.registry.record_for(signed_registration(key, seq=4)))
        await command.wait_for("seq 4,")
        process.signalProcess("INT")
        code = await command.ended.addTimeout(WAIT, reactor)
        self.assertEqual(code, 0, command.err)
        self.assertNotIn("Traceback", command.err)
        self.assertIn("reconnecting", command.err)
        self.assertEqual(len(command.out.splitlines()), 4, command.out)

    async def test_watch_ends_when_a_record_fails_verification(self) -> None:
        key = device()
        self.registry.store(self.registry.record_for(signed_registration(key)))
        self.registry.tamper = lambda data: data[:-1] + bytes([data[-1] ^ 1])
        address = str(SixIdAddress(derive_id(key.public_key()), DOMAIN))
        result = await self.sixid(*self.online("watch", address), expect=5)
        self.assertIn("[verification-failed]", result.err)

    async def test_unreachable_server(self) -> None:
        address = SixIdAddress(derive_id(device().public_key()), DOMAIN)
        port = await closed_port()
        result = await self.sixid("lookup", str(address), "--server", f"127.0.0.1:{port}", "--ca-file", self.root_file, expect=5)
        self.assertRegex(result.err, r"^sixid: cannot connect to the sixid server at 127\.0\.0\.1 port \d+: .*\[connection-lost\]\n$")

    async def test_readable_refusals(self) -> None:
        await self.keygen()
        cases: list[tuple[tuple[str, ...], str]] = [
            (("lookup", "not-an-id@example.org"), "is not a sixid ID"),
            (("lookup", "aaaa"), "expected ID@domain"),
            (("register", "--key", self.path("device.key"), "--domain", DOMAIN), "give --address"),
            (("register", "--key", self.path("device.key"), "--domain", DOMAIN, "--address", "192.0.2.1"), "give --port"),
            (("register", "--key", self.path("device.key"), "--domain", DOMAIN, "--address", "nowhere", "--port", "1"), "bad address"),
            (("register", "--key", self.path("device.key"), "--domain", DOMAIN, "--withdraw", "--address", "192.0.2.1:1"), "leave out --address"),
            (("register", "--key", self.path("missing.key"), "--domain", DOMAIN, "--withdraw"), "missing.key"),
            (("id",), "give --key FILE or --certificate FILE"),
        ]
        for args, text in cases:
            result = await self.sixid(*args, expect=2)
            self.assertIn(text, result.err)
            self.assertEqual(len(result.err.splitlines()), 1, result.err)


class HelpTests(TestCase):
    def test_every_command_has_help(self) -> None:
        parser = build_parser()
        for command in ("keygen", "id", "trust", "register", "lookup", "watch", None):
            output = io.StringIO()
            with redirect_stdout(output), self.assertRaises(SystemExit) as exited:
                parser.parse_args([command, "--help"] if command else ["--help"])
            self.assertEqual(exited.exception.code, 0)
            self.assertIn("usage: sixid", output.getvalue())
