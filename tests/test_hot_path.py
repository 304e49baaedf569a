"""The per-SA hot path: the Rust prf chains against ``hmac``, and the values remembered per
policy, transform and suite (offers, choices, names, vendor IDs) against what is built anew."""

from __future__ import annotations

import hmac
import random

import pytest

from ikecore import _core, keymat, policy, wire
from ikecore.errors import CryptoError, InvalidPayloadType, NoProposalChosen
from ikecore.protocol import messages, nat_traversal, phase1, quick_mode, vendor_ids
from ikecore.sa import IsakmpSa, Phase1State, Role


def _hmac_keymat(hash_name: str, key: bytes, data: bytes, length: int) -> bytes:
    # RFC 2409 section 5.5: K1 = prf(key, data), Kn = prf(key, Kn-1 | data)
    out = block = hmac.new(key, data, hash_name).digest()
    while len(out) < length:
        block = hmac.new(key, block + data, hash_name).digest()
        out += block
    return out[:length]


@pytest.mark.parametrize("hash_name", keymat.HASHES)
def test_prf_expand_is_the_keymat_chain(hash_name: str) -> None:
    rng = random.Random(hash_name)
    key, data = rng.randbytes(32), rng.randbytes(77)
    for length in (0, 1, 16, 20, 32, 48, 64, 65, 96, 200, 4096):
        assert _core.prf_expand(hash_name, key, data, length) == _hmac_keymat(hash_name, key, data, length)


def test_prf_expand_refuses_unknown_hashes_and_huge_lengths() -> None:
    with pytest.raises(CryptoError):
        _core.prf_expand("sha3-256", b"k", b"s", 16)
    with pytest.raises(CryptoError):
        _core.prf_expand("sha1", b"k", b"s", 4097)
    with pytest.raises(CryptoError):  # keymat says so too (no ESP suite needs 512 bytes)
        keymat.keymat("sha1", b"k" * 20, 3, b"\x00\x00\x01\x00", b"ni", b"nr", 5000)


@pytest.mark.parametrize("hash_name", keymat.HASHES)
def test_skeyid_family_chains_d_a_e(hash_name: str) -> None:
    rng = random.Random(hash_name)
    skeyid, g_xy, cky_i, cky_r = rng.randbytes(32), rng.randbytes(256), rng.randbytes(8), rng.randbytes(8)
    d = hmac.new(skeyid, g_xy + cky_i + cky_r + b"\x00", hash_name).digest()
    a = hmac.new(skeyid, d + g_xy + cky_i + cky_r + b"\x01", hash_name).digest()
    e = hmac.new(skeyid, a + g_xy + cky_i + cky_r + b"\x02", hash_name).digest()
    assert _core.skeyid_family(hash_name, skeyid, g_xy, cky_i, cky_r) == (d, a, e)
    family = keymat.derive_skeyid_family(hash_name, bytearray(skeyid), g_xy, cky_i, cky_r)
    assert (family.skeyid, family.skeyid_d, family.skeyid_a, family.skeyid_e) == (skeyid, d, a, e)
    with pytest.raises(CryptoError):
        _core.skeyid_family("whirlpool", skeyid, g_xy, cky_i, cky_r)


def test_an_offer_is_built_once_per_policy_object() -> None:
    suites = policy.parse_ike_proposals("aes128-sha256-ecp256,3des-sha1-modp2048")
    one, other = policy.IkePolicy("a", suites), policy.IkePolicy("a", suites)
    built = wire.SaPayload([wire.Proposal(1, wire.ProtocolId.ISAKMP, [p.to_transform(i + 1) for i, p in
                                                                      enumerate(suites)])])
    assert one.offer() is one.offer()
    assert one.offer() == built and other.offer() == built and other.offer() is not one.offer()


def test_esp_transforms_are_those_of_each_suite_per_mode() -> None:
    esp = policy.EspPolicy("e", policy.parse_esp_proposals("aes128-sha256,aes256-sha1-modp2048"))
    for mode in (1, 3, 61443):
        got = esp.transforms(mode)
        assert got == [p.to_transform(i + 1, mode) for i, p in enumerate(esp.proposals)]
        got.clear()  # a copy: the remembered list is not the caller's
        assert len(esp.transforms(mode)) == 2


