"""The ``irp`` command: enrol, log in, publish addresses, look users up, manage certificates.

Every subcommand has ``--help``. Expected failures (wrong password, unknown user, server
unreachable, revoked certificate...) print one readable line to stderr and exit non-zero:

    1  the registry refused the request     3  login failed or was refused
    2  bad command line or local problem    4  no such user, certificate or file
    5  could not reach or verify the registry
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.cliutil import CommandError, Context, console_main, run_command
from common.pki import keyfiles
from common.profile import ProfileError
from irp import errors
from irp.cli.parser import Command, build_parser
from irp.client import make_csr

__all__ = ["Command", "build_parser", "exit_code_for", "explain_failure", "main", "make_csr", "run"]


def exit_code_for(error: errors.IRPError) -> int:
    """Map an IRP error to the command's exit code."""
    if isinstance(error, (errors.ServerVerificationFailed, errors.ConnectionLost, errors.Timeout)):
        return 5
    if isinstance(error, errors.NotAuthenticated):
        return 3
    if isinstance(error, errors.NotFound):
        return 4
    return 1


def explain_failure(error: BaseException) -> tuple[str, int] | None:
    """The readable line and exit code of an expected failure of ``irp``."""
    if isinstance(error, errors.IRPError):
        return f"{error.message} [{error.name}]", exit_code_for(error)
    if isinstance(error, CommandError):
        return str(error), error.exit_code
    if isinstance(error, (ProfileError, keyfiles.KeyFileError, OSError)):
        return str(error), 2
    return None


def run(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """Run the command line; return the exit code."""
    return run_command("irp", build_parser().parse_args(argv), reactor, Context, explain_failure)


def main() -> None:
    """Console entry point."""
    console_main(run)
