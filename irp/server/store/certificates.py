"""Certificates: those this registry's CA issued and those users uploaded; revocation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred

from irp.errors import Conflict, NotFound, QuotaExceeded
from irp.server.store.accounts import AccountRows
from irp.server.store.engine import Transaction
from irp.wire.records import CertificateInfo


def serial_text(serial: int) -> str:
    """The canonical text form of a serial number (lower-case hex)."""
    return format(serial, "x")


_CERT_COLUMNS = (
    "serial, fingerprint, username, origin, not_before, not_after, issued_at, revoked_at,"
    " revocation_reason, der"
)
#: The certificate this registry's CA issued with a serial (serials are unique per issuer).
_ISSUED_BY_SERIAL = f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ? AND origin = 'issued'"


class CertificateTable(AccountRows):
    """The ``certificates`` table (and the revocation counters)."""

    def _certificate_from_row(self, row: Sequence[Any]) -> CertificateInfo:
        return CertificateInfo(
            serial=int(row[0], 16),
            fingerprint=row[1],
            username=row[2],
            origin=row[3],
            not_before=int(row[4]),
            not_after=int(row[5]),
            issued_at=int(row[6]),
            revoked_at=None if row[7] is None else int(row[7]),
            revocation_reason=row[8],
            der=self.dialect.blob(row[9]),
        )

    def _count_current_certificates(self, txn: Transaction, username: str, now: float, excluding: int | None) -> int:
        row = self._fetchone(
            txn,
            "SELECT COUNT(*) FROM certificates WHERE username = ? AND revoked_at IS NULL"
            " AND not_after >= ? AND NOT (origin = 'issued' AND serial = ?)",
            (username, int(now), "" if excluding is None else serial_text(excluding)),
        )
        return int(row[0])

    def _check_certificate_quota(self, txn: Transaction, username: str, most: int | None, replacing: int | None) -> None:
        """Inside the write's transaction, with the user's row locked: QuotaExceeded if
        the user already holds ``most`` current certificates (not counting ``replacing``)."""
        if most is None:
            return
        held = self._count_current_certificates(txn, username, self._now(), replacing)
        if held >= most:
            raise QuotaExceeded(f"{username} already holds {held} certificates, the most allowed")

    def add_certificate(
        self,
        username: str,
        certificate: x509.Certificate,
        fingerprint: str,
        origin: str = "issued",
        *,
        most: int | None = None,
        replacing: int | None = None,
    ) -> Deferred[CertificateInfo]:
        """Record a certificate for a user. The same certificate (fingerprint) twice, or a
        second certificate issued here with the same serial, is a Conflict. With ``most``,
        a user who already holds that many current certificates (leaving out the serial
        ``replacing``) gets QuotaExceeded instead: counted in the same transaction as the
        write, with the user's row locked, so concurrent additions cannot all pass."""

        def add(txn: Transaction) -> CertificateInfo:
            self._require_account(txn, username, lock=True)
            self._check_certificate_quota(txn, username, most, replacing)
            return self._insert_certificate(txn, username, certificate, fingerprint, origin)

        return self._grouped_write(add)

    def _insert_certificate(
        self, txn: Transaction, username: str, certificate: x509.Certificate, fingerprint: str, origin: str
    ) -> CertificateInfo:
        from cryptography.hazmat.primitives.serialization import Encoding

        der = certificate.public_bytes(Encoding.DER)
        info = CertificateInfo(
            serial=certificate.serial_number,
            fingerprint=fingerprint,
            username=username,
            origin=origin,
            not_before=int(certificate.not_valid_before_utc.timestamp()),
            not_after=int(certificate.not_valid_after_utc.timestamp()),
            issued_at=self._now(),
            revoked_at=None,
            revocation_reason=None,
            der=der,
        )
        self._execute(
            txn,
            f"INSERT INTO certificates ({_CERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                serial_text(info.serial),
                info.fingerprint,
                username,
                origin,
                info.not_before,
                info.not_after,
                info.issued_at,
                None,
                None,
                der,
            ),
        )
        return info

    def get_certificate(self, serial: int) -> Deferred[CertificateInfo | None]:
        """Fire with the certificate this registry's CA issued with this serial, or None
        (serials are unique per issuer: uploaded certificates are found by fingerprint)."""

        def get(txn: Transaction) -> CertificateInfo | None:
            row = self._fetchone(txn, _ISSUED_BY_SERIAL, (serial_text(serial),))
            return None if row is None else self._certificate_from_row(row)

        return self._read(get)

    def get_certificate_by_fingerprint(self, fingerprint: str) -> Deferred[CertificateInfo | None]:
        """Fire with the certificate with this SHA-256 fingerprint, or None."""

        def get(txn: Transaction) -> CertificateInfo | None:
            row = self._fetchone(
                txn, f"SELECT {_CERT_COLUMNS} FROM certificates WHERE fingerprint = ?", (fingerprint,)
            )
            return None if row is None else self._certificate_from_row(row)

        return self._read(get)

    def list_certificates(self, username: str) -> Deferred[list[CertificateInfo]]:
        """Fire with all certificates of a user, newest first."""

        def get(txn: Transaction) -> list[CertificateInfo]:
            rows = self._fetchall(
                txn,
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE username = ?"
                " ORDER BY issued_at DESC, serial",
                (username,),
            )
            return [self._certificate_from_row(row) for row in rows]

        return self._read(get)

    def revocation_generation(self) -> Deferred[int]:
        """Fire with the number of revocations so far, by any process sharing the
        database (a cheap point read): caches of revocation answers are kept against it."""

        def get(txn: Transaction) -> int:
            return int(self._fetchone(txn, "SELECT value FROM counters WHERE name = 'revocations'")[0])

        return self._read(get)

    def _revoke(self, txn: Transaction, serial: str, reason: str, at: int) -> None:
        self._execute(
            txn,
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
            " WHERE serial = ? AND origin = 'issued'",
            (at, reason, serial),
        )
        self._execute(txn, "UPDATE counters SET value = value + 1 WHERE name = 'revocations'")
        self._security_event(txn)

    def revoke_certificate(self, serial: int, reason: str) -> Deferred[CertificateInfo]:
        """Revoke a certificate this CA issued; revoking twice is a Conflict."""

        def revoke(txn: Transaction) -> CertificateInfo:
            text = serial_text(serial)
            row = self._fetchone(txn, f"{_ISSUED_BY_SERIAL}{self.dialect.for_update}", (text,))
            if row is None:
                raise NotFound(f"no certificate issued here with serial {text}")
            info = self._certificate_from_row(row)
            if info.revoked_at is not None:
                raise Conflict(f"the certificate {text} is already revoked")
            self._revoke(txn, text, reason, self._now())
            row = self._fetchone(txn, _ISSUED_BY_SERIAL, (text,))
            return self._certificate_from_row(row)

        return self._write(revoke)
