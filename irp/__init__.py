"""IRP, the Identity Registration Protocol: a per-domain identity registry and CA."""

__version__ = "0.1.0"

#: The IANA-registered TCP port of IRP.
DEFAULT_PORT = 4604
