"""Policy: strongSwan-style proposal strings <-> ISAKMP transforms, and the responder's choice."""

from __future__ import annotations

import ipaddress

import pytest

from ikecore import policy, wire
from ikecore.errors import ConfigError, NoProposalChosen


def test_ike_proposal_string_maps_to_rfc2409_attribute_values() -> None:
    (p,) = policy.parse_ike_proposals("aes256-sha384-ecp384")
    t = p.to_transform(1)
    attrs = {a.type: a.int_value for a in t.attributes}
    # RFC 2409 appendix A / RFC 3602 / RFC 4868 / RFC 5903 numbers
    assert attrs[wire.OakleyAttribute.ENCRYPTION_ALGORITHM] == 7
    assert attrs[wire.OakleyAttribute.KEY_LENGTH] == 256
    assert attrs[wire.OakleyAttribute.HASH_ALGORITHM] == 5
    assert attrs[wire.OakleyAttribute.GROUP_DESCRIPTION] == 20
    assert attrs[wire.OakleyAttribute.AUTHENTICATION_METHOD] == 1
    assert attrs[wire.OakleyAttribute.LIFE_DURATION] == 28800
    assert t.transform_id == wire.TRANSFORM_KEY_IKE
    assert policy.IkeProposal.from_transform(t) == p
    assert p.name == "aes256-sha384-ecp384"


def test_long_lifetimes_are_encoded_as_tlv() -> None:
    (p,) = policy.parse_ike_proposals("3des-sha1-modp1024", lifetime=86400)
    duration = [a for a in p.to_transform(1).attributes if a.type == wire.OakleyAttribute.LIFE_DURATION][0]
    assert duration.value == (86400).to_bytes(4, "big")
    assert policy.IkeProposal.from_transform(p.to_transform(1)).lifetime == 86400


def test_esp_proposals_with_and_without_pfs() -> None:
    plain, pfs = policy.parse_esp_proposals("aes128-sha256,3des-sha1-modp2048")
    assert plain.pfs_group is None and pfs.pfs_group == 14
    assert (plain.encryption_key_bytes, plain.integrity_key_bytes) == (16, 32)
    assert (pfs.encryption_key_bytes, pfs.integrity_key_bytes) == (24, 20)
    t = pfs.to_transform(1, wire.EncapsulationMode.TUNNEL)
    assert t.transform_id == wire.EspTransform.TRIPLE_DES
    back, mode = policy.EspProposal.from_transform(t)
    assert back == pfs and mode == wire.EncapsulationMode.TUNNEL


@pytest.mark.parametrize(("text", "needle"), [
    ("aes999-sha256-modp2048", "unknown encryption 'aes999'"),
    ("aes128-sha3-modp2048", "unknown integrity 'sha3'"),
    ("aes128-sha256-modp999", "unknown DH group 'modp999'"),
    ("aes128-sha256", "needs encryption-integrity-group"),
])
def test_bad_proposals_name_the_flag_and_the_fix(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy.parse_ike_proposals(text, field_name="--ike")
    assert str(info.value).startswith("--ike: ") and needle in str(info.value)


def test_choice_follows_the_initiators_order_and_rejects_what_we_lack() -> None:
    ours = policy.IkePolicy("p", policy.parse_ike_proposals("aes256-sha256-ecp256,aes128-sha256-modp2048"))
    theirs = policy.IkePolicy("q", policy.parse_ike_proposals("3des-md5-modp1024,aes128-sha256-modp2048"))
    _prop, transform, chosen = policy.choose_ike_transform(theirs.offer(), ours)
    assert chosen.name == "aes128-sha256-modp2048" and transform.number == 2
    with pytest.raises(NoProposalChosen):
        policy.choose_ike_transform(policy.IkePolicy("r", policy.parse_ike_proposals("des-md5-modp768")).offer(),
                                    ours)


def test_traffic_selectors_round_trip_through_id_payloads() -> None:
    for text in ("10.1.0.0/16", "192.0.2.7/32", "2001:db8::/48", "::1/128"):
        ts = policy.TrafficSelector(text)
        assert str(policy.TrafficSelector.from_id(ts.to_id())) == str(ipaddress.ip_network(text))


def test_generic_filter_matches_mirrored_and_keywords() -> None:
    f = policy.GenericFilter("f", "me", "10.0.0.0/8", "default", (policy.AuthenticationMethod(secret=b"Zebra-Psk-77"),))
    assert f.matches("192.0.2.1", "10.2.3.4")
    assert not f.matches("192.0.2.1", "11.2.3.4")
    assert f.psk() == b"Zebra-Psk-77"
    assert "Zebra-Psk-77" not in repr(f)
