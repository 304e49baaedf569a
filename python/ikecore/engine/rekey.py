"""Lifetimes and rekeying of both phases: a helper of the engine (``EngineServices``).

Design note
-----------
Timers (``Timing.rekey_margin`` seconds, 0 = never rekey, only expire):

* Phase 2: every installed IPsec SA gets an ``ipsec-rekey`` timer at
  ``expires - margin - jitter`` when we initiated its Quick Mode, and at
  ``expires - margin/2 - jitter`` when the peer did, with ``jitter`` uniform in
  ``[0, margin/4)`` from the engine's random source. The peer that started an SA thus
  normally rekeys it first; the other side only steps in if that did not happen.
  A rekey is a new Quick Mode with the same selectors (``QuickModeExchange.rekey_of``).
  Make before break: when it is installed, the old SA is marked superseded and deleted
  (Delete payload to the peer) one retransmission timeout later; traffic always has an
  SA. The pause matters with charon: it serves the messages of one IKE_SA on several
  threads in any order and keeps the IV chains of only its three newest Message IDs, so
  a Delete (a new Message ID) sent right behind QM3 can overtake it and leave QM3
  undecryptable (seen in interop under load). The hard ``ipsec-expire``
  timer stays as a backstop. A Quick Mode the *peer* starts supersedes our older SAs
  with the same selectors (no more rekeys of them; they go when the peer deletes them or
  expire), which is how charon reads a peer's rekey too. The rows of ``monitor.listing``
  show superseded SAs with ``rekeyed = True``.
* Phase 1 (initiator of the ISAKMP SA only, so phase 1 rekeys never collide): at
  ``expires - margin - jitter`` a new Main Mode to the same peer and filter starts; once
  established it adopts the old SA's IPsec SAs (IKEv1 IPsec SAs outlive the ISAKMP SA
  that made them) and the old ISAKMP SA is deleted one retransmission timeout later
  (charon adopts its CHILD_SAs when the new IKE_SA checks in; a Delete that overtakes
  that takes them along -- seen in interop).
* Kilobytes: the engine sees no ESP traffic; the driver reports soft/hard byte limits
  with ``Engine.ipsec_lifetime_expired(spi_in, hard=...)``: soft rekeys, hard deletes.
  An ISAKMP SA's kilobytes count the ISAKMP messages it carries once established
  (``count_octets``): at 90 % its initiator rekeys it (when rekeying is on), at 100 % it
  is deleted like an SA whose seconds ran out.

Collisions (both peers rekey the same SA at once): two new SAs with the same selectors
whose Quick Modes overlapped in time, one our rekey and one started by the peer (IKEv1
does not say what a peer's Quick Mode replaces, so that is the evidence; many SAs of our
own rekeyed at once never collide with each other). Both peers keep the one
whose ``Ni_b | Nr_b`` is smaller (both know both nonces, so they agree without talking) and
delete the other; only the side that initiated the loser sends the Delete. Nothing is lost
(the winner is installed on both sides) and nothing is duplicated.
"""

from __future__ import annotations

from ikecore import events as ev
from ikecore.engine.services import EngineServices
from ikecore.engine.timers import TimerKind
from ikecore.sa import IpsecSa, IsakmpSa, Phase1State, Phase2State, QuickModeExchange, Role

__all__ = ["jitter", "ipsec_established", "schedule_ipsec", "retire_ipsec", "fire_ipsec_rekey", "rekey_ipsec",
           "lifetime_expired", "count_octets", "isakmp_established", "schedule_isakmp", "fire_isakmp_rekey",
           "retire", "TIEBREAK_BYTES"]

#: bytes of Ni_b | Nr_b an IPsec SA keeps to order colliding rekeys
TIEBREAK_BYTES = 16


def jitter(engine: EngineServices, margin: float) -> float:
    """Uniform in [0, margin/4): spreads the rekeys of SAs made at the same moment."""
    fraction = int.from_bytes(engine.random(4), "big") / 2**32
    return fraction * margin / 4


def _rekey_at(engine: EngineServices, created: float, expires: float, early: bool) -> float | None:
    margin = engine.config.timing.rekey_margin
    if margin <= 0:
        return None
    at = expires - (margin if early else margin / 2) - jitter(engine, margin)
    if at <= created:  # lifetime shorter than the margin: rekey half-way
        at = created + (expires - created) / 2
    return at


def _same_selectors(a: IpsecSa, b: IpsecSa) -> bool:
    return (a.local_ts, a.remote_ts) == (b.local_ts, b.remote_ts)


