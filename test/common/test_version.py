"""One version for the distribution, shown by every command (issue 14: "every build reports
version 0.1.0")."""

from __future__ import annotations

import contextlib
import io
import platform
from importlib import metadata

from twisted.trial import unittest

import intermediary
import irp
import sixchat
import sixid
from common.version import DISTRIBUTION, VERSION, describe_version
from intermediary.tap import Options as IntermediaryOptions
from irp.cli.parser import build_parser as irp_parser
from irp.tap import Options as RegistryOptions
from sixchat.cli import build_parser as sixchat_parser
from sixchat.tap import Options as AgentOptions
from sixid.cli import build_parser as sixid_parser


class VersionTests(unittest.SynchronousTestCase):
    """The version the build reports, the packages' and the commands'."""

    def test_the_build_reports_it(self) -> None:
        """The installed distribution's metadata carries VERSION (setup.cfg reads it)."""
        self.assertEqual(metadata.version(DISTRIBUTION), VERSION)
        self.assertNotEqual(VERSION, "0.1.0")

    def test_packages(self) -> None:
        for package in (irp, sixchat, sixid, intermediary):
            self.assertEqual(package.__version__, VERSION, package.__name__)

    def test_description(self) -> None:
        text = describe_version("irp")
        self.assertTrue(text.startswith(f"irp {VERSION} ({DISTRIBUTION}; Python {platform.python_version()}, Twisted "))
        self.assertIn("OpenSSL", text)

    def _printed(self, parse: object) -> str:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), self.assertRaises(SystemExit) as exit_:
            parse()  # type: ignore[operator]
        self.assertIn(exit_.exception.code, (0, None))
        return output.getvalue()

    def test_commands(self) -> None:
        """``irp``, ``sixchat`` and ``sixid --version``."""
        for name, build in (("irp", irp_parser), ("sixchat", sixchat_parser), ("sixid", sixid_parser)):
            printed = self._printed(lambda build=build: build().parse_args(["--version"]))
            self.assertTrue(" ".join(printed.split()).startswith(f"{name} {VERSION} ("), printed)

    def test_twistd_plugins(self) -> None:
        """``twistd irp|sixchat|intermediary --version``: the project's, not only Twisted's."""
        for name, options in (("irp", RegistryOptions), ("sixchat", AgentOptions), ("intermediary", IntermediaryOptions)):
            printed = self._printed(lambda options=options: options().parseOptions(["--version"]))
            self.assertTrue(printed.startswith(f"twistd {name} {VERSION} ("), printed)
