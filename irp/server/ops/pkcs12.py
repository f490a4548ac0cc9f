"""PKCS#12 files: keys generated here with their certificate, and escrowed uploads."""

from __future__ import annotations

from dataclasses import replace

from common.identity import Identity
from common.pki.keyfiles import fingerprint
from common.wire.xmlcodec import Element, make_element
from irp import errors
from irp.server.ops.base import Handlers, log
from irp.server.session import Session
from irp.wire.elements import pkcs12_element
from irp.wire.fields import child_text, decode_base64, optional_int, required
from irp.wire.records import check_text_field

KEY_TYPES = ("p384", "p256", "ed25519")


class Pkcs12Ops(Handlers):
    """generate-key, list-pkcs12, get-pkcs12 and upload-pkcs12."""

    async def generate_key(self, session: Session, element: Element) -> list[Element]:
        """Generate a key pair here and return it with a new certificate as PKCS#12."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        key_type = element.get("key-type", "p384")
        if key_type not in KEY_TYPES:
            raise errors.InvalidArgument(f"key-type must be one of {', '.join(KEY_TYPES)}")
        label = check_text_field("label", element.get("label", "generated key"), 64)
        passphrase = child_text(element, "passphrase", limit=1024) or ""
        if len(passphrase) < 8:
            raise errors.InvalidArgument("the PKCS#12 passphrase must have at least 8 characters")
        identity = Identity(username, self.domain)
        validity = self.config.certificate_validity
        certificate, pkcs12 = await self.registry.run_in_thread(
            self.ca.generate_pkcs12, identity, passphrase.encode("utf-8"), key_type=key_type, validity=validity
        )
        try:
            # Both quotas are checked in the transaction that stores both.
            info, stored = await self.store.add_generated_key(
                username,
                certificate,
                fingerprint(certificate),
                label,
                pkcs12,
                most_certificates=self.config.max_certificates_per_user,
                most_pkcs12=self.config.max_pkcs12_per_user,
            )
        except errors.QuotaExceeded:
            raise
        except errors.Conflict:
            raise errors.InternalError("a generated certificate collided with a stored one; retry") from None
        stored_with_data = replace(stored, data=pkcs12)
        log.info("Generated a key and certificate {serial:x} for {user}", serial=info.serial, user=username)
        return [pkcs12_element(stored_with_data, self.domain), self._certificate_element(info, with_pem=True)]

    async def list_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """A user's stored PKCS#12 files (self or admin), without their contents."""
        username = self._target_user(element, session)
        await self._self_or_admin(session, username)
        await self._account(username)
        result = make_element("pkcs12-files", {"user": f"{username}@{self.domain}"})
        for info in await self.store.list_pkcs12(username):
            result.append(pkcs12_element(info, self.domain))
        return [result]

    async def get_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """Download a stored PKCS#12 file (its owner or an administrator)."""
        required(element, "id")
        file_id = optional_int(element, "id", 0, 1, 2**62)
        info = await self.store.get_pkcs12(file_id)
        if info is None:
            raise errors.NotFound(f"no PKCS#12 file {file_id}")
        if info.username != session.username and not await self._caller_is_admin(session):
            # Do not tell other users that the file exists.
            raise errors.NotFound(f"no PKCS#12 file {file_id}")
        return [pkcs12_element(info, self.domain)]

    async def upload_pkcs12(self, session: Session, element: Element) -> list[Element]:
        """Escrow a passphrase-protected PKCS#12 file (stored as opaque bytes)."""
        label = check_text_field("label", element.get("label", "uploaded"), 64)
        text = child_text(element, "data", limit=self.config.max_pkcs12_size * 2) or ""
        data = decode_base64(text, "PKCS#12 data")
        if len(data) > self.config.max_pkcs12_size:
            raise errors.InvalidArgument(f"PKCS#12 files may have at most {self.config.max_pkcs12_size} bytes")
        if not looks_like_pkcs12(data):
            raise errors.InvalidArgument("the data is not a DER-encoded PKCS#12 (PFX version 3) file")
        info = await self.store.add_pkcs12(
            session.username, label, "uploaded", data, None, most=self.config.max_pkcs12_per_user
        )
        return [pkcs12_element(info, self.domain)]


def looks_like_pkcs12(data: bytes) -> bool:
    """True if ``data`` is a DER SEQUENCE spanning all of it whose first element is
    INTEGER 3 (a PKCS#12 PFX). The contents stay opaque: the passphrase is not ours."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_byte = data[1]
    if length_byte < 0x80:
        length, offset = length_byte, 2
    else:
        count = length_byte & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return False
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    return offset + length == len(data) and data[offset : offset + 3] == b"\x02\x01\x03"
