"""Flood resistance for the responder: half-open limits and stateless cookies.

Design note
-----------
A half-open ISAKMP SA is a responder SA that has answered message 1 but is not
established. Spoofed message 1 floods create them for free, so the engine asks this
module before it creates one:

* **Limits.** At most ``max_half_open`` responder half-open SAs in total and
  ``max_half_open_per_source`` per source address. Over the per-source limit a new
  message 1 is refused (nothing is kept, nothing is sent). Over the total limit the
  *oldest* half-open SAs are dropped first (:meth:`AdmissionControl.make_room`
  returns them in age order), so a flood can only push out flood entries that are
  older than the legitimate peer now arriving.

* **Stateless cookies.** Once ``cookie_threshold`` half-open SAs exist, message 1 is
  answered without keeping anything (the idea of RFC 2522 section 3.3 / Photuris and
  the IKEv2 COOKIE, within IKEv1's fixed message set). Message 2 is a pure function
  of message 1: the chosen transform is deterministic (the first offered transform our
  policy accepts), and the responder cookie is a keyed hash::

      CKY-R = tag(2) || HMAC-SHA256(secret[epoch], CKY-I | source | local | H(offer))[:6]
      tag   = H(offer)[:2]

  where offer is message 1's payload chain (its first payload type, then the SA payload
  and the vendor IDs that announce NAT-T and DPD), source and local are address and
  port bytes and H is SHA-256. A
  retransmitted message 1 gets the identical message 2. Only message 3 arriving from
  the same source and local endpoint with a CKY-R that verifies under the current or
  the previous secret proves the peer can receive at its address; only then is an SA
  created and the first Diffie-Hellman computed. The engine rebuilds the responder
  state from message 3 plus the offer: it re-runs the same deterministic choice on
  SAi_b, so SAi_b (the bytes HASH_I and HASH_R cover) and the chosen transform are
  exactly those of the message 2 the peer saw.

  The offer does not fit in a cookie, so it is kept in a bounded offer cache keyed by
  its digest: a *known* tier holding every offer that a proven peer used (peers of one
  kind send identical offers), and an LRU *recent* tier of at most
  ``offer_cache_size`` unproven offers (each at most ``max_offer_size`` bytes; bigger
  offers are refused in stateless mode). Peers with a common offer therefore cost
  nothing per peer; a flood that varies its offers can only evict recent unproven
  offers, after which the message 3 of a peer with a brand-new offer cannot be
  rebuilt: it looks like (and is counted as) an invalid cookie and is dropped, and the
  peer recovers by starting again.

  The formula has one definition, in Rust (``ikecore._core.stateless_cookie`` and
  ``offer_digest``, ``rust/frontdoor.rs``): this module calls it, and so does the
  gateway's receive fast path (``ikecore.gateway.frontdoor``), which answers message 1 of an
  offer already answered here with the message 2 this module was told about
  (:meth:`AdmissionControl.answered`), stamped with the cookie of
  :meth:`AdmissionControl.current_secret`. When the offer cache forgets an offer it
  says so (``on_evict``), so the fast path never answers an offer whose message 3
  could not be rebuilt.

  Secrets rotate every ``cookie_epoch`` seconds (engine time); a cookie made just
  before a rotation still verifies for one more epoch. The cookie binds the source
  address and port, so a message 3 replayed from another address does not verify.

* **Limits past the half-open stage** (``SaLimits``, the ``[limits]`` of
  ``ikecore.config.Limits``). A peer that finishes Main Mode can still ask for more than a
  gateway should hold: ISAKMP SAs from one address or in total, Quick Modes in flight on
  one ISAKMP SA, IPsec SAs on one ISAKMP SA. ``SaLimits`` names the limit a request would
  pass; the engine refuses it (message 1 with NO-PROPOSAL-CHOSEN, before any SA is kept;
  a Quick Mode with a protected NO-PROPOSAL-CHOSEN, after its HASH(1) verified and before
  any Diffie-Hellman or SPI work) and emits ``LimitReached``. ISAKMP SAs of both roles
  count; only what peers start is refused (the operator's own ``initiate`` is not).

Memory bound: half-open SAs <= ``max_half_open``; offers <= (``offer_cache_size`` +
``known`` tier cap) x ``max_offer_size`` bytes; two 32-byte secrets. Nothing here does
I/O or reads a clock.
"""

from __future__ import annotations

