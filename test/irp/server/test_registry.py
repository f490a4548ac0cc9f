"""Integration tests of every registry operation over real TLS on loopback.

Each test starts a real registry (:class:`test.helpers.RunningRegistry`: TLS, its own CA, a
SQLite file) and talks to it with the real client library, checking what each operation
returns and what it changes for everyone else.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
from collections.abc import Awaitable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from common.identity import Identity, identity_from_certificate
from common.pki.keyfiles import fingerprint
from common.wire.framing import HEADER, FrameDecoder, encode_frame
from common.wire.xmlcodec import make_element, sub_element
from irp import errors
from irp.client.api import RegistryClient
from irp.server.ca import DEFAULT_ROOT_CRL_LIFETIME, generate_key
from irp.server.dispatch import CHILD_FIELDS
from irp.server.passwords import Argon2Parameters, PasswordHasher
from irp.server.registry import RegistryConfig
from irp.server.session import Session, SessionState
from irp.wire.messages import build_request, parse_request
from irp.wire.records import Endpoint
from test import pki
from test.helpers import DEFAULT_PASSWORD, TEST_PARAMETERS, EnrolledUser, RunningRegistry
from test.irp.server.test_protocol import make_registry

T = TypeVar("T")

DOMAIN = "example.org"
OTHER_PASSWORD = "another good password"


def csr(key: Any, *, subject: str = "mallory", extra_san: bool = True) -> bytes:
    """A CSR for ``key`` whose subject and extensions claim things the registry ignores."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, subject),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil.example"),
            ]
        )
    )
    if extra_san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"irp:{subject}@{DOMAIN}"), x509.DNSName("evil.example")]
            ),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def external_certificate(
    identity: str = f"alice@{DOMAIN}", *, email: str | None = None, expired: bool = False, serial: int | None = None
) -> x509.Certificate:
    """A certificate from another organisation's CA naming ``identity`` (or an email)."""
    partner = pki.make_ca("partner.example")
    san: list[x509.GeneralName] = [x509.RFC822Name(email)] if email else [x509.UniformResourceIdentifier(f"irp:{identity}")]
    certificate, _key = pki.build_certificate(
        partner.issuing_certificate,
        partner.issuing_key,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]),
        san=san,
        not_before=datetime.timedelta(days=-30 if expired else -1),
        not_after=datetime.timedelta(days=-1 if expired else 30),
        extended_key_usage=[ExtendedKeyUsageOID.EMAIL_PROTECTION],
        serial=serial,
    )
    return certificate


def pkcs12_bundle() -> bytes:
    """A passphrase-protected PKCS#12 file of another CA's (as a user would escrow)."""
    credentials = pki.issue_user(pki.make_ca("partner.example"), "alice")
    return pkcs12.serialize_key_and_certificates(
        b"alice", credentials.key, credentials.certificate, None,
        serialization.BestAvailableEncryption(b"escrow passphrase"),
    )


def login_element(user: str, password: str) -> Any:
    """A <login> operation element."""
    element = make_element("login", {"user": user})
    sub_element(element, "password", None, password)
    return element


def tamper(client: RegistryClient, old: bytes, new: bytes) -> None:
    """Rewrite every response the client receives (as a dishonest registry would)."""
    protocol = client.protocol
    deliver = protocol.dataReceived
    decoder = FrameDecoder(1 << 24)

    def rewrite(data: bytes) -> None:
        for frame in decoder.feed(data):
            deliver(encode_frame(frame.replace(old, new)))

    protocol.dataReceived = rewrite  # type: ignore[method-assign]


class RegistryTestCase(unittest.TestCase):
    """Starts a registry per test; helpers for users and assertions."""

    config: RegistryConfig | None = None

    async def start(self, **config: Any) -> RunningRegistry:
        registry_config = RegistryConfig(domain=DOMAIN, **config) if config else None
        self.registry = await RunningRegistry(self, config=registry_config).start()
        return self.registry

    async def fails(self, name: str, awaitable: Awaitable[T]) -> errors.IRPError:
        """Await ``awaitable``, which must fail with the IRP error of wire name ``name``."""
        try:
            result = await awaitable
        except errors.IRPError as error:
            self.assertEqual(error.name, name, f"expected {name}, got {error!r}")
            return error
        self.fail(f"expected {name}, got the result {result!r}")

    async def user(self, name: str, password: str = DEFAULT_PASSWORD, **fields: Any) -> RegistryClient:
        """Create a user and return a password-logged-in client of theirs."""
        await self.registry.add_user(name, password, **fields)
        return await self.registry.client(name, password)

    async def enrolled(self, name: str) -> tuple[EnrolledUser, RegistryClient]:
        """Create a user with a certificate; return it and a certificate-logged-in client."""
        await self.registry.add_user(name)
        user = await self.registry.issue(name)
        return user, await self.registry.client(user=user)


