"""ikecore.dh against outside truth: RFC 5903 / RFC 5114 / Wycheproof known answers,
the RFC MODP primes, Python's own pow(), and OpenSSL through pyca/cryptography."""

from __future__ import annotations

import json
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import dh as cdh
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from ikecore import _core, dh
from ikecore.errors import CryptoError, InvalidKeyInformation
from ikecore.gateway.dh_pool import DhPool

pytestmark = pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")

VECTORS = Path(__file__).parent / "vectors"
MODP_FILE = json.loads((VECTORS / "ike_modp_groups.json").read_text())
MODP_PRIMES = {g["ike_group"]: int(g["prime_hex"], 16) for g in MODP_FILE["groups"]}
SAFE_PRIME_GROUPS = sorted(MODP_PRIMES)
ECP_CURVES = {19: ec.SECP256R1(), 20: ec.SECP384R1(), 21: ec.SECP521R1()}
ECP_FIELD = {
    19: 2**256 - 2**224 + 2**192 + 2**96 - 1,
    20: 2**384 - 2**128 - 2**96 + 2**32 - 1,
    21: 2**521 - 1,
}


def _rfc5114_sections() -> dict[str, dict[str, int]]:
    text = (VECTORS / "pyca_RFC5114.txt").read_text()
    out: dict[str, dict[str, int]] = {}
    for block in re.split(r"\n(?=\[)", text):
        header = block.splitlines()[0]
        out[header] = {k: int(v, 16) for k, v in re.findall(r"^(\w+) = ([0-9A-Fa-f]+)$", block, re.M)}
    return out


RFC5114 = _rfc5114_sections()
G24 = next(v for k, v in RFC5114.items() if k.startswith("[A.3."))


