"""The TLS contexts of :mod:`common.tls`: what an idle connection keeps (issue 11)."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import TestCase

from common import tls
from irp.server.ca import generate_key
from test import pki


def server_context() -> SSL.Context:
    ca = pki.make_ca()
    key = generate_key(pki.FAST_KEY_TYPE)
    certificate = ca.issue_server_certificate(["localhost"], key.public_key())
    return tls.make_server_context(key, certificate, [ca.issuing_certificate], client_ca_names=[ca.root_certificate])


class ReleaseBuffersTests(TestCase):
    """An idle server connection does not keep OpenSSL's 16 KiB read and write buffers.

    (Clients made with :func:`common.tls.client_options` get the mode from Twisted's
    ``CertificateOptions``, which sets it on every context it makes.)
    """

    def test_server_context_releases_buffers(self) -> None:
        # set_mode adds nothing here and returns the resulting mode.
        self.assertTrue(server_context().set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
