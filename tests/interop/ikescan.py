"""Run ike-scan (1.9.x) against one address and parse what came back.

ike-scan sends a Main Mode (or, with ``aggressive=True``, Aggressive Mode)
first message and prints the responder's answer: a handshake (its chosen SA
transform, vendor IDs, ...) or a Notify. When neither side uses UDP port 500,
charon (like any RFC 3947 peer) frames ISAKMP with the 4-byte non-ESP marker
(RFC 3948 section 2.2); ``nat_t`` (default: automatic) makes ike-scan add and
strip it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["IkeScanResult", "available", "scan", "parse_output", "version"]


def available() -> str | None:
    """None when ike-scan is usable; otherwise the reason."""
    if shutil.which("ike-scan") is None:
        return "ike-scan not installed"
    return None


def version() -> str:
    out = subprocess.run(["ike-scan", "--version"], capture_output=True, text=True,
                         check=False, timeout=30, stdin=subprocess.DEVNULL)
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else ""


@dataclass(frozen=True)
class IkeScanResult:
    """One host's answer as ike-scan printed it.

    ``status``: ``"main"`` (Main Mode Handshake returned), ``"aggressive"``
    (Aggressive Mode Handshake returned), ``"notify"`` or ``"none"`` (no answer).
    ``sa``: the ``SA=(...)`` fields, e.g. ``{"Enc": "AES", "KeyLength": "128",
    "Hash": "SHA2-256", "Group": "14:modp2048", "Auth": "PSK", "LifeType":
    "Seconds", "LifeDuration": "28800"}``. ``vendor_ids``: (hex, name or "").
    """

    host: str
    status: str
    text: str
    responder_cookie: str | None = None
    notify_type: int | None = None
    notify_name: str | None = None
    sa: dict[str, str] = field(default_factory=dict)
    vendor_ids: list[tuple[str, str]] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)

    @property
    def handshake(self) -> bool:
        return self.status in ("main", "aggressive")


_STATUS = re.compile(r"^(\S+)\t(Main Mode Handshake returned|Aggressive Mode Handshake returned"
                     r"|Notify message (\d+) \(([^)]*)\))(.*)$")
_SA = re.compile(r"SA=\(([^)]*)\)")
_CKY = re.compile(r"CKY-R=([0-9a-f]{16})")
_VID = re.compile(r"VID=([0-9a-f]+)(?: \(([^)]*)\))?")


def parse_output(text: str, host: str) -> IkeScanResult:
    """Parse ike-scan's output (``-M`` multi-line or single-line) for ``host``."""
    lines = text.splitlines()
    block: list[str] = []
    status = "none"
    notify_type = notify_name = None
    for i, line in enumerate(lines):
        m = _STATUS.match(line)
        if m is None or m.group(1) != host:
            continue
        what = m.group(2)
        if what.startswith("Main"):
            status = "main"
        elif what.startswith("Aggressive"):
            status = "aggressive"
        else:
            status = "notify"
            notify_type = int(m.group(3))
            notify_name = m.group(4)
        block = [m.group(5).strip()]
        for cont in lines[i + 1:]:
            if not cont.startswith("\t"):
                break
            block.append(cont.strip())
        break
    body = " ".join(b for b in block if b)
    sa: dict[str, str] = {}
    sa_match = _SA.search(body)
    if sa_match:
        for item in sa_match.group(1).split():
            key, _, value = item.partition("=")
            sa[key] = value
    cky = _CKY.search(body)
    vids = [(m.group(1), m.group(2) or "") for m in _VID.finditer(body)]
    payloads = [b for b in block if b and not b.startswith(("SA=", "VID=", "HDR="))]
    return IkeScanResult(host=host, status=status, text=text,
                         responder_cookie=cky.group(1) if cky else None,
                         notify_type=notify_type, notify_name=notify_name, sa=sa,
                         vendor_ids=vids, payloads=payloads)


def scan(address: str, port: int = 500, *, sport: int = 0, nat_t: bool | None = None,
         trans: Sequence[str] = (), aggressive: bool = False, ident: str | None = None,
         dhgroup: int | None = None, lifetime: int | None = None, retry: int = 2,
         interval_ms: int | None = None, extra_args: Sequence[str] = (),
         timeout: float = 30.0) -> IkeScanResult:
    """Probe ``address``:``port`` once and parse the answer.

    ``sport``: source port (0 = random; 500 needs the port free). ``nat_t``: add
    the non-ESP marker; default: when neither ``port`` nor ``sport`` is 500.
    ``trans``: custom transforms in ike-scan's ``(1=7,14=128,2=4,3=1,4=14)``
    syntax (default: ike-scan's built-in set). ``aggressive``: Aggressive Mode
    with identity ``ident`` (default ``ikescan``) and KE group ``dhgroup``.

    ike-scan's KE payload is random bytes, not a real public value: a responder
    that checks it (charon with OpenSSL: y^q mod p == 1 for the MODP groups)
    rejects about half of the Aggressive Mode probes with INVALID-KEY-INFORMATION;
    retry such probes.
    """
    if nat_t is None:
        nat_t = port != 500 and sport != 500
    argv = ["ike-scan", "-M"]
    if nat_t:
        # first: --nat-t also resets both ports to 4500, the options below win
        argv.append("--nat-t")
    argv += [f"--sport={int(sport)}", f"--dport={int(port)}", f"--retry={int(retry)}"]
    for t in trans:
        argv.append(f"--trans={t}")
    if aggressive:
        argv += ["--aggressive", f"--id={ident or 'ikescan'}"]
        if dhgroup is not None:
            argv.append(f"--dhgroup={int(dhgroup)}")
    if lifetime is not None:
        argv.append(f"--lifetime={int(lifetime)}")
    if interval_ms is not None:
        argv.append(f"--interval={int(interval_ms)}")
    argv += [*extra_args, address]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0 and "Starting ike-scan" not in out.stdout:
        raise RuntimeError(f"ike-scan failed ({out.returncode}): {out.stderr.strip()}")
    return parse_output(out.stdout, address)
