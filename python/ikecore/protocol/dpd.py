"""Dead Peer Detection, RFC 3706: our own liveness checks of an ISAKMP SA.

Design note
-----------
Answering the peer's R-U-THERE is the engine's job (it echoes the sequence number in an
R-U-THERE-ACK). This module decides when *we* ask. Both notifies travel in protected
informational exchanges with protocol ISAKMP, SPI = CKY-I | CKY-R and a 4-byte sequence
number as notification data. The checks run only when the peer announced the DPD vendor
ID, the filter allows DPD and ``Timing.dpd_delay`` is positive::

    idle for dpd_delay          --> R-U-THERE(seq+1), remember seq as pending
    pending, no ACK yet         --> another R-U-THERE every retransmit interval
    ACK with a pending seq      --> alive: pending cleared
    any authenticated message   --> alive as well (RFC 3706 section 5.3: traffic is proof)
    pending for dpd_timeout     --> dead: the engine deletes the SAs and counts it

``on_timer`` returns what to do; the engine sends and schedules. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ikecore import wire
from ikecore.sa import IsakmpSa

__all__ = ["Action", "enabled", "r_u_there", "on_ack", "on_traffic", "on_timer"]


@dataclass(frozen=True, slots=True)
class Action:
    """What ``on_timer`` wants: ``probe`` (send ``payload``), ``dead`` or nothing; and when
    to call it again (``next_check``, None when DPD stops)."""

    kind: str                  # "probe", "dead" or "wait"
    next_check: float | None
    payload: wire.NotifyPayload | None = None


def enabled(sa: IsakmpSa, delay: float) -> bool:
    return sa.dpd and sa.generic_filter.dpd and delay > 0


def r_u_there(sa: IsakmpSa) -> wire.NotifyPayload:
    """A fresh R-U-THERE notify; its sequence number becomes pending."""
    sa.dpd_sequence = (sa.dpd_sequence + 1) & 0xFFFFFFFF
    sa.dpd_pending = [*sa.dpd_pending, sa.dpd_sequence]  # replaced: the empty list is shared
    return wire.NotifyPayload(int(wire.NotifyType.R_U_THERE), protocol_id=int(wire.ProtocolId.ISAKMP),
                              spi=sa.initiator_cookie + sa.responder_cookie,
                              data=sa.dpd_sequence.to_bytes(4, "big"))


def on_ack(sa: IsakmpSa, payload: wire.NotifyPayload, now: float) -> bool:
    """An R-U-THERE-ACK arrived; True when it answers one of our pending sequence numbers."""
    data = bytes(payload.data)
    if len(data) != 4 or bytes(payload.spi) != sa.initiator_cookie + sa.responder_cookie:
        return False
    if int.from_bytes(data, "big") not in sa.dpd_pending:
        return False
    sa.dpd_pending.clear()
    sa.dpd_since = None
    sa.last_heard = now
    return True


def on_traffic(sa: IsakmpSa, now: float) -> None:
    """An authenticated message from the peer: it is alive."""
    sa.last_heard = now
    sa.dpd_pending.clear()
    sa.dpd_since = None


def on_timer(sa: IsakmpSa, now: float, delay: float, timeout: float, retransmit: float) -> Action:
    """Decide at a DPD timer: probe, declare the peer dead, or wait."""
    if sa.dpd_since is not None:
        if now - sa.dpd_since >= timeout:
            return Action("dead", None)
        return Action("probe", min(now + retransmit, sa.dpd_since + timeout), r_u_there(sa))
    idle = now - sa.last_heard
    if idle < delay:
        return Action("wait", sa.last_heard + delay)
    sa.dpd_since = now
    return Action("probe", min(now + retransmit, now + timeout), r_u_there(sa))
