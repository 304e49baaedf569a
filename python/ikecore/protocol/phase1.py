"""Phase 1 keying and identification, shared by Main Mode and Aggressive Mode.

* Keying: SKEYID and its family, the encryption key and the phase 1 IV (RFC 2409 section 5
  and appendix B) once the Diffie-Hellman secret is known; the single-use key pair is
  dropped as soon as it has been used.
* Identification: our IDii/IDir (RFC 2407 section 4.6.2) and the check of the peer's ID
  against the filter's ``remote_id``.
* The KE and nonce payloads of messages 3/4 (Main Mode) and 1/2 (Aggressive Mode), and our
  NAT-D payloads when NAT traversal was agreed (RFC 3947 section 3.2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ikecore import keymat, policy, wire
from ikecore.errors import InvalidIdInformation, PayloadMalformed
from ikecore.protocol import nat_traversal
from ikecore.protocol.messages import nonce_ok, required
from ikecore.protocol.services import Services
from ikecore.sa import IsakmpSa, id_to_text

__all__ = ["Phase1Handler", "choose_ike", "answer_ike", "phase1_keys", "my_identification", "check_peer_id", "take_ke_nonce", "exchange", "nat_d"]

#: A Main Mode or Aggressive Mode row's handler: ``(sa, message, its payloads, services) ->
#: the next message``, None when none follows.
Phase1Handler = Callable[[IsakmpSa, wire.Message, list[wire.Payload], Services], bytes | None]

P = wire.PayloadType


def phase1_keys(sa: IsakmpSa, services: Services, g_xy: bytes) -> None:
    """Derive SKEYID, SKEYID_d/a/e, the encryption key and the phase 1 IV (RFC 2409 5, B)."""
    chosen = sa.chosen
    assert chosen is not None
    # Signatures: SKEYID = prf(Ni_b | Nr_b, g^xy) (RFC 2409 5.1), keymat's psk=None.
    psk = None if chosen.auth_method == wire.AuthMethod.RSA_SIG else (sa.generic_filter.psk() or b"")
    hash_name = chosen.prf_hash
    sa.skeyid = keymat.derive_skeyid(hash_name, sa.nonce_i, sa.nonce_r, g_xy,
                                     sa.initiator_cookie, sa.responder_cookie, psk=psk)
    cipher_name, key_size, block_size = keymat.cipher_for(chosen.encryption, chosen.key_length)
    key = keymat.encryption_key(hash_name, sa.skeyids.skeyid_e, key_size)
    iv = keymat.phase1_iv(hash_name, sa.g_xi, sa.g_xr, block_size)
    sa.crypto = keymat.CryptoState(cipher_name, key, hash_name, iv)  # takes the key over (wiped with it)
    if services.keylog_enabled():
        services.keylog(keymat.keylog_line(sa.initiator_cookie, key))


def my_identification(sa: IsakmpSa, configured: str | None) -> wire.IdPayload:
    """IDii/IDir: the configured ID (address, FQDN, or user@FQDN) or our IKE address.

    Protocol and port are zero, as RFC 2407 section 4.6.2 allows in phase 1.
    """
    return _identification(configured or sa.local[0])


@functools.lru_cache(maxsize=256)  # one payload (frozen) shared by every SA with that ID
def _identification(text: str) -> wire.IdPayload:
    try:
        packed = keymat.packed_address(text)
    except ValueError:
        id_type = wire.IdType.USER_FQDN if "@" in text else wire.IdType.FQDN
        return wire.IdPayload(int(id_type), text.encode())
    id_type = wire.IdType.IPV6_ADDR if len(packed) == 16 else wire.IdType.IPV4_ADDR
    return wire.IdPayload(int(id_type), packed)


def check_peer_id(sa: IsakmpSa, peer_id: wire.IdPayload) -> None:
    """The peer's ID must be the filter's ``remote_id`` when one is configured.

    Raises:
        InvalidIdInformation: it names someone else.
    """
    expected = sa.generic_filter.remote_id
    if expected is not None and id_to_text(peer_id.id_type, peer_id.data) != expected:
        raise InvalidIdInformation(f"peer ID {id_to_text(peer_id.id_type, peer_id.data)!r} "
                                   f"is not the configured {expected!r}")


def take_ke_nonce(payloads: list[wire.Payload]) -> tuple[bytes, bytes]:
    """The peer's KE data and nonce.

    Raises:
        InvalidPayloadType: KE or nonce missing.
        PayloadMalformed: a nonce outside 8-256 bytes.
    """
    found = required(payloads, P.KE, P.NONCE)
    nonce: bytes = found[P.NONCE].data
    if not nonce_ok(nonce):
        raise PayloadMalformed(f"nonce of {len(nonce)} bytes (RFC 2409 allows 8-256)")
    ke: bytes = found[P.KE].data
    return ke, nonce


def exchange(sa: IsakmpSa, peer_public: bytes) -> bytes:
    """g^xy from our key pair and the peer's public value; the pair is single use and gone
    afterwards, whether the exchange worked or not."""
    pair, sa.dh = sa.dh, None
    assert pair is not None
    return bytes(pair.exchange(peer_public))


def nat_d(sa: IsakmpSa, services: Services, hashes: tuple[bytes, bytes] | None = None) -> list[wire.Payload]:
    """Our NAT-D payloads when NAT-T was agreed (a random own hash when forced);
    ``hashes``: ``nat_traversal.endpoint_hashes(sa)`` when the caller has them already."""
    if sa.nat_t is None:
        return []
    forced = sa.generic_filter.nat_traversal == "force"
    return nat_traversal.nat_d_payloads(sa, sa.nat_t, services.random if forced else None, hashes)


#: Accepted offers by (policy, SA payload body): peers of one kind send the same offer, and
#: parsing its transforms and matching them against the policy was the same work each
#: time. Bounded (cleared when full); refused offers are never kept.
_IKE_CHOICES: dict[tuple[int, bytes], tuple[policy.IkePolicy, wire.Proposal, wire.Transform, policy.IkeProposal]] = {}
_IKE_CHOICES_MAX = 256


def choose_ike(sa_payload: wire.SaPayload, ike_policy: policy.IkePolicy,
               ) -> tuple[wire.Proposal, wire.Transform, policy.IkeProposal]:
    """``policy.choose_ike_transform``, remembered for an offer seen before (the same
    policy object and the same SA payload body give the same choice); the chosen suite
    is then one object shared by every SA that chose it."""
    body = sa_payload.body
    key = (id(ike_policy), body)
    known = _IKE_CHOICES.get(key)
    if known is not None and known[0] is ike_policy:
        return known[1], known[2], known[3]
    proposal, transform, chosen = policy.choose_ike_transform(sa_payload, ike_policy)
    if len(_IKE_CHOICES) >= _IKE_CHOICES_MAX:
        _IKE_CHOICES.clear()
    _IKE_CHOICES[key] = (ike_policy, proposal, transform, chosen)
    return proposal, transform, chosen


#: The SA payloads answering offers seen before, by the key of ``_IKE_CHOICES`` (payloads are
#: immutable: one object serves every SA that got the same offer). Bounded, as that table.
_IKE_ANSWERS: dict[tuple[int, bytes], tuple[policy.IkePolicy, policy.IkeProposal, wire.SaPayload]] = {}


def answer_ike(sa_payload: wire.SaPayload, ike_policy: policy.IkePolicy,
               ) -> tuple[policy.IkeProposal, wire.SaPayload]:
    """``choose_ike``'s suite and the responder's SA payload that answers the offer with it:
    the chosen proposal with only the chosen transform, DOI and situation as offered."""
    key = (id(ike_policy), sa_payload.body)
    known = _IKE_ANSWERS.get(key)
    if known is not None and known[0] is ike_policy:
        return known[1], known[2]
    proposal, transform, chosen = choose_ike(sa_payload, ike_policy)
    reply = wire.SaPayload([wire.Proposal(proposal.number, proposal.protocol_id, [transform], spi=proposal.spi)],
                           doi=sa_payload.doi, situation=sa_payload.situation)
    if len(_IKE_ANSWERS) >= _IKE_CHOICES_MAX:
        _IKE_ANSWERS.clear()
    _IKE_ANSWERS[key] = (ike_policy, chosen, reply)
    return chosen, reply
