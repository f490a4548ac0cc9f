"""IRP's client API: the names other packages (SixChat) import.

Plain re-exports: the connection (:mod:`irp.client.connect`, :mod:`irp.client.protocol`),
the operations (:mod:`irp.client.api`, :mod:`irp.client.results`), the connections
to every trusted domain's registry (:mod:`irp.client.directory`), setting a profile up
(:mod:`irp.client.enrolment`), the records (:mod:`irp.wire.records`) and the errors a
client's caller catches (:mod:`irp.errors`).
"""

from irp.client.api import RegistryClient
from irp.client.connect import connect, connect_domain, split_server
from irp.client.directory import Directory
from irp.client.enrolment import enrol, fetch_root_by_fingerprint, initialise, make_csr, open_registry
from irp.client.protocol import RegistryClientProtocol
from irp.client.results import CAChain, CertificateStatus, CRLInfo, SessionInfo
from irp.errors import (
    CertificateInvalid,
    CertificateRejected,
    CertificateRevoked,
    ClientError,
    ConnectionLost,
    Forbidden,
    InvalidArgument,
    IRPError,
    NotAuthenticated,
    NotFound,
    RevocationUnknown,
    ServerVerificationFailed,
    Timeout,
)
from irp.wire.records import AddressRecord

__all__ = [
    "AddressRecord",
    "CAChain",
    "CRLInfo",
    "CertificateInvalid",
    "CertificateRejected",
    "CertificateRevoked",
    "CertificateStatus",
    "ClientError",
    "ConnectionLost",
    "Directory",
    "Forbidden",
    "IRPError",
    "InvalidArgument",
    "NotAuthenticated",
    "NotFound",
    "RegistryClient",
    "RegistryClientProtocol",
    "RevocationUnknown",
    "ServerVerificationFailed",
    "SessionInfo",
    "Timeout",
    "connect",
    "connect_domain",
    "enrol",
    "fetch_root_by_fingerprint",
    "initialise",
    "make_csr",
    "open_registry",
    "split_server",
]
