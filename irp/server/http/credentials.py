"""The OCSP responder's credentials: one delegated responder certificate per issuing CA.

Each issuing CA this registry runs (the current one, and retired ones whose certificates
may still be valid) certifies a responder key of its own: ``CN=<domain> IRP OCSP
responder``, EKU OCSPSigning, id-pkix-ocsp-nocheck, digitalSignature, valid
:data:`RESPONDER_VALIDITY` and renewed :data:`RESPONDER_RENEW_BEFORE` before its end. They
are kept in ``<data-dir>/ca/ocsp/`` (the current issuer's) and
``<data-dir>/ca/ocsp/<label>/`` (a retired one's), ``key.pem`` (0600) and
``certificate.pem``, shared by the processes of the domain like ``ca/record-signing/``.
"""

from __future__ import annotations

import datetime
import os
from functools import partial
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.pki.certificates import issuing_crl_name
from common.pki.keyfiles import PrivateKey
from common.pki.keys import signature_hash
from irp.server.ca import CLOCK_SKEW_ALLOWANCE, CertificateAuthority, generate_key
from irp.server.ca.issuance import (
    common_name,
    end_entity_builder,
    publication_extensions,
    subject_key_identifier,
    subject_name,
)
from irp.server.credentials import _load_or_issue, data_directory_lock
from irp.server.http.ocsp import Responder, issued_by

#: How long a responder certificate is valid.
RESPONDER_VALIDITY = datetime.timedelta(days=30)
#: A responder certificate is renewed this long before its end (checked at start and daily).
RESPONDER_RENEW_BEFORE = datetime.timedelta(days=10)


def issuers_of(ca: CertificateAuthority) -> list[tuple[x509.Certificate, PrivateKey]]:
    """The issuing CAs whose certificates the responder answers for, current first: the
    current one and the retired ones still valid (``ca.retired_issuers``, when the CA
    keeps them)."""
    return ca.issuers


def responder_certificate(
    domain: str,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    public_key: Any,
    moment: datetime.datetime,
    publication: Any = None,
) -> x509.Certificate:
    """A delegated OCSP responder certificate for ``public_key``, signed by ``issuer``."""
    label = common_name(f"{domain} IRP OCSP responder", "IRP OCSP responder")
    not_after = min(moment + RESPONDER_VALIDITY, issuer.not_valid_after_utc)
    builder = end_entity_builder(
        issuer.subject,
        subject_name(domain, label),
        public_key,
        None,
        moment - CLOCK_SKEW_ALLOWANCE,
        not_after,
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]),
    ).add_extension(x509.OCSPNoCheck(), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_identifier(issuer)),
        critical=False,
    )
    if publication is not None:
        for extension in publication_extensions(publication, issuer):
            builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def load_or_issue_responders(
    data_dir: str,
    ca: CertificateAuthority,
    *,
    key_type: str = "p384",
    renew_before: datetime.timedelta = RESPONDER_RENEW_BEFORE,
    issued: list[x509.Certificate] | None = None,
) -> list[Responder]:
    """The responders of every issuing CA of ``ca`` (see :func:`issuers_of`), loaded from
    ``<data_dir>/ca/ocsp/``, with keys and certificates made or renewed as needed (under
    the data directory's lock, so processes starting together agree). The certificates
    issued now (new or renewed) are appended to ``issued``."""
    made = issued if issued is not None else []
    responders = []
    with data_directory_lock(data_dir):
        moment = ca.now()
        base = os.path.join(data_dir, "ca", "ocsp")
        for index, (issuer, issuer_key) in enumerate(issuers_of(ca)):
            directory = base if index == 0 else os.path.join(base, issuing_crl_name(issuer))
            loaded = _load_or_issue(
                directory,
                moment,
                lambda: generate_key(key_type),
                partial(_issue, ca, issuer, issuer_key, moment, made),
                partial(issued_by, issuer=issuer),
                renew_before,
            )
            key, certificate = loaded[0], loaded[1]
            responders.append(Responder(issuer, certificate, key))
    return responders


def _issue(
    ca: CertificateAuthority,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    moment: datetime.datetime,
    made: list[x509.Certificate],
    key: PrivateKey,
) -> x509.Certificate:
    certificate = responder_certificate(ca.domain, issuer, issuer_key, key.public_key(), moment, ca.publication)
    made.append(certificate)
    return certificate
