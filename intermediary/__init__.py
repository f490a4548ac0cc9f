"""The SixChat intermediary: store and forward of sealed messages, prekeys and a relay.

One per domain, run as ``twistd intermediary`` under the registry account
``intermediary@<domain>``. It stores opaque sealed envelopes for the users of its domain
until their agents fetch them, hands out their published prekeys to senders of any trusted
domain, and relays connections for agents that cannot accept any (see docs/intermediary.rst).
"""

from common.ports import SIXCHAT_PORT
from common.version import VERSION

__version__ = VERSION

#: The port the intermediary listens on by default (the design's choice: SixChat's port,
#: on the intermediary's own host).
DEFAULT_PORT = SIXCHAT_PORT
#: The registry account a domain's intermediary runs as.
ACCOUNT = "intermediary"
#: The protocol version spoken (``v`` of every request).
PROTOCOL_VERSION = "1"
#: The default range of relay ports.
DEFAULT_RELAY_PORTS = range(46050, 46100)
#: The relay's default join port (plain TCP, where agents join their circuits).
DEFAULT_JOIN_PORT = 46049
