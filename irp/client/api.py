"""The IRP client library: a Deferred-returning API for every registry operation.

:func:`connect` opens a TLS connection that verifies the registry (its chain must end at a
pinned root CA, and its certificate must name the host dialled), optionally logging in with
a client certificate; :func:`connect_domain` finds the domain's registry by DNS SRV first
and tries its targets in order. :class:`RegistryClient` then offers one method per
operation; each returns a Deferred. Answers are parsed strictly (unknown fields are
refused), and records the registry signs are verified before they are returned.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from common.endpoint import split_host_port
from common.factory import QuietFactory
from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.keyfiles import PrivateKey, fingerprint
from common.tls import client_options, send_without_delay
from common.wire.framing import FrameDecoder, FrameError, encode_frame
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import DEFAULT_PORT, errors
from irp.client.discovery import discover
from irp.server.ca import RECORD_SIGNING_OID
from irp.wire.elements import (
    AccountView,
    CertificateEntry,
    int_attribute,
    parse_addresses,
    parse_certificate,
    parse_identity,
    parse_pkcs12,
    parse_user,
    timestamp_attribute,
)
from irp.wire.messages import (
    Response,
    bool_text,
    build_request,
    check_fields,
    child_text,
    encode_base64,
    parse_response,
    parse_serial,
    required,
)
from irp.wire.records import AddressRecord, Endpoint, Pkcs12Info, RecordVerifier, UserRecord

T = TypeVar("T")

MAX_RESPONSE = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0


def _deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


@implementer(IHandshakeListener)
class RegistryClientProtocol(Protocol):
    """Sends requests and matches responses by id (requests may be pipelined)."""

    def __init__(self, clock: IReactorTime, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.clock = clock
        self.timeout = timeout
        self.decoder = FrameDecoder(MAX_RESPONSE)
        self.waiting: dict[int, tuple[Deferred[Response], IDelayedCall]] = {}
        self.next_id = 1
        self.ready: Deferred[RegistryClientProtocol] = Deferred()
        #: Fires (with None) once the connection is closed.
        self.disconnected: Deferred[None] = Deferred()
        self.closed = False
        self.failure: errors.IRPError | None = None

    def connectionMade(self) -> None:
        """TCP is up (the TLS handshake starts): send small messages at once."""
        send_without_delay(self.transport)

    def handshakeCompleted(self) -> None:
        """TLS is up (and the registry's certificate verified)."""
        if not self.ready.called:
            self.ready.callback(self)

    def request(self, operation: Element) -> Deferred[Response]:
        """Send one request; fire with its response or fail with the IRPError it carries."""
        if self.closed:
            raise self.failure or errors.ConnectionLost()
        request_id = self.next_id
        self.next_id += 1
        result: Deferred[Response] = Deferred()
        timer = self.clock.callLater(self.timeout, self._timed_out, request_id)
        self.waiting[request_id] = (result, timer)
        self.transport.write(encode_frame(build_request(request_id, operation)))  # type: ignore[union-attr]
        return result

    def _timed_out(self, request_id: int) -> None:
        entry = self.waiting.pop(request_id, None)
        if entry is not None:
            entry[0].errback(errors.Timeout(f"the registry did not answer within {self.timeout:g} seconds"))
        self.failure = errors.Timeout("an earlier request timed out")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Dispatch each complete response to its request."""
        try:
            frames = self.decoder.feed(data)
        except FrameError as error:
            self._fail_all(errors.MalformedMessage(f"the registry broke the framing: {error}"))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if self.decoder.error is not None:
            # Frames before a broken header are handled; after them, the stream is dead.
            self.transport.abortConnection()  # type: ignore[union-attr]
        for frame in frames:
            response: Response | errors.IRPError
            try:
                parsed = parse_response(frame)
                response, response_id = parsed, parsed.id
            except errors.IRPError as error:
                response = error
                response_id = getattr(error, "request_id", 0)
            if response_id == 0:
                # A connection-level error: the registry is closing the connection.
                assert isinstance(response, errors.IRPError)
                self.failure = response
                self._fail_all(response)
                continue
            entry = self.waiting.pop(response_id, None)
            if entry is None:
                continue
            deferred, timer = entry
            if timer.active():
                timer.cancel()
            if isinstance(response, errors.IRPError):
                deferred.errback(response)
            else:
                deferred.callback(response)

    def _fail_all(self, error: errors.IRPError) -> None:
        waiting, self.waiting = self.waiting, {}
        for deferred, timer in waiting.values():
            if timer.active():
                timer.cancel()
            deferred.errback(error)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Fail every outstanding request."""
        self.closed = True
        error = self.failure or errors.ConnectionLost(f"the connection to the registry was lost: {reason.getErrorMessage()}")
        if not self.ready.called:
            tls_problem = reason.getErrorMessage()
            self.ready.errback(
                errors.ServerVerificationFailed(f"the TLS connection to the registry failed: {tls_problem}")
            )
        self._fail_all(error)
        self.disconnected.callback(None)


@dataclass(frozen=True)
class SessionInfo:
    """The answer to login and whoami."""

    user: Identity | None
    method: str
    is_admin: bool


@dataclass(frozen=True)
class CRLInfo:
    """A CRL fetched from the registry and verified against the CA."""

    issuer: str
    number: int
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class CertificateStatus:
    """The registry's answer about one certificate."""

    serial: int
    state: str
    user: str | None
    revoked_at: str | None
    reason: str | None


@dataclass(frozen=True)
class CAChain:
    """The domain's root and issuing CA and the record-signing certificate."""

    domain: str
    root: x509.Certificate
    issuing: x509.Certificate
    record_signing: x509.Certificate


def verify_ca_chain(chain: CAChain, pinned_roots: Sequence[x509.Certificate], now: datetime) -> None:
    """Check that the chain's root is pinned and the others descend from it correctly."""
    pinned = {fingerprint(root) for root in pinned_roots}
    if fingerprint(chain.root) not in pinned:
        raise errors.ServerVerificationFailed("the registry's root CA is not the one you trust (fingerprint differs)")
    try:
        chain.issuing.verify_directly_issued_by(chain.root)
        chain.record_signing.verify_directly_issued_by(chain.issuing)
    except (ValueError, TypeError, InvalidSignature):
        raise errors.ServerVerificationFailed("the registry's CA chain does not verify") from None
    for certificate in (chain.root, chain.issuing, chain.record_signing):
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise errors.ServerVerificationFailed("a certificate of the registry's CA chain is expired")
    try:
        usages = chain.record_signing.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise errors.ServerVerificationFailed("the record-signing certificate has no extended key usage") from None
    if RECORD_SIGNING_OID not in usages:
        raise errors.ServerVerificationFailed("the record-signing certificate is not for signing records")


CA_ROLES = ("root", "issuing", "record-signing")


def parse_ca_chain(element: Element) -> CAChain:
    """Parse ``<ca-chain>`` (strictly: its three certificates, once each, nothing else)."""
    check_fields(element, ("domain", "root-fingerprint"), ("ca",))
    found: dict[str, x509.Certificate] = {}
    for child in element:
        check_fields(child, ("role",), text=True)
        role = required(child, "role")
        if role not in CA_ROLES:
            raise errors.BadRequest(f"unknown CA role {role!r}")
        if role in found:
            raise errors.BadRequest(f"the CA chain lists the {role} certificate twice")
        try:
            found[role] = x509.load_pem_x509_certificate((child.text or "").encode("ascii"))
        except ValueError:
            raise errors.BadRequest(f"the {role} CA certificate is not valid PEM") from None
    missing = set(CA_ROLES) - found.keys()
    if missing:
        raise errors.BadRequest(f"the CA chain lacks {', '.join(sorted(missing))}")
    if required(element, "root-fingerprint") != fingerprint(found["root"]):
        raise errors.BadRequest("the CA chain's root-fingerprint is not its root's")
    return CAChain(required(element, "domain"), found["root"], found["issuing"], found["record-signing"])


def _boolean(element: Element, name: str) -> bool:
    value = required(element, name)
    if value not in ("true", "false"):
        raise errors.BadRequest(f"{name!r} must be 'true' or 'false'")
    return value == "true"


STATUS_STATES = ("good", "revoked", "expired", "not-yet-valid", "unknown")


def _parse_status(element: Element, asked: int) -> CertificateStatus:
    """Parse ``<status>`` (strictly), which must be about the serial number ``asked``."""
    check_fields(element, ("serial", "state", "user", "not-after", "revoked", "reason"))
    serial = parse_serial(required(element, "serial"))
    if serial != asked:
        raise errors.ServerVerificationFailed(f"asked about certificate {asked:x}, the registry answered about {serial:x}")
    state = required(element, "state")
    if state not in STATUS_STATES:
        raise errors.BadRequest(f"unknown certificate state {state!r}")
    user = element.get("user")
    if (user is None) != (state == "unknown") or (element.get("not-after") is None) != (state == "unknown"):
        raise errors.BadRequest("a status names the user and not-after exactly when the certificate is known")
    if user is not None:
        parse_identity(user)
        timestamp_attribute(element, "not-after")
    revoked = element.get("revoked")
    reason = element.get("reason")
    if (revoked is not None) != (state == "revoked") or (reason is not None) != (state == "revoked"):
        raise errors.BadRequest("a status gives revoked and reason exactly when the certificate is revoked")
    if revoked is not None:
        timestamp_attribute(element, "revoked")
    return CertificateStatus(serial=serial, state=state, user=user, revoked_at=revoked, reason=reason)


class RegistryClient:
    """A connection to one registry, with one method per operation."""

    def __init__(
        self,
        protocol: RegistryClientProtocol,
        domain: str,
        trust_roots: Sequence[x509.Certificate],
        clock: IReactorTime,
        *,
        host: str | None = None,
        port: int | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.protocol = protocol
        self.domain = domain
        self.trust_roots = list(trust_roots)
        self.clock = clock
        #: The host and port connected to (for :func:`connect_domain`: the target chosen).
        self.host = host
        self.port = port
        #: Who the connection is logged in as, as far as the client knows (the client
        #: certificate's identity, then what login, logout and whoami answer); None when
        #: anonymous or not yet known.
        self.identity = identity
        self.chain: CAChain | None = None
        self.verifier: RecordVerifier | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc)

    async def _call(self, tag: str, attributes: dict[str, Any] | None = None, children: Sequence[tuple[str, str]] = ()) -> Response:
        operation = make_element(tag, {k: v for k, v in (attributes or {}).items() if v is not None})
        for child_tag, text in children:
            sub_element(operation, child_tag, None, text)
        return await self.protocol.request(operation)

    async def _single(self, tag: str, result_tag: str, attributes: dict[str, Any] | None = None, children: Sequence[tuple[str, str]] = ()) -> Element:
        response = await self._call(tag, attributes, children)
        return response.single(result_tag)

    async def _verifier(self) -> RecordVerifier:
        if self.verifier is None:
            await self.ca_chain()
        assert self.verifier is not None
        return self.verifier

    def close(self) -> Deferred[None]:
        """Close the connection; fire once it is closed."""
        if self.protocol.transport is not None and not self.protocol.closed:
            self.protocol.transport.loseConnection()
        return self.protocol.disconnected

    # -- session ----------------------------------------------------------------------

    def capabilities(self) -> Deferred[Element]:
        """The server's versions, auth methods, limits and operations."""
        return _deferred(self._single("capabilities", "capabilities"))

    def _session(self, element: Element) -> SessionInfo:
        """Parse ``<session>`` (strictly) and remember who the connection is logged in as."""
        check_fields(element, ("user", "method", "admin"))
        user = element.get("user")
        method = required(element, "method")
        if method not in ("none", "certificate", "password"):
            raise errors.BadRequest(f"unknown session method {method!r}")
        if (user is None) != (method == "none"):
            raise errors.BadRequest("a session names its user exactly when it is logged in")
        session = SessionInfo(
            user=None if user is None else parse_identity(user),
            method=method,
            is_admin=_boolean(element, "admin"),
        )
        self.identity = session.user
        return session

    def login(self, username: str, password: str) -> Deferred[SessionInfo]:
        """Log in with a user name and password."""

        async def run() -> SessionInfo:
            element = await self._single("login", "session", {"user": username}, [("password", password)])
            return self._session(element)

        return _deferred(run())

    def logout(self) -> Deferred[SessionInfo]:
        """End the login on this connection."""
        return _deferred(self._session_call("logout"))

    def whoami(self) -> Deferred[SessionInfo]:
        """Who this connection is logged in as."""
        return _deferred(self._session_call("whoami"))

    async def _session_call(self, tag: str) -> SessionInfo:
        return self._session(await self._single(tag, "session"))

    # -- directory --------------------------------------------------------------------

    def get_user(self, user: str) -> Deferred[tuple[UserRecord, AccountView | None]]:
        """A user's verified directory entry (and account settings for self/admins)."""

        async def run() -> tuple[UserRecord, AccountView | None]:
            element = await self._single("get-user", "user", {"user": user})
            record, account = parse_user(element)
            self._check_identity(record.identity, user)
            (await self._verifier()).verify(record)
            return record, account

        return _deferred(run())

    def update_user(
        self,
        user: str | None = None,
        *,
        display_name: str | None = None,
        email: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> Deferred[UserRecord]:
        """Change directory fields (attributes, when given, replace all attributes)."""

        async def run() -> UserRecord:
            operation = make_element("update-user", {"user": user, "display-name": display_name, "email": email})
            if attributes is not None:
                group = sub_element(operation, "attributes")
                for name, value in sorted(attributes.items()):
                    sub_element(group, "attribute", {"name": name}, value)
            response = await self.protocol.request(operation)
            record, _account = parse_user(response.single("user"))
            if user is None:
                await self._check_own(record.identity)
            else:
                self._check_identity(record.identity, user)
            (await self._verifier()).verify(record)
            return record

        return _deferred(run())

    def list_users(self, offset: int = 0, limit: int = 50, prefix: str = "") -> Deferred[tuple[int, list[UserRecord]]]:
        """One page of the directory: (total, entries)."""

        async def run() -> tuple[int, list[UserRecord]]:
            element = await self._single(
                "list-users", "users", {"offset": str(offset), "limit": str(limit), "prefix": prefix or None}
            )
            check_fields(element, ("total", "offset"), ("user",))
            total = int_attribute(element, "total")
            if int_attribute(element, "offset") != offset:
                raise errors.BadRequest(f"asked for users from {offset}, got another page")
            verifier = await self._verifier()
            records = []
            for child in element:
                record, account = parse_user(child)
                if account is not None:
                    raise errors.BadRequest("a directory listing holds no account settings")
                records.append(verifier.verify(record))
            return total, records

        return _deferred(run())

    # -- addresses --------------------------------------------------------------------

    def register_addresses(
        self, endpoints: Sequence[Endpoint], presence: str = "online", ttl: int | None = None
    ) -> Deferred[AddressRecord]:
        """Publish this user's current addresses and presence."""

        async def run() -> AddressRecord:
            operation = make_element(
                "register-address", {"presence": presence, "ttl": None if ttl is None else str(ttl)}
            )
            for endpoint in endpoints:
                sub_element(operation, "endpoint", {"address": endpoint.address, "port": str(endpoint.port)})
            response = await self.protocol.request(operation)
            record = parse_addresses(response.single("addresses"))
            await self._check_own(record.identity)
            return (await self._verifier()).verify(record)

        return _deferred(run())

    def lookup(self, user: str) -> Deferred[AddressRecord]:
        """A user's verified address record; check ``is_current`` before using it."""

        async def run() -> AddressRecord:
            element = await self._single("lookup", "addresses", {"user": user})
            record = parse_addresses(element)
            self._check_identity(record.identity, user)
            return (await self._verifier()).verify(record)

        return _deferred(run())

    def _check_identity(self, found: Identity, asked: str) -> None:
        wanted = asked if "@" in asked else f"{asked}@{self.domain}"
        if str(found) != wanted:
            raise errors.ServerVerificationFailed(f"asked for {wanted}, the registry answered for {found}")

    async def _check_own(self, found: Identity) -> None:
        """Refuse an answer about oneself that names someone else."""
        if self.identity is None:
            await self.whoami()
        if found != self.identity:
            raise errors.ServerVerificationFailed(
                f"the registry answered for {found}, not for this connection's user {self.identity}"
            )

    # -- certificates -----------------------------------------------------------------

    def request_certificate(self, csr_pem: bytes, user: str | None = None) -> Deferred[CertificateEntry]:
        """Send a CSR; fire with the issued certificate."""

        async def run() -> CertificateEntry:
            element = await self._single("request-certificate", "certificate", {"user": user}, [("csr", csr_pem.decode("ascii"))])
            return parse_certificate(element)

        return _deferred(run())

    def generate_key(
        self, passphrase: str, *, key_type: str = "p384", label: str = "generated key", user: str | None = None
    ) -> Deferred[tuple[Pkcs12Info, CertificateEntry]]:
        """Have the registry generate a key; fire with the PKCS#12 file and certificate."""

        async def run() -> tuple[Pkcs12Info, CertificateEntry]:
            response = await self._call(
                "generate-key", {"user": user, "key-type": key_type, "label": label}, [("passphrase", passphrase)]
            )
            if len(response.results) != 2:
                raise errors.BadRequest("expected a PKCS#12 file and a certificate")
            return parse_pkcs12(response.results[0]), parse_certificate(response.results[1])

        return _deferred(run())

    def list_certificates(self, user: str | None = None) -> Deferred[list[CertificateEntry]]:
        """All certificates of a user (default: yourself)."""
        return _deferred(self._certificates("list-certificates", {"user": user}))

    def user_certificates(self, user: str) -> Deferred[list[CertificateEntry]]:
        """A user's currently good certificates, each verified against the CA chain."""

        async def run() -> list[CertificateEntry]:
            entries = await self._certificates("user-certificates", {"user": user})
            chain = await self.ca_chain()
            for entry in entries:
                self._check_identity(entry.user, user)
                if entry.certificate is None:
                    raise errors.BadRequest("a user certificate came without its PEM")
                try:
                    entry.certificate.verify_directly_issued_by(chain.issuing)
                except (ValueError, TypeError, InvalidSignature):
                    raise errors.ServerVerificationFailed("a user certificate was not issued by the registry's CA") from None
                if fingerprint(entry.certificate) != entry.fingerprint:
                    raise errors.ServerVerificationFailed("a user certificate's fingerprint does not match")
                # The certificate itself, not the listing around it, says whose it is.
                try:
                    named = identity_from_certificate(entry.certificate)
                except InvalidIdentity:
                    named = None
                if named != entry.user:
                    raise errors.ServerVerificationFailed(f"a certificate listed for {entry.user} does not name that user")
            return entries

        return _deferred(run())

    async def _certificates(self, tag: str, attributes: dict[str, Any]) -> list[CertificateEntry]:
        element = await self._single(tag, "certificates", attributes)
        check_fields(element, ("user",), ("certificate",))
        parse_identity(required(element, "user"))
        return [parse_certificate(child) for child in element]

    def get_certificate(self, serial: int | None = None, *, fingerprint: str | None = None) -> Deferred[CertificateEntry]:
        """Download one certificate: one the registry issued, by serial number, or any it
        stores (uploaded ones too), by SHA-256 fingerprint (64 lower-case hex digits)."""
        if (serial is None) == (fingerprint is None):
            raise ValueError("give either a serial or a fingerprint")
        attributes = {"serial": format(serial, "x")} if serial is not None else {"fingerprint": fingerprint}
        return _deferred(self._certificate_call("get-certificate", attributes))

    async def _certificate_call(self, tag: str, attributes: dict[str, Any], children: Sequence[tuple[str, str]] = ()) -> CertificateEntry:
        return parse_certificate(await self._single(tag, "certificate", attributes, children))

    def upload_certificate(self, certificate: x509.Certificate) -> Deferred[CertificateEntry]:
        """Publish a certificate from another issuer that names you."""
        pem = certificate.public_bytes(Encoding.PEM).decode("ascii")
        return _deferred(self._certificate_call("upload-certificate", {}, [("pem", pem)]))

    def renew(self, serial: int, csr_pem: bytes | None = None) -> Deferred[CertificateEntry]:
        """Renew a certificate (same key, or the key of a new CSR)."""
        children = [] if csr_pem is None else [("csr", csr_pem.decode("ascii"))]
        return _deferred(self._certificate_call("renew", {"serial": format(serial, "x")}, children))

    def revoke(self, serial: int, reason: str = "unspecified") -> Deferred[CertificateEntry]:
        """Revoke a certificate."""
        return _deferred(self._certificate_call("revoke", {"serial": format(serial, "x"), "reason": reason}))

    def certificate_status(self, serial: int | None = None, certificate: x509.Certificate | None = None) -> Deferred[CertificateStatus]:
        """good, revoked, expired, not-yet-valid or unknown."""

        async def run() -> CertificateStatus:
            if certificate is not None:
                asked = certificate.serial_number
                pem = certificate.public_bytes(Encoding.PEM).decode("ascii")
                element = await self._single("certificate-status", "status", {}, [("pem", pem)])
            else:
                asked = serial or 0
                element = await self._single("certificate-status", "status", {"serial": format(asked, "x")})
            return _parse_status(element, asked)

        return _deferred(run())

    def get_crls(self) -> Deferred[list[CRLInfo]]:
        """The issuing CA's and the root's CRLs, with their signatures verified."""

        async def run() -> list[CRLInfo]:
            element = await self._single("get-crl", "crls")
            check_fields(element, (), ("crl",))
            issuers = [child.get("issuer") for child in element]
            if issuers != ["issuing", "root"]:
                raise errors.BadRequest("expected the issuing CA's CRL, then the root's")
            chain = await self.ca_chain()
            result = []
            for child in element:
                check_fields(child, ("issuer", "number", "next-update"), ("pem",))
                issuer = required(child, "issuer")
                number = int_attribute(child, "number")
                timestamp_attribute(child, "next-update")
                pem = (child_text(child, "pem") or "").encode("ascii", "replace")
                try:
                    crl = x509.load_pem_x509_crl(pem)
                except ValueError:
                    raise errors.BadRequest("a CRL is not valid PEM") from None
                signer = chain.root if issuer == "root" else chain.issuing
                if not crl.is_signature_valid(signer.public_key()):  # type: ignore[arg-type]
                    raise errors.ServerVerificationFailed(f"the {issuer} CRL's signature does not verify")
                result.append(CRLInfo(issuer, number, crl))
            return result

        return _deferred(run())

    def ca_chain(self) -> Deferred[CAChain]:
        """The domain's CA and record-signing certificates, verified against the pinned root."""
        if self.chain is not None:
            return succeed(self.chain)

        async def run() -> CAChain:
            chain = parse_ca_chain(await self._single("ca-chain", "ca-chain"))
            if chain.domain != self.domain:
                raise errors.ServerVerificationFailed(f"the registry serves {chain.domain}, not {self.domain}")
            verify_ca_chain(chain, self.trust_roots, self._now())
            self.chain = chain
            self.verifier = RecordVerifier(chain.record_signing)
            return chain

        return _deferred(run())

    # -- PKCS#12 files ----------------------------------------------------------------

    def list_pkcs12(self, user: str | None = None) -> Deferred[list[Pkcs12Info]]:
        """A user's stored PKCS#12 files (default: yourself)."""

        async def run() -> list[Pkcs12Info]:
            element = await self._single("list-pkcs12", "pkcs12-files", {"user": user})
            check_fields(element, ("user",), ("pkcs12",))
            parse_identity(required(element, "user"))
            return [parse_pkcs12(child) for child in element]

        return _deferred(run())

    def get_pkcs12(self, file_id: int) -> Deferred[Pkcs12Info]:
        """Download a stored PKCS#12 file."""

        async def run() -> Pkcs12Info:
            return parse_pkcs12(await self._single("get-pkcs12", "pkcs12", {"id": str(file_id)}))

        return _deferred(run())

    def upload_pkcs12(self, data: bytes, label: str = "uploaded") -> Deferred[Pkcs12Info]:
        """Escrow a PKCS#12 file with the registry."""

        async def run() -> Pkcs12Info:
            return parse_pkcs12(await self._single("upload-pkcs12", "pkcs12", {"label": label}, [("data", encode_base64(data))]))

        return _deferred(run())

    # -- administration ---------------------------------------------------------------

    def create_user(
        self,
        username: str,
        *,
        password: str | None = None,
        display_name: str = "",
        email: str = "",
        admin: bool = False,
        password_login: bool = True,
    ) -> Deferred[tuple[UserRecord, AccountView | None]]:
        """Create a user (administrators)."""

        async def run() -> tuple[UserRecord, AccountView | None]:
            children = [] if password is None else [("password", password)]
            element = await self._single(
                "create-user",
                "user",
                {
                    "user": username,
                    "display-name": display_name,
                    "email": email,
                    "admin": bool_text(admin),
                    "password-login": bool_text(password_login),
                },
                children,
            )
            return parse_user(element)

        return _deferred(run())

    def set_password(self, user: str | None, password: str, current_password: str | None = None) -> Deferred[Element]:
        """Set a password (your own, or anyone's for administrators)."""
        children = [("password", password)]
        if current_password is not None:
            children.append(("current-password", current_password))
        return _deferred(self._single("set-password", "user", {"user": user}, children))

    def set_password_login(self, user: str | None, enabled: bool) -> Deferred[Element]:
        """Enable (administrators) or disable password login for a user."""
        return _deferred(self._single("set-password-login", "user", {"user": user, "enabled": bool_text(enabled)}))

    def set_admin(self, user: str, enabled: bool) -> Deferred[Element]:
        """Grant or withdraw administrator rights."""
        return _deferred(self._single("set-admin", "user", {"user": user, "enabled": bool_text(enabled)}))

    def delete_user(self, user: str) -> Deferred[Element]:
        """Delete a user and revoke their certificates."""
        return _deferred(self._single("delete-user", "deleted", {"user": user}))


def split_server(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address (the port
    defaults to IRP's)."""
    return split_host_port(text, default_port)


def connect(
    reactor: Any,
    host: str,
    port: int,
    *,
    domain: str,
    trust_roots: Sequence[x509.Certificate],
    client_key: PrivateKey | None = None,
    client_certificate: x509.Certificate | None = None,
    client_chain: Sequence[x509.Certificate] = (),
    timeout: float = DEFAULT_TIMEOUT,
    tls_options: Callable[..., Any] = client_options,
    bind_address: str | None = None,
) -> Deferred[RegistryClient]:
    """Connect to a registry over TLS; fire with a :class:`RegistryClient` once TLS is up.

    The server's chain must end at one of ``trust_roots`` and its certificate must name
    ``host``. With ``client_key`` and ``client_certificate`` the connection is logged in
    with the certificate at once. ``bind_address`` picks the local source address.
    """
    options = tls_options(host, trust_roots, client_key, client_certificate, client_chain)
    name = host.encode("idna") if not _is_ip(host) else host
    bind = None if bind_address is None else (bind_address, 0)
    endpoint = wrapClientTLS(options, HostnameEndpoint(reactor, name, port, timeout=timeout, bindAddress=bind))
    protocol = RegistryClientProtocol(reactor, timeout)

    async def run() -> RegistryClient:
        try:
            await endpoint.connect(QuietFactory.forProtocol(lambda: protocol))
        except Exception as error:  # noqa: BLE001 - every connection failure reads the same way
            raise errors.ConnectionLost(f"cannot connect to the registry at {host} port {port}: {error}") from None
        await _await_handshake(reactor, protocol, timeout)
        identity = None
        if client_certificate is not None:
            try:
                identity = identity_from_certificate(client_certificate)
            except InvalidIdentity:
                identity = None
        return RegistryClient(protocol, domain, trust_roots, reactor, host=host, port=port, identity=identity)

    return _deferred(run())


def connect_domain(
    reactor: Any,
    domain: str,
    *,
    resolver: Any = None,
    rng: random.Random | None = None,
    **options: Any,
) -> Deferred[RegistryClient]:
    """Connect to the registry of ``domain``, found by DNS SRV (``_irp._tcp.<domain>``).

    The targets :func:`irp.client.discovery.discover` returns are tried in order (by priority,
    then weighted at random), falling back to the next on a failure to connect, to
    complete TLS or to verify the server (each target must present a certificate for its
    own name, chaining to the pinned root), or a timeout; with no SRV records, the domain
    itself on port 4604. A domain that publishes that it has no registry fails with
    ``not-found``. The client's ``host`` and ``port`` tell which target answered.
    ``options`` are those of :func:`connect` (``trust_roots``, ``client_key``...);
    ``resolver`` is a ``twisted.names`` resolver (default: the system's).
    """

    async def run() -> RegistryClient:
        try:
            targets = await discover(domain, resolver, rng)
        except errors.IRPError:
            raise
        except Exception as error:  # noqa: BLE001 - every DNS failure (timeout, SERVFAIL...) reads the same way
            raise errors.ConnectionLost(f"cannot look up the registry of {domain} in the DNS: {error}") from None
        if not targets:
            raise errors.NotFound(f"{domain} publishes no IRP registry")
        failures: list[errors.IRPError] = []
        for host, port in targets:
            try:
                return await connect(reactor, host, port, domain=domain, **options)
            except (errors.ConnectionLost, errors.Timeout, errors.ServerVerificationFailed) as error:
                failures.append(error)
        tried = "; ".join(f"{host} port {port}: {error.message}" for (host, port), error in zip(targets, failures, strict=True))
        raise type(failures[-1])(f"no registry of {domain} could be reached ({tried})")

    return _deferred(run())


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _await_handshake(clock: IReactorTime, protocol: RegistryClientProtocol, seconds: float) -> None:
    """Wait for the TLS handshake; abort the connection if it takes longer than ``seconds``."""
    try:
        await _with_timeout(clock, protocol.ready, seconds, "the TLS handshake with the registry timed out")
    except errors.Timeout:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        raise


async def _with_timeout(reactor: Any, waiting: Deferred[T], seconds: float, message: str) -> T:
    def expire() -> None:
        if not waiting.called:
            waiting.errback(errors.Timeout(message))

    timer = reactor.callLater(seconds, expire)
    try:
        return await waiting
    finally:
        if timer.active():
            timer.cancel()


__all__ = ["RegistryClient", "RegistryClientProtocol", "connect", "connect_domain", "split_server", "verify_ca_chain"]
