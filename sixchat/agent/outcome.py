"""Why a message is not delivered: a failed dial or a refused session, in words for the
sender, and whether it is worth trying again.

A *final* problem gives up the peer's pending messages at once (state ``undelivered``,
with the reason); any other leaves them queued with the reason noted, to be retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.identity import Identity
from irp.client import CertificateRejected, IRPError, NotFound
from sixchat import errors

#: What the sender is told when the peer refused the session, by the alert's reason.
#: ``policy`` covers "not a contact" and "blocked" alike: the peer's agent does not say which.
_REFUSED_BY_PEER = {
    "policy": ("{peer} refused the call: you are not their contact, or they blocked you", True),
    "revoked": ("{peer} refused our certificate: it is revoked (renew it with 'irp renew'; a running agent takes up the new one)", True),
    "expired": ("{peer} refused our certificate: it has expired (renew it with 'irp renew')", True),
    "untrusted-ca": ("{peer} could not check our certificate (they do not trust our domain, or cannot reach our registry now)", False),
}


@dataclass(frozen=True)
class Problem:
    """Why delivery to a peer failed this time."""

    reason: str
    #: No retry can succeed as things stand (the user must act, or the peer must).
    final: bool
    #: The peer refused our certificate (worth a warning in the log).
    our_certificate: bool = False


def explain(error: BaseException, peer: Identity) -> Problem:
    """The :class:`Problem` a dial or session failure means for messages to ``peer``."""
    if isinstance(error, NotFound):
        return Problem(f"no such user: {peer} is not registered at their registry", True)
    if isinstance(error, errors.PeerRejected) and error.from_peer:
        text, final = _REFUSED_BY_PEER.get(error.reason, _REFUSED_BY_PEER["policy"])
        return Problem(text.format(peer=peer), final, our_certificate=error.reason != "policy")
    if isinstance(error, errors.PeerRejected):
        # Our own checks refused the peer we dialled (pin, revoked or expired certificate);
        # a registry we could not ask is worth another try.
        return Problem(f"we refused {peer}: {error.message}", error.reason != "untrusted-ca")
    if isinstance(error, errors.PeerUnreachable) and "no valid certificate" in error.message:
        return Problem(f"{peer} has no valid certificate (revoked or expired) at their registry", True)
    if isinstance(error, errors.SelfConnection):
        return Problem(error.message, True)
    if isinstance(error, errors.SixChatError):
        return Problem(error.message.rstrip("."), False)
    if isinstance(error, CertificateRejected):
        return Problem(
            f"a registry refused our certificate: {error.message.rstrip('.')} (renew it with 'irp renew';"
            " a running agent takes up the new one)",
            True,
            our_certificate=True,
        )
    if isinstance(error, IRPError):
        return Problem(f"cannot ask the registry about {peer}: {error.message}", False)
    return Problem(f"cannot reach {peer}: {error.__class__.__name__} {error}".rstrip(), False)
