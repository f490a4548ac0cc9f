"""Certificates: issuing (from a CSR), listing, downloading, uploading others', renewal,
revocation, status, the CA chain, and the CRLs (built here, stored by the store)."""

from __future__ import annotations

import re
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from common.identity import Identity, InvalidIdentity, identity_from_certificate
from common.pki.certificates import UnusableCertificate, issuing_crl_name, load_certificate
from common.pki.keyfiles import PrivateKey, fingerprint
from common.wire.xmlcodec import Element, make_element, sub_element
from irp import errors
from irp.server.ca import (
    DEFAULT_ROOT_CRL_LIFETIME,
    REVOCATION_REASONS,
    CertificateAuthorityError,
    RevokedEntry,
    check_public_key,
)
from irp.server.ops.base import Handlers, log
from irp.server.session import Session
from irp.server.store import Account
from irp.wire.elements import pem_text
from irp.wire.fields import child_text, parse_serial, required
from irp.wire.records import CertificateInfo

#: A certificate fingerprint on the wire: SHA-256 of the DER, lower-case hex.
_FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")


class CertificateOps(Handlers):
    """request-certificate, list-certificates, get-certificate, user-certificates,
    upload-certificate, renew, revoke, get-crl, certificate-status and ca-chain."""

    async def _issue_and_store(
        self, username: str, make: Callable[[int], x509.Certificate], replacing: int | None = None
    ) -> CertificateInfo:
        """Issue with fresh random serials until one is unused, then store the certificate.

        The store refuses it with QuotaExceeded (a conflict) when the user already holds
        ``max_certificates_per_user`` current certificates, not counting ``replacing``
        (revoked and expired ones do not count): checked in the transaction that stores
        it, so concurrent requests cannot overshoot."""
        most = self.config.max_certificates_per_user
        for _attempt in range(3):
            serial = x509.random_serial_number()
            certificate = make(serial)
            try:
                info = await self.store.add_certificate(
                    username, certificate, fingerprint(certificate), most=most, replacing=replacing
                )
            except errors.QuotaExceeded:
                raise
            except errors.Conflict:
                continue
            log.info("Issued certificate {serial:x} to {user}", serial=serial, user=username)
            return info
        raise errors.InternalError("could not find an unused serial number")

    async def request_certificate(self, session: Session, element: Element) -> list[Element]:
        """Sign a CSR; the certificate names the target user, whatever the CSR says."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        csr = (child_text(element, "csr", limit=16384) or "").encode("ascii", "replace")
        identity = Identity(username, self.domain)
        validity = self.config.certificate_validity
        info = await self._issue_and_store(
            username, lambda serial: self.ca.issue_from_csr(csr, identity, validity=validity, serial=serial)
        )
        return [self._certificate_element(info, with_pem=True)]

    async def list_certificates(self, session: Session, element: Element) -> list[Element]:
        """All certificates of a user (self or admin), newest first."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        infos = await self.store.list_certificates(username)
        result = make_element("certificates", {"user": f"{username}@{self.domain}"})
        for info in infos:
            result.append(self._certificate_element(info, with_pem=False))
        return [result]

    async def _certificate_by_serial(self, element: Element) -> CertificateInfo:
        serial = parse_serial(required(element, "serial"))
        info = await self.store.get_certificate(serial)
        if info is None:
            raise errors.NotFound(f"no certificate issued here with serial {serial:x}")
        return info

    async def get_certificate(self, session: Session, element: Element) -> list[Element]:
        """Download one certificate (certificates are public): one this registry issued, by
        serial, or any stored one (uploaded ones too), by fingerprint."""
        digest = element.get("fingerprint")
        if (digest is None) == (element.get("serial") is None):
            raise errors.BadRequest("give either a serial or a fingerprint attribute")
        if digest is None:
            info = await self._certificate_by_serial(element)
        else:
            if not _FINGERPRINT.match(digest):
                raise errors.BadRequest("a fingerprint is 64 lower-case hex digits (SHA-256 of the DER)")
            found = await self.store.get_certificate_by_fingerprint(digest)
            if found is None:
                raise errors.NotFound(f"no certificate with fingerprint {digest}")
            info = found
        return [self._certificate_element(info, with_pem=True)]

    async def user_certificates(self, session: Session, element: Element) -> list[Element]:
        """A user's currently good certificates issued here, newest first, with PEM."""
        username = self._local_username(required(element, "user"))
        await self._account(username)
        now = self._now()
        infos = [
            info
            for info in await self.store.list_certificates(username)
            if info.origin == "issued" and info.status(now) == "good"
        ]
        result = make_element("certificates", {"user": f"{username}@{self.domain}"})
        for info in infos:
            result.append(self._certificate_element(info, with_pem=True))
        return [result]

    async def upload_certificate(self, session: Session, element: Element) -> list[Element]:
        """Publish a certificate from another issuer that names the caller."""
        text = child_text(element, "pem", limit=16384) or ""
        certificate = _untrusted_certificate(text)
        now = self._now()
        if not certificate.not_valid_before_utc.timestamp() <= now <= certificate.not_valid_after_utc.timestamp():
            raise errors.InvalidArgument("the certificate is expired or not yet valid")
        check_public_key(certificate.public_key())
        if any(certificate.issuer == issuing.subject for issuing, _key in self.ca.issuers):
            raise errors.Conflict("certificates of this registry's CA are stored when issued; no upload is needed")
        account = await self._account(session.username)
        if not self._names_user(certificate, account):
            raise errors.InvalidArgument(
                "the certificate must name you: an irp: URI with your identity or your registered email"
            )
        info = await self.store.add_certificate(
            session.username,
            certificate,
            fingerprint(certificate),
            origin="external",
            most=self.config.max_certificates_per_user,
        )
        return [self._certificate_element(info, with_pem=False)]

    def _names_user(self, certificate: x509.Certificate, account: Account) -> bool:
        try:
            return identity_from_certificate(certificate) == account.record.identity
        except InvalidIdentity:
            pass
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
            return False
        emails = [value.lower() for value in san.value.get_values_for_type(x509.RFC822Name)]
        return bool(account.record.email) and account.record.email.lower() in emails

    async def renew(self, session: Session, element: Element) -> list[Element]:
        """Issue a successor to a good certificate (same key, or a new CSR); the old one is
        revoked as superseded."""
        old = await self._certificate_by_serial(element)  # issued here: serials name no other
        await self._self_or_admin(session, old.username)
        status = old.status(self._now())
        if status != "good":
            raise errors.InvalidArgument(f"only good certificates can be renewed; this one is {status}")
        csr_text = child_text(element, "csr", required_child=False, limit=16384)
        identity = Identity(old.username, self.domain)
        validity = self.config.certificate_validity
        if csr_text is not None:
            csr = csr_text.encode("ascii", "replace")

            def make(serial: int) -> x509.Certificate:
                return self.ca.issue_from_csr(csr, identity, validity=validity, serial=serial)
        else:
            public_key = old.certificate.public_key()

            def make(serial: int) -> x509.Certificate:
                return self.ca.issue_user_certificate(identity, public_key, validity=validity, serial=serial)  # type: ignore[arg-type]

        info = await self._issue_and_store(old.username, make, replacing=old.serial)
        try:
            await self.store.revoke_certificate(old.serial, "superseded")
        except errors.Conflict:
            pass
        self.security_changed()
        return [self._certificate_element(info, with_pem=True)]

    async def revoke(self, session: Session, element: Element) -> list[Element]:
        """Revoke a certificate (its owner or an administrator), with a reason."""
        info = await self._certificate_by_serial(element)
        await self._self_or_admin(session, info.username)
        reason = element.get("reason", "unspecified")
        if reason not in REVOCATION_REASONS:
            raise errors.InvalidArgument(f"reason must be one of {', '.join(sorted(REVOCATION_REASONS))}")
        revoked = await self.store.revoke_certificate(info.serial, reason)
        self.security_changed()
        log.info("{caller} revoked certificate {serial:x} of {user} ({reason})", caller=str(session.identity), serial=info.serial, user=info.username, reason=reason)
        return [self._certificate_element(revoked, with_pem=False)]

    async def current_crls(self) -> list[tuple[str, int, int, bytes]]:
        """The issuing CA's and the root's current CRLs: (issuer, number, next update, DER).

        The issuing CRL lives ``crl_lifetime``, the root's (always empty)
        :data:`~irp.server.ca.DEFAULT_ROOT_CRL_LIFETIME`; each is rebuilt in the last quarter of
        its life (and the issuing one after every revocation). With the root key offline,
        the root CRL is the one signed offline (``ca/root.crl``).
        """
        issuing = await self.issuing_crl(self.ca.issuing_certificate, self.ca.issuing_key)
        return [("issuing", *issuing[1:]), await self._root_crl()]

    async def issuing_crl(self, certificate: x509.Certificate, key: PrivateKey) -> tuple[str, int, int, bytes]:
        """The current CRL of the issuing CA ``certificate`` (the current one or a retired
        one, signed with ``key``), stored as ``issuing-<its key identifier>``."""
        lifetime = self.config.crl_lifetime
        refresh_before = int(lifetime.total_seconds() // 4)

        def build_issuing(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            from common.timeutil import to_datetime

            revoked = [
                RevokedEntry(serial, to_datetime(at), REVOCATION_REASONS.get(reason or "unspecified"))
                for serial, at, reason in entries
            ]
            crl = self.ca.build_crl(revoked, number, next_update_after=lifetime, issuer=(certificate, key))
            return crl.public_bytes(Encoding.DER), int(crl.next_update_utc.timestamp())  # type: ignore[union-attr]

        stored = await self.store.refresh_crl(issuing_crl_name(certificate), build_issuing, refresh_before)
        return (stored.issuer, stored.crl_number, stored.next_update, stored.der)

    async def _root_crl(self) -> tuple[str, int, int, bytes]:
        if self.ca.root_crl_file is not None:
            try:
                offline = self.ca.root_crl_file.current()
            except CertificateAuthorityError as error:
                log.error("Cannot serve the root CRL: {error}", error=str(error))
                offline = None
            if offline is None or offline.next_update_utc is None:
                raise errors.Unavailable("the root CRL is unavailable: the root key is offline and no root CRL signed offline can be served")
            number = offline.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            return ("root", number, int(offline.next_update_utc.timestamp()), offline.public_bytes(Encoding.DER))

        def build_root(number: int, entries: list[tuple[int, int, str | None]]) -> tuple[bytes, int]:
            # The root CRL only ever lists nothing (the issuing CA is never revoked): it
            # lives longer than the issuing CA's.
            crl = self.ca.build_root_crl(number, next_update_after=DEFAULT_ROOT_CRL_LIFETIME)
            return crl.public_bytes(Encoding.DER), int(crl.next_update_utc.timestamp())  # type: ignore[union-attr]

        root_refresh_before = int(DEFAULT_ROOT_CRL_LIFETIME.total_seconds() // 4)
        root = await self.store.refresh_crl("root", build_root, root_refresh_before)
        return (root.issuer, root.crl_number, root.next_update, root.der)

    async def get_crl(self, session: Session, element: Element) -> list[Element]:
        """The current CRLs of the issuing CA and the root, PEM-encoded; with an ``issuer``
        attribute (``issuing-<key identifier>``), the CRL of that issuing CA only (a
        retired one, whose certificates are still valid)."""
        result = make_element("crls")
        from common.timeutil import format_timestamp

        wanted = element.get("issuer")
        if wanted is None:
            crls = await self.current_crls()
        else:
            issuer = next(((c, k) for c, k in self.ca.issuers if issuing_crl_name(c) == wanted), None)
            if issuer is None:
                raise errors.NotFound(f"no valid issuing CA of {self.domain} is named {wanted[:40]!r}")
            crls = [await self.issuing_crl(*issuer)]
        for issuer_name, number, next_update, der in crls:
            crl = x509.load_der_x509_crl(der)
            crl_element = sub_element(
                result,
                "crl",
                {"issuer": issuer_name, "number": str(number), "next-update": format_timestamp(next_update)},
            )
            sub_element(crl_element, "pem", None, crl.public_bytes(Encoding.PEM).decode("ascii"))
        return [result]

    async def certificate_status(self, session: Session, element: Element) -> list[Element]:
        """good, revoked, expired, not-yet-valid or unknown, by serial or by PEM."""
        pem = child_text(element, "pem", required_child=False, limit=16384)
        serial_text = element.get("serial")
        if (pem is None) == (serial_text is None):
            raise errors.BadRequest("give either a serial attribute or a <pem> element")
        info: CertificateInfo | None
        if pem is not None:
            certificate = _untrusted_certificate(pem)
            serial = certificate.serial_number
            info = await self.store.get_certificate_by_fingerprint(fingerprint(certificate))
        else:
            serial = parse_serial(serial_text or "")
            info = await self.store.get_certificate(serial)
        from common.timeutil import format_timestamp

        if info is None or info.origin != "issued":
            return [make_element("status", {"serial": format(serial, "x"), "state": "unknown"})]
        attributes = {
            "serial": format(info.serial, "x"),
            "state": info.status(self._now()),
            "user": f"{info.username}@{self.domain}",
            "not-after": format_timestamp(info.not_after),
        }
        if info.revoked_at is not None:
            attributes["revoked"] = format_timestamp(info.revoked_at)
            attributes["reason"] = info.revocation_reason or "unspecified"
        return [make_element("status", attributes)]

    async def ca_chain(self, session: Session, element: Element) -> list[Element]:
        """The CA certificates and the record-signing certificate."""
        result = make_element("ca-chain", {"domain": self.domain, "root-fingerprint": fingerprint(self.ca.root_certificate)})
        for role, certificate in (
            ("root", self.ca.root_certificate),
            ("issuing", self.ca.issuing_certificate),
            ("record-signing", self.signing_certificate),
        ):
            sub_element(result, "ca", {"role": role}, pem_text(certificate))
        return [result]


def _untrusted_certificate(pem: str) -> x509.Certificate:
    """A PEM certificate from a request, fully readable, or InvalidArgument."""
    if not pem.lstrip().startswith("-----BEGIN"):
        raise errors.InvalidArgument("<pem> does not hold a PEM certificate")
    try:
        return load_certificate(pem.encode("ascii", "replace"))
    except UnusableCertificate as error:
        raise errors.InvalidArgument(f"<pem> does not hold a usable certificate: {error}") from None