def ipsec_established(engine: EngineServices, sa: IsakmpSa, ipsec: IpsecSa, qm: QuickModeExchange,
                      now: float) -> None:
    """Record where a new IPsec SA came from, retire what it replaces, schedule its rekey."""
    ipsec.started = qm.started
    ipsec.initiated = qm.role is Role.INITIATOR
    ipsec.rekey_of = qm.rekey_of
    # Ni_b | Nr_b orders colliding rekeys; its first TIEBREAK_BYTES order them alike unless
    # they are equal (random nonces: never), and each of a gateway's SAs keeps 16 bytes, not 64
    ipsec.tiebreak = (qm.nonce_i + qm.nonce_r)[:TIEBREAK_BYTES]
    if qm.lifetime_notify is not None:
        engine.emit(ev.ResponderLifetime(time=now, handle=sa.handle, message_id=qm.message_id,
                                          sent=qm.role is Role.RESPONDER, seconds=qm.lifetime_notify[0],
                                          kilobytes=qm.lifetime_notify[1]))
    for other in list(sa.ipsec_sas):
        if other is ipsec or other.superseded or not _same_selectors(other, ipsec):
            continue
        overlapped = other.started <= ipsec.created and ipsec.started <= other.created
        ours = [s for s in (ipsec, other) if s.initiated and s.rekey_of is not None]
        theirs = [s for s in (ipsec, other) if not s.initiated]
        if overlapped and len(ours) == 1 and len(theirs) == 1:
            winner, loser = sorted((ipsec, other), key=lambda s: s.tiebreak)
            loser.superseded = True
            engine.emit(ev.RekeyCollision(time=now, handle=sa.handle, winner_spi=winner.spi_in,
                                           loser_spi=loser.spi_in))
            engine.remove_ipsec(sa, loser, "rekey collision", notify_peer=loser.initiated)
            if loser is ipsec:
                return
    if not ipsec.initiated:
        # The peer's Quick Mode: IKEv1 does not say what it replaces; like charon, take
        # it as the rekey of older SAs with the same selectors. They stay installed until
        # the peer deletes them or they expire, but we no longer rekey them.
        for old in sa.ipsec_sas:
            if old is not ipsec and not old.superseded and _same_selectors(old, ipsec) and old.created < ipsec.started:
                old.superseded = True
                engine.emit(ev.Rekeyed(time=now, handle=sa.handle, phase=2, old_handle=sa.handle,
                                        old_spi=old.spi_in, new_spi=ipsec.spi_in))
    elif ipsec.rekey_of is not None:
        replaced = next((s for s in sa.ipsec_sas if s.spi_in == ipsec.rekey_of), None)
        if replaced is not None:
            replaced.superseded = True
            engine.emit(ev.Rekeyed(time=now, handle=sa.handle, phase=2, old_handle=sa.handle,
                                    old_spi=replaced.spi_in, new_spi=ipsec.spi_in))
            engine.push_timer(now + engine.config.timing.retransmit_timeout, sa.handle, replaced.message_id,
                               TimerKind.IPSEC_RETIRE)
    schedule_ipsec(engine, sa, ipsec)


def retire_ipsec(engine: EngineServices, sa: IsakmpSa, message_id: int) -> None:
    """The pause after a rekey is over: delete the superseded SA (Delete to the peer)."""
    for ipsec in list(sa.ipsec_sas):
        if ipsec.message_id == message_id and ipsec.superseded:
            engine.remove_ipsec(sa, ipsec, "rekeyed", notify_peer=True)


def schedule_ipsec(engine: EngineServices, sa: IsakmpSa, ipsec: IpsecSa) -> None:
    """Set the rekey timer of ``ipsec`` (none when rekeying is off)."""
    at = _rekey_at(engine, ipsec.created, ipsec.expires, ipsec.initiated)
    if at is not None:
        engine.push_timer(at, sa.handle, ipsec.message_id, TimerKind.IPSEC_REKEY)


def rekey_ipsec(engine: EngineServices, sa: IsakmpSa, ipsec: IpsecSa, now: float) -> int | None:
    """Start a Quick Mode that replaces ``ipsec``; returns its Message ID (None if not possible)."""
    if ipsec.superseded or ipsec not in sa.ipsec_sas or sa.state is not Phase1State.ESTABLISHED:
        return None
    if any(qm.rekey_of == ipsec.spi_in and qm.state is not Phase2State.ESTABLISHED for qm in sa.quick_modes.values()):
        return None  # already rekeying it
    engine.emit(ev.RekeyStarted(time=now, handle=sa.handle, phase=2, spi=ipsec.spi_in))
    return engine.initiate_quick_mode(sa.handle, now, rekey_of=ipsec.spi_in)


def fire_ipsec_rekey(engine: EngineServices, sa: IsakmpSa, message_id: int, now: float) -> None:
    for ipsec in list(sa.ipsec_sas):
        if ipsec.message_id == message_id:
            rekey_ipsec(engine, sa, ipsec, now)


def lifetime_expired(engine: EngineServices, spi_in: bytes, hard: bool, now: float) -> bool:
    """The driver's byte (kilobyte) limit of inbound SA ``spi_in`` was reached."""
    for sa in engine.sas():
        for ipsec in list(sa.ipsec_sas):
            if ipsec.spi_in == spi_in:
                if hard:
                    engine.remove_ipsec(sa, ipsec, "kilobyte lifetime expired", notify_peer=True)
                else:
                    rekey_ipsec(engine, sa, ipsec, now)
                return True
    return False


