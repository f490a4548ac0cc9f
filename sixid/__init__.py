"""sixid (TCP 4606): secure registration and look-up of self-certifying device IDs.

A device ID is the hash of a public key (:mod:`sixid.ids`). The device signs a
registration naming the addresses it can be reached at (:mod:`sixid.records`); its domain's
registry checks it, countersigns it as a record with its record-signing key, and serves the
record to anyone who asks by ID, over TLS, without a client certificate (docs/sixid.rst).
The core (``ids``, ``records``, ``wire``, ``errors``) is pure; the server is
:mod:`sixid.server`, hosted by ``twistd irp --sixid``; the client is :mod:`sixid.client`.
"""

from common.ports import SIXID_PORT
from common.version import VERSION

__version__ = VERSION

#: The protocol version spoken (the ``v`` of every request, written in decimal).
PROTOCOL_VERSION = 1
#: The port a registry serves sixid on by default.
DEFAULT_PORT = SIXID_PORT
#: The DNS SRV service name: ``_sixid._tcp.<domain>`` names a domain's sixid server.
SRV_SERVICE = "_sixid._tcp"
