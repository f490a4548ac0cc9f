"""Protocol factories that keep the log for people.

Twisted's :class:`~twisted.internet.protocol.Factory` logs "Starting factory" and
"Stopping factory" for every listening port and every outgoing connection; in an agent that
dials its peers and its registry that was half of the log. Every factory of the suite is
quiet (``noisy = False``): the suite logs what happened in its own words instead.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory


class QuietFactory(Factory):
    """A :class:`Factory` that does not log its start and stop; use
    ``QuietFactory.forProtocol(build)`` where ``Factory.forProtocol`` would be used."""

    noisy = False
