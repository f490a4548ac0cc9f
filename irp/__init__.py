"""IRP, the Identity Registration Protocol: a per-domain identity registry and CA."""

from common.ports import IRP_PORT
from common.version import VERSION

__version__ = VERSION

#: The IANA-registered TCP port of IRP.
DEFAULT_PORT = IRP_PORT
