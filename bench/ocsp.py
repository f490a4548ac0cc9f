"""OCSP responses per second through the registry's HTTP endpoint, against raw signing
(issue 14): ``python -m bench.ocsp [--seconds S] [--connections N] [--key-type T]``.

* the server: a real ``twistd irp --http-listen`` process, pinned to the server core, its
  database holding :data:`CERTIFICATES` certificates its CA issued (a tenth revoked);
* the load: a second process on the load core, N keep-alive HTTP/1.1 connections, each
  POSTing one OCSP request and waiting for its response (a closed loop), for S seconds;
* **cold**: every request carries a fresh nonce, so every response is looked up and signed;
* **cached**: no nonce, so responses come from the responder's cache (one point read of
  the revocation generation per request);
* **raw signing**: ``OCSPResponseBuilder(...).sign`` alone, in a loop on the server core,
  with a key of the same type (the delegated responder's), no HTTP, no database.

Prints a table and writes ``bench/results/ocsp.json``. Figures are in docs/performance.rst,
"OCSP (issue 14)".
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from bench.sampling import LOAD_CPU, SERVER_CPU, pin

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Certificates in the database (one request each, cycled), and the share revoked.
CERTIFICATES = 200
REVOKED_EVERY = 10
#: Requests with a nonce built in advance for the cold run (cycled).
NONCE_REQUESTS = 5000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(folder: str, key_type: str) -> tuple[subprocess.Popen[bytes], str]:
    """A registry with the HTTP endpoint, pinned to the server core; its base URL."""
    irp_port, http_port = free_port(), free_port()
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
        "--logfile", os.path.join(folder, "registry.log"), "irp", "--domain", "example.org",
        "--data-dir", os.path.join(folder, "data"), "--listen", f"tcp:{irp_port}:interface=127.0.0.1",
        "--http-listen", f"tcp:{http_port}:interface=127.0.0.1", "--hostname", "127.0.0.1", "--key-type", key_type,
    ]
    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    server = subprocess.Popen(command, env=environment)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > SERVER_CPU:
        os.sched_setaffinity(server.pid, {SERVER_CPU})  # before its reactor starts threads
    url = f"http://127.0.0.1:{http_port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as answer:
                if answer.read() == b"ok\n":
                    return server, url
        except OSError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    raise RuntimeError(f"the registry did not start; see {folder}/registry.log")


def populate(folder: str, key_type: str) -> list[Any]:
    """Issue :data:`CERTIFICATES` certificates with the registry's CA and record them
    (a tenth revoked) as the registry would; return them."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from common.identity import Identity
    from common.pki.keyfiles import fingerprint
    from irp.server.ca import CertificateAuthority, generate_key

    ca = CertificateAuthority.load_or_create(os.path.join(folder, "data", "ca"), "example.org")
    key = generate_key(key_type)
    certificates = [ca.issue_user_certificate(Identity("admin", "example.org"), key.public_key()) for _ in range(CERTIFICATES)]
    database = sqlite3.connect(os.path.join(folder, "data", "registry.sqlite3"), timeout=30)
    now = int(time.time())
    with database:
        for index, certificate in enumerate(certificates):
            revoked = index % REVOKED_EVERY == 0
            database.execute(
                "INSERT INTO certificates (serial, fingerprint, username, origin, not_before, not_after, issued_at,"
                " revoked_at, revocation_reason, der) VALUES (?, ?, 'admin', 'issued', ?, ?, ?, ?, ?, ?)",
                (
                    format(certificate.serial_number, "x"), fingerprint(certificate), now - 60,
                    int(certificate.not_valid_after_utc.timestamp()), now, now if revoked else None,
                    "key-compromise" if revoked else None, certificate.public_bytes(Encoding.DER),
                ),
            )
        database.execute("UPDATE counters SET value = value + 1 WHERE name = 'revocations'")
    database.close()
    return [ca.issuing_certificate, *certificates]


