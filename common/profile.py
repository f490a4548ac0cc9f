"""A user's profile folder: which registry, which CA to trust, and the user's key.

Layout (folder mode 0700)::

    config.json        server and port (or none: found by DNS SRV at each connection),
                       domain, user name, the DNS server to ask (or none: the system's)
    ca.pem             the pinned root CA of the user's own domain
    key.pem            the user's private key (mode 0600), once enrolled
    certificate.pem    the user's certificate, then the issuing CA
    trusted/<domain>.pem   roots of other domains trusted explicitly (by fingerprint)

The default folder is ``$IRP_PROFILE`` or ``~/.irp``. SixChat agents keep their own files
(contacts, history) in the same folder.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509

from common.identity import Identity, InvalidIdentity, check_domain
from common.pki import keyfiles
from common.pki.keyfiles import PrivateKey
from common.ports import IRP_PORT

CONFIG_FILE = "config.json"
CA_FILE = "ca.pem"
KEY_FILE = "key.pem"
CERTIFICATE_FILE = "certificate.pem"
TRUSTED_DIRECTORY = "trusted"


class ProfileError(Exception):
    """The profile folder is missing, incomplete or inconsistent."""


def default_profile_path() -> str:
    """``$IRP_PROFILE``, or ``~/.irp``."""
    return os.environ.get("IRP_PROFILE") or os.path.join(os.path.expanduser("~"), ".irp")


@dataclass
class ProfileConfig:
    """What ``config.json`` holds."""

    #: The registry's host (with :attr:`port`); None: the domain's registry is found by
    #: DNS SRV (``_irp._tcp.<domain>``) at each connection, so that SRV failover works.
    server: str | None
    domain: str
    port: int = IRP_PORT
    username: str | None = None
    #: Registries of other domains this user talks to: domain -> "host:port".
    registries: dict[str, str] = field(default_factory=dict)
    #: The DNS server (``HOST[:PORT]``) SRV look-ups ask; None: the system's resolver.
    dns_server: str | None = None


class Profile:
    """One user's profile folder.

    ``program`` is the command the user runs (``irp`` or ``sixchat``): messages about a
    missing or incomplete profile give the full command that fixes it.
    """

    def __init__(self, path: str, program: str = "irp") -> None:
        self.path = Path(path)
        self.program = program

    def command(self, arguments: str) -> str:
        """The full command line that runs ``arguments`` on this profile."""
        return f"{self.program} --profile {shlex.quote(str(self.path))} {arguments}"

    def file(self, name: str) -> str:
        """Path of a file in the profile."""
        return str(self.path / name)

    @property
    def exists(self) -> bool:
        """True once ``irp init`` has written the configuration."""
        return (self.path / CONFIG_FILE).exists()

    # -- configuration ----------------------------------------------------------------

    def create(self, config: ProfileConfig, root: x509.Certificate) -> None:
        """Write a new profile (configuration and pinned root)."""
        keyfiles.ensure_private_directory(str(self.path))
        check_domain(config.domain)
        self.save_config(config)
        keyfiles.write_certificates(self.file(CA_FILE), [root])

    def save_config(self, config: ProfileConfig) -> None:
        """Replace ``config.json``."""
        keyfiles.ensure_private_directory(str(self.path))
        data = json.dumps(asdict(config), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        keyfiles.write_bytes_private(self.file(CONFIG_FILE), data)

    def load_config(self) -> ProfileConfig:
        """Read ``config.json``."""
        if not self.exists:
            raise ProfileError(
                f"no profile in {self.path}: create it with"
                f" '{self.command('init --server HOST --domain DOMAIN --user NAME --ca-fingerprint FP')}'"
                " (or choose another with --profile or IRP_PROFILE)"
            )
        try:
            data = json.loads((self.path / CONFIG_FILE).read_text("utf-8"))
            server = data.get("server")
            dns_server = data.get("dns_server")
            return ProfileConfig(
                server=None if server is None else str(server),
                domain=str(data["domain"]),
                port=int(data.get("port", IRP_PORT)),
                username=data.get("username"),
                registries={str(key): str(value) for key, value in dict(data.get("registries", {})).items()},
                dns_server=None if dns_server is None else str(dns_server),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ProfileError(f"the profile configuration {self.file(CONFIG_FILE)} is unreadable: {error}") from None

    def identity(self) -> Identity:
        """The profile user's identity (needs a user name in the configuration)."""
        config = self.load_config()
        if not config.username:
            raise ProfileError(f"the profile has no user name yet: pass --user, or run '{self.command('enrol --user NAME')}'")
        return Identity(config.username, config.domain)

    # -- trust ------------------------------------------------------------------------

    def root(self) -> x509.Certificate:
        """The pinned root CA of the profile's domain."""
        try:
            return keyfiles.load_certificates(self.file(CA_FILE))[0]
        except (OSError, ValueError, IndexError) as error:
            raise ProfileError(f"the pinned CA {self.file(CA_FILE)} is unreadable: {error}") from None

    def trust_domain(self, domain: str, root: x509.Certificate) -> str:
        """Trust another domain's root; returns the file written."""
        directory = self.path / TRUSTED_DIRECTORY
        keyfiles.ensure_private_directory(str(directory))
        path = str(directory / f"{check_domain(domain)}.pem")
        keyfiles.write_certificates(path, [root])
        return path

    def trusted_roots(self) -> dict[str, x509.Certificate]:
        """Every trusted root by the one domain it certifies: our own domain's pinned root,
        and each root trusted explicitly for the domain its file is named after. Our own
        domain is certified by its pinned root only: a trusted file claiming it is ignored."""
        own = self.load_config().domain
        roots = {own: self.root()}
        directory = self.path / TRUSTED_DIRECTORY
        if directory.is_dir():
            for entry in sorted(directory.glob("*.pem")):
                try:
                    domain = check_domain(entry.stem)
                except InvalidIdentity:
                    continue
                if domain != own:
                    roots[domain] = keyfiles.load_certificates(str(entry))[0]
        return roots

    # -- the user's credentials -------------------------------------------------------

    @property
    def enrolled(self) -> bool:
        """True once the profile holds a key and certificate."""
        return (self.path / KEY_FILE).exists() and (self.path / CERTIFICATE_FILE).exists()

    def save_credentials(self, key: PrivateKey | None, chain: list[x509.Certificate]) -> None:
        """Store the user's key (0600) and certificate chain (leaf first)."""
        keyfiles.ensure_private_directory(str(self.path))
        if key is not None:
            keyfiles.write_private_key(self.file(KEY_FILE), key)
        keyfiles.write_certificates(self.file(CERTIFICATE_FILE), chain)

    def credentials(self) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
        """The user's key, certificate and intermediates."""
        if not self.enrolled:
            self.load_config()  # no profile at all: say how to make one
            raise ProfileError(f"no key and certificate in {self.path}: run '{self.command('enrol')}' first")
        key = keyfiles.load_private_key(self.file(KEY_FILE))
        chain = keyfiles.load_certificates(self.file(CERTIFICATE_FILE))
        return key, chain[0], chain[1:]
