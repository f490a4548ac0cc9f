"""The registry's persistent store, through ``twisted.enterprise.adbapi``.

:class:`RegistryStore` is the only code that talks to the registry's database. It is
composed of one class per table (or group of tables) on :class:`~.engine.StoreEngine`:

- :mod:`~irp.server.store.engine`: transactions, point reads, group commit, data version,
  following the address change log (:mod:`~irp.server.store.listener` on PostgreSQL);
- :mod:`~irp.server.store.accounts`: users, read; :mod:`~irp.server.store.users`: changed;
- :mod:`~irp.server.store.addresses`: signed address records;
- :mod:`~irp.server.store.certificates`: certificates and revocation;
- :mod:`~irp.server.store.crls`: certificate revocation lists;
- :mod:`~irp.server.store.pkcs12`: PKCS#12 files;
- :mod:`~irp.server.store.sixid`: sixid records, the allow list and their change log;
- :mod:`~irp.server.store.facts`: facts every process must agree on (the CA's root);
- :mod:`~irp.server.store.audit`: the audit trail and its checkpoints.

Public records are signed here, inside the transaction that writes them, so what is stored
and what is served are always the same signed bytes. Every method returns a Deferred; the
SQL runs in adbapi's thread pool.
"""

from __future__ import annotations

from irp.server.store.accounts import Account
from irp.server.store.audit import AuditTable
from irp.server.store.certificates import serial_text
from irp.server.store.crls import CRLTable, StoredCRL
from irp.server.store.facts import FactsTable
from irp.server.store.pkcs12 import Pkcs12Table
from irp.server.store.sixid import SixidTable
from irp.server.store.stats import StatsTable
from irp.server.store.users import UserTable

__all__ = ["Account", "RegistryStore", "StoredCRL", "serial_text"]


class RegistryStore(UserTable, Pkcs12Table, CRLTable, SixidTable, FactsTable, AuditTable, StatsTable):
    """Persistent users, addresses, certificates, PKCS#12 files, sixid records and the
    audit trail of one domain."""
