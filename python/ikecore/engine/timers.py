"""The engine's timer kinds: what each timer is for and what happens when it fires.

Design note
-----------
Timers live in one heap of ``(deadline, sequence, handle, message_id, kind)`` tuples in
the engine: ``handle`` names the ISAKMP SA, ``message_id`` the Quick Mode or IPsec SA
(0 for phase 1 timers), ``sequence`` keeps equal deadlines in push order. A timer is
never cancelled; when it fires, its handler checks that it is still current (the SA
still exists, ``next_retransmit`` or ``expires`` still equals the deadline, the state is
still the one it guarded) and otherwise does nothing. ``Engine`` maps every kind to one
handler; a kind without a handler cannot be pushed, since kinds are members of
:class:`TimerKind`.

Phase 1 (``message_id`` 0):

* ``RETRANSMIT``: resend the last request (exponential backoff, then give up).
* ``TIMEOUT``: the negotiation deadline; once established, forget the last exchange.
* ``EXPIRE``: the ISAKMP SA's lifetime is over: delete it.
* ``REKEY`` / ``RETIRE``: start a new Main Mode / delete the rekeyed SA (``engine.rekey``).
* ``NAT_KEEPALIVE``: one 0xFF byte to keep the NAT mapping (RFC 3948 section 2.3).
* ``DPD``: check liveness, send R-U-THERE or declare the peer dead (RFC 3706).

Phase 2 (``message_id`` of the Quick Mode that made the IPsec SA):

* ``QM_RETRANSMIT`` / ``QM_TIMEOUT``: as for phase 1, per Quick Mode.
* ``QM_FORGET``: drop an established Quick Mode kept to answer a repeated QM2.
* ``IPSEC_EXPIRE``: the IPsec SA's lifetime is over: delete it.
* ``IPSEC_REKEY`` / ``IPSEC_RETIRE``: start its rekey / delete it once superseded.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TimerKind"]


class TimerKind(StrEnum):
    """What a timer is for (the value is its name in logs)."""

    RETRANSMIT = "retransmit"
    TIMEOUT = "timeout"
    EXPIRE = "expire"
    REKEY = "rekey"
    RETIRE = "retire"
    NAT_KEEPALIVE = "nat-keepalive"
    DPD = "dpd"
    QM_RETRANSMIT = "qm-retransmit"
    QM_TIMEOUT = "qm-timeout"
    QM_FORGET = "qm-forget"
    IPSEC_EXPIRE = "ipsec-expire"
    IPSEC_REKEY = "ipsec-rekey"
    IPSEC_RETIRE = "ipsec-retire"
