"""Regenerate tests/vectors/captures/ from real strongSwan / ike-scan exchanges.

    sudo python3 -m tests.interop.make_captures [--out DIR] [NAME ...]

Not run by the test suite (the captures are committed); needs root, charon (the
fake-kernel build for Quick Mode), ike-scan and tshark. Every exchange runs on
loopback between distinct addresses (initiator 127.0.0.2, responder 127.0.0.1)
so tshark can decrypt it. "port500" captures put the responder on UDP 500 (plain
ISAKMP, no non-ESP marker; the port must be free); the others use high ports on
both sides, so charon frames every message with the 4-byte non-ESP marker.

Per capture NAME it writes:
  NAME.pcapng        the raw capture (tshark on lo)
  NAME.tshark.json   tshark -T json, decrypted with NAME.keys where there are keys
  NAME.keys          ICOOKIE,KEY lines (Wireshark ikev1_decryption_table)
  NAME.meta.json     what ran: addresses, ports, PSK, proposals, the SAs as both
                     charons listed them (cookies, SPIs, algorithms), tool versions,
                     and every key-material hex dump of both charon logs (ike=4):
                     g^xy, SKEYID*, Ka, IVs, HASH_I/HASH_R inputs and outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import ikescan, tshark
from .charon import Charon, log_dumps

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = ROOT / "tests" / "vectors" / "captures"
PSK = "ikecore-interop-psk"
R_ADDR, I_ADDR = "127.0.0.1", "127.0.0.2"
HIGH_R, HIGH_I = 15500, 15600


def _charon_banner(charon: Charon) -> str:
    """charon's start line, e.g. "Starting IKE charon daemon (strongSwan 5.9.8, ...)"."""
    for line in charon.log_text().splitlines():
        if "Starting IKE charon daemon" in line:
            return line.split("] ", 1)[-1].strip()
    return ""


class Scenario:
    def __init__(self, name: str, what: str, run: Callable[[Scenario], None], *,
                 port500: bool) -> None:
        self.name = name
        self.what = what
        self.run = run
        self.port500 = port500
        self.keys: list[str] = []
        self.meta: dict[str, Any] = {}

    @property
    def r_port(self) -> int:
        return 500 if self.port500 else HIGH_R

    @property
    def r_natt(self) -> int:
        return 4500 if self.port500 else HIGH_R + 1

    @property
    def udpencap_ports(self) -> tuple[int, ...]:
        # With port 500 on one side tshark's default (isakmp on 500) is right.
        return () if self.port500 else (HIGH_R, HIGH_I)

    @property
    def capture_ports(self) -> list[int]:
        return [self.r_port, self.r_natt, HIGH_I, HIGH_I + 1]


def _pair(sc: Scenario, *, i_extra: dict[str, Any] | None = None,
          **kw: Any) -> tuple[Charon, Charon]:
    r = Charon.start(addr=R_ADDR, port=sc.r_port, natt_port=sc.r_natt, psk=PSK,
                     log_keys=True, **kw)
    try:
        i = Charon.start(addr=I_ADDR, port=HIGH_I, natt_port=HIGH_I + 1, psk=PSK,
                         remote=R_ADDR, remote_port=sc.r_port, log_keys=True,
                         **kw, **(i_extra or {}))
    except BaseException:
        r.stop()
        raise
    return r, i


def _record(sc: Scenario, r: Charon, i: Charon, **conf: Any) -> None:
    """Keys and SA lists while the SAs exist; merged into sc.meta."""
    sc.keys = sorted(set(i.keys()) | set(r.keys()))
    sc.meta.setdefault("charon_config", conf)
    sc.meta["initiator_sas"] = i.list_sas()
    sc.meta["responder_sas"] = r.list_sas()


def _finish(sc: Scenario, r: Charon, i: Charon) -> None:
    sc.meta["charon"] = _charon_banner(r) + f" [kernel={r.kernel}]"
    sc.meta["initiator_log_dumps"] = log_dumps(i.log_text())
    sc.meta["responder_log_dumps"] = log_dumps(r.log_text())


def _mm_qm(ike: str, esp: str, *, aggressive: bool = False,
           after: Callable[[Scenario, Charon, Charon], None] | None = None,
           dpd: int | None = None) -> Callable[[Scenario], None]:
    def run(sc: Scenario) -> None:
        conf: dict[str, Any] = {"ike": ike, "esp": esp, "aggressive": aggressive}
        r, i = _pair(sc, ike=ike, esp=esp, aggressive=aggressive,
                     i_extra={"dpd_delay": dpd} if dpd else None)
        try:
            with tshark.capture("lo", sc.capture_ports, path=sc.meta["_pcap_target"]):
                res = i.initiate(timeout=20)
                sc.meta["initiate_stdout_tail"] = res.stdout.splitlines()[-3:]
                if res.returncode != 0:
                    raise RuntimeError(f"{sc.name}: initiate failed:\n{res.stdout}\n{res.stderr}")
                i.wait_for(lambda: any(c.get("state") == "INSTALLED" for sa in r.list_sas()
                                       for c in sa["child-sas"]), 10)
                _record(sc, r, i, **conf)
                if after is not None:
                    after(sc, r, i)
            _finish(sc, r, i)
        finally:
            i.stop()
            r.stop()
    return run