class SessionTests(RegistryTestCase):
    """capabilities, login, logout, whoami and certificate login."""

    async def test_capabilities(self) -> None:
        """The server names its domain, version, auth methods, limits and operations."""
        await self.start()
        client = await self.registry.client()
        element = await client.capabilities()
        self.assertEqual((element.get("domain"), element.get("versions")), (DOMAIN, "1"))
        self.assertEqual(int(element.get("max-request", "0")), self.registry.limits.max_request)
        self.assertEqual({child.get("method") for child in element.iter("auth")}, {"certificate", "password"})
        operations = {child.get("name") for child in element.iter("operation")}
        self.assertEqual(operations, set(self.registry.registry.operations))
        self.assertIn("generate-key", operations)

    async def test_password_login(self) -> None:
        """login, whoami and logout."""
        await self.start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        self.assertEqual((await client.whoami()).method, "none")
        session = await client.login("alice", DEFAULT_PASSWORD)
        self.assertEqual((str(session.user), session.method, session.is_admin), ("alice@example.org", "password", False))
        whoami = await client.whoami()
        self.assertEqual((str(whoami.user), whoami.method), ("alice@example.org", "password"))
        session = await client.logout()
        self.assertIsNone(session.user)
        await self.fails("not-authenticated", client.lookup("alice"))

    async def test_login_with_full_identity(self) -> None:
        """user@domain works for the registry's own domain only."""
        await self.start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        self.assertEqual((await client.login("alice@example.org", DEFAULT_PASSWORD)).method, "password")
        await self.fails("not-found", client.login("alice@example.net", DEFAULT_PASSWORD))

    async def test_admin_login(self) -> None:
        """The bootstrap administrator logs in with the password from its file."""
        await self.start()
        client = await self.registry.admin()
        self.assertTrue((await client.whoami()).is_admin)

    async def test_wrong_password_and_unknown_user_look_the_same(self) -> None:
        """A wrong password, an unknown user and a user without a password all read
        login-failed with the same message."""
        await self.start()
        await self.registry.add_user("alice")
        await self.registry.add_user("nopass", None)
        client = await self.registry.client()
        messages = set()
        for user, password in (("alice", "wrong password!"), ("nobody", DEFAULT_PASSWORD), ("nopass", DEFAULT_PASSWORD)):
            messages.add((await self.fails("login-failed", client.login(user, password))).message)
        self.assertEqual(len(messages), 1)
        self.assertIsNone((await client.whoami()).user)

    async def test_user_lockout(self) -> None:
        """After too many failures even the right password is rate-limited."""
        await self.start(login_failures_per_user=2)
        await self.registry.add_user("alice")
        client = await self.registry.client()
        for _ in range(3):
            await self.fails("login-failed", client.login("alice", "wrong password!"))
        error = await self.fails("rate-limited", client.login("alice", DEFAULT_PASSWORD))
        self.assertIn("seconds", error.message)

    async def test_address_budget_not_reset_by_own_login(self) -> None:
        """Logging into one's own account does not reset the address's failure budget
        (else one account would allow unlimited guessing against everyone else)."""
        await self.start(login_failures_per_address=3)
        for name in ("mallory", "bob", "carol", "dave", "erin"):
            await self.registry.add_user(name)
        client = await self.registry.client()
        for victim in ("bob", "carol", "dave"):
            await self.fails("login-failed", client.login(victim, "guess number one"))
        await client.login("mallory", DEFAULT_PASSWORD)
        await self.fails("login-failed", client.login("erin", "guess number one"))
        await self.fails("rate-limited", client.login("erin", DEFAULT_PASSWORD))

    async def test_address_budget_per_ipv6_64(self) -> None:
        """Failed logins from one IPv6 /64 share one budget, whichever source address
        they use. (Loopback offers no such addresses, so the requests go straight to the
        registry, as the protocol would hand them over.)"""
        await self.start(login_failures_per_address=2)
        await self.registry.add_user("alice")
        await self.registry.add_user("bob")
        registry = self.registry.registry

        async def login(host: str, user: str, password: str) -> Any:
            request = parse_request(build_request(1, login_element(user, password)))
            return await registry.handle(Session(peer_host=host), request)

        for number in range(1, 4):
            await self.fails("login-failed", login(f"2001:db8::{number}", "bob", "wrong password!"))
        await self.fails("rate-limited", login("2001:db8::ffff", "alice", DEFAULT_PASSWORD))
        await login("2001:db8:0:1::1", "alice", DEFAULT_PASSWORD)

    async def test_rehash_on_login(self) -> None:
        """A hash with old parameters is replaced at the next successful login."""
        await self.start()
        await self.registry.add_user("alice")
        old = PasswordHasher(Argon2Parameters(memory_kib=128, iterations=1, lanes=1)).hash(DEFAULT_PASSWORD)
        await self.registry.store.set_password_hash("alice", old)
        await self.registry.client("alice")
        account = await self.registry.store.get_account("alice")
        assert account is not None and account.password_hash is not None
        self.assertNotEqual(account.password_hash, old)
        self.assertFalse(self.registry.registry.hasher.needs_rehash(account.password_hash))
        await self.registry.client("alice")  # the new hash works

    async def test_rehash_keeps_other_sessions(self) -> None:
        """A rehash (the same password, stronger parameters) is not a new password: other
        password sessions of the user outlive it, even when sessions are re-validated."""
        await self.start()
        await self.registry.add_user("alice")
        await self.registry.add_user("bob")
        earlier = await self.registry.client("alice")
        registry = self.registry.registry
        registry.hasher = PasswordHasher(dataclasses.replace(TEST_PARAMETERS, memory_kib=512))  # an upgrade
        await self.registry.client("alice")  # rehashes
        account = await self.registry.store.get_account("alice")
        assert account is not None and account.password_hash is not None
        self.assertFalse(registry.hasher.needs_rehash(account.password_hash))
        await (await self.registry.admin()).set_admin("bob", True)  # every session re-validates
        await earlier.lookup("alice")
        self.assertEqual((await earlier.whoami()).method, "password")

    async def test_rehash_does_not_undo_a_new_password(self) -> None:
        """A rehash replaces only the hash it was computed for: a password set meanwhile
        stays."""
        await self.start()
        await self.registry.add_user("alice")
        store = self.registry.store
        old = await store.get_account("alice")
        assert old is not None and old.password_hash is not None
        await store.set_password_hash("alice", "$argon2id$new")
        self.assertFalse(await store.rehash_password("alice", old.password_hash, "$argon2id$rehashed"))
        account = await store.get_account("alice")
        assert account is not None
        self.assertEqual(account.password_hash, "$argon2id$new")

    async def test_unknown_user_costs_one_hash(self) -> None:
        """The dummy hash that an unknown user's password is checked against is made when
        the registry starts: the first such login costs no extra hash."""
        await self.start()
        hasher = self.registry.registry.hasher
        made: list[str] = []
        original = hasher.hash

        def counting(password: str) -> str:
            made.append(password)
            return original(password)

        hasher.hash = counting  # type: ignore[method-assign]
        client = await self.registry.client()
        await self.fails("login-failed", client.login("nobody", DEFAULT_PASSWORD))
        self.assertEqual(made, [])

    async def test_certificate_expiry_ends_session(self) -> None:
        """A certificate that expires during a session ends it at the next request (no
        other event needed); the session is anonymous afterwards."""
        await self.start()
        alice, client = await self.enrolled("alice")
        await client.lookup("alice")
        later = Clock()
        later.advance(alice.certificate.not_valid_after_utc.timestamp() + 1)
        self.registry.registry.clock = later  # the registry's clock only
        error = await self.fails("certificate-rejected", client.lookup("alice"))
        self.assertIn("expired", error.message)
        await self.fails("not-authenticated", client.lookup("alice"))

    async def test_certificate_login(self) -> None:
        """A certificate the registry issued logs the connection in at once."""
        await self.start()
        _alice, client = await self.enrolled("alice")
        session = await client.whoami()
        self.assertEqual((str(session.user), session.method), ("alice@example.org", "certificate"))
        await client.lookup("alice")

    async def test_foreign_certificate_refused(self) -> None:
        """A certificate of another CA for the same domain is refused readably."""
        await self.start()
        await self.registry.add_user("alice")
        impostor = pki.issue_user(pki.make_ca(DOMAIN, label="impostor"), "alice")
        client = await self.registry.client(user=EnrolledUser("alice", "", impostor.key, impostor.certificate, 0))
        await self.fails("certificate-rejected", client.whoami())
        await self.fails("certificate-rejected", client.lookup("alice"))
        # Public operations still work: the CA chain and CRL help to find out why.
        await client.capabilities()
        await client.ca_chain()

    async def test_unissued_certificate_of_our_ca_refused(self) -> None:
        """A certificate with our CA's signature but unknown to the store is refused."""
        await self.start()
        await self.registry.add_user("alice")
        key = generate_key("p256")
        certificate = self.registry.ca.issue_user_certificate(Identity("alice", DOMAIN), key.public_key())
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, 0))
        error = await self.fails("certificate-rejected", client.whoami())
        self.assertIn("not issued by this registry", error.message)


