"""End-to-end tests of the ``irp`` command against a real registry.

``irp.cli.run`` starts and stops the reactor itself, so each command runs in a child
process (``python -m irp.cli``, spawned with the reactor's ``spawnProcess``) against a
:class:`RunningRegistry` served by this test's reactor. Every run is checked for its exit
code and for the absence of a traceback.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from common.cliutil import Context
from common.pki.keyfiles import fingerprint, format_fingerprint, load_certificates
from common.profile import Profile, ProfileConfig
from irp.cli import build_parser
from irp.client import initialise
from test.helpers import DEFAULT_PASSWORD, REPOSITORY, CommandResult, RunningRegistry, closed_port, run_module


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


Result = CommandResult


class CLITestCase(unittest.TestCase):
    """Runs ``irp`` in child processes against a registry in this process."""

    async def start(self) -> RunningRegistry:
        self.registry = await RunningRegistry(self).start()
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        return self.registry

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.registry.port}"

    def path(self, name: str) -> str:
        return os.path.join(self.home, name)

    def secret(self, name: str, text: str) -> str:
        """A password file."""
        path = self.path(name)
        write_file(path, (text + "\n").encode("utf-8"))
        os.chmod(path, 0o600)
        return path

    def irp(self, *args: str, expect: int | None = 0, stdin: bytes = b"") -> Deferred[Result]:
        """Run ``irp ARGS``; check the exit code (unless ``expect`` is None) and that no
        traceback was printed."""
        return Deferred.fromCoroutine(self._irp(args, expect, stdin))

    async def _irp(self, args: tuple[str, ...], expect: int | None, stdin: bytes) -> Result:
        result: Result = await run_module("irp.cli", args, home=self.home, stdin=stdin)
        self.assertNotIn("Traceback", result.err, f"irp {' '.join(args)} printed a traceback:\n{result.err}")
        if expect is not None:
            self.assertEqual(result.code, expect, f"irp {' '.join(args)}: exit {result.code}\nstdout: {result.out}\nstderr: {result.err}")
        return result

    async def init(self, profile: str, user: str | None = None) -> str:
        """A profile for ``user`` pinned to the registry's root, as ``irp init`` writes it
        (written here directly: InitTests cover the command); returns its path."""
        path = self.path(profile)
        Profile(path).create(ProfileConfig(server="127.0.0.1", port=self.registry.port, domain="example.org", username=user), self.registry.root)
        return path


class InitTests(CLITestCase):
    """irp init."""

    async def test_by_fingerprint(self) -> None:
        """The root is fetched and pinned when its fingerprint matches."""
        await self.start()
        profile = self.path("profile")
        fingerprint = format_fingerprint(self.registry.ca.root_fingerprint)
        result = await self.irp(
            "--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-fingerprint", fingerprint
        )
        self.assertIn("created for example.org", result.out)
        self.assertIn(fingerprint, result.out)
        self.assertEqual(load_certificates(os.path.join(profile, "ca.pem")), [self.registry.root])
        self.assertEqual(stat.S_IMODE(os.stat(profile).st_mode), 0o700)
        again = await self.irp(
            "--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-fingerprint", fingerprint, expect=2
        )
        self.assertIn("--force", again.err)

    async def test_wrong_fingerprint(self) -> None:
        """Another fingerprint: nothing is trusted or written (exit 5)."""
        await self.start()
        profile = self.path("profile")
        wrong = "ab" * 32
        result = await self.irp(
            "--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-fingerprint", wrong, expect=5
        )
        self.assertIn("refusing to trust it", result.err)
        self.assertFalse(os.path.exists(os.path.join(profile, "config.json")))

    async def test_wrong_domain(self) -> None:
        """A registry of another domain is refused (exit 5)."""
        await self.start()
        fingerprint = format_fingerprint(self.registry.ca.root_fingerprint)
        result = await self.irp(
            "--profile", self.path("p"), "init", "--server", self.server, "--domain", "example.net", "--ca-fingerprint", fingerprint, expect=5
        )
        self.assertIn("example.org", result.err)

    async def test_by_file(self) -> None:
        """--ca-file pins a root given as PEM (checked against --ca-fingerprint if given)."""
        await self.start()
        root_file = self.path("root.pem")
        write_file(root_file, self.registry.root.public_bytes(Encoding.PEM))
        profile = self.path("profile")
        await self.irp("--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-file", root_file)
        self.assertEqual(load_certificates(os.path.join(profile, "ca.pem")), [self.registry.root])
        result = await self.irp(
            "--profile", self.path("other"), "init", "--server", self.server, "--domain", "example.org",
            "--ca-file", root_file, "--ca-fingerprint", "cd" * 32, expect=2,
        )
        self.assertIn("fingerprint", result.err)

    async def test_ca_file_of_another_ca(self) -> None:
        """A --ca-file that is not the registry's root is refused at init, with one readable
        line (not later, with an OpenSSL message), and no profile is written."""
        from test.pki import make_ca

        await self.start()
        other = self.path("other.pem")
        write_file(other, make_ca("example.org").root_certificate.public_bytes(Encoding.PEM))
        profile = self.path("profile")
        result = await self.irp(
            "--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-file", other, "--user", "alice", expect=5
        )
        self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
        self.assertIn(f"not that of {other}: refusing to trust it", result.err)
        self.assertFalse(os.path.exists(profile))

    async def test_bad_arguments(self) -> None:
        """Bad server, domain or missing CA: readable errors, exit 2."""
        await self.start()
        profile = self.path("profile")
        results = await gatherResults(
            [
                self.irp("--profile", profile, "init", "--server", "127.0.0.1:99999", "--domain", "example.org", "--ca-fingerprint", "ab" * 32, expect=2),
                self.irp("--profile", profile, "init", "--server", self.server, "--domain", "bad domain!", "--ca-fingerprint", "ab" * 32, expect=2),
                self.irp("--profile", profile, "init", "--server", self.server, "--domain", "example.org", expect=2),
                self.irp("--profile", profile, "init", "--server", self.server, "--domain", "example.org", "--ca-fingerprint", "xyz", expect=2),
            ]
        )
        self.assertIn("--server", results[0].err)
        self.assertIn("--ca-fingerprint", results[2].err)
        self.assertFalse(os.path.exists(profile))


class InitByDiscoveryTests(CLITestCase):
    """irp init without --server: the registry is found by DNS SRV, and the profile keeps
    the domain, so that each later command looks the registry up again. A real
    twisted.names DNS server on loopback serves the SRV records."""

    def dns_server(self, records: list[tuple[int, int, int, str]]) -> str:
        """Serve ``_irp._tcp.example.org`` with ``records`` (priority, weight, port,
        target); return the server's ``ADDRESS:PORT`` (:meth:`serve` changes the records)."""
        from twisted.names import dns, server

        from test.irp.client.helpers import ZoneAuthority

        self.zone = ZoneAuthority("example.org", {})
        self.serve(records)
        protocol = dns.DNSDatagramProtocol(server.DNSServerFactory(authorities=[self.zone]))
        port = global_reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    def serve(self, records: list[tuple[int, int, int, str]]) -> None:
        """Serve these SRV records from now on."""
        from test.irp.client.helpers import srv

        self.zone.records = {b"_irp._tcp.example.org": [srv(*record) for record in records]}

    async def init(self, *args: str) -> tuple[Profile, str]:  # type: ignore[override]
        """Run ``irp --profile P init --domain example.org ARGS`` in this process, with
        ``--dns-server`` naming the DNS server of the test (the first SRV target is a closed
        port, the second the registry); return the profile and what was printed."""
        self.dead = await closed_port()
        self.dns = self.dns_server([(0, 0, self.dead, "localhost"), (10, 0, self.registry.port, "localhost")])
        profile = self.path("profile")
        arguments = ["--profile", profile, "--timeout", "10", "--dns-server", self.dns, "init", "--domain", "example.org", *args]
        ctx = Context(global_reactor, build_parser().parse_args(arguments))
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        try:
            self.assertEqual(await initialise(ctx), 0)
        finally:
            if ctx.client is not None:
                await ctx.client.close()
        return Profile(profile), output.getvalue()

    async def test_by_fingerprint(self) -> None:
        """The first SRV target that answers is pinned-checked; the profile keeps the domain
        and the DNS server, not the target."""
        await self.start()
        profile, output = await self.init("--ca-fingerprint", format_fingerprint(self.registry.ca.root_fingerprint))
        config = profile.load_config()
        self.assertEqual((config.server, config.domain, config.dns_server), (None, "example.org", self.dns))
        self.assertEqual(profile.root(), self.registry.root)
        self.assertIn(f"Found the registry of example.org by DNS SRV: localhost port {self.registry.port}", output)
        self.assertIn("each command finds its registry by DNS SRV", output)

    async def test_by_file(self) -> None:
        """With --ca-file the target must prove itself with that root."""
        await self.start()
        root_file = self.path("root.pem")
        write_file(root_file, self.registry.root.public_bytes(Encoding.PEM))
        profile, _output = await self.init("--ca-file", root_file)
        self.assertIsNone(profile.load_config().server)

    async def test_resolved_at_each_connection(self) -> None:
        """Later commands (the real ``irp``, in a child process) look the registry up by
        SRV at each connection, asking the profile's DNS server: the first target down, the
        second is used; when DNS names only a dead target, the command fails saying so (a
        profile pinned to the target found at init would not notice)."""
        await self.start()
        profile, _output = await self.init("--ca-fingerprint", format_fingerprint(self.registry.ca.root_fingerprint))
        root_pem = self.registry.root.public_bytes(Encoding.PEM)
        result = await self.irp("--profile", str(profile.path), "ca")
        self.assertIn(root_pem.decode("ascii"), result.out)
        other_dead = await closed_port()
        self.serve([(0, 0, other_dead, "localhost")])
        failed = await self.irp("--profile", str(profile.path), "--timeout", "5", "ca", expect=None)
        self.assertNotEqual(failed.code, 0)
        self.assertIn(f"localhost port {other_dead}", failed.err)
        self.serve([(0, 0, other_dead, "localhost"), (5, 0, self.registry.port, "localhost")])
        result = await self.irp("--profile", str(profile.path), "ca")
        self.assertIn(root_pem.decode("ascii"), result.out)

    async def test_dns_server_option_overrides(self) -> None:
        """The global --dns-server overrides the profile's: a profile naming a DNS server
        that does not answer works with the right one given; a bad address is refused with
        a readable line (exit 2)."""
        await self.start()
        profile, _output = await self.init("--ca-fingerprint", format_fingerprint(self.registry.ca.root_fingerprint))
        config = profile.load_config()
        config.dns_server = f"127.0.0.1:{await closed_port()}"  # nothing answers there (UDP)
        profile.save_config(config)
        result = await self.irp("--profile", str(profile.path), "--dns-server", self.dns, "ca")
        self.assertIn("BEGIN CERTIFICATE", result.out)
        bad = await self.irp("--profile", self.path("new"), "--dns-server", "dns.example.org", "init", "--domain", "example.org",
                             "--ca-fingerprint", "ab" * 32, expect=2)
        self.assertIn("--dns-server: a DNS server is given by its IP address", bad.err)

    async def test_profile_with_a_server_keeps_working(self) -> None:
        """A profile an older version wrote (the server's host and port, no DNS server) is
        used as it is: no DNS look-up."""
        await self.start()
        path = self.path("old")
        Profile(path).create(ProfileConfig(server="127.0.0.1", port=self.registry.port, domain="example.org"), self.registry.root)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            data = json.load(handle)
        del data["dns_server"]
        write_file(os.path.join(path, "config.json"), json.dumps(data).encode("utf-8"))
        config = Profile(path).load_config()
        self.assertEqual((config.server, config.port, config.dns_server), ("127.0.0.1", self.registry.port, None))
        result = await self.irp("--profile", path, "ca")
        self.assertIn("BEGIN CERTIFICATE", result.out)