def _b(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


def _p(group: int) -> int:
    return MODP_PRIMES[group] if group != 24 else G24["P"]


# --- group table --------------------------------------------------------------


def test_supported_groups_and_names() -> None:
    names = {1: "modp768", 2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072",
             16: "modp4096", 17: "modp6144", 18: "modp8192", 19: "ecp256", 20: "ecp384",
             21: "ecp521", 24: "modp2048s256"}
    assert dh.SUPPORTED_GROUPS == frozenset(names)
    for group, name in names.items():
        assert dh.group_name(group) == name
        assert dh.group_from_name(name) == group
    with pytest.raises(ValueError):
        dh.group_from_name("modp666")


@pytest.mark.parametrize("group", SAFE_PRIME_GROUPS)
def test_modp_primes_match_the_rfc_file(group: int) -> None:
    p, g, q = _core.dh_modp_params(group)
    assert int.from_bytes(p, "big") == MODP_PRIMES[group]
    assert int.from_bytes(g, "big") == 2 and q is None
    assert dh.public_size(group) == dh.secret_size(group) == (MODP_PRIMES[group].bit_length() + 7) // 8


def test_group24_parameters_match_rfc5114() -> None:
    p, g, q = _core.dh_modp_params(24)
    assert q is not None
    assert (int.from_bytes(p, "big"), int.from_bytes(g, "big"), int.from_bytes(q, "big")) == (
        G24["P"], G24["G"], G24["Q"])
    assert G24["Q"].bit_length() == 256 and G24["G"] != 2


def test_sizes_for_ecp() -> None:
    assert [(dh.public_size(g), dh.secret_size(g)) for g in (19, 20, 21)] == [(64, 32), (96, 48), (132, 66)]


@pytest.mark.parametrize("bad", [0, 3, 22, 23, 25, 31, -1, 2**40, 2**100])
def test_unknown_group_is_a_plain_value_error(bad: int) -> None:
    for call in (lambda: dh.keypair(bad), lambda: dh.public_size(bad), lambda: dh.group_name(bad)):
        with pytest.raises(ValueError, match=f"group {bad}") as info:
            call()
        assert not isinstance(info.value, InvalidKeyInformation)


def test_group_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        dh.keypair("14")  # type: ignore[arg-type]


# --- known answers ------------------------------------------------------------


@pytest.mark.parametrize("vec", json.loads((VECTORS / "rfc5903_ecp_ike_vectors.json").read_text())["vectors"],
                         ids=lambda v: str(v["ike_group"]))
def test_rfc5903_vectors(vec: dict[str, Any]) -> None:
    group = int(vec["ike_group"])
    i = dh.keypair(group, private=bytes.fromhex(vec["i"]))
    r = dh.keypair(group, private=bytes.fromhex(vec["r"]))
    assert i.group == group
    assert i.public == bytes.fromhex(vec["ike_ke_payload_data_initiator"])
    assert r.public == bytes.fromhex(vec["ike_ke_payload_data_responder"])
    expected = bytes.fromhex(vec["ike_shared_secret_g_xy"])
    assert i.exchange(r.public) == expected
    assert r.exchange(i.public) == expected


def test_rfc5114_2048_256_vector() -> None:
    v = G24
    cavs = dh.keypair(24, private=_b(v["XstatCAVS"], 32))
    iut = dh.keypair(24, private=_b(v["XstatIUT"], 32))
    assert cavs.public == _b(v["YstatCAVS"], 256)
    assert iut.public == _b(v["YstatIUT"], 256)
    assert cavs.exchange(iut.public) == _b(v["Z"], 256)
    assert iut.exchange(cavs.public) == _b(v["Z"], 256)


WYCHEPROOF = json.loads((VECTORS / "wycheproof_ecdh_secp256r1_ecpoint_subset.json").read_text())


@pytest.mark.parametrize("case", [t for g in WYCHEPROOF["testGroups"] for t in g["tests"]],
                         ids=lambda t: f"tc{t['tcId']}")
def test_wycheproof_p256_ecpoint(case: dict[str, object]) -> None:
    public = bytes.fromhex(str(case["public"]))
    assert public[0] == 4 and len(public) == 65
    kp = dh.keypair(19, private=bytes.fromhex(str(case["private"])))
    if case["result"] == "valid":
        assert kp.exchange(public[1:]) == bytes.fromhex(str(case["shared"]))
    else:
        with pytest.raises(InvalidKeyInformation) as info:
            kp.exchange(public[1:])
        assert info.value.notify_type == 17


@settings(max_examples=40, deadline=None)
@given(x=st.integers(min_value=2, max_value=2**2040))
def test_group14_public_value_equals_python_pow(x: int) -> None:
    # Exponents of up to 256 bits take the fixed-base table, longer ones OpenSSL.
    kp = dh.keypair(14, private=x.to_bytes((x.bit_length() + 7) // 8, "big"))
    assert kp.public == _b(pow(2, x, MODP_PRIMES[14]), 256)


@settings(max_examples=10, deadline=None)
@given(x=st.integers(min_value=2, max_value=2**256 - 1), y=st.integers(min_value=2, max_value=2**256 - 1))
def test_group2_and_group24_match_python_pow(x: int, y: int) -> None:
    p2 = MODP_PRIMES[2]
    a, b = dh.keypair(2, private=_b(x, 32)), _b(pow(2, y, p2), 128)
    assert a.exchange(b) == _b(pow(pow(2, y, p2), x, p2), 128)
    x24 = x % (G24["Q"] - 2) + 2
    k = dh.keypair(24, private=_b(x24, 32))
    assert k.public == _b(pow(G24["G"], x24, G24["P"]), 256)


ECP_ORDER = {
    19: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    20: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16),
    21: int("01FF" + "FFFFFFFF" * 7 + "FFFFFFFA"  # SEC 2 section 2.9.1, n of secp521r1
            "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
}


@settings(max_examples=15, deadline=None)
@given(group=st.sampled_from([19, 20, 21]), seed=st.integers(min_value=1, max_value=2**521))
def test_ecp_public_value_equals_openssl_derivation(group: int, seed: int) -> None:
    d = seed % (ECP_ORDER[group] - 1) + 1
    size = dh.secret_size(group)
    ours = dh.keypair(group, private=_b(d, size))
    theirs = ec.derive_private_key(d, ECP_CURVES[group]).public_key()
    assert ours.public == theirs.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


# --- cross-check with OpenSSL (pyca/cryptography) on random keys ----------------


def _crypto_params(group: int) -> cdh.DHParameterNumbers:
    if group == 24:
        return cdh.DHParameterNumbers(G24["P"], G24["G"], G24["Q"])
    return cdh.DHParameterNumbers(MODP_PRIMES[group], 2)


@pytest.mark.parametrize("group", SAFE_PRIME_GROUPS + [24])
def test_modp_matches_openssl_both_directions(group: int) -> None:
    size = dh.secret_size(group)
    pn = _crypto_params(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = pn.parameters()
        for _ in range(2):
            theirs = params.generate_private_key()
            ours = dh.keypair(group)
            assert len(ours.public) == size
            their_public = _b(theirs.public_key().public_numbers().y, size)
            our_view = ours.exchange(their_public)
            their_view = theirs.exchange(cdh.DHPublicNumbers(int.from_bytes(ours.public, "big"), pn).public_key())
            assert len(our_view) == size
            assert our_view == their_view.rjust(size, b"\0")
            # Independent third opinion: Python's pow with OpenSSL's private value.
            x = theirs.private_numbers().x
            assert our_view == _b(pow(int.from_bytes(ours.public, "big"), x, _p(group)), size)


@pytest.mark.parametrize("group", [19, 20, 21])
def test_ecp_matches_openssl_both_directions(group: int) -> None:
    curve = ECP_CURVES[group]
    for _ in range(3):
        theirs = ec.generate_private_key(curve)
        ours = dh.keypair(group)
        their_public = theirs.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        our_view = ours.exchange(their_public[1:])
        their_view = theirs.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
            curve, b"\x04" + ours.public))
        assert our_view == their_view and len(our_view) == dh.secret_size(group)


# --- invalid peer values, reuse, private values ----------------------------------


@pytest.mark.parametrize("group", SAFE_PRIME_GROUPS + [24])
def test_bad_modp_peer_values_are_rejected(group: int) -> None:
    p, size = _p(group), dh.public_size(group)
    bad = [_b(0, size), _b(1, size), _b(p - 1, size), _b(p, size), _b(p + 1, size), b"\xff" * size,
           _b(2, size + 1), _b(2, size - 1), b"", b"\x00" + _b(2, size)]
    for value in bad:
        with pytest.raises(InvalidKeyInformation) as info:
            dh.keypair(group).exchange(value)
        assert info.value.notify_type == 17


def test_group24_rejects_values_outside_the_subgroup() -> None:
    p, q = G24["P"], G24["Q"]
    outside = [h for h in range(2, 50) if pow(h, q, p) != 1][:5]
    assert outside
    for h in outside:
        with pytest.raises(InvalidKeyInformation, match="subgroup"):
            dh.keypair(24).exchange(_b(h, 256))
    inside = pow(G24["G"], secrets.randbelow(q - 2) + 2, p)
    assert len(dh.keypair(24).exchange(_b(inside, 256))) == 256


@pytest.mark.parametrize("group", [19, 20, 21])
def test_bad_ecp_peer_values_are_rejected(group: int) -> None:
    size = dh.secret_size(group)
    good = dh.keypair(group).public
    x, y = good[:size], good[size:]
    flipped = x + bytes([*y[:-1], y[-1] ^ 1])
    field = _b(ECP_FIELD[group], size)
    bad = [flipped, b"\0" * (2 * size), good[:-1], good + b"\0", b"\x04" + good, field + y, x + field, b""]
    for value in bad:
        with pytest.raises(InvalidKeyInformation):
            dh.keypair(group).exchange(value)


def test_key_pair_is_single_use() -> None:
    a, b = dh.keypair(19), dh.keypair(19)
    assert not a.used
    a.exchange(b.public)
    assert a.used
    with pytest.raises(CryptoError):
        a.exchange(b.public)
    c = dh.keypair(14)
    with pytest.raises(InvalidKeyInformation):
        c.exchange(b"\0" * 256)
    with pytest.raises(CryptoError):  # a failed exchange consumes the pair too
        c.exchange(dh.keypair(14).public)


def test_concurrent_exchanges_on_one_pair_succeed_exactly_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(5):
        kp, peer = dh.keypair(14), dh.keypair(14).public
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(kp.exchange, peer) for _ in range(4)]
        outcomes = [f.exception() for f in futures]
        assert sum(e is None for e in outcomes) == 1
        assert all(isinstance(e, CryptoError) for e in outcomes if e is not None)


@pytest.mark.parametrize(("group", "private"), [
    (14, b""), (14, b"\x01"), (14, b"\x00\x00\x01"), (14, _b(MODP_PRIMES[14] - 1, 256)),
    (14, b"\x01" + b"\0" * 256), (24, _b(G24["Q"], 32)), (19, b"\0" * 32), (19, b"\xff" * 32),
    (21, b"\x01" + b"\0" * 66),
])
def test_out_of_range_private_values_are_refused(group: int, private: bytes) -> None:
    with pytest.raises(ValueError) as info:
        dh.keypair(group, private=private)
    assert not isinstance(info.value, InvalidKeyInformation)


def test_random_key_pairs_differ_and_have_full_length() -> None:
    for group in sorted(dh.SUPPORTED_GROUPS):
        a, b = dh.keypair(group), dh.keypair(group)
        assert a.public != b.public
        assert len(a.public) == dh.public_size(group)


def test_random_exponents_are_neither_tiny_nor_constant() -> None:
    # The private exponent is never exposed; check what the public value shows:
    # 100 group-1 public values are distinct and none is g^x for a small x.
    p = MODP_PRIMES[1]
    small = {pow(2, x, p) for x in range(2, 4096)}
    publics = {int.from_bytes(dh.keypair(1).public, "big") for _ in range(100)}
    assert len(publics) == 100 and not publics & small


# --- pool ---------------------------------------------------------------------


def test_pool_results_match_openssl() -> None:
    pn = _crypto_params(14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = [pn.parameters().generate_private_key() for _ in range(6)]
    peers = [_b(t.public_key().public_numbers().y, 256) for t in theirs]
    with DhPool(2) as pool:
        results = pool.map_one_side(14, peers)
        kp = pool.keypair(19).result()
        other = dh.keypair(19)
        shared = pool.exchange(kp, other.public).result()
        one = pool.one_side(19, other.public).result()
    assert shared == other.exchange(kp.public)
    assert len(one[0]) == 64 and len(one[1]) == 32
    for t, (public, secret) in zip(theirs, results, strict=True):
        assert secret == _b(pow(int.from_bytes(public, "big"), t.private_numbers().x, MODP_PRIMES[14]), 256)


def test_pool_reports_invalid_peers_and_bad_sizes() -> None:
    with DhPool() as pool:
        assert pool.threads >= 1
        with pytest.raises(InvalidKeyInformation):
            pool.one_side(14, b"\0" * 256).result()
        with pytest.raises(InvalidKeyInformation):
            pool.map_one_side(19, [dh.keypair(19).public, b"\0" * 64])
    with pytest.raises(ValueError):
        DhPool(0)