def _delete_child_then_ike(sc: Scenario, r: Charon, i: Charon) -> None:
    out = i.terminate(child=True)
    if out.returncode != 0:
        raise RuntimeError(f"terminate child failed: {out.stdout}{out.stderr}")
    r.wait_for(lambda: all(not sa["child-sas"] for sa in r.list_sas()), 10)
    out = i.terminate(ike=True)
    if out.returncode != 0:
        raise RuntimeError(f"terminate ike failed: {out.stdout}{out.stderr}")
    r.wait_for(lambda: not r.list_sas(), 10)
    sc.meta["after_delete"] = {"initiator_sas": i.list_sas(), "responder_sas": r.list_sas()}


def _rekey_child(sc: Scenario, r: Charon, i: Charon) -> None:
    out = i.rekey(child=True)
    if out.returncode != 0:
        raise RuntimeError(f"rekey failed: {out.stdout}{out.stderr}")
    # the old CHILD_SA stays REKEYED (no Delete: it would go on expiry, which the
    # fake kernel never signals); the new one is INSTALLED on both sides
    r.wait_for(lambda: [c["spi-in"] for sa in r.list_sas() for c in sa["child-sas"]
                        if c["state"] == "INSTALLED"] == ["02000000"], 10)
    time.sleep(0.3)
    sc.meta["after_rekey"] = {"initiator_sas": i.list_sas(), "responder_sas": r.list_sas()}


def _wait_dpd(sc: Scenario, r: Charon, i: Charon) -> None:
    # charon (dpd_delay = 2 s on the initiator) sends R-U-THERE when it saw no
    # inbound traffic for the delay; the responder answers R-U-THERE-ACK.
    r.wait_for(lambda: "N(DPD_ACK)" in r.log_text(), 15)
    time.sleep(0.3)


def _ikescan(trans: tuple[str, ...], *, aggressive: bool = False, expect: str,
             ike: str = "aes128-sha256-modp2048") -> Callable[[Scenario], None]:
    def run(sc: Scenario) -> None:
        r = Charon.start(addr=R_ADDR, port=sc.r_port, natt_port=sc.r_natt, psk=PSK,
                         ike=ike, aggressive=aggressive, log_keys=True)
        try:
            with tshark.capture("lo", [sc.r_port, sc.r_natt], path=sc.meta["_pcap_target"]):
                # ike-scan's KE is random bytes; charon rejects about half of them
                # (INVALID-KEY-INFORMATION): retry a bounded number of times.
                for _attempt in range(8):
                    result = ikescan.scan(R_ADDR, sc.r_port, trans=trans, aggressive=aggressive,
                                          ident="scanner.ikecore.test",
                                          dhgroup=14 if aggressive else None)
                    if result.status == expect or not aggressive:
                        break
            sc.meta["charon_config"] = {"ike": ike, "aggressive": aggressive}
            sc.meta["ike_scan"] = {"status": result.status, "sa": result.sa,
                                   "notify_type": result.notify_type,
                                   "notify_name": result.notify_name,
                                   "responder_cookie": result.responder_cookie,
                                   "vendor_ids": result.vendor_ids,
                                   "trans": list(trans),
                                   "output": result.text.splitlines()}
            if result.status != expect:
                raise RuntimeError(f"{sc.name}: ike-scan said {result.status}, wanted {expect}:"
                                   f"\n{result.text}")
            sc.meta["responder_sas"] = r.list_sas()
            sc.meta["charon"] = _charon_banner(r) + f" [kernel={r.kernel}]"
        finally:
            r.stop()
    return run


AES128_SHA256_G14 = "(1=7,14=128,2=4,3=1,4=14)"

