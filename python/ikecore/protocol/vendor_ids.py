"""Vendor IDs of phase 1: what ikecore announces and what it records of the peer.

We announce only what we implement: NAT traversal (RFC 3947 and the drafts 03, 02n and 02,
the way charon does; a responder answers with the one variant it chose) and Dead Peer
Detection (RFC 3706). Every vendor ID the peer sends is kept in ``sa.vendor_ids`` and shown
by name in the Main Mode listing (``wire.VENDOR_IDS``: RFC 3947, the drafts, DPD, XAUTH, Cisco Unity,
IKE fragmentation, Microsoft); the ones that change our behaviour set ``sa.nat_t`` and
``sa.dpd``.
"""

from __future__ import annotations

from ikecore import wire
from ikecore.protocol import nat_traversal
from ikecore.protocol.messages import interned
from ikecore.sa import IsakmpSa

__all__ = ["initiator_vendor_ids", "responder_vendor_ids", "record", "names"]


def initiator_vendor_ids(sa: IsakmpSa) -> list[wire.Payload]:
    """The VID payloads of message 1 (Main Mode MM1, Aggressive Mode AM1)."""
    flt = sa.generic_filter
    key = (flt.nat_traversal != "off", bool(flt.dpd))
    known = _SENT_FIRST.get(key)  # payloads are immutable: made once per kind of filter
    if known is None:
        payloads: list[wire.Payload] = nat_traversal.vendor_ids() if key[0] else []
        if key[1]:
            payloads.append(wire.VendorIdPayload(wire.VID_DPD))
        known = _SENT_FIRST[key] = tuple(payloads)
    return list(known)


def responder_vendor_ids(sa: IsakmpSa) -> list[wire.Payload]:
    """The VID payloads of message 2, answering what ``record`` found in message 1."""
    key = (sa.nat_t.vendor_id if sa.nat_t is not None else None, bool(sa.generic_filter.dpd))
    known = _SENT_ANSWER.get(key)  # as initiator_vendor_ids
    if known is None:
        payloads: list[wire.Payload] = [wire.VendorIdPayload(key[0])] if key[0] is not None else []
        if key[1]:
            payloads.append(wire.VendorIdPayload(wire.VID_DPD))
        known = _SENT_ANSWER[key] = tuple(payloads)
    return list(known)


#: The VID payloads we send, by what decides them: (NAT-T on, DPD) for message 1, (the NAT-T
#: vendor ID answered or None, DPD) for message 2. A handful of entries each.
_SENT_FIRST: dict[tuple[bool, bool], tuple[wire.Payload, ...]] = {}
_SENT_ANSWER: dict[tuple[bytes | None, bool], tuple[wire.Payload, ...]] = {}


_SHARED: dict[bytes, bytes] = {}  # one copy of each vendor ID seen (at most 4096 kept)


def _shared(vid: bytes) -> bytes:
    """Peers send the same few vendor IDs: SAs share one bytes object per ID (a gateway
    holding 100,000 SAs keeps about 250 bytes less per SA)."""
    return interned(_SHARED, vid, vid, 4096)


#: One list per distinct set of vendor IDs, shared by the SAs that received it (replaced,
#: never changed in place: ``IsakmpSa.vendor_ids``).
_SHARED_LISTS: dict[tuple[bytes, ...], list[bytes]] = {}


def _shared_list(vids: list[bytes]) -> list[bytes]:
    return interned(_SHARED_LISTS, tuple(vids), vids, 1024)


def record(sa: IsakmpSa, payloads: list[wire.Payload]) -> None:
    """Keep the peer's vendor IDs; agree on NAT-T and note DPD support."""
    vids = tuple([p.data for p in payloads if isinstance(p, wire.VendorIdPayload)])
    known = _SHARED_LISTS.get(vids)  # peers of one kind send the same set: shared already
    sa.vendor_ids = known if known is not None else _shared_list([_shared(bytes(v)) for v in vids])
    if sa.generic_filter.nat_traversal != "off":
        sa.nat_t = nat_traversal.choose(sa.vendor_ids)
    sa.dpd = sa.generic_filter.dpd and wire.VID_DPD in sa.vendor_ids


def names(vids: list[bytes]) -> list[str]:
    """Readable names of vendor IDs (hex for unknown ones)."""
    return [wire.vendor_id_name(v) or v.hex() for v in vids]
