"""Regenerate charon_ikev1_exchanges.json: real IKEv1 exchanges between two strongSwan
charons on loopback, captured with tshark, with the keys the initiator logs.

Developer tool, not run by the tests (they only read the JSON). Needs root, charon,
swanctl and tshark, and the interop harness (``strongswan-peer.sh``):

    python tests/vectors/make_charon_vectors.py --interop ../shared/interop \
        > tests/vectors/charon_ikev1_exchanges.json

Each exchange: charon initiator 127.0.0.2:500 -> charon responder 127.0.0.1:PORT, PSK,
``--log-keys`` (ike and chd log level 4), Main Mode then Quick Mode. The kernel here
refuses ESP SAs, so the initiator ends with an informational NO_PROPOSAL_CHOSEN and a
Delete: ten datagrams in all.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

PSK = "keymat-secret"
RUNS = [  # (IKE proposal, ESP proposal, responder port)
    ("aes128-sha1-modp2048", "aes128-sha1", 15560),
    ("3des-sha1-modp1024", "aes256-sha256-modp1024", 15570),
    ("aes256-sha256-modp2048", "3des-sha1", 15580),
]


def start(peer: Path, *args: str) -> dict[str, str]:
    """Start one charon; returns the KEY=VALUE lines it prints (PID, DIR, LOG, ...)."""
    out = subprocess.run([str(peer), "start", *args], capture_output=True, text=True, check=True, timeout=60)
    return dict(shlex.split(line)[0].split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def log_values(path: Path) -> list[list[str]]:
    """Every "<label> => N bytes" hex dump of a charon log, in order, as [label, hex]."""
    values: list[list[str]] = []
    current: list[str] | None = None
    want = 0
    for line in path.read_text().splitlines():
        m = re.search(r"> (.+?) => (\d+) bytes @", line)
        if m:
            current, want = [m.group(1), ""], int(m.group(2))
            values.append(current)
            continue
        if current is not None:
            m = re.search(r">\s+\d+: ((?:[0-9A-F]{2} ?)+)", line)
            if not m:
                current = None
                continue
            current[1] += m.group(1).replace(" ", "").lower()
            if len(current[1]) >= 2 * want:
                current = None
    return values


def run(peer: Path, ike: str, esp: str, port: int, work: Path) -> dict[str, object]:
    pcap = work / f"{port}.pcap"
    capture = subprocess.Popen(["tshark", "-q", "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    common = ["--psk", PSK, "--ike", ike, "--esp", esp, "--log-keys"]
    responder = start(peer, "--addr", "127.0.0.1", "--port", str(port), "--natt-port", str(port + 1), *common)
    initiator = start(peer, "--addr", "127.0.0.2", "--port", "500", "--natt-port", str(port + 3),
                      "--remote", "127.0.0.1", "--remote-port", str(port), *common)
    try:
        subprocess.run([str(peer), "initiate", initiator["DIR"], "--timeout", "20"], capture_output=True, timeout=60)
        time.sleep(1)
        log = log_values(Path(initiator["LOG"]))
    finally:
        for instance in (initiator, responder):
            subprocess.run([str(peer), "stop", instance["DIR"]], capture_output=True, timeout=60)
        time.sleep(1)
        capture.terminate()
        capture.wait(timeout=10)
    rows = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "udp.srcport",
                           "-e", "udp.payload"], capture_output=True, text=True, check=True).stdout
    datagrams = [{"source": s, "port": int(p), "data": d}
                 for s, p, d in (row.split("\t") for row in rows.splitlines() if row.strip())]
    return {"ike": ike, "esp": esp, "psk": PSK.encode().hex(), "initiator": "127.0.0.2",
            "datagrams": datagrams, "initiator_log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interop", type=Path, required=True, help="folder of strongswan-peer.sh")
    args = parser.parse_args()
    peer = args.interop.resolve() / "strongswan-peer.sh"
    with tempfile.TemporaryDirectory() as work:
        exchanges = [run(peer, ike, esp, port, Path(work)) for ike, esp, port in RUNS]
    print(json.dumps({
        "source": "strongSwan 5.9.8 charon (Debian 12) initiator 127.0.0.2:500 -> charon responder "
                  "127.0.0.1 on loopback, PSK 'keymat-secret', Main Mode + Quick Mode (the kernel "
                  "refuses the SAs, so the initiator ends with an informational NO_PROPOSAL_CHOSEN "
                  "and a Delete); datagrams captured with tshark, values logged by the initiator at "
                  "ike/chd level 4 (shared/interop strongswan-peer.sh --log-keys), in log order",
        "exchanges": exchanges}, indent=1))


if __name__ == "__main__":
    main()
