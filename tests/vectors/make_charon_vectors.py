"""Regenerate charon_ikev1_exchanges.json: real IKEv1 exchanges between two strongSwan
charons on loopback, captured with tshark, with the keys the initiator logs.

Developer tool, not run by the tests (they only read the JSON). Needs root, Debian's
charon and swanctl, and tshark; it drives them through the project's own fixtures in
``tests/interop``:

    cd tests && python vectors/make_charon_vectors.py > vectors/charon_ikev1_exchanges.json

Each exchange: charon initiator 127.0.0.2:500 -> charon responder 127.0.0.1:PORT, PSK,
``--log-keys`` (ike and chd log level 4), Main Mode then Quick Mode. The kernel here
refuses ESP SAs, so the initiator ends with an informational NO_PROPOSAL_CHOSEN and a
Delete: ten datagrams in all.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the fixtures
from interop import tshark  # noqa: E402
from interop.charon import Charon  # noqa: E402

PSK = "keymat-secret"
RUNS = [  # (IKE proposal, ESP proposal, responder port)
    ("aes128-sha1-modp2048", "aes128-sha1", 15560),
    ("3des-sha1-modp1024", "aes256-sha256-modp1024", 15570),
    ("aes256-sha256-modp2048", "3des-sha1", 15580),
]


def log_values(text: str) -> list[list[str]]:
    """Every "<label> => N bytes" hex dump of a charon log, in order, as [label, hex]."""
    values: list[list[str]] = []
    current: list[str] | None = None
    want = 0
    for line in text.splitlines():
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


def run(ike: str, esp: str, port: int, work: Path) -> dict[str, object]:
    common: dict[str, Any] = {"psk": PSK, "ike": ike, "esp": esp, "log_keys": True, "kernel": "netlink"}
    with tshark.capture("lo", [port], path=work / f"{port}.pcapng") as pcap:
        with Charon.start(addr="127.0.0.1", port=port, natt_port=port + 1, **common), \
                Charon.start(addr="127.0.0.2", port=500, natt_port=port + 3, remote="127.0.0.1",
                             remote_port=port, **common) as initiator:
            initiator.initiate(timeout=20)
            time.sleep(1)
            log = log_values(initiator.log_text())
    rows = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "udp.srcport",
                           "-e", "udp.payload"], capture_output=True, text=True, check=True).stdout
    datagrams = [{"source": s, "port": int(p), "data": d}
                 for s, p, d in (row.split("\t") for row in rows.splitlines() if row.strip())]
    return {"ike": ike, "esp": esp, "psk": PSK.encode().hex(), "initiator": "127.0.0.2",
            "datagrams": datagrams, "initiator_log": log}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as work:
        exchanges = [run(ike, esp, port, Path(work)) for ike, esp, port in RUNS]
    print(json.dumps({
        "source": "strongSwan 5.9.8 charon (Debian 12) initiator 127.0.0.2:500 -> charon responder "
                  "127.0.0.1 on loopback, PSK 'keymat-secret', Main Mode + Quick Mode (the kernel "
                  "refuses the SAs, so the initiator ends with an informational NO_PROPOSAL_CHOSEN "
                  "and a Delete); datagrams captured with tshark, values logged by the initiator at "
                  "ike/chd level 4 (tests/interop Charon log_keys=True), in log order",
        "exchanges": exchanges}, indent=1))


if __name__ == "__main__":
    main()
