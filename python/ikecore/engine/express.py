"""The engine's side of the gateway's express lane (``rust/express/responder.rs``).

Design note
-----------
The lane runs, in Rust, the responder's pre-shared-key Main Mode from message 3 and the
first Quick Mode of SAs whose offers this engine has answered before; this module tells
it what the engine decided and takes back what it did:

* Decide once. When the engine answers a Main Mode offer (statelessly: with the lane on,
  every message 1 of the lane's filter is, RFC 2408 section 2.5.3) it registers the
  offer's facts with the lane (``offer_answered``): suite, pre-shared key, SAi_b, NAT-T
  variant, our identity. When it answers a Quick Mode offer it registers its answer for
  offers of that shape (``esp_answered``). SPIs come from the driver in advance
  (``before_batch``), with the half-open room the admission control and the limits leave.
* Take back. Every negotiation the lane hands over (``Export``: at its end, or wherever
  it met something it does not handle, or at its deadline) becomes an ``IsakmpSa`` in the
  state the engine's own handlers would have left it in (``adopt``), through
  ``Engine.take_over``: the same records, indexes, timers and events. A message that made
  the lane hand over is then processed by the engine as usual.

Eligibility (``Lane.for_engine``): the engine has a filter that every address pair uses
(as the receive fast path requires) with pre-shared keys only, no peer ID to check, no
traffic selectors, no Aggressive Mode, NAT-T not forced, no key log, no SA store (the
lane answers before the engine could write an SA to it, and the store's promise is that
no peer holds an SA the store lacks), and a driver whose SPIs do not depend on the
addresses (the in-memory driver). Otherwise there is no lane. The engine is passed in
(``Engine.enable_express``), never imported: this module sits beside ``core``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ikecore import _core, keymat, policy, wire
from ikecore import events as ev
from ikecore.driver import MemoryDriver
from ikecore.protocol.phase1 import my_identification
from ikecore.sa import IsakmpSa, Phase1State, Phase2State, QuickModeExchange, Role, message_digest

__all__ = ["Lane", "OfferFacts"]

#: SPIs kept ready for the lane's Quick Modes, and the level that triggers a refill.
SPI_POOL = 128
SPI_REFILL = 64
_ESP = int(wire.ProtocolId.IPSEC_ESP)
_STAGE = {1: Phase1State.R_EXPECT_MM5, 2: Phase1State.ESTABLISHED, 3: Phase1State.ESTABLISHED,
          4: Phase1State.ESTABLISHED}


@dataclass(frozen=True, slots=True)
class OfferFacts:
    """What the engine decided about one Main Mode offer (shared by its SAs)."""

    chosen: policy.IkeProposal
    cipher: str          # the payload cipher's name (keymat.cipher_for)
    sa_b: bytes
    vendor_ids: list[bytes]
    nat_t: Any
    dpd: bool


def _id_payload(body: bytes) -> wire.IdPayload | None:
    """An ID payload from its body (type, protocol, port, data); None when empty."""
    if len(body) < 4:
        return None
    return wire.IdPayload(body[0], body[4:], protocol_id=body[1], port=int.from_bytes(body[2:4], "big"))


#: Our own ID payloads by body: one object shared by every SA that sends it (payloads are
#: immutable), as the engine shares the one it builds. Bounded: cleared when full.
_OWN_IDS: dict[bytes, wire.IdPayload | None] = {}


def _own_id(body: bytes) -> wire.IdPayload | None:
    known = _OWN_IDS.get(body)
    if known is None:
        if len(_OWN_IDS) >= 256:
            _OWN_IDS.clear()
        known = _OWN_IDS[body] = _id_payload(body)
    return known


def _plain(datagram: bytes, marker: bool) -> bytes:
    """A datagram as the engine keeps it: without the non-ESP marker."""
    return datagram[4:] if marker and datagram[:4] == bytes(4) else datagram


class Lane:
    """One engine's responder lane (see the design note)."""

    def __init__(self, engine: Any, flt: Any, *, thread: bool = True) -> None:
        self.engine = engine
        self.filter = flt
        # thread: g^xy and key pairs on a thread of the lane's own (message 4 needs neither)
        self.rust = _core.ExpressResponder(engine.config.timing.negotiation_timeout, thread)
        self.offers: dict[int, OfferFacts] = {}
        self._digests: dict[bytes, int] = {}  # offer digest -> its tag (as long as the offer cache keeps it)
        # tags of forgotten offers -> when they were forgotten (None: this batch): their facts
        # stay until no negotiation of the lane can still name them (its deadline has passed)
        self._retired: dict[int, float | None] = {}
        # Quick Mode answers by tag: the suite, the encapsulation mode, RESPONDER-LIFETIME's limits
        self.esp: dict[int, tuple[policy.EspProposal, int, tuple[int | None, int | None] | None]] = {}
        self._tags = itertools.count(1)
        self.adopted = 0
        # our own addresses as one tuple each, shared by their SAs as the engine's own path
        # shares the endpoint's (100,000 SAs would hold a tuple and a string each otherwise)
        self._locals: dict[tuple[str, int], tuple[str, int]] = {}

    @classmethod
    def for_engine(cls, engine: Any, flt: Any, *, thread: bool = True) -> Lane | None:
        """A lane for ``engine`` whose every address pair uses filter ``flt``, or None when
        the design note's conditions do not hold."""
        if flt is None or flt.aggressive or flt.credentials is not None or flt.remote_id is not None \
                or flt.local_ts or flt.remote_ts or flt.nat_traversal == "force" or flt.psk() is None:
            return None
        if engine.keylog_enabled() or type(engine.driver) is not MemoryDriver or engine.persistent:
            return None
        esp = engine.config.esp_policies[flt.esp_policy]
        if esp.pfs_group:
            return None
        return cls(engine, flt, thread=thread)

    # --- decide once ------------------------------------------------------------------------

    def offer_answered(self, digest: bytes, probe: IsakmpSa) -> None:
        """The engine answered the offer with ``digest`` statelessly; ``probe``: the SA its
        message 1 handler filled (the chosen suite, vendor IDs, NAT-T, DPD)."""
        chosen = probe.chosen
        if chosen is None or chosen.auth_method != wire.AuthMethod.PRE_SHARED_KEY \
                or probe.generic_filter is not self.filter or digest in self._digests:
            return
        cipher, _size, _block = keymat.cipher_for(chosen.encryption, chosen.key_length)
        tag = self._digests[digest] = next(self._tags)
        self.offers[tag] = OfferFacts(chosen, cipher, probe.sa_b, probe.vendor_ids, probe.nat_t, probe.dpd)
        local_id = self.filter.local_id
        my_id = my_identification(probe, local_id).body if local_id else None
        self.rust.add_offer(digest, tag=tag, hash=chosen.prf_hash, cipher=cipher, group=chosen.group,
                            psk=bytes(self.filter.psk() or b""), sa_b=probe.sa_b,
                            nat_d=int(probe.nat_t.nat_d) if probe.nat_t is not None else None, my_id=my_id)

    def forget_offer(self, digest: bytes) -> None:
        """The offer cache forgot this offer: the lane forgets it too (its SAs in flight keep
        their facts until they are adopted)."""
        self.rust.forget_offer(digest)
        tag = self._digests.pop(digest, None)
        if tag is not None:
            self._retired[tag] = None

    def esp_answered(self, sa: IsakmpSa, qm: QuickModeExchange, offer: bytes, reply: bytes,
                     lifetime: bytes | None) -> None:
        """The engine answered a Quick Mode offer of this SA with SA payload body ``reply``
        (no PFS; ``lifetime``: the data of its RESPONDER-LIFETIME notify, if any): offers of
        the same shape get the same answer."""
        chosen = qm.chosen
        if chosen is None or sa.generic_filter is not self.filter or sa.encapsulated:
            return
        tag = next(self._tags)
        if self.rust.add_esp(offer, tag, reply, chosen.encryption_key_bytes + chosen.integrity_key_bytes, lifetime):
            self.esp[tag] = (chosen, qm.mode, qm.lifetime_notify)

    def before_batch(self, now: float) -> None:
        """Grant the half-open room left, keep SPIs ready, let go of retired offers."""
        engine = self.engine
        if self._retired:
            keep = 3 * engine.config.timing.negotiation_timeout  # a lane SA lives two at most
            for tag, since in list(self._retired.items()):
                if since is None:
                    self._retired[tag] = now
                elif now - since > keep:
                    del self._retired[tag]
                    self.offers.pop(tag, None)
        gate, limits = engine.admission, engine.sa_limits
        room = gate.limits.max_half_open - gate.held() - self.rust.half_open
        total = limits.room()
        if total is not None:
            room = min(room, total - self.rust.held)
        per_source = gate.limits.max_half_open_per_source
        if limits.limits.isakmp_sas_per_peer:
            per_source = min(per_source, limits.limits.isakmp_sas_per_peer)
        self.rust.grant(max(0, room), per_source)
        if self.rust.spare_spis < SPI_REFILL:
            spis = []
            for _ in range(SPI_POOL - self.rust.spare_spis):
                try:
                    spi = engine.driver.get_spi("0.0.0.0", "0.0.0.0", _ESP)
                except Exception:  # noqa: BLE001 - no SPI: Quick Modes go to the engine
                    break
                engine.emit(ev.SpiAllocated(time=now, spi=spi))
                spis.append(spi)
            self.rust.add_spis(spis)

    # --- take back ----------------------------------------------------------------------------

    def adopt_all(self, now: float) -> int:
        """Adopt every negotiation the lane handed over, in order; returns how many."""
        exports = self.rust.take_exports()
        for export in exports:
            self.adopt(export, now)
        return len(exports)

    def adopt(self, export: tuple[Any, ...], now: float) -> IsakmpSa | None:
        """One export (``ExpressResponder.take_exports``) as an engine SA."""
        (tag, stage, cky_i, cky_r, local, remote, marker, started, established), dh, keys, rest = export
        facts = self.offers.get(tag)
        engine = self.engine
        if facts is None:  # pragma: no cover - tags live as long as the lane
            return None
        g_xi, g_xr, ni, nr = dh
        skeyid, skeyid_d, skeyid_a, skeyid_e, key, iv0 = keys
        peer_id, my_id, initial_contact, last_received, last_sent, qm_part = rest
        flt = self.filter
        chosen = facts.chosen
        shared = self._locals.get(local)
        if shared is None and len(self._locals) < 4096:
            shared = self._locals[local] = local
        local = shared or local
        sa = IsakmpSa(0, Role.RESPONDER, _STAGE[stage], cky_i, cky_r, local, remote, flt,
                      engine.config.ike_policies[flt.ike_policy], engine.config.esp_policies[flt.esp_policy], started,
                      non_esp_marker=marker, chosen=chosen, vendor_ids=facts.vendor_ids, nat_t=facts.nat_t,
                      dpd=facts.dpd)
        sa.crypto = keymat.CryptoState(facts.cipher, bytearray(key), chosen.prf_hash, iv0)
        sa.skeyid = keymat.Skeyid(skeyid, skeyid_d, skeyid_a, skeyid_e)
        sa.last_received = message_digest(last_received)
        # our last phase 1 reply, for a repeat of the message it answered; once the peer's
        # Quick Mode reached us, it has MM6: nothing to keep (a repeat of MM5 is then ignored)
        sa.last_sent = _plain(last_sent, marker) if qm_part is None else b""
        if stage == 1:
            sa.sa_b, sa.g_xi, sa.g_xr, sa.nonce_i, sa.nonce_r = facts.sa_b, g_xi, g_xr, ni, nr
        else:
            sa.peer_id, sa.my_id = _id_payload(peer_id), _own_id(my_id)
            sa.initial_contact = initial_contact
        qm, material = None, None
        if qm_part is not None:
            (esp_tag, message_id, qm_started, qm_ni, qm_nr, spi_in, spi_out), second = qm_part
            id_ci, id_cr, qm_iv, qm_last_received, qm_last_sent, keymat_in, keymat_out = second
            esp_chosen, mode, limits = self.esp[esp_tag]
            qm = QuickModeExchange(message_id, Role.RESPONDER, Phase2State.R_EXPECT_QM3, qm_started, sa.esp_policy,
                                   nonce_i=qm_ni, nonce_r=qm_nr, spi_in=spi_in, spi_out=spi_out, chosen=esp_chosen,
                                   mode=mode, id_ci=_id_payload(id_ci), id_cr=_id_payload(id_cr),
                                   last_received=message_digest(qm_last_received),
                                   last_sent=_plain(qm_last_sent, marker), lifetime_notify=limits)
            sa.crypto.commit(message_id, qm_iv)
            material = (keymat_in, keymat_out) if stage == 4 else None
        self.adopted += 1
        engine.take_over(sa, qm, established=established, done=stage == 4, now=now, keymat=material)
        return sa

    def fold(self, monitor: Any) -> None:
        """The lane's message counters into the monitor's (as the engine's events count them)."""
        messages, taken, declined, handed = self.rust.take_counters()
        if monitor is None or not (messages or declined or handed):
            return
        x = monitor.extended
        # negotiations the lane took at message 3, left to the engine there, handed over later
        for name, count in (("express:taken", taken), ("express:declined", declined), ("express:handed_over", handed)):
            if count:
                x[name] += count
        for (sent, exchange, number), count in messages.items():
            x[f"messages:{_exchange_name(exchange)}:{number}:{'out' if sent else 'in'}"] += count


def _exchange_name(exchange_type: int) -> str:
    try:
        return wire.ExchangeType(exchange_type).name.lower()
    except ValueError:
        return str(exchange_type)