def requests_for(issuer: Any, certificates: list[Any], nonces: int) -> list[bytes]:
    """DER requests: one per certificate (no nonce), or ``nonces`` with fresh nonces."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import ocsp

    built = []
    count = nonces or len(certificates)
    for index in range(count):
        builder = ocsp.OCSPRequestBuilder().add_certificate(certificates[index % len(certificates)], issuer, hashes.SHA1())
        if nonces:
            builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        built.append(builder.build().public_bytes(Encoding.DER))
    return built


def load(url: str, bodies: list[bytes], connections: int, seconds: float, results: Any) -> None:
    """The load process: ``connections`` keep-alive connections in a closed loop."""
    import selectors

    pin(LOAD_CPU)
    host, port = url.split("//")[1].rstrip("/").split(":")
    head = f"POST /ocsp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/ocsp-request\r\n".encode()
    wire = [head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body for body in bodies]
    selector = selectors.DefaultSelector()
    state: dict[int, list[Any]] = {}
    for number in range(connections):
        connection = socket.create_connection((host, int(port)))
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(connection, selectors.EVENT_READ)
        state[connection.fileno()] = [connection, b"", number]
        connection.sendall(wire[number % len(wire)])
    done = errors = 0
    sent = connections
    warm_until = time.monotonic() + 1.0
    start = end = 0.0
    while True:
        now = time.monotonic()
        if start == 0.0 and now >= warm_until:
            start, done = now, 0
        if start and now - start >= seconds:
            end = now
            break
        for key, _ in selector.select(timeout=1.0):
            entry = state[key.fd]
            data = entry[0].recv(65536)
            if not data:
                raise RuntimeError("the server closed a connection")
            entry[1] += data
            while True:
                header_end = entry[1].find(b"\r\n\r\n")
                if header_end < 0:
                    break
                head_bytes = entry[1][:header_end].lower()
                length = int(head_bytes.split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(entry[1]) < header_end + 4 + length:
                    break
                if not head_bytes.startswith(b"http/1.1 200"):
                    errors += 1
                entry[1] = entry[1][header_end + 4 + length :]
                done += 1
                entry[0].sendall(wire[sent % len(wire)])
                sent += 1
    results.put({"responses": done, "seconds": end - start, "errors": errors})


def measure(url: str, bodies: list[bytes], connections: int, seconds: float) -> dict[str, float]:
    results: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=load, args=(url, bodies, connections, seconds, results))
    process.start()
    outcome = results.get(timeout=seconds + 60)
    process.join()
    return {"per_second": outcome["responses"] / outcome["seconds"], "errors": outcome["errors"]}


def raw_signing(folder: str, issuer: Any, certificate: Any, seconds: float) -> float:
    """Responses per second ``OCSPResponseBuilder.sign`` alone makes with the responder's key
    (in this process, pinned to the server core)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import ocsp

    from common.pki.keyfiles import load_certificates, load_private_key
    from common.pki.keys import signature_hash

    pin(SERVER_CPU)
    responder_folder = os.path.join(folder, "data", "ca", "ocsp")
    key = load_private_key(os.path.join(responder_folder, "key.pem"))
    responder = load_certificates(os.path.join(responder_folder, "certificate.pem"))[0]
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        now = datetime.datetime.now(datetime.UTC)
        (
            ocsp.OCSPResponseBuilder()
            .add_response(certificate, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now, now + datetime.timedelta(hours=1), None, None)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
            .certificates([responder])
            .sign(key, signature_hash(key))
            .public_bytes(Encoding.DER)
        )
        count += 1
    return count / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ocsp", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per mode (after 1 s of warm-up)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load")
    parser.add_argument("--key-type", default="p384", help="key type of the CA and the responder (p384, p256, ed25519)")
    parser.add_argument("--json", default=os.path.join(REPOSITORY, "bench", "results", "ocsp.json"))
    arguments = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-ocsp-")
    server, url = start_server(folder, arguments.key_type)
    try:
        issuer, *certificates = populate(folder, arguments.key_type)
        raw_before = raw_signing(folder, issuer, certificates[1], arguments.seconds)
        cold = measure(url, requests_for(issuer, certificates, NONCE_REQUESTS), arguments.connections, arguments.seconds)
        cached = measure(url, requests_for(issuer, certificates, 0), arguments.connections, arguments.seconds)
    finally:
        server.terminate()
        server.wait(30)
    # Raw signing before (the server idle) and after (stopped): the machine's drift shows.
    raw_after = raw_signing(folder, issuer, certificates[1], arguments.seconds)
    raw = (raw_before + raw_after) / 2
    figures = {
        "key_type": arguments.key_type,
        "connections": arguments.connections,
        "raw_signing_per_second": round(raw, 1),
        "raw_signing_before_after": [round(raw_before, 1), round(raw_after, 1)],
        "cold_per_second": round(cold["per_second"], 1),
        "cached_per_second": round(cached["per_second"], 1),
        "cold_vs_raw": round(cold["per_second"] / raw, 3),
        "cached_vs_raw": round(cached["per_second"] / raw, 3),
        "errors": cold["errors"] + cached["errors"],
    }
    print(f"OCSP over HTTP, {arguments.key_type} responder key, {arguments.connections} connections:")
    print(f"  raw OCSPResponseBuilder.sign     {raw:10,.0f}/s  (before {raw_before:,.0f}, after {raw_after:,.0f})")
    print(f"  cold (nonce, signed per request) {cold['per_second']:10,.0f}/s  {figures['cold_vs_raw']:.3f} of raw signing")
    print(f"  cached (no nonce)                {cached['per_second']:10,.0f}/s  {figures['cached_vs_raw']:.3f} of raw signing")
    os.makedirs(os.path.dirname(arguments.json), exist_ok=True)
    with open(arguments.json, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2)
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
