"""The project's one version number, and how every command and service shows it.

:data:`VERSION` is the distribution's version (``setup.cfg`` reads it from here, so a build
cannot report another); each package's ``__version__`` is this one. Commands print
:func:`describe_version` for ``--version`` and services log it when they start, with the
versions of what the security of a build depends on (Python, Twisted, pyOpenSSL,
cryptography and the OpenSSL it runs).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Final

#: The distribution's name.
DISTRIBUTION: Final = "irp-sixchat"
#: The distribution's version (PEP 440).
VERSION: Final = "0.14.0"


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def dependency_versions() -> str:
    """``Python 3.11.7, Twisted 24.11.0, pyOpenSSL 25.0.0, cryptography 44.0.0, OpenSSL
    3.4.0 ...``: what a build runs on."""
    from cryptography.hazmat.backends.openssl.backend import backend

    return ", ".join(
        [
            f"Python {platform.python_version()}",
            *(f"{name} {_installed(name)}" for name in ("Twisted", "pyOpenSSL", "cryptography")),
            backend.openssl_version_text(),
        ]
    )


def describe_version(program: str) -> str:
    """What ``PROGRAM --version`` prints: ``PROGRAM 0.14.0 (irp-sixchat; Python ..., ...)``."""
    return f"{program} {VERSION} ({DISTRIBUTION}; {dependency_versions()})"
