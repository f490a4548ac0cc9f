"""A web server checking client certificates against the registry's revocation data
(issue 14): nginx with ``ssl_crl`` (the CRLs fetched from the registry's HTTP endpoint) and
nginx with ``ssl_ocsp`` (asking the responder each certificate names), both in front of a
``twistd irp --http-listen`` process; a user's certificate from the installed ``irp`` is let
in, then refused once revoked."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from test.acceptance.processes import Deployment, free_port, stop_process

#: Seconds nginx has to start or reload.
NGINX_BOUND = 20.0

CONFIGURATION = """\
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/temp; proxy_temp_path {folder}/temp;
    fastcgi_temp_path {folder}/temp; uwsgi_temp_path {folder}/temp; scgi_temp_path {folder}/temp;
    ssl_certificate {folder}/server.pem;
    ssl_certificate_key {folder}/server.key;
    ssl_client_certificate {folder}/clients-ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    server {{
        listen 127.0.0.1:{crl_port} ssl;
        ssl_crl {folder}/crl.pem;
        location / {{ return 200 "crl $ssl_client_s_dn"; }}
    }}
    server {{
        listen 127.0.0.1:{ocsp_port} ssl;
        ssl_ocsp leaf;
        resolver 127.0.0.1;
        location / {{ return 200 "ocsp $ssl_client_s_dn"; }}
    }}
}}
"""



def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


class NginxTests(SynchronousTestCase):
    """nginx refuses a revoked certificate: by the CRL it was given, and by OCSP."""

    def setUp(self) -> None:
        for tool in ("nginx", "openssl"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise SkipTest(f"{tool} is not installed (.ci/run installs it)")

    def ask(self, port: int, certificate: str, key: str) -> str:
        """GET / with the client certificate: nginx's answer (its status when refused)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(certificate, key)
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10, context=context) as answer:
                return answer.read().decode("utf-8")
        except urllib.error.HTTPError as refused:
            return f"HTTP {refused.code}"

    def test_crl_and_ocsp(self) -> None:
        deployment = Deployment(self)
        http_port = free_port()
        base = f"http://127.0.0.1:{http_port}/"
        registry = deployment.start_registry(
            "example.org", "registry", "--http-listen", f"tcp:{http_port}:interface=127.0.0.1", "--http-url", base
        )
        _admin, profiles = deployment.enrol_users(registry, {"alice": "irp"})
        certificate = os.path.join(profiles["alice"], "certificate.pem")
        key = os.path.join(profiles["alice"], "key.pem")

        folder = deployment.folder("nginx")
        os.makedirs(os.path.join(folder, "temp"), exist_ok=True)
        chain = [x509.load_der_x509_certificate(fetch(f"{base}ca/{name}.crt")) for name in ("issuing", "root")]
        with open(os.path.join(folder, "clients-ca.pem"), "wb") as handle:
            handle.write(b"".join(certificate.public_bytes(Encoding.PEM) for certificate in chain))

        def refresh_crls() -> None:
            crls = [x509.load_der_x509_crl(fetch(f"{base}crl/{name}.crl")) for name in ("issuing", "root")]
            with open(os.path.join(folder, "crl.pem"), "wb") as handle:
                handle.write(b"".join(crl.public_bytes(Encoding.PEM) for crl in crls))

        refresh_crls()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", os.path.join(folder, "server.key"), "-out", os.path.join(folder, "server.pem"),
             "-subj", "/CN=localhost", "-days", "2"],
            check=True, capture_output=True, timeout=60,
        )
        crl_port, ocsp_port = free_port(), free_port()
        configuration = os.path.join(folder, "nginx.conf")
        with open(configuration, "w", encoding="utf-8") as handle:
            handle.write(CONFIGURATION.format(folder=folder, crl_port=crl_port, ocsp_port=ocsp_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        server = subprocess.Popen(
            [nginx, "-c", configuration, "-p", folder], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self.addCleanup(stop_process, server)
        self.wait_for_nginx(crl_port, certificate, key, server)

        self.assertEqual(self.ask(crl_port, certificate, key), "crl CN=alice,O=example.org")
        self.assertEqual(self.ask(ocsp_port, certificate, key), "ocsp CN=alice,O=example.org")

        with open(certificate, "rb") as handle:
            serial = format(x509.load_pem_x509_certificate(handle.read()).serial_number, "x")
        deployment.irp("--profile", profiles["alice"], "revoke", serial, "--reason", "key-compromise")
        # OCSP: refused at once (nginx asks the responder for each new connection).
        self.assertEqual(self.ask(ocsp_port, certificate, key), "HTTP 400")
        # The CRL: refused once nginx has the new CRL (fetched, then a reload).
        refresh_crls()
        subprocess.run([nginx, "-c", configuration, "-p", folder, "-s", "reload"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + NGINX_BOUND
        answer = self.ask(crl_port, certificate, key)
        while answer != "HTTP 400" and time.monotonic() < deadline:
            time.sleep(0.2)  # the reload: new workers replace the old ones
            answer = self.ask(crl_port, certificate, key)
        self.assertEqual(answer, "HTTP 400")
        with open(os.path.join(folder, "error.log"), encoding="utf-8") as handle:
            self.assertIn("certificate revoked", handle.read())

    def wait_for_nginx(self, port: int, certificate: str, key: str, server: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + NGINX_BOUND
        while time.monotonic() < deadline:
            if server.poll() is not None:
                self.fail(f"nginx exited: {server.stderr.read().decode() if server.stderr else ''}")
            try:
                self.ask(port, certificate, key)
                return
            except OSError:
                time.sleep(0.1)  # not listening yet
        self.fail("nginx did not start listening")