class UserJourneyTests(CLITestCase):
    """Enrol, publish, look up, list, revoke, CRL and status."""

    async def test_journey(self) -> None:
        """Everything a user does, in order, with the effects visible to another user."""
        await self.start()
        await self.registry.add_user("alice")
        await self.registry.add_user("bob")
        password = self.secret("password", DEFAULT_PASSWORD)
        alice = await self.init("alice", "alice")
        bob = await self.init("bob", "bob")

        result = await self.irp("--profile", alice, "enrol", "--password-file", password, "--key-type", "p256")
        self.assertIn("Enrolled alice@example.org", result.out)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(alice, "key.pem")).st_mode), 0o600)
        certificate = load_certificates(os.path.join(alice, "certificate.pem"))[0]
        serial = format(certificate.serial_number, "x")

        whoami, registered, listed, status = await gatherResults(
            [
                self.irp("--profile", alice, "whoami"),
                self.irp("--profile", alice, "register", "--address", "192.0.2.7", "--address", "[2001:db8::1]:4700", "--presence", "busy"),
                self.irp("--profile", alice, "certificates"),
                self.irp("--profile", bob, "status", serial),
            ]
        )
        self.assertEqual(whoami.out.strip(), "alice@example.org (certificate)")
        self.assertIn("alice@example.org: busy", registered.out)
        self.assertIn(serial, listed.out)
        self.assertIn("good", listed.out)
        self.assertIn(f"{serial}: good (alice@example.org)", status.out)

        # Downloads by serial, and by the fingerprint as "certificates" shows it.
        shown = format_fingerprint(fingerprint(certificate))
        self.assertIn(shown, listed.out)
        by_serial, by_fingerprint = await gatherResults(
            [
                self.irp("--profile", alice, "certificate", serial),
                self.irp("--profile", alice, "certificate", shown),
            ]
        )
        self.assertEqual(load_certificates_text(by_serial.out), [certificate])
        self.assertEqual(load_certificates_text(by_fingerprint.out), [certificate])

        result = await self.irp("--profile", bob, "lookup", "alice", "--password-file", password)
        self.assertIn("alice@example.org: busy", result.out)
        self.assertIn("192.0.2.7:4605", result.out)
        self.assertIn("[2001:db8::1]:4700", result.out)
        self.assertIn("signature verified", result.out)

        result = await self.irp("--profile", alice, "revoke", serial, "--reason", "key-compromise")
        self.assertIn("revoked", result.out)

        crl_file = self.path("crl.pem")
        by_serial, by_file, _crl, refused = await gatherResults(
            [
                self.irp("--profile", bob, "status", serial, expect=1),
                self.irp("--profile", bob, "status", "--file", os.path.join(alice, "certificate.pem"), expect=1),
                self.irp("--profile", bob, "crl", "--out", crl_file),
                self.irp("--profile", alice, "whoami", expect=3),
            ]
        )
        self.assertIn(f"{serial}: revoked (alice@example.org)", by_serial.out)
        self.assertIn("key-compromise", by_serial.out)
        self.assertIn("revoked", by_file.out)
        issuing_crl = x509.load_pem_x509_crl(read_file(crl_file))  # the issuing CA's comes first
        self.assertIsNotNone(issuing_crl.get_revoked_certificate_by_serial_number(certificate.serial_number))
        self.assertIn("[certificate-rejected]", refused.err)


