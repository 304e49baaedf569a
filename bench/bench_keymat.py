"""Benchmark: the whole IKEv1 key schedule of one handshake against the Diffie-Hellman
work of one side of a group-14 handshake, both measured in this run.

ikecore side, one Main Mode + one Quick Mode, PSK, AES-256-CBC / SHA-1 (the appendix B
expansion path): SKEYID family, encryption key, phase 1 and phase 2 IVs, HASH_I and
HASH_R, Quick Mode HASH(1), HASH(2), HASH(3) and two KEYMATs. A second line adds the
payload crypto of that handshake (CryptoState set-up, MM5/MM6 and QM1-QM3 encrypted
and decrypted).

Anchor: `cryptography` DH group 14, one side = generate a key pair, export the public
value, load the peer's value, compute the shared secret. (The lead switches this to
ikecore.dh on merge.)

Output lines: `name  ikecore  anchor  ratio`, times in microseconds per operation,
ratio = anchor time / ikecore time (how many key schedules fit in one DH side); the
target "key schedule <= 5% of DH" is ratio >= 20.

Run: .venv/bin/python bench/bench_keymat.py
"""

from __future__ import annotations

import hmac
import os
import statistics
import time
import warnings
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import dh
from cryptography.hazmat.primitives.ciphers import Cipher as OsslCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes

from ikecore import keymat as km

# RFC 3526 section 3, 2048-bit MODP group (IKE group 14), generator 2.
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
    ,
    16,
)


# cryptography deprecates finite-field DH; it is still the anchor.
warnings.filterwarnings("ignore", message=".*Diffie-Hellman over finite fields.*")

GROUP14 = dh.DHParameterNumbers(MODP_2048, 2).parameters()
PEER = GROUP14.generate_private_key().public_key().public_numbers().y


def dh_one_side() -> bytes:
    """Key pair, export g^x, load the peer's g^y, compute g^xy (padded)."""
    private = GROUP14.generate_private_key()
    private.public_key().public_numbers().y.to_bytes(256, "big")
    peer = dh.DHPublicNumbers(PEER, GROUP14.parameter_numbers()).public_key()
    return private.exchange(peer).rjust(256, b"\0")


G_XI, G_XR, G_XY = os.urandom(256), os.urandom(256), os.urandom(256)
NI, NR, CKY_I, CKY_R = os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(8)
PSK = b"a pre-shared key of moderate length"
SAI_B = os.urandom(52)
IDII_B, IDIR_B = bytes.fromhex("01000000c0000201"), bytes.fromhex("01000000c0000202")
QM_MID = 0x1A2B3C4D
QM1_AFTER, QM2_AFTER = os.urandom(180), os.urandom(180)
QM_NI, QM_NR = os.urandom(32), os.urandom(32)
SPI_IN, SPI_OUT = os.urandom(4), os.urandom(4)
HASH = "sha1"


def key_schedule() -> tuple[bytes, ...]:
    """Every derivation one side of Main Mode + one Quick Mode needs."""
    s = km.derive_skeyid(HASH, NI, NR, G_XY, CKY_I, CKY_R, PSK)
    key = km.encryption_key(HASH, s.skeyid_e, 32)
    iv1 = km.phase1_iv(HASH, G_XI, G_XR, 16)
    hi = km.hash_i(HASH, s.skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDII_B)
    hr = km.hash_r(HASH, s.skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDIR_B)
    iv2 = km.phase2_iv(HASH, iv1, QM_MID, 16)
    h1 = km.qm_hash1(HASH, s.skeyid_a, QM_MID, QM1_AFTER)
    h2 = km.qm_hash2(HASH, s.skeyid_a, QM_MID, QM_NI, QM2_AFTER)
    h3 = km.qm_hash3(HASH, s.skeyid_a, QM_MID, QM_NI, QM_NR)
    k_in = km.keymat(HASH, s.skeyid_d, 3, SPI_IN, QM_NI, QM_NR, 52)
    k_out = km.keymat(HASH, s.skeyid_d, 3, SPI_OUT, QM_NI, QM_NR, 52)
    return key, iv1, hi, hr, iv2, h1, h2, h3, k_in, k_out


MM5 = os.urandom(12 + 24)
QM = os.urandom(220)


def schedule_and_payload_crypto() -> None:
    """The key schedule plus encrypting and decrypting every protected message."""
    key, iv1, hi, *_ = key_schedule()
    mine = km.CryptoState("aes256-cbc", key, HASH, iv1)
    peer = km.CryptoState("aes256-cbc", key, HASH, iv1)
    for sender, receiver, mid, body in (
        (mine, peer, 0, MM5), (peer, mine, 0, MM5),
        (mine, peer, QM_MID, QM), (peer, mine, QM_MID, QM), (mine, peer, QM_MID, QM[:60]),
    ):
        ciphertext = sender.encrypt(mid, body)
        _plain, next_iv = receiver.decrypt(mid, ciphertext)
        receiver.commit(mid, next_iv)


def per_call_us(fn: Callable[[], object], budget: float = 1.5) -> float:
    """Median microseconds per call over several timed batches."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        fn()
        calls += 1
    batch = max(1, calls // 2)
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
        if len(samples) >= 50:
            break
    return statistics.median(samples)


PRF_KEY, PRF_DATA = os.urandom(20), os.urandom(300)
AES_KEY, AES_IV = os.urandom(16), os.urandom(16)
AES_STATE = km.CryptoState("aes128-cbc", AES_KEY, HASH, AES_IV)
MESSAGE = os.urandom(220)


def ossl_message() -> bytes:
    """What a pure-Python stack pays per message: a new cryptography context."""
    enc = OsslCipher(algorithms.AES(AES_KEY), modes.CBC(AES_IV)).encryptor()
    return enc.update(km.pad(MESSAGE, 16)) + enc.finalize()


def main() -> None:
    # Parts first: the Rust prf against Python's hmac (OpenSSL), and one message
    # encrypted through CryptoState against a fresh cryptography CBC context.
    for name, ours_fn, anchor_fn in (
        ("keymat.prf_sha1_300B_us_vs_hmac", lambda: km.prf(HASH, PRF_KEY, PRF_DATA),
         lambda: hmac.digest(PRF_KEY, PRF_DATA, HASH)),
        ("keymat.encrypt_220B_aes128_us_vs_cryptography", lambda: AES_STATE.encrypt(7, MESSAGE), ossl_message),
    ):
        ours, anchor = per_call_us(ours_fn, 0.7), per_call_us(anchor_fn, 0.7)
        print(f"{name:48s} {ours:10.2f} {anchor:10.2f} {anchor / ours:8.1f}")
    dh_us = per_call_us(dh_one_side)
    for name, fn, note in (
        ("keymat.schedule_vs_dh14_one_side_us", key_schedule, "target <= 5%"),
        ("keymat.schedule+payload_crypto_vs_dh14_us", schedule_and_payload_crypto, "for information"),
    ):
        ours = per_call_us(fn)
        print(f"{name:48s} {ours:10.2f} {dh_us:10.2f} {dh_us / ours:8.1f}   (share of DH {ours / dh_us:.1%}, {note})")


if __name__ == "__main__":
    main()