import hmac
from collections import Counter, OrderedDict
from collections.abc import Callable

from ikecore._core import offer_digest, stateless_cookie
from ikecore.config import FloodLimits, Limits
from ikecore.sa import IsakmpSa, Phase2State, Role

__all__ = ["FloodLimits", "AdmissionControl", "OfferCache", "SaLimits"]

KNOWN_OFFERS_MAX = 256  # offers proven peers used, kept apart from the LRU of unproven ones


class OfferCache:
    """Message 1 payload chains (offers) by SHA-256 digest: a known tier and a bounded LRU of recent offers."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._known: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self.on_evict: Callable[[bytes], None] | None = None   # called with each forgotten digest

    def __len__(self) -> int:
        return len(self._known) + len(self._recent)

    def add(self, body: bytes, *, known: bool = False) -> bytes:
        """Remember an offer; returns its digest."""
        digest = offer_digest(body)
        if digest in self._known:
            return digest
        if known:
            self._recent.pop(digest, None)
            self._known[digest] = body
            while len(self._known) > KNOWN_OFFERS_MAX:
                self._evicted(self._known.popitem(last=False)[0])
        else:
            self._recent[digest] = body
            self._recent.move_to_end(digest)
            while len(self._recent) > self._size:
                self._evicted(self._recent.popitem(last=False)[0])
        return digest

    def _evicted(self, digest: bytes) -> None:
        if self.on_evict is not None:
            self.on_evict(digest)

    def candidates(self, tag: bytes) -> list[tuple[bytes, bytes]]:
        """(digest, body) of every cached offer whose digest starts with ``tag``."""
        return [(d, b) for tier in (self._known, self._recent) for d, b in tier.items() if d[:2] == tag]

    def bytes_held(self) -> int:
        return sum(len(b) + 32 for tier in (self._known, self._recent) for b in tier.values())


class AdmissionControl:
    """Half-open bookkeeping and stateless cookies for one engine.

    Args:
        limits: the configured limits.
        random: byte source for the cookie secrets (the engine's).
    """

    def __init__(self, limits: FloodLimits, random: Callable[[int], bytes]) -> None:
        self.limits = limits
        self._random = random
        self._half_open: OrderedDict[int, str] = OrderedDict()   # handle -> source IP, oldest first
        self._per_source: Counter[str] = Counter()
        self.offers = OfferCache(limits.offer_cache_size)
        self._epoch = -1
        self._secrets: tuple[bytes, bytes] = (b"", b"")
        self.on_reply: Callable[[bytes, bytes], None] | None = None   # (offer digest, message 2)

    # --- half-open bookkeeping ------------------------------------------------------------

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def per_source(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def stateless(self) -> bool:
        """True when message 1 must be answered without keeping state."""
        return len(self._half_open) >= self.limits.cookie_threshold

    def held(self) -> int:
        """Half-open SAs now."""
        return len(self._half_open)

    def source_full(self, source: str) -> bool:
        return self._per_source.get(source, 0) >= self.limits.max_half_open_per_source

    def make_room(self) -> list[int]:
        """Handles of the oldest half-open SAs to drop so that one more fits."""
        excess = len(self._half_open) + 1 - self.limits.max_half_open
        return list(self._half_open)[:excess] if excess > 0 else []

    def opened(self, handle: int, source: str) -> None:
        if handle not in self._half_open:
            self._half_open[handle] = source
            self._per_source[source] += 1

    def closed(self, handle: int) -> None:
        """The SA was established, failed or dropped: it is no longer half-open."""
        source = self._half_open.pop(handle, None)
        if source is not None:
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    # --- stateless cookies ----------------------------------------------------------------

    def _rotate(self, now: float) -> None:
        epoch = int(now // self.limits.cookie_epoch)
        if epoch == self._epoch:
            return
        if epoch == self._epoch + 1:
            self._secrets = (self._random(32), self._secrets[0])
        else:
            self._secrets = (self._random(32), b"")
        self._epoch = epoch

    def current_secret(self, now: float) -> tuple[bytes, float]:
        """The secret that makes cookies at ``now`` and the engine time it stays current until."""
        self._rotate(now)
        return self._secrets[0], (self._epoch + 1) * self.limits.cookie_epoch

    def answered(self, offer: bytes, message2: bytes) -> None:
        """The engine answered ``offer`` statelessly with ``message2`` (tells ``on_reply``)."""
        if self.on_reply is not None:
            self.on_reply(offer_digest(offer), message2)

    def make_cookie(self, cky_i: bytes, source: bytes, local: bytes, offer: bytes, now: float) -> bytes | None:
        """The stateless CKY-R for this message 1 (``offer``: its payload chain), or None when the
        offer is too large to keep. Remembers the offer in the bounded cache."""
        if len(offer) > self.limits.max_offer_size:
            return None
        self._rotate(now)
        digest = self.offers.add(offer)
        return stateless_cookie(self._secrets[0], cky_i, source, local, digest)

    def verify_cookie(self, cky_i: bytes, cky_r: bytes, source: bytes, local: bytes,
                      now: float) -> tuple[bool, bytes | None]:
        """(cookie verifies, the offer if still cached) for a message 3 with unknown cookies.

        A cookie can verify with its offer evicted only if some cached offer shares the
        tag; otherwise an evicted offer looks like a bad cookie. Both are counted.
        """
        self._rotate(now)
        for digest, body in self.offers.candidates(cky_r[:2]):
            for secret in self._secrets:
                if secret and hmac.compare_digest(cky_r, stateless_cookie(secret, cky_i, source, local, digest)):
                    self.offers.add(body, known=True)   # a proven peer used it
                    return True, body
        return False, None

    def stats(self) -> dict[str, int]:
        return {"half_open": len(self._half_open), "sources": len(self._per_source),
                "offers": len(self.offers), "offer_bytes": self.offers.bytes_held()}


class SaLimits:
    """The ``[limits]`` of one engine: which limit a peer's request would pass, if any.

    Args:
        limits: the configured limits (0: no limit).
        workers: the gateway's worker processes; this engine holds its share of
            ``limits.isakmp_sas`` (rounded up).
    """

    def __init__(self, limits: Limits, workers: int = 1) -> None:
        self.limits = limits
        self.isakmp_sas = -(-limits.isakmp_sas // max(workers, 1))
        self._per_peer: Counter[str] = Counter()
        # the SAs counted; each SA keeps the peer address it was counted under (``limits_peer``:
        # its address may change with NAT-T), not a table of 100,000 handles here
        self._held = 0

    def room(self) -> int | None:
        """How many more ISAKMP SAs fit under ``isakmp_sas`` (None: no limit)."""
        return self.isakmp_sas - self._held if self.isakmp_sas else None

    def added(self, sa: IsakmpSa) -> None:
        """An ISAKMP SA now exists (any role or state), counted under its peer's address."""
        if not sa.limits_peer:
            sa.limits_peer = peer = sa.remote[0]
            self._per_peer[peer] += 1
            self._held += 1

    def removed(self, sa: IsakmpSa) -> None:
        peer = sa.limits_peer
        if peer:
            sa.limits_peer = ""
            self._held -= 1
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    def per_peer(self, peer: str) -> int:
        return self._per_peer.get(peer, 0)

    def refuse_isakmp(self, peer: str) -> str | None:
        """The limit one more ISAKMP SA started by ``peer`` would pass, or None."""
        if self.isakmp_sas and self._held >= self.isakmp_sas:
            return "isakmp_sas"
        per_peer = self.limits.isakmp_sas_per_peer
        if per_peer and self._per_peer.get(peer, 0) >= per_peer:
            return "isakmp_sas_per_peer"
        return None

    def refuse_quick_mode(self, sa: IsakmpSa) -> str | None:
        """The limit one more Quick Mode started by the peer on ``sa`` would pass, or None.

        Counting the peer's Quick Modes in flight walks ``sa.quick_modes``, so it is done
        only when the dictionary alone could reach a limit (never in normal operation)."""
        in_flight_limit = self.limits.quick_modes_in_flight
        ipsec_limit = self.limits.ipsec_sas_per_isakmp_sa
        held = len(sa.quick_modes)
        if (not in_flight_limit or held < in_flight_limit) and \
                (not ipsec_limit or len(sa.ipsec_sas) + held < ipsec_limit):
            return None
        in_flight = sum(1 for qm in sa.quick_modes.values()
                        if qm.role is Role.RESPONDER and qm.state is Phase2State.R_EXPECT_QM3)
        if in_flight_limit and in_flight >= in_flight_limit:
            return "quick_modes_in_flight"
        if ipsec_limit and len(sa.ipsec_sas) + in_flight >= ipsec_limit:
            return "ipsec_sas_per_isakmp_sa"
        return None