SCENARIOS = [
    Scenario("mm_qm_aes128_sha256_modp2048_port500",
             "Main Mode + Quick Mode, IKE aes128-sha256-modp2048, ESP aes128-sha256 "
             "(fake kernel), responder on UDP 500 (plain ISAKMP)",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256"), port500=True),
    Scenario("mm_qm_aes128_sha256_modp2048_highports",
             "as above on ports 15600 -> 15500: every message after the 4-byte non-ESP marker",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256"), port500=False),
    Scenario("mm_qm_3des_sha1_modp1024_pfs",
             "Main Mode + Quick Mode with PFS (KE in QM), IKE 3des-sha1-modp1024, "
             "ESP 3des-sha1-modp1024, port 500",
             _mm_qm("3des-sha1-modp1024", "3des-sha1-modp1024"), port500=True),
    Scenario("mm_qm_aes256_sha384_ecp384",
             "Main Mode + Quick Mode, IKE aes256-sha384-ecp384, ESP aes256-sha384, port 500",
             _mm_qm("aes256-sha384-ecp384", "aes256-sha384"), port500=True),
    Scenario("mm_qm_aes128_sha256_ecp256",
             "Main Mode + Quick Mode, IKE aes128-sha256-ecp256, ESP aes128-sha256, port 500",
             _mm_qm("aes128-sha256-ecp256", "aes128-sha256"), port500=True),
    Scenario("am_qm_aes128_sha256_modp2048_psk",
             "Aggressive Mode PSK + Quick Mode, aes128-sha256-modp2048 / aes128-sha256, port 500",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256", aggressive=True), port500=True),
    Scenario("informational_delete",
             "Main Mode + Quick Mode, then the initiator deletes the ESP SA (Informational "
             "Delete, protocol ESP) and the ISAKMP SA (Delete, protocol ISAKMP), port 500",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256", after=_delete_child_then_ike),
             port500=True),
    Scenario("informational_dpd",
             "Main Mode + Quick Mode, then DPD (RFC 3706): R-U-THERE / R-U-THERE-ACK "
             "Informational Notifies (initiator dpd_delay 2 s), port 500",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256", after=_wait_dpd, dpd=2),
             port500=True),
    Scenario("qm_rekey",
             "Main Mode + Quick Mode, then a second Quick Mode rekeying the CHILD_SA "
             "(new SPIs 02000000) on the same ISAKMP SA, port 500",
             _mm_qm("aes128-sha256-modp2048", "aes128-sha256", after=_rekey_child),
             port500=True),
    Scenario("ikescan_main_mode",
             "ike-scan Main Mode probe (AES-128/SHA2-256/group 14/PSK) against a charon "
             "responder: MM1 and MM2 (Main Mode Handshake returned), port 500",
             _ikescan((AES128_SHA256_G14,), expect="main"), port500=True),
    Scenario("ikescan_main_mode_natt",
             "ike-scan --nat-t Main Mode probe against charon on 15500 (non-ESP marker)",
             _ikescan((AES128_SHA256_G14,), expect="main"), port500=False),
    Scenario("ikescan_aggressive_mode",
             "ike-scan Aggressive Mode probe (ID scanner.ikecore.test, group 14) against a "
             "charon responder that allows Aggressive Mode PSK: AM1 and AM2, port 500; ike-scan's "
             "KE is random bytes, so earlier probes may be answered INVALID-KEY-INFORMATION",
             _ikescan((AES128_SHA256_G14,), aggressive=True, expect="aggressive"),
             port500=True),
    Scenario("ikescan_no_proposal_chosen",
             "ike-scan Main Mode probe with ike-scan's default transforms (DES/3DES, MD5/SHA1, "
             "groups 1/2) against a responder offering none of them: Notify NO-PROPOSAL-CHOSEN (14)",
             _ikescan((), expect="notify"), port500=True),
]


def generate(sc: Scenario, out: Path) -> None:
    pcap = out / f"{sc.name}.pcapng"
    sc.meta = {"name": sc.name, "what": sc.what, "_pcap_target": str(pcap),
               "initiator": f"{I_ADDR}:{HIGH_I}", "responder": f"{R_ADDR}:{sc.r_port}",
               "psk": PSK, "udpencap_ports": list(sc.udpencap_ports)}
    sc.keys = []
    sc.run(sc)
    del sc.meta["_pcap_target"]
    sc.meta["tools"] = {"strongswan": sc.meta.pop("charon", ""), "tshark": tshark.version(),
                        "ike-scan": ikescan.version()}
    packets = tshark.dissect(pcap, udpencap_ports=sc.udpencap_ports, keylog_lines=sc.keys)
    if not packets:
        raise RuntimeError(f"{sc.name}: capture is empty")
    (out / f"{sc.name}.tshark.json").write_text(json.dumps(packets, indent=1) + "\n")
    (out / f"{sc.name}.keys").write_text("".join(k + "\n" for k in sc.keys))
    (out / f"{sc.name}.meta.json").write_text(json.dumps(sc.meta, indent=1, sort_keys=True) + "\n")
    print(f"{sc.name}: {len(packets)} packets, {len(sc.keys)} key line(s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SCENARIOS if not args.names or s.name in args.names]
    failed = 0
    for sc in chosen:
        try:
            generate(sc, args.out)
        except Exception as exc:  # report and go on with the others
            failed += 1
            print(f"{sc.name}: FAILED: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