class DirectoryTests(RegistryTestCase):
    """get-user, update-user, list-users."""

    async def test_get_user(self) -> None:
        """Everyone logged in sees a user's signed public entry; only the user and
        administrators see the account settings."""
        await self.start()
        alice = await self.user("alice", display_name="Alice", email="alice@example.org")
        bob = await self.user("bob")
        record, account = await alice.get_user("alice")
        self.assertEqual((record.display_name, record.email, record.seq), ("Alice", "alice@example.org", 1))
        assert account is not None
        self.assertEqual((account.is_admin, account.password_login, account.has_password), (False, True, True))
        record, account = await bob.get_user("alice@example.org")
        self.assertEqual(record.display_name, "Alice")
        self.assertIsNone(account)
        _record, account = await (await self.registry.admin()).get_user("alice")
        self.assertIsNotNone(account)
        await self.fails("not-found", bob.get_user("nobody"))

    async def test_update_user_seen_by_others(self) -> None:
        """An update is signed with the next seq and visible to others at once."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        record = await alice.update_user(display_name="Alice L.", email="al@example.org", attributes={"team": "red", "x": "1"})
        self.assertEqual((record.seq, record.attributes), (2, (("team", "red"), ("x", "1"))))
        seen, _ = await bob.get_user("alice")
        self.assertEqual(seen, record)
        record = await alice.update_user(attributes={})
        self.assertEqual((record.display_name, record.attributes, record.seq), ("Alice L.", (), 3))

    async def test_update_user_refusals(self) -> None:
        """Bad values are refused and change nothing."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.update_user(email="not an email"))
        await self.fails("invalid-argument", alice.update_user(display_name="line\nbreak"))
        await self.fails("invalid-argument", alice.update_user(attributes={"bad name": "x"}))
        operation = make_element("update-user")
        sub_element(operation, "attribute", {"name": "x"}, "1")
        await self.fails("bad-request", alice.protocol.request(operation))
        record, _ = await alice.get_user("alice")
        self.assertEqual(record.seq, 1)

    async def test_update_other_user(self) -> None:
        """Users cannot change others' entries; administrators can."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        await self.fails("forbidden", bob.update_user("alice", display_name="pwned"))
        admin = await self.registry.admin()
        record = await admin.update_user("alice", display_name="Set by admin")
        self.assertEqual(record.display_name, "Set by admin")

    async def test_list_users_paging(self) -> None:
        """Pages by user name with the total; prefix filters; every entry verifies."""
        await self.start()
        names = [f"user{i:02d}" for i in range(7)]
        for name in names:
            await self.registry.add_user(name)
        client = await self.registry.client("user00")
        everyone = sorted(["admin", *names])
        seen: list[str] = []
        offset = 0
        while True:
            total, page = await client.list_users(offset, 3)
            self.assertEqual(total, len(everyone))
            if not page:
                break
            self.assertLessEqual(len(page), 3)
            seen.extend(record.identity.username for record in page)
            offset += len(page)
        self.assertEqual(seen, everyone)
        total, page = await client.list_users(0, 50, "user0")
        self.assertEqual((total, len(page)), (7, 7))
        total, page = await client.list_users(2, 2, "user")
        self.assertEqual([record.identity.username for record in page], ["user02", "user03"])
        await self.fails("invalid-argument", client.list_users(0, 10_000))
        await self.fails("invalid-argument", client.list_users(0, 0))

    async def test_full_page_of_large_entries(self) -> None:
        """A page of 200 entries with 32 attributes each (6 602 elements, more than a
        request may hold) reaches the client whole."""
        await self.start()
        attributes = tuple((f"attribute{index:02d}", "v") for index in range(32))
        for number in range(200):
            await self.registry.store.create_user(f"user{number:03d}", attributes=attributes)
        client = await self.registry.client("admin", self.registry.admin_password)
        total, page = await client.list_users(0, 200, "user")
        self.assertEqual((total, len(page)), (200, 200))
        self.assertEqual({len(record.attributes) for record in page}, {32})
        self.assertEqual((await client.whoami()).method, "password")  # the connection is fine


class AddressTests(RegistryTestCase):
    """register-address and lookup."""

    async def test_register_then_lookup_from_another_connection(self) -> None:
        """Registered addresses are visible to another user's connection at once, signed."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        before = await bob.lookup("alice")
        self.assertEqual((before.presence, before.endpoints), ("offline", ()))
        endpoints = [Endpoint.parse("2001:db8::7", 4605), Endpoint.parse("192.0.2.7", 4605)]
        record = await alice.register_addresses(endpoints, "online", ttl=120)
        self.assertEqual(record.seq, before.seq + 1)
        self.assertEqual(record.expires_at - record.signed_at, 120)
        seen = await bob.lookup("alice")
        self.assertEqual(seen, record)
        self.assertEqual(list(seen.endpoints), endpoints)
        self.assertTrue(seen.is_current(self.registry.registry.clock.seconds()))

    async def test_offline_drops_endpoints(self) -> None:
        """Going offline publishes no addresses."""
        await self.start()
        alice = await self.user("alice")
        record = await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)], "offline")
        self.assertEqual((record.presence, record.endpoints), ("offline", ()))

    async def test_default_ttl(self) -> None:
        """Without a ttl the registry's default applies."""
        await self.start()
        alice = await self.user("alice")
        record = await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)], "busy")
        self.assertEqual(record.expires_at - record.signed_at, RegistryConfig(domain=DOMAIN).address_ttl_default)

    async def test_register_refusals(self) -> None:
        """Bad presence, ttl, addresses, duplicates and too many endpoints are refused."""
        await self.start()
        alice = await self.user("alice")
        one = [Endpoint.parse("192.0.2.7", 4605)]
        await self.fails("invalid-argument", alice.register_addresses(one, "invisible"))
        await self.fails("invalid-argument", alice.register_addresses(one, ttl=5))
        await self.fails("invalid-argument", alice.register_addresses(one, ttl=10**6))
        await self.fails("invalid-argument", alice.register_addresses(one * 2))
        many = [Endpoint.parse(f"192.0.2.{i}", 4605) for i in range(1, 10)]
        await self.fails("invalid-argument", alice.register_addresses(many))
        for address, port in (
            ("example.org", "4605"),
            ("224.0.0.1", "4605"),
            ("fe80::1%eth0", "4605"),
            ("::1", "0"),
            ("::1", "\u0664\u0666\u0660\u0665"),
            ("::ffff:192.0.2.7", "4605"),
            ("::192.0.2.7", "4605"),
        ):
            operation = make_element("register-address")
            sub_element(operation, "endpoint", {"address": address, "port": port})
            await self.fails("invalid-argument", alice.protocol.request(operation))
        record = await alice.lookup("alice")
        self.assertEqual(record.seq, 1)

    async def test_lookup_unknown(self) -> None:
        """Unknown users and users of other domains are not-found."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("not-found", alice.lookup("nobody"))
        await self.fails("not-found", alice.lookup("bob@example.net"))

    async def test_tampered_addresses_fail_verification(self) -> None:
        """The client checks the registry's signature: a changed port is caught."""
        await self.start()
        alice = await self.user("alice")
        await alice.register_addresses([Endpoint.parse("192.0.2.7", 4605)])
        bob = await self.user("bob")
        await bob.ca_chain()
        tamper(bob, b'port="4605"', b'port="4606"')
        error = await self.fails("server-verification-failed", bob.lookup("alice"))
        self.assertIn("signature", error.message)

    async def test_tampered_user_entry_fails_verification(self) -> None:
        """A changed directory entry is caught too."""
        await self.start()
        await self.registry.add_user("alice", display_name="Alice")
        bob = await self.user("bob")
        await bob.ca_chain()
        tamper(bob, b'display-name="Alice"', b'display-name="Mallory"')
        await self.fails("server-verification-failed", bob.get_user("alice"))

    async def test_answer_for_another_user_refused(self) -> None:
        """A record for someone other than the one asked for is refused."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        tamper(bob, b'id="bob@example.org"', b'id="alice@example.org"')
        await self.fails("server-verification-failed", bob.lookup("bob"))


class CertificateTests(RegistryTestCase):
    """request-certificate, generate-key, listings, downloads and uploads."""

    async def test_csr_subject_ignored(self) -> None:
        """The certificate names the logged-in user, whatever the CSR claims, and works."""
        await self.start()
        alice = await self.user("alice")
        key = generate_key("p256")
        entry = await alice.request_certificate(csr(key))
        certificate = entry.certificate
        assert certificate is not None
        self.assertEqual(identity_from_certificate(certificate), Identity("alice", DOMAIN))
        self.assertEqual(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "alice")
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        self.assertFalse(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(certificate.public_key(), key.public_key())
        certificate.verify_directly_issued_by(self.registry.ca.issuing_certificate)
        self.assertEqual((entry.status, entry.origin, str(entry.user)), ("good", "issued", "alice@example.org"))
        self.assertEqual(entry.fingerprint, fingerprint(certificate))
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, entry.serial))
        self.assertEqual((await client.whoami()).method, "certificate")

    async def test_bad_csrs(self) -> None:
        """Garbage, a CSR not signed by its own key and a weak key are refused."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.request_certificate(b"not a CSR"))
        good = x509.load_pem_x509_csr(csr(generate_key("p256")))
        forged = bytearray(good.public_bytes(serialization.Encoding.DER))
        forged[-3] ^= 0x01  # inside the signature
        forged_pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(forged)) + b"-----END CERTIFICATE REQUEST-----\n"
        await self.fails("invalid-argument", alice.request_certificate(forged_pem))
        weak = csr(pki.rsa_key(1024), extra_san=False)
        await self.fails("weak-key", alice.request_certificate(weak))
        self.assertEqual(await alice.list_certificates(), [])

    async def test_certificate_quota(self) -> None:
        """At most max_certificates_per_user certificates, however they are made."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        await alice.request_certificate(csr(generate_key("p256")))
        await alice.request_certificate(csr(generate_key("p256")))
        await self.fails("conflict", alice.request_certificate(csr(generate_key("p256"))))
        await self.fails("conflict", alice.generate_key("a long passphrase", key_type="p256"))
        self.assertEqual(len(await alice.list_certificates()), 2)
        self.assertEqual(await alice.list_pkcs12(), [])

    async def test_quota_counts_current_certificates(self) -> None:
        """Revoked certificates do not count against the quota, and a renewal at the limit
        works (its predecessor is being replaced): years of renewals never lock a user out."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        first = await alice.request_certificate(csr(generate_key("p256")))
        await alice.request_certificate(csr(generate_key("p256")))
        renewed = await alice.renew(first.serial)
        await alice.revoke(renewed.serial)
        await alice.request_certificate(csr(generate_key("p256")))
        await self.fails("conflict", alice.request_certificate(csr(generate_key("p256"))))
        self.assertEqual(len(await alice.list_certificates()), 4)

    async def test_upload_quota(self) -> None:
        """Uploaded certificates count against the quota like issued ones."""
        await self.start(max_certificates_per_user=2)
        alice = await self.user("alice")
        await alice.request_certificate(csr(generate_key("p256")))
        await alice.upload_certificate(external_certificate())
        await self.fails("conflict", alice.upload_certificate(external_certificate()))
        self.assertEqual(len(await alice.list_certificates()), 2)

    async def test_pkcs12_quota_for_generated_keys(self) -> None:
        """Generated keys count against max_pkcs12_per_user."""
        await self.start(max_pkcs12_per_user=1)
        alice = await self.user("alice")
        await alice.generate_key("a long passphrase", key_type="p256")
        await self.fails("conflict", alice.generate_key("a long passphrase", key_type="p256"))
        self.assertEqual(len(await alice.list_certificates()), 1)

    async def test_generate_key(self) -> None:
        """The PKCS#12 opens with the passphrase and holds a key and a certificate naming
        the user, with the CA chain; the registry keeps a byte-identical copy."""
        await self.start()
        alice = await self.user("alice")
        info, entry = await alice.generate_key("sesame open please", key_type="p256", label="phone")
        assert info.data is not None and entry.certificate is not None
        self.assertRaises(ValueError, pkcs12.load_pkcs12, info.data, b"wrong passphrase")
        bundle = pkcs12.load_pkcs12(info.data, b"sesame open please")
        assert bundle.key is not None and bundle.cert is not None
        certificate = bundle.cert.certificate
        self.assertEqual(certificate, entry.certificate)
        self.assertEqual(identity_from_certificate(certificate), Identity("alice", DOMAIN))
        self.assertEqual(bundle.key.public_key(), certificate.public_key())
        self.assertEqual(bundle.cert.friendly_name, b"alice@example.org")
        self.assertIn(self.registry.ca.issuing_certificate, [extra.certificate for extra in bundle.additional_certs])
        self.assertEqual((info.label, info.origin, info.username, info.size), ("phone", "generated", "alice", len(info.data)))
        self.assertEqual(info.certificate_serial, format(entry.serial, "x"))
        [listed] = await alice.list_pkcs12()
        self.assertEqual((listed.id, listed.data), (info.id, None))
        self.assertEqual((await alice.get_pkcs12(info.id)).data, info.data)
        user = EnrolledUser("alice", "", bundle.key, certificate, entry.serial)  # type: ignore[arg-type]
        self.assertEqual((await (await self.registry.client(user=user)).whoami()).method, "certificate")

    async def test_generate_key_types_and_refusals(self) -> None:
        """Ed25519 keys; a short passphrase or unknown key type is refused."""
        await self.start()
        alice = await self.user("alice")
        info, _entry = await alice.generate_key("sesame open please", key_type="ed25519")
        assert info.data is not None
        bundle = pkcs12.load_pkcs12(info.data, b"sesame open please")
        self.assertIsInstance(bundle.key, ed25519.Ed25519PrivateKey)
        await self.fails("invalid-argument", alice.generate_key("short", key_type="p256"))
        await self.fails("invalid-argument", alice.generate_key("sesame open please", key_type="rsa512"))

    async def test_listings(self) -> None:
        """list-certificates shows all of one's certificates, newest first;
        user-certificates shows anyone's currently good issued ones, with PEM, verified."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        first = await alice.request_certificate(csr(generate_key("p256")))
        second = await alice.request_certificate(csr(generate_key("p256")))
        await alice.revoke(first.serial, "key-compromise")
        await alice.upload_certificate(external_certificate())
        listing = await alice.list_certificates()
        self.assertEqual(len(listing), 3)
        self.assertEqual({entry.serial for entry in listing if entry.origin == "issued"}, {first.serial, second.serial})
        self.assertTrue(all(entry.certificate is None for entry in listing))
        statuses = {entry.serial: entry.status for entry in listing}
        self.assertEqual((statuses[first.serial], statuses[second.serial]), ("revoked", "good"))
        current = await bob.user_certificates("alice")
        self.assertEqual([entry.serial for entry in current], [second.serial])
        self.assertIsNotNone(current[0].certificate)
        await self.fails("not-found", bob.user_certificates("nobody"))

    async def test_get_certificate(self) -> None:
        """Certificates are public: anyone logged in downloads one by serial."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        entry = await alice.request_certificate(csr(generate_key("p256")))
        downloaded = await bob.get_certificate(entry.serial)
        self.assertEqual(downloaded.certificate, entry.certificate)
        await self.fails("not-found", bob.get_certificate(entry.serial + 1))
        await self.fails("bad-request", bob.protocol.request(make_element("get-certificate", {"serial": "xyz"})))
        by_fingerprint = await bob.get_certificate(fingerprint=entry.fingerprint)
        self.assertEqual(by_fingerprint.certificate, entry.certificate)
        await self.fails("not-found", bob.get_certificate(fingerprint="0" * 64))
        for attributes in ({}, {"serial": format(entry.serial, "x"), "fingerprint": entry.fingerprint}, {"fingerprint": "AB" * 32}):
            await self.fails("bad-request", bob.protocol.request(make_element("get-certificate", attributes)))

    async def test_upload_certificate(self) -> None:
        """A certificate from another issuer naming the user (by irp: URI or registered
        email) is stored as external; anything else is refused."""
        await self.start()
        alice = await self.user("alice", email="alice@example.org")
        external = external_certificate()
        entry = await alice.upload_certificate(external)
        self.assertEqual((entry.origin, entry.status, entry.fingerprint), ("external", "good", fingerprint(external)))
        by_email = await alice.upload_certificate(external_certificate("Alice", email="Alice@Example.org"))
        self.assertEqual(by_email.origin, "external")
        await self.fails("conflict", alice.upload_certificate(external))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(f"bob@{DOMAIN}")))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(email="bob@example.org")))
        await self.fails("invalid-argument", alice.upload_certificate(external_certificate(expired=True)))
        ours = await alice.request_certificate(csr(generate_key("p256")))
        assert ours.certificate is not None
        await self.fails("conflict", alice.upload_certificate(ours.certificate))
        status = await alice.certificate_status(certificate=external)
        self.assertEqual(status.state, "unknown")  # not ours to vouch for
        await self.fails("not-found", alice.revoke(entry.serial))  # serials name certificates issued here
        operation = make_element("upload-certificate")
        sub_element(operation, "pem", None, "garbage")
        await self.fails("invalid-argument", alice.protocol.request(operation))

    async def test_uploads_share_serials(self) -> None:
        """Serial numbers are unique per issuer only: two users upload certificates of
        different issuers with the serial of a certificate issued here; all three are
        stored, each downloads by fingerprint, and the serial names the issued one."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        ours = await alice.request_certificate(csr(generate_key("p256")))
        alices = external_certificate(serial=ours.serial)
        bobs = external_certificate(f"bob@{DOMAIN}", serial=ours.serial)
        uploaded = [await alice.upload_certificate(alices), await bob.upload_certificate(bobs)]
        self.assertEqual([entry.serial for entry in uploaded], [ours.serial, ours.serial])
        for certificate in (alices, bobs):
            downloaded = await bob.get_certificate(fingerprint=fingerprint(certificate))
            self.assertEqual(downloaded.certificate, certificate)
        by_serial = await bob.get_certificate(ours.serial)
        self.assertEqual((by_serial.fingerprint, by_serial.origin), (ours.fingerprint, "issued"))
        listed = await alice.list_certificates()
        self.assertEqual(sorted(entry.origin for entry in listed), ["external", "issued"])
        status = await bob.certificate_status(ours.serial)
        self.assertEqual(status.state, "good")

    async def test_external_certificate_cannot_log_in(self) -> None:
        """An uploaded certificate is not a login credential."""
        await self.start()
        alice = await self.user("alice")
        partner = pki.make_ca("partner.example")
        key = generate_key("p256")
        certificate, _ = pki.build_certificate(
            partner.issuing_certificate, partner.issuing_key, subject=pki.user_name(Identity("alice", DOMAIN)),
            key=key, san=[x509.UniformResourceIdentifier(f"irp:alice@{DOMAIN}")],
        )
        await alice.upload_certificate(certificate)
        client = await self.registry.client(user=EnrolledUser("alice", "", key, certificate, 0))
        await self.fails("certificate-rejected", client.whoami())


class Pkcs12Tests(RegistryTestCase):
    """upload-pkcs12, list-pkcs12, get-pkcs12."""

    def bundle(self) -> bytes:
        return pkcs12_bundle()

    async def test_upload_and_download(self) -> None:
        """An uploaded PKCS#12 comes back byte for byte, to its owner and administrators."""
        await self.start()
        alice = await self.user("alice")
        bob = await self.user("bob")
        data = self.bundle()
        info = await alice.upload_pkcs12(data, "escrowed")
        self.assertEqual((info.label, info.origin, info.size, info.certificate_serial), ("escrowed", "uploaded", len(data), None))
        self.assertEqual([(item.id, item.size) for item in await alice.list_pkcs12()], [(info.id, len(data))])
        self.assertEqual((await alice.get_pkcs12(info.id)).data, data)
        self.assertEqual((await (await self.registry.admin()).get_pkcs12(info.id)).data, data)
        await self.fails("not-found", bob.get_pkcs12(info.id))
        await self.fails("not-found", alice.get_pkcs12(info.id + 100))
        await self.fails("bad-request", alice.protocol.request(make_element("get-pkcs12")))

    async def test_refusals(self) -> None:
        """Data that is not PKCS#12, a bad label, and a full quota are refused."""
        await self.start(max_pkcs12_per_user=1)
        alice = await self.user("alice")
        await self.fails("invalid-argument", alice.upload_pkcs12(b"\x30\x03\x02\x01\x02"))
        await self.fails("invalid-argument", alice.upload_pkcs12(b"hello world, not DER"))
        await self.fails("invalid-argument", alice.upload_pkcs12(self.bundle(), "bad\nlabel"))
        await alice.upload_pkcs12(self.bundle())
        await self.fails("conflict", alice.upload_pkcs12(self.bundle()))

    async def test_too_large(self) -> None:
        """A file over max_pkcs12_size is invalid-argument: a field's limit, not the
        frame's, so the connection goes on."""
        await self.start(max_pkcs12_size=1024)
        alice = await self.user("alice")
        body = b"\x02\x01\x03" + b"\x04\x82\x04\x00" + b"x" * 1024
        data = b"\x30\x82" + len(body).to_bytes(2, "big") + body
        error = await self.fails("invalid-argument", alice.upload_pkcs12(data))
        self.assertIn("1024", error.message)
        await self.fails("invalid-argument", alice.upload_pkcs12(b"\x30" * 4096))  # over the <data> limit
        self.assertEqual(await alice.list_pkcs12(), [])