@pytest.mark.parametrize("text", ["aes128-sha256-ecp256", "3des-md5-modp1024", "aes256-sha512-modp2048"])
def test_transforms_read_again_give_the_same_suite(text: str) -> None:
    suite = policy.parse_ike_proposals(text, lifetime=70000)[0]
    transform = suite.to_transform(1)
    first = policy.IkeProposal.from_transform(transform)
    assert first == suite and policy.IkeProposal.from_transform(suite.to_transform(1)) is first
    esp = policy.parse_esp_proposals(text.rsplit("-", 1)[0] + "-modp2048", lifetime_kilobytes=5000)[0]
    read, mode = policy.EspProposal.from_transform(esp.to_transform(2, 4))
    assert (read, mode) == (esp, 4)
    assert policy.EspProposal.from_transform(esp.to_transform(2, 4)) == (read, mode)


def test_an_unusable_transform_is_refused_every_time() -> None:
    bad = wire.Transform(1, 1, [wire.Attribute(wire.OakleyAttribute.ENCRYPTION_ALGORITHM, 7)])
    for _ in range(2):
        with pytest.raises(NoProposalChosen):
            policy.IkeProposal.from_transform(bad)


def test_the_esp_choice_follows_the_policy_object_not_the_transform_alone() -> None:
    offer_suites = policy.parse_esp_proposals("aes256-sha1,aes128-sha256")
    offer = wire.SaPayload([wire.Proposal(1, wire.ProtocolId.IPSEC_ESP,
                                          [p.to_transform(i + 1, 1) for i, p in enumerate(offer_suites)],
                                          spi=b"\x00\x00\x10\x01")])
    wants_second = policy.EspPolicy("b", policy.parse_esp_proposals("aes128-sha256", lifetime=600))
    wants_first = policy.EspPolicy("a", policy.parse_esp_proposals("aes256-sha1,aes128-sha256"))
    for _ in range(2):  # the second round answers from what was remembered
        _p, transform, chosen, mode = policy.choose_esp_transform(offer, wants_second)
        assert (transform.number, chosen.name, chosen.lifetime, mode) == (2, "aes128-sha256", 600, 1)
        _p, transform, chosen, mode = policy.choose_esp_transform(offer, wants_first)
        assert (transform.number, chosen.name, chosen.lifetime) == (1, "aes256-sha1", 3600)
        with pytest.raises(NoProposalChosen):
            policy.choose_esp_transform(offer, policy.EspPolicy("c", policy.parse_esp_proposals("3des-md5")))


def test_suite_names_are_those_of_their_parts() -> None:
    suite = policy.parse_ike_proposals("aes256-sha384-ecp384")[0]
    assert suite.name == suite.name == "aes256-sha384-ecp384"
    assert policy.parse_esp_proposals("3des-sha1-modp1024")[0].name == "3des-sha1-modp1024"
    assert policy.parse_esp_proposals("aes128-md5")[0].name == "aes128-md5"


def test_the_answer_to_an_offer_carries_the_chosen_transform_alone() -> None:
    mine = policy.IkePolicy("p", policy.parse_ike_proposals("aes128-sha256-ecp256"))
    theirs = policy.IkePolicy("t", policy.parse_ike_proposals("3des-sha1-modp2048,aes128-sha256-ecp256"))
    offer = theirs.offer()
    for _ in range(2):
        chosen, answer = phase1.answer_ike(offer, mine)
        assert chosen.name == "aes128-sha256-ecp256"
        (proposal,) = answer.proposals
        assert [t.number for t in proposal.transforms] == [2]
        assert proposal.transforms[0] == offer.proposals[0].transforms[1]
        assert (answer.doi, answer.situation) == (offer.doi, offer.situation)


