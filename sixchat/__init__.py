"""SixChat End2End Direct: mutually authenticated peer-to-peer messaging."""

from common.ports import SIXCHAT_PORT
from common.version import VERSION

__version__ = VERSION

#: The IANA-registered TCP port of SixChat End2End Direct.
DEFAULT_PORT = SIXCHAT_PORT
