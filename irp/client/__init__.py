"""IRP's client API: the names other packages (SixChat) import.

Plain re-exports of :mod:`irp.client.api`, :mod:`irp.wire.records` and :mod:`irp.errors`.
"""

from irp.client.api import CRLInfo, RegistryClient, connect, connect_domain, split_server
from irp.errors import (
    CertificateInvalid,
    CertificateRejected,
    CertificateRevoked,
    ClientError,
    IRPError,
    NotFound,
    RevocationUnknown,
    ServerVerificationFailed,
)
from irp.wire.records import AddressRecord

__all__ = [
    "AddressRecord",
    "CRLInfo",
    "CertificateInvalid",
    "CertificateRejected",
    "CertificateRevoked",
    "ClientError",
    "IRPError",
    "NotFound",
    "RegistryClient",
    "RevocationUnknown",
    "ServerVerificationFailed",
    "connect",
    "connect_domain",
    "split_server",
]
