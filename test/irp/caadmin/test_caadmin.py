"""``irp-ca``: the operator's CA command, run on a real CA folder in a temporary folder
(in-process through :func:`irp.caadmin.run`, and once as ``python -m irp.caadmin``)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from common.pki import keyfiles
from irp.caadmin import run
from irp.server.ca import CertificateAuthority
from irp.server.ca.ondisk import load
from test.helpers import REPOSITORY


class CAAdminTests(TestCase):
    """Each sub-command's effect, output and exit status."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.base, "data")
        self.ca = CertificateAuthority.load_or_create(os.path.join(self.data_dir, "ca"), "example.org", key_type="p256")
        self.passphrase_file = os.path.join(self.base, "passphrase")
        keyfiles.write_bytes_private(self.passphrase_file, b"a long passphrase\n")

    def irp_ca(self, *arguments: str) -> tuple[int, str, str]:
        """Run ``irp-ca`` with ``arguments`` (and --data-dir); exit status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = run([arguments[0], "--data-dir", self.data_dir, *arguments[1:]])
        return status, out.getvalue(), err.getvalue()

    def test_status(self) -> None:
        status, out, _ = self.irp_ca("status")
        self.assertEqual(status, 0)
        self.assertIn(keyfiles.format_fingerprint(self.ca.root_fingerprint), out)
        self.assertIn("Root key:         online", out)
        self.assertIn("NOT encrypted", out)
        self.assertIn("signed by the registry (the root key is online)", out)

    def test_rotate_then_status(self) -> None:
        status, out, _ = self.irp_ca("rotate-issuing", "--key-type", "p256")
        self.assertEqual(status, 0)
        self.assertIn("IRP Issuing CA 2", out)
        self.assertIn("Restart every registry process", out)
        _, out, _ = self.irp_ca("status")
        self.assertIn("Retired (retired/1)", out)
        self.assertIn("still valid", out)
        self.assertEqual(load(os.path.join(self.data_dir, "ca")).retired_issuers[0][0], self.ca.issuing_certificate)

    def test_protect_keys_and_passphrase_needed(self) -> None:
        status, out, _ = self.irp_ca("protect-keys", "--passphrase-file", self.passphrase_file)
        self.assertEqual(status, 0)
        self.assertEqual(out.count("encrypted: "), 2)
        _, out, _ = self.irp_ca("status")
        self.assertNotIn("NOT encrypted", out)
        # No passphrase and no terminal: refused, nothing changed.
        status, _, err = self.irp_ca("rotate-issuing")
        self.assertEqual(status, 1)
        self.assertIn("a passphrase is needed", err)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "ca", "retired")))
        status, _, _ = self.irp_ca("rotate-issuing", "--passphrase-file", self.passphrase_file, "--key-type", "p256")
        self.assertEqual(status, 0)
        status, _, _ = self.irp_ca("protect-keys", "--remove", "--passphrase-file", self.passphrase_file)
        self.assertEqual(status, 0)
        load(os.path.join(self.data_dir, "ca"))

    def test_unsafe_passphrase_file(self) -> None:
        os.chmod(self.passphrase_file, 0o644)
        status, _, err = self.irp_ca("protect-keys", "--passphrase-file", self.passphrase_file)
        self.assertEqual(status, 1)
        self.assertIn("chmod 600", err)

    def test_offline_root(self) -> None:
        offline = os.path.join(self.base, "root-offline.key")
        with open(offline, "w") as taken:
            taken.write("something else")
        status, _, err = self.irp_ca("take-root-offline", "--to", offline)
        self.assertEqual(status, 1)
        self.assertIn("refusing to overwrite", err)
        os.unlink(offline)
        status, out, _ = self.irp_ca("take-root-offline", "--to", offline, "--days", "90")
        self.assertEqual(status, 0)
        self.assertIn("Moved the root key", out)
        _, out, _ = self.irp_ca("status")
        self.assertIn("Root key:         offline", out)
        self.assertIn("signed offline, next update", out)
        status, _, err = self.irp_ca("sign-root-crl")
        self.assertEqual(status, 1)
        self.assertIn("--root-key", err)
        status, out, _ = self.irp_ca("sign-root-crl", "--root-key", offline, "--days", "30")
        self.assertEqual(status, 0)
        status, _, _ = self.irp_ca("rotate-issuing", "--root-key", offline, "--key-type", "p256")
        self.assertEqual(status, 0)

    def test_no_ca(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = run(["status", "--data-dir", os.path.join(self.base, "empty")])
        self.assertEqual(status, 1)
        self.assertIn("holds no CA", err.getvalue())

    def test_command_line(self) -> None:
        """``python -m irp.caadmin``: --help lists the commands; a failure exits 1 without a traceback."""
        environment = dict(os.environ, PYTHONPATH=REPOSITORY)
        shown = subprocess.run([sys.executable, "-m", "irp.caadmin", "--help"], check=False, capture_output=True, text=True, env=environment, timeout=60)
        self.assertEqual(shown.returncode, 0)
        for name in ("status", "rotate-issuing", "take-root-offline", "sign-root-crl", "protect-keys"):
            self.assertIn(name, shown.stdout)
        failed = subprocess.run(
            [sys.executable, "-m", "irp.caadmin", "status", "--data-dir", os.path.join(self.base, "none")],
            check=False, capture_output=True, text=True, env=environment, timeout=60,
        )
        self.assertEqual(failed.returncode, 1)
        self.assertNotIn("Traceback", failed.stderr)
