"""Shared test fixtures: a real registry on loopback, and clients of it.

:class:`RunningRegistry` starts the real ``RegistryService`` (TLS on a loopback port, a
SQLite file in the test's temporary folder, a real CA created on first start) with cheap
Argon2 parameters and fast P-256 keys. Certificate fixtures come from :mod:`test.pki`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import TestCase

from irp.ca import generate_key
from irp.cli import make_csr
from irp.client import RegistryClient, connect
from irp.keyfiles import PrivateKey
from irp.passwords import TEST_PARAMETERS
from irp.protocol import ConnectionLimits
from irp.registry import RegistryConfig
from irp.service import ADMIN_PASSWORD_FILE, RegistryService, RegistrySettings

DEFAULT_PASSWORD = "correct horse battery staple"


@dataclass
class EnrolledUser:
    """A user with a key and a certificate issued by the running registry."""

    username: str
    password: str
    key: PrivateKey
    certificate: x509.Certificate
    serial: int


@dataclass
class RunningRegistry:
    """A registry process running inside the test's reactor."""

    testcase: TestCase
    domain: str = "example.org"
    config: RegistryConfig | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    listen_host: str = "127.0.0.1"
    data_dir: str = ""
    service: RegistryService | None = None
    admin_password: str = ""

    @property
    def port(self) -> int:
        """The port the registry listens on."""
        assert self.service is not None
        return self.service.ports[0].getHost().port  # type: ignore[attr-defined, no-any-return]

    @property
    def root(self) -> x509.Certificate:
        """The domain's root CA."""
        assert self.service is not None and self.service.credentials is not None
        return self.service.credentials.ca.root_certificate

    async def start(self) -> RunningRegistry:
        """Start the service; stop it when the test ends."""
        self.data_dir = self.data_dir or os.path.abspath(self.testcase.mktemp())
        listen = f"tcp:0:interface={self.listen_host.replace(':', chr(92) + ':')}"
        settings = RegistrySettings(
            domain=self.domain,
            data_dir=self.data_dir,
            listen=[listen],
            hostnames=["localhost", "127.0.0.1", "::1"],
            key_type="p256",
            config=self.config,
            limits=self.limits,
            argon2=TEST_PARAMETERS,
        )
        self.service = RegistryService(settings, global_reactor)
        self.service.startService()
        self.testcase.addCleanup(self.service.stopService)
        await self.service.ready
        with open(os.path.join(self.data_dir, ADMIN_PASSWORD_FILE), encoding="ascii") as handle:
            self.admin_password = handle.read().strip()
        return self

    async def client(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        user: EnrolledUser | None = None,
        host: str | None = None,
        timeout: float = 10.0,
    ) -> RegistryClient:
        """A connected client: anonymous, password-logged-in, or with a certificate."""
        client = await connect(
            global_reactor,
            host or self.listen_host,
            self.port,
            domain=self.domain,
            trust_roots=[self.root],
            client_key=None if user is None else user.key,
            client_certificate=None if user is None else user.certificate,
            timeout=timeout,
        )
        self.testcase.addCleanup(client.close)
        if username is not None:
            await client.login(username, password or DEFAULT_PASSWORD)
        return client

    async def admin(self) -> RegistryClient:
        """A client logged in as the bootstrap administrator."""
        return await self.client("admin", self.admin_password)

    async def create_user(self, username: str, password: str = DEFAULT_PASSWORD, **fields: Any) -> None:
        """Create a user through the administrator's connection."""
        admin = await self.admin()
        await admin.create_user(username, password=password, **fields)
        await admin.close()

    async def enrol(self, username: str, password: str = DEFAULT_PASSWORD, *, create: bool = True) -> EnrolledUser:
        """Create a user (optionally), then get a certificate for a fresh key by CSR."""
        if create:
            await self.create_user(username, password)
        client = await self.client(username, password)
        key = generate_key("p256")
        entry = await client.request_certificate(make_csr(key))
        await client.close()
        assert entry.certificate is not None
        return EnrolledUser(username, password, key, entry.certificate, entry.serial)


def make_profile(registry: RunningRegistry, user: EnrolledUser, path: str) -> str:
    """Write an IRP/SixChat profile folder for an enrolled user of ``registry``."""
    from irp.profile import Profile, ProfileConfig

    assert registry.service is not None and registry.service.credentials is not None
    profile = Profile(path)
    profile.create(
        ProfileConfig(server=registry.listen_host, port=registry.port, domain=registry.domain, username=user.username),
        registry.root,
    )
    profile.save_credentials(user.key, [user.certificate, registry.service.credentials.ca.issuing_certificate])
    return path