class AdministrationTests(CLITestCase):
    """irp admin."""

    async def test_create_user_and_disable_password_login(self) -> None:
        """An administrator creates a user, who logs in; once password login is disabled
        the password no longer works (exit 3)."""
        await self.start()
        admin = await self.init("admin", "admin")
        admin_password = self.secret("admin-password", self.registry.admin_password)
        carol_password = self.secret("carol-password", DEFAULT_PASSWORD)
        result = await self.irp(
            "--profile", admin, "admin", "--password-file", admin_password,
            "create-user", "carol", "--display-name", "Carol", "--new-password-file", carol_password,
        )
        self.assertIn("Created carol@example.org.", result.out)
        carol = await self.init("carol", "carol")
        result = await self.irp("--profile", carol, "login", "--password-file", carol_password)
        self.assertIn("Logged in as carol@example.org with a password", result.out)
        result = await self.irp("--profile", admin, "admin", "--password-file", admin_password, "disable-password-login", "carol")
        self.assertIn("disabled for carol", result.out)
        result = await self.irp("--profile", carol, "login", "--password-file", carol_password, expect=3)
        self.assertIn("[password-login-disabled]", result.err)

    async def test_pkcs12_generate_for_another_user(self) -> None:
        """'pkcs12 generate --of bob' run by an administrator makes Bob's key and
        certificate, not the administrator's."""
        from cryptography.hazmat.primitives.serialization import pkcs12

        await self.start()
        await self.registry.add_user("bob")
        admin = await self.init("admin", "admin")
        admin_password = self.secret("admin-password", self.registry.admin_password)
        passphrase = self.secret("passphrase", "a passphrase for Bob")
        out = self.path("bob.p12")
        result = await self.irp(
            "--profile", admin, "pkcs12", "generate", "--of", "bob", "--password-file", admin_password,
            "--passphrase-file", passphrase, "--key-type", "p256", "--out", out,
        )
        self.assertIn("for bob@example.org", result.out)
        bundle = pkcs12.load_pkcs12(read_file(out), b"a passphrase for Bob")
        assert bundle.cert is not None
        self.assertIn("bob", bundle.cert.certificate.subject.rfc4514_string())
        self.assertNotIn("admin", bundle.cert.certificate.subject.rfc4514_string())

    async def test_password_file_after_the_action(self) -> None:
        """The administrator's --password-file works before or after the action."""
        await self.start()
        admin = await self.init("admin", "admin")
        admin_password = self.secret("admin-password", self.registry.admin_password)
        before, after = await gatherResults(
            [
                self.irp("--profile", admin, "admin", "--password-file", admin_password, "users"),
                self.irp("--profile", admin, "admin", "users", "--password-file", admin_password),
            ]
        )
        self.assertIn("admin", after.out)
        self.assertEqual(before.out, after.out)

    async def test_password_file_readable_by_others(self) -> None:
        """A password file the group or others may read is refused, like a key file: one
        line saying so and how to fix it, exit 2, nothing done."""
        await self.start()
        admin = await self.init("admin", "admin")
        admin_password = self.secret("admin-password", self.registry.admin_password)
        os.chmod(admin_password, 0o644)
        result = await self.irp("--profile", admin, "admin", "--password-file", admin_password, "users", expect=2)
        self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
        self.assertIn("mode 0644", result.err)
        self.assertIn(f"chmod 600 {admin_password}", result.err)

    async def test_mistyped_repetition_asks_again(self) -> None:
        """At a terminal, a mistyped repetition of a new password asks again instead of
        ending the command; the password typed consistently is the one set."""
        await self.start()
        await self.registry.add_user("bob")
        admin = await self.init("admin", "admin")
        admin_password = self.secret("admin-password", self.registry.admin_password)
        answers = [
            ("New password for bob: ", "a new password 1"),
            ("Again: ", "a new pasword 1"),  # mistyped
            ("New password for bob: ", "a new password 2"),
            ("Again: ", "a new password 2"),
        ]
        result = await run_at_terminal(
            ["-m", "irp.cli", "--profile", admin, "admin", "--password-file", admin_password, "set-password", "bob"], answers, home=self.home
        )
        self.assertEqual(result.code, 0, result)
        self.assertIn("The two entries differ; please type it again.", result.out)
        self.assertIn("Password of bob set.", result.out)
        self.assertNotIn("Traceback", result.out)
        client = await self.registry.client("bob", "a new password 2")
        self.assertEqual(str((await client.whoami()).user), "bob@example.org")

    async def test_not_an_administrator(self) -> None:
        """A user who is not an administrator gets a readable refusal (exit 1)."""
        await self.start()
        await self.registry.add_user("alice")
        password = self.secret("password", DEFAULT_PASSWORD)
        alice = await self.init("alice", "alice")
        result = await self.irp(
            "--profile", alice, "admin", "--password-file", password, "create-user", "eve", "--no-password", expect=1
        )
        self.assertIn("[forbidden]", result.err)

    async def test_sixid_allow_list(self) -> None:
        """irp admin sixid-allow / sixid-list / sixid-disallow: either form in, the
        grouped form out; a mistyped ID is refused before asking the registry (exit 2)."""
        await self.start()
        admin = await self.init("admin", "admin")
        password = self.secret("admin-password", self.registry.admin_password)
        grouped = "q3dv-6zka-m4tf-jx2b-7wqp-le5n-yc4h-ur6g"
        base = ("--profile", admin, "admin", "--password-file", password)
        result = await self.irp(*base, "sixid-allow", "Q3DV6ZKAM4TFJX2B7WQPLE5NYC4HUR6G", "--note", "Alice's phone")
        self.assertIn(f"{grouped} is now on the sixid allow list.", result.out)
        result = await self.irp(*base, "sixid-allow", grouped)
        self.assertIn(f"{grouped} was already on the sixid allow list.", result.out)
        result = await self.irp(*base, "sixid-list")
        [line, summary] = result.out.strip().splitlines()
        self.assertTrue(line.startswith(f"{grouped}  "), line)
        self.assertTrue(line.endswith("  admin@example.org  Alice's phone"), line)
        self.assertEqual(summary, "(1 shown from 0)")
        self.assertTrue(await self.registry.store.sixid_allowed("q3dv6zkam4tfjx2b7wqple5nyc4hur6g"))
        result = await self.irp(*base, "sixid-disallow", grouped)
        self.assertIn(f"{grouped} is no longer on the sixid allow list.", result.out)
        result = await self.irp(*base, "sixid-disallow", grouped)
        self.assertIn("was not on", result.out)
        result = await self.irp(*base, "sixid-allow", "not-an-id", expect=2)
        self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
        self.assertTrue(result.err.startswith("irp: "), result.err)
        self.assertEqual(await self.registry.store.list_allowed_sixids(), [])


