"""Benchmark: Main Mode + Quick Mode with RSA signatures (X.509, 2048-bit keys) against the
same handshake with a pre-shared key, and ikecore's proof/verification of one side against
the bare RSA sign + verify that it wraps -- all measured in this run.

* ``handshake_rsa_vs_psk``: two in-memory engines (tests/helpers.Link, fake clock) doing
  MM + QM, aes128-sha256-modp2048; rates per second for both ends together. Anchor: the
  PSK handshake. ratio = RSA rate / PSK rate (the price of certificates).
* ``proof_and_verify_vs_raw_rsa``: ``auth.proof_payloads`` + ``auth.verify_proof`` (CERT and
  SIG payloads, chain validation against the CA, ID match, signature check). Anchor: a bare
  ``cryptography`` PKCS#1 v1.5 sign + verify of the same 32 bytes. ratio = ikecore rate /
  anchor rate.

Bounded: a fixed number of iterations (about 5 s in all on one core).
Run: .venv/bin/python bench/bench_auth.py
"""

from __future__ import annotations

import datetime
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import Link, make_config  # noqa: E402
from pki import issue, make_ca  # noqa: E402
from test_auth import cert_config  # noqa: E402

from ikecore import wire  # noqa: E402
from ikecore.protocol import auth  # noqa: E402


def rate(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        run()
    return count / (time.perf_counter() - start)


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="ikecore-bench-auth."))
    ca = make_ca()
    initiator, responder = issue(ca, "initiator.test"), issue(ca, "responder.test")
    rsa_i = cert_config(directory, initiator, "i", [ca])
    rsa_r = cert_config(directory, responder, "r", [ca])
    psk = make_config()
    seed = [0]

    def handshake(a: object, b: object) -> Callable[[], object]:
        def run() -> object:
            seed[0] += 1
            link = Link(a, b, seed=seed[0])  # type: ignore[arg-type]
            link.connect()
            assert link.initiator.sas()[0].ipsec_sas
            return link
        return run

    rows = []
    rsa_rate = rate(handshake(rsa_i, rsa_r), 40)
    psk_rate = rate(handshake(psk, psk), 40)
    rows.append(("handshake_rsa_vs_psk", rsa_rate, psk_rate, rsa_rate / psk_rate))

    credentials = rsa_i.filters[0].credentials
    peer_id = wire.IdPayload(int(wire.IdType.DER_ASN1_DN), credentials.subject_der)
    digest = bytes(range(32))
    when = datetime.datetime.now(datetime.timezone.utc)

    def ours() -> object:
        return auth.verify_proof(credentials, auth.proof_payloads(credentials, digest), peer_id, digest, when)

    key = initiator.key
    public = initiator.certificate.public_key()

    def raw() -> None:
        signature = key.sign(digest, padding.PKCS1v15(), NoDigestInfo())
        public.verify(signature, digest, padding.PKCS1v15(), NoDigestInfo())  # type: ignore[union-attr,call-arg,arg-type]

    ours_rate, raw_rate = rate(ours, 300), rate(raw, 300)
    rows.append(("proof_and_verify_vs_raw_rsa", ours_rate, raw_rate, ours_rate / raw_rate))
    print(f"{'name':32} {'ikecore':>10} {'anchor':>10} {'ratio':>6}")
    for name, mine, anchor, ratio in rows:
        print(f"{name:32} {mine:10,.0f} {anchor:10,.0f} {ratio:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
