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
    payloads: list[wire.Payload] = [] if flt.nat_traversal == "off" else nat_traversal.vendor_ids()
    if flt.dpd:
        payloads.append(wire.VendorIdPayload(wire.VID_DPD))
    return payloads


def responder_vendor_ids(sa: IsakmpSa) -> list[wire.Payload]:
    """The VID payloads of message 2, answering what ``record`` found in message 1."""
    flt = sa.generic_filter
    payloads: list[wire.Payload] = [wire.VendorIdPayload(sa.nat_t.vendor_id)] if sa.nat_t is not None else []
    if flt.dpd:
        payloads.append(wire.VendorIdPayload(wire.VID_DPD))
    return payloads


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
    sa.vendor_ids = _shared_list([_shared(bytes(p.data)) for p in payloads if isinstance(p, wire.VendorIdPayload)])
    if sa.generic_filter.nat_traversal != "off":
        sa.nat_t = nat_traversal.choose(sa.vendor_ids)
    sa.dpd = sa.generic_filter.dpd and wire.VID_DPD in sa.vendor_ids


def names(vids: list[bytes]) -> list[str]:
    """Readable names of vendor IDs (hex for unknown ones)."""
    return [wire.vendor_id_name(v) or v.hex() for v in vids]
