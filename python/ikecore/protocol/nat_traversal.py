"""NAT traversal for IKEv1: RFC 3947 and the draft vendor IDs 02, 02n and 03.

Design note
-----------
NAT-T rides on Main Mode (and Aggressive Mode) in three steps, all decided here and
carried out by the exchanges and the engine::

    MM1/MM2   vendor IDs: the initiator sends the RFC 3947 ID and the drafts (as charon
              does); the responder answers with the best one it also knows. Both sides
              then hold the same ``Variant`` in ``sa.nat_t``.
    MM3/MM4   two NAT-D payloads each: hash(CKY-I | CKY-R | IP | port) of the
              destination as the sender addressed it, then of the sender's own source.
              Payload number 20 for RFC 3947, 130 for the drafts. The receiver compares
              the first with its own address (mismatch: *we* are behind a NAT, "local")
              and the others with the sender's address as seen here (mismatch: the peer
              is behind a NAT, "remote").
    MM5 on    when a NAT was detected (or the filter forces encapsulation) the initiator
              floats to the NAT-T port and prefixes every IKE datagram with the 4-byte
              non-ESP marker (RFC 3948 section 2.2); the responder follows the address and
              port the authenticated message came from.

An SA's endpoint moves only on a message that is new and authenticated (RFC 3947 section
4): the engine moves it tentatively (``follow``: the answer to a new message goes where
the message came from), keeps the move only when the message verified, and otherwise
undoes it (``restore``). A repeat of a message already processed (a retransmission, a
finished Quick Mode, a spent Message ID) arriving from elsewhere (``would_move``) is a
replay: dropped and counted, the endpoint untouched.

Quick Mode then asks for the UDP-encapsulated modes (3/4 with RFC 3947, 61443/61444 with
the drafts), and the engine sends a NAT keepalive (one 0xFF byte, RFC 3948 section 2.3)
every ``Timing.nat_keepalive`` seconds while we are the side behind the NAT.

Forcing (``GenericFilter.nat_traversal = "force"``) works like charon's ``encap = yes``:
the NAT-D hash of our own address is replaced by a random value so that the peer also
sees a NAT and floats. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ikecore import keymat, wire
from ikecore.errors import PayloadMalformed
from ikecore.events import Address
from ikecore.sa import IsakmpSa

__all__ = ["Variant", "RFC3947", "DRAFT_03", "DRAFT_02", "DRAFT_02N", "VARIANTS", "NAT_T_PORT",
           "vendor_ids", "choose", "endpoint_hashes", "nat_d_payloads", "detect", "udp_mode", "plain_mode", "NAT_STATES",
           "should_float", "float_initiator", "would_move", "follow", "restore"]

#: The NAT-T port (RFC 3947 section 4).
NAT_T_PORT = 4500
#: What ``IsakmpSa.nat`` (the ``nat`` column of the Main Mode listing) can say.
NAT_STATES = ("none", "local", "remote", "both")
#: What ``follow`` changed: the SA's remote and local addresses, marker and encapsulation before.
Moved = tuple[Address, Address, bool, bool]


@dataclass(frozen=True, slots=True)
class Variant:
    """One flavour of NAT-T: its vendor ID and its payload and mode numbers."""

    name: str
    vendor_id: bytes
    nat_d: int
    nat_oa: int
    udp_tunnel: int
    udp_transport: int


RFC3947 = Variant("RFC 3947", wire.VID_NAT_T_RFC3947, wire.PayloadType.NAT_D, wire.PayloadType.NAT_OA,
                  wire.EncapsulationMode.UDP_TUNNEL, wire.EncapsulationMode.UDP_TRANSPORT)
DRAFT_03 = Variant("draft-03", bytes.fromhex("7d9419a65310ca6f2c179d9215529d56"), wire.PayloadType.NAT_D_DRAFT,
                   wire.PayloadType.NAT_OA_DRAFT, wire.EncapsulationMode.UDP_TUNNEL_DRAFT,
                   wire.EncapsulationMode.UDP_TRANSPORT_DRAFT)
DRAFT_02N = Variant("draft-02n", bytes.fromhex("90cb80913ebb696e086381b5ec427b1f"), wire.PayloadType.NAT_D_DRAFT,
                    wire.PayloadType.NAT_OA_DRAFT, wire.EncapsulationMode.UDP_TUNNEL_DRAFT,
                    wire.EncapsulationMode.UDP_TRANSPORT_DRAFT)
DRAFT_02 = Variant("draft-02", bytes.fromhex("cd60464335df21f87cfdb2fc68b6a448"), wire.PayloadType.NAT_D_DRAFT,
                   wire.PayloadType.NAT_OA_DRAFT, wire.EncapsulationMode.UDP_TUNNEL_DRAFT,
                   wire.EncapsulationMode.UDP_TRANSPORT_DRAFT)
#: In order of preference (the RFC first, then the newest draft).
VARIANTS = (RFC3947, DRAFT_03, DRAFT_02N, DRAFT_02)


def vendor_ids() -> list[wire.Payload]:
    """The initiator's VID payloads announcing every NAT-T variant (the responder answers
    with the one ``choose`` picks)."""
    return [wire.VendorIdPayload(v.vendor_id) for v in VARIANTS]


def choose(received: list[bytes]) -> Variant | None:
    """The preferred variant among the received vendor IDs, or None without NAT-T."""
    for variant in VARIANTS:
        if variant.vendor_id in received:
            return variant
    return None


def endpoint_hashes(sa: IsakmpSa) -> tuple[bytes, bytes]:
    """(the NAT-D hash of the peer's address as we send to it, of our own): what we send
    in our NAT-D payloads and what the peer's are compared with (both from the same two)."""
    hash_name, cky_i, cky_r = sa.hash_name, sa.initiator_cookie, sa.responder_cookie
    remote, local = sa.remote, sa.local
    return (keymat.nat_d(hash_name, cky_i, cky_r, remote[0], remote[1]),
            keymat.nat_d(hash_name, cky_i, cky_r, local[0], local[1]))


def nat_d_payloads(sa: IsakmpSa, variant: Variant,
                   random: Callable[[int], bytes] | None = None,
                   hashes: tuple[bytes, bytes] | None = None) -> list[wire.Payload]:
    """The two NAT-D payloads of MM3/MM4 (AM1 has none; AM2/AM3 carry them).

    The first hashes the peer's address as we send to it, the second our own. With
    ``random`` (forced encapsulation) our own hash is random bytes of the same size.
    ``hashes``: ``endpoint_hashes(sa)`` when the caller has them already.
    """
    peer, mine = hashes if hashes is not None else endpoint_hashes(sa)
    if random is not None:
        mine = random(len(mine))
    return [wire.NatDPayload(peer, payload_type=variant.nat_d),
            wire.NatDPayload(mine, payload_type=variant.nat_d)]


def detect(sa: IsakmpSa, variant: Variant, payloads: list[wire.Payload],
           hashes: tuple[bytes, bytes] | None = None) -> str:
    """Compare the peer's NAT-D payloads with our view of the two addresses
    (``hashes``: ``endpoint_hashes(sa)`` when the caller has them already).

    Returns one of ``NAT_STATES``. Raises PayloadMalformed when the peer negotiated NAT-T
    but sent fewer than two NAT-D payloads.
    """
    kind = variant.nat_d
    received = [bytes(p.data) for p in payloads if isinstance(p, wire.NatDPayload) and p.payload_type == kind]
    if len(received) < 2:
        raise PayloadMalformed(f"NAT-T negotiated ({variant.name}) but {len(received)} NAT-D payloads received")
    peer, mine = hashes if hashes is not None else endpoint_hashes(sa)
    local_nat = received[0] != mine
    remote_nat = peer not in received[1:]
    return NAT_STATES[int(local_nat) + 2 * int(remote_nat)]


def udp_mode(mode: int, variant: Variant) -> int:
    """The UDP-encapsulated encapsulation mode for plain ``mode`` under ``variant``."""
    transport = mode in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.UDP_TRANSPORT,
                         wire.EncapsulationMode.UDP_TRANSPORT_DRAFT)
    return variant.udp_transport if transport else variant.udp_tunnel


