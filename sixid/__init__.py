"""sixid: secure ID-to-address registration and look-up (TCP 4606).

Placeholder of the sixid-store branch until the sixid-core branch is merged (its version
replaces this file).
"""

PROTOCOL_VERSION = 1
DEFAULT_PORT = 4606
SRV_SERVICE = "_sixid._tcp"
