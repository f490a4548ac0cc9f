"""Setting a profile up: pin a registry's root CA (``initialise``), get a certificate for a
key made here (``enrol``), and open the profile's registry connection.

Shared by the ``irp`` and ``sixchat`` commands (``irp init``/``sixchat init``, ``irp
enrol``/``sixchat enrol``): each takes a :class:`common.cliutil.Context` and returns the
command's exit code.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from common.cliutil import CommandError, Context, read_secret, server_argument, show
from common.identity import InvalidIdentity, check_domain, check_username
from common.pki import keyfiles
from common.pki.keys import generate_key, signature_hash
from common.profile import ProfileConfig
from common.timeutil import format_timestamp
from irp.client.api import RegistryClient
from irp.client.connect import connect, connect_domain
from irp.client.discovery import parse_dns_server, resolver_for
from irp.client.results import parse_ca_chain, verify_ca_chain


def dns_server_argument(text: str | None) -> str | None:
    """Check ``--dns-server ADDRESS[:PORT]`` (a readable error when bad); None when not given."""
    if not text:
        return None
    try:
        parse_dns_server(text)
    except ValueError as error:
        raise CommandError(f"--dns-server: {error}") from None
    return text


def make_csr(key: Any) -> bytes:
    """A CSR for ``key`` (its subject is a placeholder: the registry decides the subject)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irp enrolment")])
    )
    return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM)


async def open_registry(ctx: Context, *, login: bool = True, use_certificate: bool = True) -> RegistryClient:
    """Connect to the profile's registry; log in with the certificate if enrolled, else
    with a password when ``login`` is true. The context keeps the client (``ctx.client``)
    and closes it when the command ends."""
    config = ctx.config()
    key = certificate = None
    chain: list[x509.Certificate] = []
    if use_certificate and ctx.profile.enrolled and not getattr(ctx.args, "password_file", None):
        key, certificate, chain = ctx.profile.credentials()
    options: dict[str, Any] = {
        "trust_roots": [ctx.profile.root()],
        "client_key": key,
        "client_certificate": certificate,
        "client_chain": chain,
        "timeout": ctx.args.timeout,
    }
    if config.server is None:
        # The profile keeps the domain: its registry is looked up by SRV each time.
        resolver = ctx.resolver or resolver_for(config.dns_server, ctx.reactor)
        client = await connect_domain(ctx.reactor, config.domain, resolver=resolver, **options)
    else:
        client = await connect(ctx.reactor, config.server, config.port, domain=config.domain, **options)
    ctx.client = client
    if login and certificate is None:
        if not config.username:
            raise CommandError("no user name: pass --user NAME (or enrol first)")
        password = read_secret(ctx.args, f"Password for {config.username}@{config.domain}: ")
        await client.login(config.username, password)
    return client


