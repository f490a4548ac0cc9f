"""IRP, the Identity Registration Protocol: a per-domain identity registry and CA."""

from common.ports import IRP_PORT

__version__ = "0.1.0"

#: The IANA-registered TCP port of IRP.
DEFAULT_PORT = IRP_PORT
