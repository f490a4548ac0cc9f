"""SixChat End2End Direct: mutually authenticated peer-to-peer messaging."""

from common.ports import SIXCHAT_PORT

__version__ = "0.1.0"

#: The IANA-registered TCP port of SixChat End2End Direct.
DEFAULT_PORT = SIXCHAT_PORT
