"""SixChat End2End Direct: mutually authenticated peer-to-peer messaging."""

__version__ = "0.1.0"

#: The IANA-registered TCP port of SixChat End2End Direct.
DEFAULT_PORT = 4605