class RenewRevokeTests(RegistryTestCase):
    """renew, revoke, get-crl, certificate-status, ca-chain."""

    async def test_renew_same_key(self) -> None:
        """Renewal issues a successor for the same key and supersedes the old one; the
        old certificate's session ends, the new certificate logs in."""
        await self.start()
        alice, client = await self.enrolled("alice")
        renewed = await client.renew(alice.serial)
        assert renewed.certificate is not None
        self.assertNotEqual(renewed.serial, alice.serial)
        self.assertEqual(renewed.certificate.public_key(), alice.key.public_key())
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.reason), ("revoked", "superseded"))
        await self.fails("certificate-rejected", client.whoami())
        successor = EnrolledUser("alice", "", alice.key, renewed.certificate, renewed.serial)
        self.assertEqual((await (await self.registry.client(user=successor)).whoami()).method, "certificate")
        old = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", old.whoami())

    async def test_renew_new_key(self) -> None:
        """With a CSR the successor certifies the new key, for the same user."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client("alice")
        key = generate_key("p256")
        renewed = await client.renew(alice.serial, csr(key))
        assert renewed.certificate is not None
        self.assertEqual(renewed.certificate.public_key(), key.public_key())
        self.assertEqual(identity_from_certificate(renewed.certificate), Identity("alice", DOMAIN))

    async def test_renew_refusals(self) -> None:
        """Revoked and unknown certificates cannot be renewed."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client("alice")
        await client.revoke(alice.serial)
        await self.fails("invalid-argument", client.renew(alice.serial))
        await self.fails("not-found", client.renew(12345))

    async def test_renew_expired_refused(self) -> None:
        """Only a good certificate can be renewed: not an expired one."""
        await self.start()
        await self.registry.add_user("alice")
        ca = self.registry.ca
        expired, _key = pki.build_certificate(
            ca.issuing_certificate,
            ca.issuing_key,
            subject=pki.user_name(Identity("alice", DOMAIN)),
            san=[x509.UniformResourceIdentifier(f"irp:alice@{DOMAIN}")],
            not_before=datetime.timedelta(days=-30),
            not_after=datetime.timedelta(days=-1),
        )
        await self.registry.store.add_certificate("alice", expired, fingerprint(expired))
        client = await self.registry.client("alice")
        error = await self.fails("invalid-argument", client.renew(expired.serial_number))
        self.assertIn("expired", error.message)
        self.assertEqual([entry.status for entry in await client.list_certificates()], ["expired"])

    async def test_root_crl_lifetime(self) -> None:
        """The root CRL (always empty) lives DEFAULT_ROOT_CRL_LIFETIME, the issuing CA's
        CRL crl_lifetime."""
        await self.start()
        client = await self.registry.client()
        crls = {info.issuer: info.crl for info in await client.get_crls()}
        for issuer, lifetime in (("root", DEFAULT_ROOT_CRL_LIFETIME), ("issuing", datetime.timedelta(days=1))):
            crl = crls[issuer]
            assert crl.next_update_utc is not None
            remaining = crl.next_update_utc - datetime.datetime.now(datetime.UTC)
            self.assertGreater(remaining, lifetime - datetime.timedelta(minutes=5), issuer)
            self.assertLessEqual(remaining, lifetime, issuer)

    async def test_revoke(self) -> None:
        """Revocation shows in status, listings and the CRL at once; the certificate no
        longer logs in, and its open session ends."""
        await self.start()
        alice, session = await self.enrolled("alice")
        client = await self.registry.client("alice")
        crls = await client.get_crls()
        issuing_number = next(crl.number for crl in crls if crl.issuer == "issuing")
        revoked = await client.revoke(alice.serial, "key-compromise")
        self.assertEqual((revoked.status, revoked.reason), ("revoked", "key-compromise"))
        self.assertIsNotNone(revoked.revoked_at)
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.reason, status.user), ("revoked", "key-compromise", "alice@example.org"))
        by_pem = await client.certificate_status(certificate=alice.certificate)
        self.assertEqual(by_pem.state, "revoked")
        crls = await client.get_crls()
        issuing = next(crl for crl in crls if crl.issuer == "issuing")
        self.assertGreater(issuing.number, issuing_number)
        entry = issuing.crl.get_revoked_certificate_by_serial_number(alice.serial)
        assert entry is not None
        self.assertEqual(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, x509.ReasonFlags.key_compromise)
        await self.fails("certificate-rejected", session.lookup("alice"))
        await self.fails("not-authenticated", session.lookup("alice"))
        fresh = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", fresh.whoami())
        await self.fails("conflict", client.revoke(alice.serial))
        await self.fails("invalid-argument", (await self.registry.admin()).revoke(alice.serial, "because"))

    async def test_crls_verify(self) -> None:
        """Both CRLs are signed by their CA (the client checks) and name their issuer."""
        await self.start()
        client = await self.registry.client()
        crls = {crl.issuer: crl for crl in await client.get_crls()}
        self.assertEqual(set(crls), {"issuing", "root"})
        self.assertEqual(crls["issuing"].crl.issuer, self.registry.ca.issuing_certificate.subject)
        self.assertEqual(crls["root"].crl.issuer, self.registry.root.subject)
        self.assertEqual(len(list(crls["issuing"].crl)), 0)
        again = {crl.issuer: crl.number for crl in await client.get_crls()}
        self.assertEqual(again, {issuer: crl.number for issuer, crl in crls.items()})  # cached

    async def test_status(self) -> None:
        """good for a current certificate, unknown for unknown serials; the request needs
        exactly one of serial and PEM."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        client = await self.registry.client()
        status = await client.certificate_status(alice.serial)
        self.assertEqual((status.state, status.user, status.reason), ("good", "alice@example.org", None))
        self.assertEqual((await client.certificate_status(certificate=alice.certificate)).state, "good")
        self.assertEqual((await client.certificate_status(alice.serial + 1)).state, "unknown")
        self.assertEqual((await client.certificate_status(certificate=pki.issue_user(pki.make_ca()).certificate)).state, "unknown")
        await self.fails("bad-request", client.protocol.request(make_element("certificate-status")))

    async def test_ca_chain(self) -> None:
        """The chain ends at the pinned root and its record-signing certificate verifies
        the registry's records."""
        await self.start()
        client = await self.registry.client()
        chain = await client.ca_chain()
        self.assertEqual(chain.root, self.registry.root)
        self.assertEqual(chain.issuing, self.registry.ca.issuing_certificate)
        self.assertEqual(chain.domain, DOMAIN)
        element = (await client._call("ca-chain")).single("ca-chain")
        self.assertEqual(element.get("root-fingerprint"), fingerprint(self.registry.root))


