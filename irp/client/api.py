"""The IRP client library: a Deferred-returning API for every registry operation.

:class:`RegistryClient` offers one method per operation over a connection
:func:`irp.client.connect` or :func:`irp.client.connect_domain` opened; each returns a
Deferred. Answers are parsed strictly (unknown fields are refused), and records the
registry signs are verified before they are returned.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.certificates import issuing_crl_name
from common.pki.keyfiles import fingerprint
from common.pki.revocation import crl_signed_by
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.client.audit import AuditAdministration
from irp.client.protocol import RegistryClientProtocol
from irp.client.results import (
    CAChain,
    CertificateStatus,
    CRLInfo,
    SessionInfo,
    parse_boolean,
    parse_ca_chain,
    parse_status,
    verify_ca_chain,
)
from irp.client.sixid_admin import SixidAdministration
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
from irp.wire.fields import bool_text, check_fields, child_text, encode_base64, required
from irp.wire.messages import Response
from irp.wire.records import AddressRecord, Endpoint, Pkcs12Info, RecordVerifier, UserRecord

T = TypeVar("T")


def _deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


class RegistryClient(SixidAdministration, AuditAdministration):
    """A connection to one registry, with one method per operation (sixid's allow list:
    :class:`~irp.client.sixid_admin.SixidAdministration`; the audit trail:
    :class:`~irp.client.audit.AuditAdministration`)."""

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
            is_admin=parse_boolean(element, "admin"),
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
            return parse_status(element, asked)

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

    def get_crl_of(self, issuer: x509.Certificate) -> Deferred[x509.CertificateRevocationList]:
        """The CRL of the issuing CA ``issuer`` (a retired one: the registry's current one is
        in :meth:`get_crls`), asked by name (``get-crl issuer="issuing-<key id>"``). The
        issuer must be signed by the pinned root and the CRL by the issuer."""

        async def run() -> x509.CertificateRevocationList:
            name = issuing_crl_name(issuer)
            element = await self._single("get-crl", "crls", {"issuer": name})
            check_fields(element, (), ("crl",))
            if [child.get("issuer") for child in element] != [name]:
                raise errors.BadRequest(f"expected only the CRL of {name}")
            chain = await self.ca_chain()
            try:
                issuer.verify_directly_issued_by(chain.root)
            except (ValueError, TypeError, InvalidSignature):
                raise errors.ServerVerificationFailed(f"{name} is not an issuing CA of {self.domain}'s root") from None
            child = element[0]
            check_fields(child, ("issuer", "number", "next-update"), ("pem",))
            try:
                crl = x509.load_pem_x509_crl((child_text(child, "pem") or "").encode("ascii", "replace"))
            except ValueError:
                raise errors.BadRequest("a CRL is not valid PEM") from None
            if not crl_signed_by(crl, issuer):
                raise errors.ServerVerificationFailed(f"the {name} CRL is not signed by that issuing CA")
            return crl

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


__all__ = ["CAChain", "CRLInfo", "CertificateStatus", "RegistryClient", "SessionInfo", "parse_ca_chain", "verify_ca_chain"]
