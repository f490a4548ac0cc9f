"""``twistd irp``: command-line options and the service maker."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.python import usage

from common.cliutil import VersionOption, check_endpoint
from common.db.pools import UnsupportedDatabase, parse_database_url
from common.identity import InvalidIdentity, check_domain
from common.startup import ReportingParent, describe_start_failure, fail_start, own_pidfile
from irp import DEFAULT_PORT
from irp.server.ca import KEY_TYPES
from irp.server.passwords import Argon2Parameters
from irp.server.protocol import ConnectionLimits
from irp.server.registry import RegistryConfig
from irp.server.service import RegistryService, RegistrySettings
from sixid import DEFAULT_PORT as SIXID_PORT
from sixid.server.service import SixidSettings

#: The most processes ``--workers`` starts.
MAX_WORKERS = 64


class Options(VersionOption, usage.Options):
    """Options of ``twistd irp``."""

    plugin = "irp"

    synopsis = "--domain DOMAIN [options]"
    longdesc = (
        "Run the IRP identity registry of one domain: a user directory, an authenticated"
        " address registry and the domain's CA, over TLS on TCP port 4604. On first start it"
        " creates the CA, its server certificate and an administrator 'admin' whose password"
        " it writes to DATA_DIR/admin-password (mode 0600)."
    )

    optParameters = [
        ["domain", "d", None, "The domain this registry serves (required), e.g. example.org."],
        ["data-dir", None, "irp-data", "Directory for the CA, keys and the SQLite database (twistd's pid"
         " file defaults to DATA_DIR.pid beside it)."],
        ["database", None, None, "Database URL: a SQLite path (default DATA_DIR/registry.sqlite3)"
         " or postgresql://user@host/dbname."],
        ["key-type", None, "p384", f"Key type of new CA and server keys: {', '.join(KEY_TYPES)}."],
        ["certificate-days", None, 365, "Validity of issued user certificates, in days.", int],
        ["max-request", None, 256 * 1024, "Largest request accepted, in bytes.", int],
        ["idle-timeout", None, 300.0, "Seconds an authenticated connection may stay idle.", float],
        ["handshake-timeout", None, 30.0, "Seconds for the TLS handshake and first request, and"
         " for an anonymous connection's idle time.", float],
        ["frame-timeout", None, 30.0, "Seconds a started request has to arrive completely.", float],
        ["max-connections-per-address", None, 64, "Open connections allowed per client address.", int],
        ["login-failures", None, 5, "Failed logins per user before a lock-out.", int],
        ["login-failures-per-address", None, 20, "Failed logins per client address (IPv4, or IPv6 /64) before a lock-out.", int],
        ["login-window", None, 600.0, "Seconds over which failed logins are counted.", float],
        ["lockout", None, 30.0, "Seconds of the first lock-out (each further one doubles).", float],
        ["max-lockout", None, 900.0, "Longest lock-out, in seconds.", float],
        ["refusal-delay", None, 1.0, "Seconds before a locked-out login is answered (a tarpit).", float],
        ["concurrent-hashes", None, 2, "Password hashes computed at once (each takes the Argon2 memory).", int],
        ["hash-timeout", None, 30.0, "Seconds a password hash may take, waiting for its turn included, before that one request answers unavailable.", float],
        ["max-pipelined", None, 32, "Requests a connection may have queued before reading pauses.", int],
        ["argon2-memory", None, 65536, "Argon2id memory cost per password hash, in KiB.", int],
        ["admin", None, "admin", "Name of the administrator created on first start."],
        ["tls-certificate", None, None, "A TLS server certificate to use (PEM, then its chain), instead of one from the domain's CA."],
        ["tls-key", None, None, "The key of --tls-certificate (PEM, mode 0600)."],
        ["workers", None, 1, "Processes serving the registry (1 to 64), all on the same ports and"
         " database: this one and WORKERS - 1 workers it starts and supervises. One per core.", int],
        ["sixid-policy", None, "certified", "Which device IDs sixid serves: certified (keys the"
         " domain's CA certified), open (any key), listed (IDs on the allow list: irp admin sixid-allow)."],
        ["sixid-max-lifetime", None, 86_400, "Longest sixid registration accepted, in seconds.", int],
        ["sixid-max-ids", None, 10_000_000, "Most device IDs sixid holds.", int],
        ["key-passphrase-file", None, None, "A file (mode 0600) whose first line is the passphrase of the"
         " CA's encrypted keys (irp-ca protect-keys); default: the file named by IRP_KEY_PASSPHRASE_FILE."],
        ["http-url", None, None, "Public base URL of the HTTP endpoint (e.g. http://pki.example.org/), named in every"
         " certificate issued from now on (CRL distribution point, OCSP, CA issuers); default with --http-listen:"
         " http://FIRST-HOSTNAME:PORT/."],
    ]
    optFlags = [
        ["sixid", None, f"Also serve sixid (device ID to address look-ups) on TCP {SIXID_PORT}, IPv6 and IPv4,"
         " with the registry's TLS certificate (see --sixid-listen)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["sixid-listen"] = []
        self["http-listen"] = []
        self["hostnames"] = []
        self["federated-roots"] = []
        self["registries"] = {}
        self["no-cache"] = frozenset()
        self["metrics-listen"] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, keeping the arguments given (worker processes get the same ones)."""
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (repeatable); default tcp6:4604:interface=\\:\\: (IPv6 and IPv4)."""
        self["listen"].append(check_endpoint(description))

    def opt_sixid_listen(self, description: str) -> None:
        """Endpoint for sixid to listen on (repeatable; implies --sixid); default tcp6:4606:interface=\\:\\:."""
        self["sixid-listen"].append(check_endpoint(description))

    def opt_metrics_listen(self, description: str) -> None:
        """Endpoint serving Prometheus metrics over plain HTTP at /metrics (repeatable; off by default), e.g. tcp:9604:interface=127.0.0.1; with --workers, worker N serves its own on the port plus N - 1."""
        self["metrics-listen"].append(check_endpoint(description))
    def opt_http_listen(self, description: str) -> None:
        """Endpoint to serve CRLs, CA certificates, OCSP and /health on over plain HTTP
        (repeatable; off by default), e.g. tcp:8080 or tcp6:80:interface=\\:\\:."""
        self["http-listen"].append(check_endpoint(description))

    def opt_hostname(self, name: str) -> None:
        """Name or address for the server certificate (repeatable; default: localhost, 127.0.0.1, ::1, this host's name)."""
        self["hostnames"].append(name)

    def opt_trust_domain(self, value: str) -> None:
        """DOMAIN=ROOT.pem: the root CA of another domain whose users may look users up; it
        must state DOMAIN (its O attribute) and certifies DOMAIN's users only (repeatable;
        a bare ROOT.pem is trusted for the domain its O attribute states)."""
        from common.pki.keyfiles import KeyFileError, load_certificates
        from common.pki.trust import check_anchor

        named, separator, path = value.partition("=")
        domain: str | None = None
        if separator:
            try:
                domain = check_domain(named)
            except InvalidIdentity:
                path = value  # a file name holding "=", no domain given
        else:
            path = value
        try:
            root = load_certificates(path)[0]
        except (OSError, ValueError, IndexError, KeyFileError) as error:
            raise usage.UsageError(f"cannot read a root CA from {path}: {error}") from None
        if domain is not None:
            try:
                check_anchor(root, domain)
            except ValueError as error:
                raise usage.UsageError(f"--trust-domain {value}: {error}; refusing to trust it") from None
            self["federated-roots"].append((domain, root))
        else:
            self["federated-roots"].append(root)

    def opt_no_cache(self, value: str) -> None:
        """NAME: run without one of the registry's caches: answers (look-up answers),
        certificates (login certificates), usernames (checked user names), or all
        (repeatable; answers stay the same, only slower)."""
        from irp.server.caching import parse_cache_names

        try:
            self["no-cache"] = self["no-cache"] | parse_cache_names(value)
        except ValueError as error:
            raise usage.UsageError(f"--no-cache: {error}") from None

    def opt_registry(self, value: str) -> None:
        """DOMAIN=HOST[:PORT]: where a trusted domain's registry is (else found by DNS SRV)."""
        from irp.client import split_server

        domain, separator, server = value.partition("=")
        try:
            if not separator:
                raise ValueError("expected DOMAIN=HOST[:PORT]")
            self["registries"][check_domain(domain)] = split_server(server)
        except (ValueError, InvalidIdentity) as error:
            raise usage.UsageError(f"--registry {value}: {error}") from None

    def postOptions(self) -> None:
        """Check and complete the options."""
        if not self["domain"]:
            raise usage.UsageError("--domain is required (the domain this registry serves)")
        try:
            self["domain"] = check_domain(self["domain"])
        except InvalidIdentity as error:
            raise usage.UsageError(str(error)) from None
        for entry in self["federated-roots"]:
            if isinstance(entry, tuple) and entry[0] == self["domain"]:
                raise usage.UsageError(
                    f"--trust-domain {entry[0]}=...: that is this registry's own domain, which only its own root CA certifies"
                )
        if self["key-type"] not in KEY_TYPES:
            raise usage.UsageError(f"--key-type must be one of {', '.join(KEY_TYPES)}")
        for name in (
            "certificate-days", "max-request", "max-connections-per-address", "login-failures",
            "login-failures-per-address", "concurrent-hashes", "max-pipelined", "workers",
        ):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["workers"] > MAX_WORKERS:
            raise usage.UsageError(f"--workers is at most {MAX_WORKERS}")
        if bool(self["tls-certificate"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-certificate and --tls-key go together")
        if self["refusal-delay"] < 0:
            raise usage.UsageError("--refusal-delay cannot be negative")
        for name in ("idle-timeout", "handshake-timeout", "frame-timeout", "login-window", "lockout", "max-lockout", "hash-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["argon2-memory"] < 8192:
            raise usage.UsageError("--argon2-memory must be at least 8192 KiB")
        if self["database"]:
            try:
                parse_database_url(self["database"])
            except UnsupportedDatabase as error:
                raise usage.UsageError(str(error)) from None
        if not self["listen"]:
            self["listen"] = [f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"]
        self._check_sixid()
        self._check_caops()
        self._check_metrics()
        data_dir = os.path.abspath(self["data-dir"])
        own_pidfile(self, os.path.join(os.path.dirname(data_dir), os.path.basename(data_dir) + ".pid"))
        if not self["hostnames"]:
            import socket

            self["hostnames"] = sorted({"localhost", "127.0.0.1", "::1", socket.getfqdn().lower()})
        self._check_http()

    def _check_http(self) -> None:
        """--http-url: an http:// URL ending in / (one is added); by default, with
        --http-listen, http://FIRST-HOSTNAME:PORT/ of the first endpoint."""
        from irp.server.ca.issuance import PublicationURLs

        url = self["http-url"]
        if not url and self["http-listen"]:
            from twisted.internet.endpoints import serverFromString

            port = getattr(serverFromString(None, self["http-listen"][0]), "_port", None)
            if not isinstance(port, int) or port == 0:
                raise usage.UsageError("--http-url is required when the first --http-listen has no fixed TCP port")
            host = self["hostnames"][0]
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}/" if port == 80 else f"http://{host}:{port}/"
        if url:
            url = url if url.endswith("/") else url + "/"
            try:
                PublicationURLs(url)
            except ValueError as error:
                raise usage.UsageError(f"--http-url {self['http-url']}: {error}") from None
        self["http-url"] = url or None

    def _check_caops(self) -> None:
        """Read the CA keys' passphrase (kept out of the options' dictionary)."""
        from common.pki.keyfiles import KeyFileError
        from irp.server.ca_host import passphrase_file_from, read_passphrase_file

        path = passphrase_file_from(self["key-passphrase-file"])
        try:
            self.key_passphrase = None if path is None else read_passphrase_file(path)
        except KeyFileError as error:
            raise usage.UsageError(f"the key passphrase file: {error}") from None

    def _check_sixid(self) -> None:
        from sixid.server.operations import POLICIES

        if self["sixid-listen"]:
            self["sixid"] = True
        if self["sixid-policy"] not in POLICIES:
            raise usage.UsageError(f"--sixid-policy must be one of {', '.join(POLICIES)}")
        if self["sixid-max-lifetime"] < 60:
            raise usage.UsageError("--sixid-max-lifetime must be at least 60 seconds")
        if self["sixid-max-ids"] < 1:
            raise usage.UsageError("--sixid-max-ids must be at least 1")
        if self["sixid"] and not self["sixid-listen"]:
            self["sixid-listen"] = [f"tcp6:{SIXID_PORT}:interface=\\:\\:"]

    def _check_metrics(self) -> None:
        from common.metrics import shift_port

        if self["workers"] > 1:
            for description in self["metrics-listen"]:
                try:
                    shift_port(description, self["workers"] - 1)
                except ValueError as error:
                    raise usage.UsageError(f"--metrics-listen with --workers: {error}") from None

    def sixid_settings(self) -> SixidSettings | None:
        """sixid's settings, or None when it is not served."""
        if not self["sixid"]:
            return None
        return SixidSettings(
            policy=self["sixid-policy"], max_lifetime=self["sixid-max-lifetime"], max_ids=self["sixid-max-ids"]
        )

    def settings(self) -> RegistrySettings:
        """The registry settings these options describe."""
        from datetime import timedelta

        limits = ConnectionLimits(
            max_request=self["max-request"],
            handshake_timeout=self["handshake-timeout"],
            idle_timeout=self["idle-timeout"],
            frame_timeout=self["frame-timeout"],
            max_connections_per_address=self["max-connections-per-address"],
            max_pipelined=self["max-pipelined"],
        )
        config = RegistryConfig(
            domain=self["domain"],
            certificate_validity=timedelta(days=self["certificate-days"]),
            login_failures_per_user=self["login-failures"],
            login_failures_per_address=self["login-failures-per-address"],
            login_failure_window=self["login-window"],
            login_lockout=self["lockout"],
            login_lockout_max=self["max-lockout"],
            login_refusal_delay=self["refusal-delay"],
            concurrent_hashes=self["concurrent-hashes"],
            hash_timeout=self["hash-timeout"],
            no_cache=self["no-cache"],
        )
        return RegistrySettings(
            tls_certificate=self["tls-certificate"],
            tls_key=self["tls-key"],
            federated_roots=self["federated-roots"],
            registries=self["registries"],
            domain=self["domain"],
            data_dir=os.path.abspath(self["data-dir"]),
            listen=self["listen"],
            hostnames=self["hostnames"],
            database=self["database"],
            key_type=self["key-type"],
            admin_username=self["admin"],
            config=config,
            limits=limits,
            argon2=Argon2Parameters(memory_kib=self["argon2-memory"]),
            sixid=self.sixid_settings(),
            sixid_listen=self["sixid-listen"],
            key_passphrase=getattr(self, "key_passphrase", None),
            metrics_listen=self["metrics-listen"],
            http_listen=self["http-listen"],
            http_url=self["http-url"],
        )


def makeService(options: Options, reactor: Any = None, at_exit: Callable[..., Any] | None = None) -> service.IService:
    """Build the registry service.

    It binds its ports before it creates anything (a CA, a data folder); if it cannot
    start, ``twistd`` prints one line, stops and exits non-zero (``at_exit`` registers that
    exit; default :func:`atexit.register`).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    registry = RegistryService(options.settings(), reactor)
    parent = ReportingParent.for_options(options)
    registry.setServiceParent(parent)
    if registry.metrics.endpoint.descriptions:  # a metrics port in use is reported too
        registry.metrics.endpoint.setServiceParent(parent)

    def start_failed(failure: Any) -> None:
        fail_start(reactor, "twistd irp", describe_start_failure(failure.value), at_exit=at_exit)

    registry.ready.addErrback(start_failed)
    if options["workers"] > 1:
        from irp.server.workers import WorkerPool

        pool = WorkerPool(reactor, options["workers"], options.arguments)
        pool.setServiceParent(parent)

        def start_workers(ready: RegistryService) -> RegistryService:
            pool.start_workers(ready.all_ports)
            return ready

        registry.ready.addCallback(start_workers)
    return parent