SOFT_FRACTION = 0.9


def count_octets(engine: EngineServices, sa: IsakmpSa, octets: int, now: float) -> None:
    """Account ISAKMP traffic against the ISAKMP SA's kilobyte lifetime, if it has one."""
    chosen = sa.chosen
    if sa.state is not Phase1State.ESTABLISHED or chosen is None or not chosen.lifetime_kilobytes:
        return
    before = sa.octets
    sa.octets += octets
    limit = chosen.lifetime_kilobytes * 1024
    if sa.octets >= limit:
        if engine.sa(sa.handle) is sa and not sa.superseded:
            sa.superseded = True  # also guards against the Delete below, which is counted too
            engine.remove_sa(sa, "kilobyte lifetime expired", notify_peer=True)
    elif (before < SOFT_FRACTION * limit <= sa.octets and sa.role is Role.INITIATOR
          and engine.config.timing.rekey_margin > 0):
        fire_isakmp_rekey(engine, sa, now)


def isakmp_established(engine: EngineServices, sa: IsakmpSa, now: float) -> None:
    """Schedule the phase 1 rekey; if this SA replaces another, take over its IPsec SAs."""
    schedule_isakmp(engine, sa, now)
    if sa.role is Role.RESPONDER:
        # The peer re-authenticated: adopt the IPsec SAs of its older ISAKMP SAs, which it
        # is about to delete (charon's IKEv1 "adopt children" does the same) -- unless it
        # sent INITIAL-CONTACT: then it rebooted and those SAs are stale, not adopted.
        if sa.initial_contact or sa.peer_id is None:
            return
        for old in engine.sas_with_identity(sa.peer_id):  # not a scan of every SA held
            if (old is not sa and old.state is Phase1State.ESTABLISHED and old.remote == sa.remote
                    and old.peer_id is not None and sa.peer_id is not None and old.peer_id.body == sa.peer_id.body
                    and old.generic_filter.name == sa.generic_filter.name):
                _adopt(engine, sa, old)
                engine.emit(ev.Rekeyed(time=now, handle=sa.handle, phase=1, old_handle=old.handle,
                                        old_spi=None, new_spi=None))
        return
    previous = engine.sa(sa.rekey_of) if sa.rekey_of is not None else None
    if previous is None or previous.state is not Phase1State.ESTABLISHED:
        return
    _adopt(engine, sa, previous)
    engine.emit(ev.Rekeyed(time=now, handle=sa.handle, phase=1, old_handle=previous.handle, old_spi=None,
                            new_spi=None))
    # Delete the old one a little later: a peer that adopts its CHILD_SAs when the new SA
    # checks in (charon) must not see the Delete first, or the children go with it.
    engine.push_timer(now + engine.config.timing.retransmit_timeout, previous.handle, 0, TimerKind.RETIRE)


def schedule_isakmp(engine: EngineServices, sa: IsakmpSa, now: float) -> None:
    """Set the rekey timer of an ISAKMP SA that we initiated (none when rekeying is off)."""
    if sa.role is Role.INITIATOR and sa.expires is not None:
        at = _rekey_at(engine, now, sa.expires, True)
        if at is not None:
            engine.push_timer(at, sa.handle, 0, TimerKind.REKEY)


def retire(engine: EngineServices, sa: IsakmpSa) -> None:
    """The grace period of a rekeyed ISAKMP SA is over: delete it (Delete to the peer)."""
    if sa.superseded and engine.sa(sa.handle) is sa and sa.state is Phase1State.ESTABLISHED:
        engine.remove_sa(sa, "rekeyed", notify_peer=True)


def _adopt(engine: EngineServices, sa: IsakmpSa, old: IsakmpSa) -> None:
    old.superseded = True
    for ipsec in list(old.ipsec_sas):
        old.ipsec_sas.remove(ipsec)
        ipsec.handle = sa.handle
        sa.ipsec_sas.append(ipsec)
        engine.push_timer(ipsec.expires, sa.handle, ipsec.message_id, TimerKind.IPSEC_EXPIRE)
        schedule_ipsec(engine, sa, ipsec)


def fire_isakmp_rekey(engine: EngineServices, sa: IsakmpSa, now: float) -> None:
    if sa.state is not Phase1State.ESTABLISHED or sa.superseded:
        return
    if any(other.rekey_of == sa.handle for other in engine.sas()):
        return
    engine.emit(ev.RekeyStarted(time=now, handle=sa.handle, phase=1, spi=None))
    handle = engine.initiate(sa.remote, local=sa.local, now=now, quick_mode=False,
                             filter_name=sa.generic_filter.name)
    new = engine.sa(handle)
    if new is not None:
        new.rekey_of = sa.handle