class ErrorTests(CLITestCase):
    """Readable errors and their exit codes."""

    async def test_exit_codes(self) -> None:
        """Wrong password 3, unknown user 4, unreachable registry 5, local problems 2;
        one line on stderr, no traceback."""
        await self.start()
        await self.registry.add_user("alice")
        profile = await self.init("alice", "alice")
        good = self.secret("good", DEFAULT_PASSWORD)
        bad = self.secret("bad", "not the password")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        wrong_password, unknown_user, unknown_entry, unreachable, no_profile, status_without_serial, upload_without_file, no_password = await gatherResults(
            [
                self.irp("--profile", profile, "login", "--password-file", bad, expect=3),
                self.irp("--profile", profile, "lookup", "nobody", "--password-file", good, expect=4),
                self.irp("--profile", profile, "user", "nobody@example.org", "--password-file", good, expect=4),
                self.irp("--profile", profile, "--server", f"127.0.0.1:{closed_port}", "login", "--password-file", good, expect=5),
                self.irp("--profile", self.path("missing"), "whoami", expect=2),
                self.irp("--profile", profile, "status", expect=2),
                self.irp("--profile", profile, "pkcs12", "upload", "--password-file", good, expect=2),
                self.irp("--profile", profile, "login", expect=2),
            ]
        )
        self.assertIn("[login-failed]", wrong_password.err)
        self.assertIn("[not-found]", unknown_user.err)
        self.assertIn("[not-found]", unknown_entry.err)
        self.assertIn("cannot connect", unreachable.err)
        self.assertIn(f"irp --profile {self.path('missing')} init --server HOST --domain DOMAIN", no_profile.err)
        self.assertIn("serial", status_without_serial.err)
        self.assertIn("--file", upload_without_file.err)
        self.assertIn("--password-file", no_password.err)
        for result in (wrong_password, unknown_user, unreachable, no_profile, status_without_serial):
            self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
            self.assertTrue(result.err.startswith("irp: "), result.err)

    async def test_password_on_stdin(self) -> None:
        """Without --password-file the password is read from standard input."""
        await self.start()
        await self.registry.add_user("alice")
        profile = await self.init("alice", "alice")
        result = await self.irp("--profile", profile, "login", stdin=DEFAULT_PASSWORD.encode() + b"\n")
        self.assertIn("alice@example.org", result.out)

    async def test_help(self) -> None:
        """--help works everywhere and names the commands."""
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        result = await self.irp("--help")
        for command in ("init", "enrol", "register", "lookup", "certificates", "revoke", "crl", "status", "admin"):
            self.assertIn(command, result.out)
        result = await self.irp("admin", "--help")
        self.assertIn("disable-password-login", result.out)

    async def test_help_says_what_each_part_does(self) -> None:
        """The overview names the pkcs12 actions as they are typed; pkcs12 --help says which
        options go with which action; every admin action has a description."""
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        overview = await self.irp("--help")
        pkcs12_line = " ".join(overview.out.split("pkcs12", 1)[1].split("renew", 1)[0].split())
        self.assertNotIn("download", pkcs12_line.lower())
        self.assertIn("get one", pkcs12_line)
        pkcs12_help = (await self.irp("pkcs12", "--help")).out
        for group in ("get:", "upload:", "generate:", "list and generate:"):
            self.assertIn(group, pkcs12_help)
        for action in ("create-user", "set-password", "delete-user", "users", "revoke", "set-admin", "sixid-allow", "sixid-disallow", "sixid-list", "audit"):
            result = await self.irp("admin", action, "--help")
            description = result.out.split("\n\n")[1]
            self.assertFalse(description.startswith(("positional", "options")), f"admin {action} has no description:\n{result.out}")


