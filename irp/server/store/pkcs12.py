"""PKCS#12 files: keys escrowed or generated here, with their certificates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred

from irp.errors import QuotaExceeded
from irp.server.store.certificates import CertificateTable, serial_text
from irp.server.store.engine import Transaction
from irp.wire.records import CertificateInfo, Pkcs12Info


class Pkcs12Table(CertificateTable):
    """The ``pkcs12_files`` table."""

    def _check_pkcs12_quota(self, txn: Transaction, username: str, most: int | None) -> None:
        """Inside the write's transaction, with the user's row locked: QuotaExceeded if
        the user already holds ``most`` PKCS#12 files."""
        if most is None:
            return
        held = int(self._fetchone(txn, "SELECT COUNT(*) FROM pkcs12_files WHERE username = ?", (username,))[0])
        if held >= most:
            raise QuotaExceeded(f"{username} already holds {held} PKCS#12 files, the most allowed")

    def add_pkcs12(
        self,
        username: str,
        label: str,
        origin: str,
        data: bytes,
        certificate_serial: int | None,
        *,
        most: int | None = None,
    ) -> Deferred[Pkcs12Info]:
        """Store a PKCS#12 file for a user. With ``most``, a user who already holds that
        many files gets QuotaExceeded instead (counted in the write's transaction, with
        the user's row locked)."""

        def add(txn: Transaction) -> Pkcs12Info:
            self._require_account(txn, username, lock=True)
            self._check_pkcs12_quota(txn, username, most)
            return self._insert_pkcs12(txn, username, label, origin, data, certificate_serial)

        return self._write(add)

    def add_generated_key(
        self,
        username: str,
        certificate: x509.Certificate,
        fingerprint: str,
        label: str,
        pkcs12: bytes,
        *,
        most_certificates: int | None = None,
        most_pkcs12: int | None = None,
    ) -> Deferred[tuple[CertificateInfo, Pkcs12Info]]:
        """Store a certificate issued for a key generated here and the PKCS#12 file that
        holds both, in one transaction: both quotas are checked in it (QuotaExceeded, and
        nothing is stored), with the user's row locked."""

        def add(txn: Transaction) -> tuple[CertificateInfo, Pkcs12Info]:
            self._require_account(txn, username, lock=True)
            self._check_certificate_quota(txn, username, most_certificates, None)
            self._check_pkcs12_quota(txn, username, most_pkcs12)
            info = self._insert_certificate(txn, username, certificate, fingerprint, "issued")
            stored = self._insert_pkcs12(txn, username, label, "generated", pkcs12, info.serial)
            return info, stored

        return self._write(add)

    def _insert_pkcs12(
        self, txn: Transaction, username: str, label: str, origin: str, data: bytes, certificate_serial: int | None
    ) -> Pkcs12Info:
        now = self._now()
        serial = None if certificate_serial is None else serial_text(certificate_serial)
        row = self._fetchone(
            txn,
            "INSERT INTO pkcs12_files (username, label, origin, certificate_serial, created_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (username, label, origin, serial, now, data),
        )
        return Pkcs12Info(int(row[0]), username, label, origin, serial, now, len(data))

    _PKCS12_COLUMNS = "id, username, label, origin, certificate_serial, created_at, data"

    def _pkcs12_from_row(self, row: Sequence[Any], with_data: bool) -> Pkcs12Info:
        data = self.dialect.blob(row[6])
        return Pkcs12Info(
            int(row[0]), row[1], row[2], row[3], row[4], int(row[5]), len(data), data if with_data else None
        )

    def list_pkcs12(self, username: str) -> Deferred[list[Pkcs12Info]]:
        """Fire with the user's PKCS#12 files (without their data), newest first."""

        def get(txn: Transaction) -> list[Pkcs12Info]:
            rows = self._fetchall(
                txn,
                f"SELECT {self._PKCS12_COLUMNS} FROM pkcs12_files WHERE username = ? ORDER BY id DESC",
                (username,),
            )
            return [self._pkcs12_from_row(row, with_data=False) for row in rows]

        return self._read(get)

    def get_pkcs12(self, file_id: int) -> Deferred[Pkcs12Info | None]:
        """Fire with one PKCS#12 file including its data, or None."""

        def get(txn: Transaction) -> Pkcs12Info | None:
            row = self._fetchone(
                txn, f"SELECT {self._PKCS12_COLUMNS} FROM pkcs12_files WHERE id = ?", (file_id,)
            )
            return None if row is None else self._pkcs12_from_row(row, with_data=True)

        return self._read(get)