def plain_mode(mode: int) -> int:
    """Tunnel or transport, whatever the encapsulation."""
    if mode in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.UDP_TRANSPORT,
                wire.EncapsulationMode.UDP_TRANSPORT_DRAFT):
        return wire.EncapsulationMode.TRANSPORT
    return wire.EncapsulationMode.TUNNEL


def should_float(sa: IsakmpSa) -> bool:
    """NAT-T agreed and either a NAT seen by NAT-D or encapsulation forced by the filter."""
    return sa.nat_t is not None and (sa.nat != "none" or sa.generic_filter.nat_traversal == "force")


def float_initiator(sa: IsakmpSa) -> None:
    """Move the initiator to the NAT-T ports (before MM5 or AM3) when ``should_float``.

    Our port moves to 4500 only from 500 (an ephemeral or custom port stays, as charon
    does); the peer's becomes ``sa.natt_port``. From now on IKE datagrams carry the
    non-ESP marker and Quick Mode asks for UDP-encapsulated ESP.
    """
    if not should_float(sa) or sa.encapsulated:
        return
    if sa.local[1] == 500:
        sa.local = (sa.local[0], NAT_T_PORT)
    sa.remote = (sa.remote[0], sa.natt_port)
    sa.encapsulated = True
    sa.non_esp_marker = True


def would_move(sa: IsakmpSa, remote: Address, local: Address, marker: bool) -> bool:
    """Whether a message from ``remote`` to ``local`` (with the non-ESP marker or not) would
    change where the SA sends: its addresses, marker or encapsulation."""
    if not marker or sa.nat_t is None or (remote == sa.remote and not should_float(sa)):
        return False
    return (remote, local, True, True) != (sa.remote, sa.local, sa.non_esp_marker, sa.encapsulated)


def follow(sa: IsakmpSa, remote: Address, local: Address, marker: bool) -> Moved | None:
    """A new message came with the non-ESP marker, possibly from a new port (the peer
    floated, or its NAT mapping changed): answer there from now on. The engine calls this
    before the message is verified and ``restore`` unless it turns out new and authentic.

    Returns what ``restore`` needs to undo the move, or None when nothing moved."""
    if not would_move(sa, remote, local, marker):
        return None
    before = (sa.remote, sa.local, sa.non_esp_marker, sa.encapsulated)
    sa.remote, sa.local = remote, local
    sa.non_esp_marker = True
    sa.encapsulated = True
    return before


def restore(sa: IsakmpSa, before: Moved | None) -> None:
    """Undo ``follow`` when the message turned out to be unacceptable."""
    if before is not None:
        sa.remote, sa.local, sa.non_esp_marker, sa.encapsulated = before