def _sa(nat: str = "auto", dpd: bool = True) -> IsakmpSa:
    flt = policy.GenericFilter("f", "any", "any", "default", (policy.AuthenticationMethod(secret=b"k"),),
                               nat_traversal=nat, dpd=dpd)
    ike = policy.IkePolicy("default", policy.parse_ike_proposals("aes128-sha256-ecp256"))
    esp = policy.EspPolicy("default", policy.parse_esp_proposals("aes128-sha256"))
    sa = IsakmpSa(1, Role.RESPONDER, Phase1State.R_EXPECT_MM3, b"I" * 8, b"R" * 8, ("192.0.2.1", 500),
                  ("198.51.100.7", 4501), flt, ike, esp, 0.0)
    sa.chosen = ike.proposals[0]
    return sa


@pytest.mark.parametrize(("nat", "dpd"), [("auto", True), ("off", True), ("auto", False), ("off", False)])
def test_vendor_ids_sent_are_those_of_the_filter(nat: str, dpd: bool) -> None:
    sa = _sa(nat, dpd)
    expected = [] if nat == "off" else [v.vendor_id for v in nat_traversal.VARIANTS]
    expected += [wire.VID_DPD] if dpd else []
    for _ in range(2):
        assert [p.data for p in vendor_ids.initiator_vendor_ids(sa)] == expected
    sa.nat_t = nat_traversal.DRAFT_03 if nat != "off" else None
    answered = ([nat_traversal.DRAFT_03.vendor_id] if nat != "off" else []) + ([wire.VID_DPD] if dpd else [])
    assert [p.data for p in vendor_ids.responder_vendor_ids(sa)] == answered


def test_nat_detection_with_hashes_given_is_detection_without() -> None:
    sa = _sa()
    peer = keymat.nat_d("sha256", sa.initiator_cookie, sa.responder_cookie, *sa.remote)
    mine = keymat.nat_d("sha256", sa.initiator_cookie, sa.responder_cookie, *sa.local)
    assert nat_traversal.endpoint_hashes(sa) == (peer, mine)
    variant = nat_traversal.RFC3947
    for sent, state in (([mine, peer], "none"), ([b"x" * 32, peer], "local"), ([mine, b"y" * 32], "remote"),
                        ([b"x" * 32, b"y" * 32], "both")):
        payloads: list[wire.Payload] = [wire.NatDPayload(h, payload_type=variant.nat_d) for h in sent]
        assert nat_traversal.detect(sa, variant, payloads) == state
        assert nat_traversal.detect(sa, variant, payloads, (peer, mine)) == state
    ours = nat_traversal.nat_d_payloads(sa, variant, hashes=(peer, mine))
    assert [p.data for p in ours] == [p.data for p in nat_traversal.nat_d_payloads(sa, variant)] == [peer, mine]


def test_required_and_leading_hash_take_the_first_of_each_type() -> None:
    first, second = wire.NoncePayload(b"n" * 16), wire.NoncePayload(b"m" * 16)
    chain = [wire.HashPayload(b"h" * 32), first, wire.KePayload(b"k" * 64), second]
    found = messages.required(chain, wire.PayloadType.NONCE, wire.PayloadType.KE)
    assert found[wire.PayloadType.NONCE] is first and found[wire.PayloadType.HASH] is chain[0]
    assert messages.leading_hash(chain) == (b"h" * 32, b"".join(p.raw for p in chain[1:]))
    with pytest.raises(InvalidPayloadType):
        messages.required(chain, wire.PayloadType.ID)


def test_client_id_text_is_that_of_the_selector() -> None:
    for payload in (wire.IdPayload(1, bytes([10, 1, 2, 3])), wire.IdPayload(1, bytes([10, 1, 2, 3]), protocol_id=17,
                                                                           port=500),
                    wire.IdPayload(4, bytes([10, 0, 0, 0, 255, 0, 0, 0])), wire.IdPayload(5, bytes(15) + b"\x01")):
        selector = policy.TrafficSelector.from_id(payload)
        assert quick_mode._id_text(payload) == str(selector)
        assert quick_mode._selector_network(payload) == (selector.network, str(selector))
    with pytest.raises(ValueError):  # what from_id refuses is refused alike
        quick_mode._selector_network(wire.IdPayload(2, b"host.example"))
    for network in ("10.1.2.3/32", "10.0.0.0/8", "::1/128"):
        assert quick_mode._network_id(network) == policy.TrafficSelector(network).to_id()