def load_certificates_text(text: str) -> list[x509.Certificate]:
    """The PEM certificates a command printed."""
    return x509.load_pem_x509_certificates(text.encode("ascii"))


class _Terminal(ProcessProtocol):
    """Answers a child's prompts on its terminal, one answer per prompt, in order."""

    def __init__(self, answers: list[tuple[str, str]]) -> None:
        self.answers = list(answers)
        self.output = ""
        self.seen = 0
        self.done: Deferred[CommandResult] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        while self.answers and self.answers[0][0] in self.output[self.seen :]:
            prompt, answer = self.answers.pop(0)
            self.seen = self.output.index(prompt, self.seen) + len(prompt)
            assert self.transport is not None
            self.transport.write(answer.encode("utf-8") + b"\n")

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(CommandResult(-1 if code is None else code, self.output, ""))


def run_at_terminal(arguments: list[str], answers: list[tuple[str, str]], *, home: str) -> Deferred[CommandResult]:
    """Run ``python ARGUMENTS`` on a pseudo-terminal, typing ``answers`` at its prompts."""
    terminal = _Terminal(answers)
    environment = {"PYTHONPATH": REPOSITORY, "HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    global_reactor.spawnProcess(  # type: ignore[attr-defined]
        terminal, sys.executable, [sys.executable, *arguments], env=environment, path=home, usePTY=True
    )
    return terminal.done