class AdministrationTests(RegistryTestCase):
    """create-user, set-password, set-password-login, set-admin, delete-user."""

    async def test_create_user(self) -> None:
        """Administrators create users, who can then log in."""
        await self.start()
        admin = await self.registry.admin()
        record, account = await admin.create_user("alice", password=DEFAULT_PASSWORD, display_name="Alice", email="a@example.org")
        self.assertEqual((str(record.identity), record.display_name), ("alice@example.org", "Alice"))
        assert account is not None
        self.assertEqual((account.is_admin, account.has_password, account.password_login), (False, True, True))
        await self.registry.client("alice")
        await self.fails("conflict", admin.create_user("alice", password=DEFAULT_PASSWORD))
        await self.fails("invalid-argument", admin.create_user("bob", password="short"))
        await self.fails("invalid-argument", admin.create_user("Bad Name", password=DEFAULT_PASSWORD))
        await self.fails("not-found", admin.create_user("carol@example.net", password=DEFAULT_PASSWORD))
        for email in ("not an email", "nobody", "two@at signs"):
            await self.fails("invalid-argument", admin.create_user("dave", password=DEFAULT_PASSWORD, email=email))
        await self.fails("login-failed", (await self.registry.client()).login("dave", DEFAULT_PASSWORD))  # not created
        _record, account = await admin.create_user("root2", admin=True)
        assert account is not None
        self.assertEqual((account.is_admin, account.has_password), (True, False))

    async def test_set_own_password(self) -> None:
        """A password session needs the current password to set a new one; afterwards
        only the new one works."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("login-failed", alice.set_password(None, OTHER_PASSWORD))
        await self.fails("login-failed", alice.set_password(None, OTHER_PASSWORD, "wrong current!"))
        await self.fails("invalid-argument", alice.set_password(None, "short", DEFAULT_PASSWORD))
        await alice.set_password(None, OTHER_PASSWORD, DEFAULT_PASSWORD)
        self.assertEqual((await alice.whoami()).method, "password")  # the changer stays in
        await self.registry.client("alice", OTHER_PASSWORD)
        client = await self.registry.client()
        await self.fails("login-failed", client.login("alice", DEFAULT_PASSWORD))

    async def test_certificate_session_sets_password_without_current(self) -> None:
        """A certificate login is strong enough to set the password alone."""
        await self.start()
        _alice, client = await self.enrolled("alice")
        await client.set_password(None, OTHER_PASSWORD)
        await self.registry.client("alice", OTHER_PASSWORD)

    async def test_password_reset_ends_other_password_sessions(self) -> None:
        """When an administrator resets a password (say, a stolen one), sessions logged
        in with the old password end; certificate sessions are unaffected."""
        await self.start()
        _alice, certificate_session = await self.enrolled("alice")
        thief = await self.registry.client("alice")
        admin = await self.registry.admin()
        await admin.set_password("alice", OTHER_PASSWORD)
        await self.fails("not-authenticated", thief.lookup("alice"))
        self.assertIsNone((await thief.whoami()).user)
        await certificate_session.lookup("alice")
        self.assertEqual((await admin.whoami()).method, "password")

    async def test_admin_sets_other_password(self) -> None:
        """Administrators set anyone's password; users cannot."""
        await self.start()
        await self.registry.add_user("alice")
        bob = await self.user("bob")
        await self.fails("forbidden", bob.set_password("alice", OTHER_PASSWORD))
        await (await self.registry.admin()).set_password("alice", OTHER_PASSWORD)
        await self.registry.client("alice", OTHER_PASSWORD)
        await self.fails("not-found", (await self.registry.admin()).set_password("nobody", OTHER_PASSWORD))

    async def test_password_login_disabled_only_certificates_work(self) -> None:
        """A user may disable password login: their password session ends, password
        logins are refused, the certificate still works; only an administrator can
        enable it again."""
        await self.start()
        alice, certificate_session = await self.enrolled("alice")
        password_session = await self.registry.client("alice")
        element = await password_session.set_password_login(None, False)
        self.assertEqual(element.find("account").get("password-login"), "false")  # type: ignore[union-attr]
        await self.fails("password-login-disabled", password_session.lookup("alice"))
        client = await self.registry.client()
        await self.fails("password-login-disabled", client.login("alice", DEFAULT_PASSWORD))
        await self.fails("login-failed", client.login("alice", "wrong password!"))
        await certificate_session.lookup("alice")
        await self.fails("forbidden", certificate_session.set_password_login(None, True))
        admin = await self.registry.admin()
        await admin.set_password_login("alice", True)
        await self.registry.client("alice")
        del alice

    async def test_created_without_password_login(self) -> None:
        """password-login=false at creation: the password is refused from the start."""
        await self.start()
        admin = await self.registry.admin()
        await admin.create_user("alice", password=DEFAULT_PASSWORD, password_login=False)
        client = await self.registry.client()
        await self.fails("password-login-disabled", client.login("alice", DEFAULT_PASSWORD))

    async def test_set_admin(self) -> None:
        """Administrator rights take effect at once; the last administrator keeps them."""
        await self.start()
        alice = await self.user("alice")
        await self.fails("forbidden", alice.create_user("bob", password=DEFAULT_PASSWORD))
        admin = await self.registry.admin()
        await admin.set_admin("alice", True)
        self.assertTrue((await alice.whoami()).is_admin)
        await alice.create_user("bob", password=DEFAULT_PASSWORD)
        await alice.set_admin("alice", False)
        await self.fails("forbidden", alice.create_user("carol", password=DEFAULT_PASSWORD))
        await self.fails("conflict", admin.set_admin("admin", False))
        await self.fails("not-found", admin.set_admin("nobody", True))

    async def test_administrators_removing_each_other(self) -> None:
        """Two administrators withdrawing each other's rights (or deleting each other) at
        the same moment cannot leave the registry without an administrator."""
        await self.start()
        await self.registry.add_user("root2", is_admin=True)
        first = await self.registry.admin()
        second = await self.registry.client("root2")
        results = await DeferredList([first.set_admin("root2", False), second.set_admin("admin", False)], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await self.registry.store.count_admins(), 1)
        await self.registry.store.set_admin("root2", True)
        await self.registry.store.set_admin("admin", True)
        third = await self.registry.client("root2")
        fourth = await self.registry.admin()
        results = await DeferredList([third.delete_user("admin"), fourth.delete_user("root2")], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        self.assertEqual(await self.registry.store.count_admins(), 1)

    async def test_delete_user(self) -> None:
        """Deleting a user revokes their certificates, removes their entry, addresses and
        files, and ends their sessions."""
        await self.start()
        alice, certificate_session = await self.enrolled("alice")
        password_session = await self.registry.client("alice")
        info, _ = await password_session.generate_key("a long passphrase", key_type="p256")
        admin = await self.registry.admin()
        element = await admin.delete_user("alice")
        self.assertEqual((element.get("user"), element.get("revoked")), ("alice@example.org", "2"))
        self.assertEqual((await admin.certificate_status(alice.serial)).state, "revoked")
        await self.fails("not-found", admin.lookup("alice"))
        await self.fails("not-found", admin.get_user("alice"))
        await self.fails("not-found", admin.get_pkcs12(info.id))
        await self.fails("not-authenticated", certificate_session.whoami())
        await self.fails("not-authenticated", password_session.lookup("admin"))
        client = await self.registry.client()
        await self.fails("login-failed", client.login("alice", DEFAULT_PASSWORD))
        await self.fails("not-found", admin.delete_user("alice"))
        await self.fails("conflict", admin.delete_user("admin"))

    async def test_recreated_user_is_new(self) -> None:
        """A user created again under a deleted name gets nothing of the old one's:
        the old password session stays ended, old certificates stay revoked."""
        await self.start()
        alice, _ = await self.enrolled("alice")
        old_session = await self.registry.client("alice")
        await old_session.upload_certificate(external_certificate())
        admin = await self.registry.admin()
        await admin.delete_user("alice")
        await admin.create_user("alice", password=DEFAULT_PASSWORD)
        await self.fails("not-authenticated", old_session.lookup("alice"))
        new = await self.registry.client("alice")
        self.assertEqual([entry.status for entry in await new.list_certificates()], ["revoked"])
        fresh = await self.registry.client(user=alice)
        await self.fails("certificate-rejected", fresh.whoami())


class ConnectionTests(RegistryTestCase):
    """The registry over the network: limits that show through the client."""

    async def test_too_many_connections(self) -> None:
        """Connections beyond the per-address limit get too-many-connections."""
        from irp.server.protocol import ConnectionLimits

        self.registry = await RunningRegistry(self, limits=ConnectionLimits(max_connections_per_address=2)).start()
        first = await self.registry.client()
        await self.registry.client()
        third = await self.registry.client()
        await self.fails("too-many-connections", third.whoami())
        await first.whoami()

    async def released(self, registry: RunningRegistry) -> Deferred[None]:
        """A Deferred that fires when the server next frees a connection's slot."""
        assert registry.service is not None and registry.service.factory is not None
        counter = registry.service.factory.connections
        freed: Deferred[None] = Deferred()
        original = counter.release

        def release(host: str) -> None:
            original(host)
            if not freed.called:
                freed.callback(None)

        counter.release = release  # type: ignore[method-assign]
        self.addCleanup(setattr, counter, "release", original)
        return freed

    async def test_fatal_error_closes_at_once(self) -> None:
        """After a fatal error the client gets the error and the connection closes at once
        (TLS close_notify both ways), not when the abort timer (frame_timeout, 30 s) fires;
        the address's connection slot is free again."""
        self.registry = await RunningRegistry(self).start()
        for frame in (encode_frame(b"<broken"), encode_frame(b'<request v="1"><whoami/></request>'), HEADER.pack(1 << 30)):
            client = await self.registry.client()
            freed = await self.released(self.registry)
            answer: Deferred[Any] = Deferred()
            timer = global_reactor.callLater(10, answer.cancel)
            client.protocol.waiting[1] = (answer, timer)
            client.protocol.transport.write(frame)  # type: ignore[union-attr]
            try:
                await answer
            except errors.IRPError as error:
                self.assertIn(error.name, ("malformed-message", "message-too-large"))
            else:
                self.fail("the server accepted a broken frame")
            finally:
                if timer.active():
                    timer.cancel()
            await client.protocol.disconnected.addTimeout(10, global_reactor)
            await freed.addTimeout(10, global_reactor)
            self.assertEqual(self.registry.service.factory.connections.count("127.0.0.1"), 0)  # type: ignore[union-attr]

    async def test_field_limits_are_not_fatal(self) -> None:
        """A field over its limit is invalid-argument and the connection goes on."""
        self.registry = await RunningRegistry(self).start()
        await self.registry.add_user("alice")
        client = await self.registry.client()
        await self.fails("invalid-argument", client.protocol.request(login_element("alice", "x" * 1025)))
        self.assertEqual((await client.login("alice", DEFAULT_PASSWORD)).method, "password")
        operation = make_element("upload-certificate")
        sub_element(operation, "pem", None, "x" * 20000)
        await self.fails("invalid-argument", client.protocol.request(operation))
        await client.whoami()


class ServiceTests(unittest.TestCase):
    """The registry service: housekeeping shared between processes, renewal."""

    async def test_daily_renewal(self) -> None:
        """The daily check renews the server and record-signing certificates near their
        end: new connections get the new server certificate, ca-chain serves the new
        record-signing certificate (same key), open connections go on."""
        registry = await RunningRegistry(self).start()
        service = registry.service
        assert service is not None and service.credentials is not None
        self.assertIn(86400.0, [loop.interval for loop in service.loops])
        old = service.credentials
        before = await registry.client()
        await service.renew_credentials()  # nothing ends within 30 days: nothing changes
        self.assertEqual(service.credentials.server_certificate, old.server_certificate)
        await service.renew_credentials(renew_before=datetime.timedelta(days=398))  # both "near their end"
        new = service.credentials
        self.assertNotEqual(new.server_certificate, old.server_certificate)
        self.assertNotEqual(new.signing_certificate, old.signing_certificate)
        self.assertEqual(new.signing_certificate.public_key(), old.signing_certificate.public_key())
        after = await registry.client()
        presented = after.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
        self.assertEqual(presented, new.server_certificate)
        self.assertEqual((await after.ca_chain()).record_signing, new.signing_certificate)
        await registry.add_user("alice")
        alice = await registry.client("alice")
        await alice.register_addresses([Endpoint.parse("192.0.2.1", 4605)])  # signed and verified
        self.assertEqual(registry.store.signer.certificate, new.signing_certificate)
        await before.whoami()

    async def test_changes_end_sessions_in_other_processes(self) -> None:
        """Two registry processes on one database: a password change, a password-login
        change, an administrator change or a deleted user made through one ends or
        re-checks sessions on the other at its next sync (not only revocations)."""
        first = await RunningRegistry(self).start()
        second = await RunningRegistry(self, data_dir=first.data_dir).start()
        assert second.service is not None
        for name in ("alice", "bob", "carol"):
            await first.add_user(name)
        await first.add_user("dave", is_admin=True)
        alice, bob, carol, dave = [await second.client(name) for name in ("alice", "bob", "carol", "dave")]
        admin = await first.admin()
        await admin.set_password("alice", OTHER_PASSWORD)
        await admin.set_password_login("bob", False)
        await admin.delete_user("carol")
        await admin.set_admin("dave", False)
        await second.service._sync_generation()  # the periodic check, run now
        failures = []
        for client in (alice, bob, carol):
            try:
                await client.lookup("admin")
            except errors.IRPError as error:
                failures.append(error.name)
        self.assertEqual(failures, ["not-authenticated", "password-login-disabled", "not-authenticated"])
        self.assertFalse((await dave.whoami()).is_admin)
        await self.fails_forbidden(dave)

    async def fails_forbidden(self, client: RegistryClient) -> None:
        try:
            await client.create_user("mallory", password=DEFAULT_PASSWORD)
        except errors.Forbidden:
            return
        self.fail("a former administrator could still create users")


class RegistryUnitTests(unittest.SynchronousTestCase):
    """The registry's own rules, with a stand-in store (no database)."""

    def test_list_users_prefix_lower_cased(self) -> None:
        """User names are lower case: so is the prefix the store is asked for (a
        case-sensitive LIKE, as PostgreSQL's, would otherwise find nobody)."""
        registry = make_registry(Clock())
        asked: list[str] = []

        class Store:
            def list_users(self, offset: int, limit: int, prefix: str) -> Deferred[tuple[int, list[Any]]]:
                asked.append(prefix)
                return succeed((0, []))

        registry.store = Store()  # type: ignore[assignment]
        session = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        request = parse_request(build_request(1, make_element("list-users", {"prefix": "BoB"})))
        self.successResultOf(registry.handle(session, request))
        self.assertEqual(asked, ["bob"])

    def test_cached_lookup_is_answered_at_once(self) -> None:
        """A look-up whose answer is cached is answered without a Deferred, and is still
        refused in the usual way when the caller may not make it."""
        clock = Clock()
        registry = make_registry(clock)
        registry.caches.answers.put("bob", 7, b"<addresses/>")

        asked: list[str] = []

        class Store:
            def data_version(self) -> int:
                return 7

            def get_addresses(self, username: str) -> Deferred[None]:
                asked.append(username)
                return succeed(None)

        registry.store = Store()  # type: ignore[assignment]
        request = parse_request(build_request(1, make_element("lookup", {"user": "bob"})))
        alice = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        alice.generation = registry.sessions.generation
        self.assertEqual(registry.handle_now(alice, request), [b"<addresses/>"])
        self.assertEqual(self.successResultOf(registry.handle(alice, request)), [b"<addresses/>"])
        # Refusals: anonymous, bad fields, a refused certificate, an expired one (its
        # own reason, once), each through a Deferred as on the full path.
        anonymous = registry.handle_now(Session(peer_host="192.0.2.2"), request)
        assert isinstance(anonymous, Deferred)
        self.failureResultOf(anonymous, errors.NotAuthenticated)
        bad = parse_request(build_request(2, make_element("lookup", {"user": "bob", "extra": "1"})))
        self.failureResultOf(registry.handle_now(alice, bad), errors.BadRequest)  # type: ignore[arg-type]
        refused = Session(peer_host="192.0.2.3", state=SessionState.REJECTED, rejection="no")
        self.failureResultOf(registry.handle_now(refused, request), errors.CertificateRejected)  # type: ignore[arg-type]
        expired = Session(peer_host="192.0.2.4", identity=Identity("carol", registry.domain), state=SessionState.CERTIFICATE)
        expired.certificate_not_after = int(clock.seconds()) - 1
        failure = self.failureResultOf(registry.handle_now(expired, request), errors.CertificateRejected)  # type: ignore[arg-type]
        self.assertIn("expired", failure.value.message)
        # A changed database version: the answer is not current, the full path runs.
        registry.caches.answers.put("bob", 6, b"<addresses/>")
        self.assertEqual(asked, [])
        self.failureResultOf(registry.handle_now(alice, request), errors.NotFound)  # type: ignore[arg-type]
        self.assertEqual(asked, ["bob"])

    def test_cached_lookup_waits_for_revalidation(self) -> None:
        """After a security change the session is re-validated before any answer."""
        registry = make_registry(Clock())
        registry.caches.answers.put("bob", 7, b"<addresses/>")
        revalidated: list[Session] = []
        waiting: Deferred[None] = Deferred()

        async def revalidate(session: Session) -> None:
            revalidated.append(session)
            await waiting

        class Store:
            def data_version(self) -> int:
                return 7

        registry.store = Store()  # type: ignore[assignment]
        registry.sessions.revalidate = revalidate  # type: ignore[method-assign]
        alice = Session(peer_host="192.0.2.1", identity=Identity("alice", registry.domain), state=SessionState.PASSWORD)
        alice.generation = registry.sessions.generation - 1
        answer = registry.handle_now(alice, parse_request(build_request(1, make_element("lookup", {"user": "bob"}))))
        assert isinstance(answer, Deferred)
        self.assertEqual(revalidated, [alice])
        self.assertNoResult(answer)
        waiting.callback(None)
        self.assertEqual(self.successResultOf(answer), [b"<addresses/>"])

    def test_every_child_element_has_fields(self) -> None:
        """Every child element an operation takes has its fields declared."""
        registry = make_registry(Clock())
        for name, operation in registry.operations.items():
            for child in operation.children:
                self.assertIn(child, CHILD_FIELDS, name)


    def test_rate_limited_login_is_answered_late(self) -> None:
        """A locked-out login is refused only after the tarpit delay, so refused guesses on
        one connection cannot keep the server busy."""
        clock = Clock()
        registry = make_registry(clock)
        session = Session(peer_host="192.0.2.9")
        for _ in range(registry.config.login_failures_per_address + 1):
            registry.auth.address_limiter.record_failure(("address", "192.0.2.9"))
        request = parse_request(
            b'<request v="1" id="1"><login user="alice"><password>guess guess guess</password></login></request>'
        )
        answer = registry.handle(session, request)
        self.assertNoResult(answer)
        clock.advance(registry.config.login_refusal_delay)
        self.failureResultOf(answer, errors.RateLimited)

    def test_concurrent_guesses_are_counted_before_hashing(self) -> None:
        """Attempts still being checked count against the limit: a user cannot be the
        target of more concurrent password checks than failures allowed."""
        clock = Clock()
        registry = make_registry(clock)
        started: list[Deferred[Any]] = []

        def held(function: Any, *args: Any) -> Deferred[Any]:
            waiting: Deferred[Any] = Deferred()
            started.append(waiting)
            return waiting

        registry.run_in_thread = held  # type: ignore[method-assign]

        class Store:
            def get_account(self, username: str) -> Deferred[None]:
                return succeed(None)

        registry.store = Store()  # type: ignore[assignment]
        request = b'<request v="1" id="1"><login user="alice"><password>guess guess guess</password></login></request>'
        answers = [
            registry.handle(Session(peer_host=f"192.0.2.{index}"), parse_request(request)) for index in range(20)
        ]
        refused: list[Any] = []
        for answer in answers:
            answer.addErrback(lambda failure: refused.append(failure.value))
        clock.advance(registry.config.login_refusal_delay)
        # As many attempts as may fail are let through (at most 2 hash at once, the rest
        # queue); every other attempt is refused at once, before any hashing.
        allowed = registry.config.login_failures_per_user + 1
        self.assertEqual(len(refused), len(answers) - allowed)
        self.assertTrue(all(isinstance(error, errors.RateLimited) for error in refused))
        self.assertEqual(len(started), registry.config.concurrent_hashes)


class GivenTLSCertificateTests(unittest.TestCase):
    """``--tls-certificate``/``--tls-key``: the operator's certificate serves TLS."""

    async def test_given_certificate_is_served(self) -> None:
        import os

        from twisted.internet import reactor

        from common.pki.keyfiles import fingerprint, write_certificates, write_private_key
        from irp.client.api import connect

        web = pki.make_ca("example.org", label="web-pki")
        key = generate_key("p256")
        certificate = web.issue_server_certificate(["127.0.0.1"], key.public_key())
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        write_certificates(os.path.join(folder, "tls.pem"), [certificate, web.issuing_certificate])
        write_private_key(os.path.join(folder, "tls.key"), key)
        registry = await RunningRegistry(
            self, tls_certificate=os.path.join(folder, "tls.pem"), tls_key=os.path.join(folder, "tls.key")
        ).start()
        client = await connect(
            reactor, "127.0.0.1", registry.port, domain="example.org", trust_roots=[web.root_certificate, registry.root], timeout=10
        )
        self.addCleanup(client.close)
        served = client.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
        self.assertEqual(fingerprint(served), fingerprint(certificate))
        # The registry's own CA still anchors everything else it says.
        chain = await client.ca_chain()
        self.assertEqual(chain.root, registry.root)

    def test_key_must_match(self) -> None:
        import os

        from common.pki.keyfiles import KeyFileError, write_certificates, write_private_key
        from irp.server.credentials import with_given_server_certificate

        web = pki.make_ca("example.org", label="web-pki")
        certificate = web.issue_server_certificate(["127.0.0.1"], generate_key("p256").public_key())
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        write_certificates(os.path.join(folder, "tls.pem"), [certificate])
        write_private_key(os.path.join(folder, "tls.key"), generate_key("p256"))
        self.assertRaises(
            KeyFileError, with_given_server_certificate, None, os.path.join(folder, "tls.pem"), os.path.join(folder, "tls.key")  # type: ignore[arg-type]
        )