async def initialise(ctx: Context) -> int:
    """Create a profile pinned to a registry's root CA.

    Without ``--server`` the registry is found by DNS SRV (``_irp._tcp.<domain>``): the
    targets are tried in order, and the profile keeps the domain (not the target that
    answered), so that each later connection looks the registry up again and SRV
    failover keeps working. ``--dns-server`` names the DNS server to ask (kept in the
    profile too).
    """
    args = ctx.args
    host: str | None = None
    port: int | None = None
    if args.server:
        host, port = server_argument(args.server)
    dns_server = dns_server_argument(getattr(args, "dns_server", None))
    if ctx.resolver is None:
        ctx.resolver = resolver_for(dns_server, ctx.reactor)
    try:
        domain = check_domain(args.domain)
        username = check_username(args.user) if args.user else None
    except InvalidIdentity as error:
        raise CommandError(str(error)) from None
    if not args.ca_fingerprint and not args.ca_file:
        raise CommandError("give the registry's root CA: --ca-fingerprint FP (from its operator) or --ca-file root.pem")
    expected = None
    if args.ca_fingerprint:
        try:
            expected = keyfiles.parse_fingerprint(args.ca_fingerprint)
        except ValueError as error:
            raise CommandError(str(error)) from None
    if ctx.profile.exists and not args.force:
        raise CommandError(f"{ctx.profile.path} already holds a profile; use --force to replace it")
    if args.ca_file:
        root = keyfiles.load_certificates(args.ca_file)[0]
        if expected and keyfiles.fingerprint(root) != expected:
            raise CommandError("the CA file does not have the fingerprint given")
        if host is not None:
            # Check now that it is this registry's root (not at the first command, with an
            # OpenSSL message).
            await fetch_root_by_fingerprint(ctx, host, port, domain, keyfiles.fingerprint(root), given=f"that of {args.ca_file}")
        else:
            # Find a registry that answers and proves itself with this root.
            ctx.client = await connect_domain(
                ctx.reactor, domain, trust_roots=[root], timeout=args.timeout, resolver=ctx.resolver
            )
    else:
        root = await fetch_root_by_fingerprint(ctx, host, port, domain, expected or "")
    if host is None or port is None:
        assert ctx.client is not None and ctx.client.host is not None and ctx.client.port is not None
        show(f"Found the registry of {domain} by DNS SRV: {ctx.client.host} port {ctx.client.port}.")
        ctx.profile.create(ProfileConfig(server=None, domain=domain, username=username, dns_server=dns_server), root)
        show(
            f"Profile {ctx.profile.path} created for {domain}; each command finds its registry"
            f" by DNS SRV (_irp._tcp.{domain}){'' if dns_server is None else f', asking {dns_server}'}."
        )
    else:
        ctx.profile.create(ProfileConfig(server=host, port=port, domain=domain, username=username, dns_server=dns_server), root)
        show(f"Profile {ctx.profile.path} created for {domain} at {host} port {port}.")
    show(f"Trusted root CA: {keyfiles.format_fingerprint(keyfiles.fingerprint(root))}")
    return 0


async def fetch_root_by_fingerprint(
    ctx: Context, host: str | None, port: int | None, domain: str, expected: str, *, given: str = "the one given"
) -> x509.Certificate:
    """Fetch the CA chain without trusting anything yet, and accept it only if the root has
    the expected fingerprint and the server's own certificate descends from it.

    With ``host`` None the registry is found by DNS SRV (see
    :func:`irp.client.connect_domain`); ``ctx.client`` tells which target answered.
    """

    def unverified(*_args: Any) -> Any:
        return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    if host is None or port is None:
        client = await connect_domain(
            ctx.reactor, domain, trust_roots=[], tls_options=unverified, timeout=ctx.args.timeout, resolver=ctx.resolver
        )
    else:
        client = await connect(ctx.reactor, host, port, domain=domain, trust_roots=[], tls_options=unverified, timeout=ctx.args.timeout)
    ctx.client = client
    chain = parse_ca_chain((await client._call("ca-chain")).single("ca-chain"))
    if chain.domain != domain:
        raise CommandError(f"that registry serves {chain.domain}, not {domain}", 5)
    if keyfiles.fingerprint(chain.root) != expected:
        raise CommandError(
            "the registry's root CA has fingerprint"
            f" {keyfiles.format_fingerprint(keyfiles.fingerprint(chain.root))}, not {given}: refusing to trust it",
            5,
        )
    verify_ca_chain(chain, [chain.root], datetime.now(timezone.utc))
    server_certificate = client.protocol.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
    try:
        server_certificate.verify_directly_issued_by(chain.issuing)
    except Exception:  # noqa: BLE001
        raise CommandError("the registry's TLS certificate was not issued by its CA", 5) from None
    return chain.root


async def enrol(ctx: Context) -> int:
    """Log in with a password, make a key here, and get a certificate for it."""
    config = ctx.config()
    if ctx.profile.enrolled and not ctx.args.force:
        raise CommandError(f"{ctx.profile.path} already holds a key and certificate; use --force to replace them")
    if not config.username:
        raise CommandError("pass --user NAME")
    client = await open_registry(ctx, use_certificate=False)
    print(f"Generating a {ctx.args.key_type} key...", file=sys.stderr)
    key = generate_key(ctx.args.key_type)
    entry = await client.request_certificate(make_csr(key))
    chain = await client.ca_chain()
    assert entry.certificate is not None
    ctx.profile.save_credentials(key, [entry.certificate, chain.issuing])
    ctx.profile.save_config(config)
    show(f"Enrolled {entry.user}: certificate {entry.serial:x}, valid until {format_timestamp(entry.not_after)}")
    show(f"Key and certificate stored in {ctx.profile.path} (key mode 0600). Later commands log in with the certificate.")
    return 0
