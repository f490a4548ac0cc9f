"""docs/deployment.rst, "Revocation and CA certificates over HTTP", as written: a registry
with --http-listen and --http-url, the CA certificates fetched over HTTP, a user enrolled
with the installed ``irp``, then ``openssl verify -crl_download`` and ``openssl ocsp``
before and after ``irp revoke`` (issue 14)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from test.acceptance.processes import Deployment, free_port

SERVING = re.compile(r"Serving CRLs, CA certificates and OCSP over HTTP on \S+; certificates name (\S+)")


class HTTPTourTests(SynchronousTestCase):
    """The operator's checks with OpenSSL against a running registry."""

    def openssl(self, deployment: Deployment, *arguments: str) -> str:
        done = subprocess.run(["openssl", *arguments], check=False, capture_output=True, text=True, timeout=60, cwd=deployment.home)
        return f"exit {done.returncode}\n{done.stdout}{done.stderr}"

    def test_tour(self) -> None:
        """Good before the revocation, revoked (with its reason) right after it."""
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        deployment = Deployment(self)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        registry = deployment.start_registry(
            "example.org", "registry", "--http-listen", f"tcp:{port}:interface=127.0.0.1", "--http-url", url
        )
        self.assertEqual(deployment.wait_for(registry.service, SERVING, "the HTTP endpoint's line").group(1), url)
        with urllib.request.urlopen(url + "health", timeout=10) as answer:
            self.assertEqual(answer.read(), b"ok\n")
        fetched = {}
        for name in ("root", "issuing"):
            with urllib.request.urlopen(f"{url}ca/{name}.crt", timeout=10) as answer:
                fetched[name] = x509.load_der_x509_certificate(answer.read())
            with open(deployment.path(f"{name}.pem"), "wb") as handle:
                handle.write(fetched[name].public_bytes(Encoding.PEM))
        with open(registry.root_file, "rb") as handle:
            self.assertEqual(fetched["root"], x509.load_pem_x509_certificate(handle.read()))
        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        certificate_file = os.path.join(profiles["alice"], "certificate.pem")
        with open(certificate_file, "rb") as handle:
            serial = format(x509.load_pem_x509_certificate(handle.read()).serial_number, "x")
        verify = ("verify", "-crl_download", "-crl_check", "-CAfile", "root.pem", "-untrusted", "issuing.pem", certificate_file)
        ask = ("ocsp", "-issuer", "issuing.pem", "-cert", certificate_file, "-url", url + "ocsp", "-CAfile", "root.pem")
        self.assertIn(f"{certificate_file}: OK", self.openssl(deployment, *verify))
        answer = self.openssl(deployment, *ask)
        self.assertIn("Response verify OK", answer)
        self.assertIn(f"{certificate_file}: good", answer)
        deployment.irp("--profile", profiles["alice"], "revoke", serial, "--reason", "key-compromise")
        refused = self.openssl(deployment, *verify)
        self.assertIn("certificate revoked", refused)
        self.assertFalse(refused.startswith("exit 0"), refused)
        answer = self.openssl(deployment, *ask)
        self.assertIn("Response verify OK", answer)
        self.assertIn(f"{certificate_file}: revoked", answer)
        self.assertIn("Reason: keyCompromise", answer)
        self.assertIn("Revocation Time:", answer)
