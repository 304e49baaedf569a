"""tshark capture and ISAKMP dissection (with IKEv1 decryption) for interop tests.

``capture()`` records UDP traffic on an interface (default ``lo``) to a pcapng
file; ``dissect()`` returns tshark's ``-T json`` dissection of it. ISAKMP on a
port other than 500 is framed with the 4-byte non-ESP marker (RFC 3948
section 2.2) when neither side uses port 500, which tshark decodes only when the
port is declared ``udpencap``. IKEv1 decryption uses Wireshark's
``ikev1_decryption_table`` UAT: records ``ICOOKIE,KEY`` (initiator cookie and
Phase 1 encryption key, both hex), as :meth:`Charon.keys` produces them. tshark
tells the two directions apart by IP address only, so give the peers different
addresses (127.0.0.2 -> 127.0.0.1) for decryption to work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["available", "capture", "dissect", "isakmp_layers", "version", "TsharkError"]


class TsharkError(RuntimeError):
    """tshark failed or produced no usable output."""


def available() -> str | None:
    """None when tshark (and capturing on ``lo``) is usable; otherwise the reason."""
    if shutil.which("tshark") is None:
        return "tshark not installed"
    if os.geteuid() != 0:
        return "capturing needs root"
    return None


def version() -> str:
    """First line of ``tshark --version``."""
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True,
                         check=False, timeout=30, stdin=subprocess.DEVNULL)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _port_filter(ports: Sequence[int]) -> str:
    if not ports:
        return "udp"
    return "udp and (" + " or ".join(f"port {int(p)}" for p in ports) + ")"


@contextlib.contextmanager
def capture(interface: str = "lo", ports: Sequence[int] = (), *,
            path: str | os.PathLike[str] | None = None, netns: str | None = None,
            timeout: float = 15.0, settle: float = 0.3, every_frame: bool = False) -> Iterator[Path]:
    """Capture UDP on ``interface`` (only ``ports`` if given) into a pcapng file.

    ``every_frame``: no capture filter (ESP, ICMP, everything on the link).
    Yields the file's path once tshark reports it is capturing; on exit waits
    ``settle`` seconds for the last packets, stops tshark (SIGINT, by PID) and
    waits for the file to be complete. Without ``path`` the file lives in a
    temporary directory removed afterwards (copy it inside the ``with`` block, or
    after it if you pass ``path``).
    """
    tmpdir = None
    if path is None:
        tmpdir = tempfile.mkdtemp(prefix="ikecore-capture.")
        out_path = Path(tmpdir) / "capture.pcapng"
    else:
        out_path = Path(path)
    log_path = out_path.with_name(out_path.name + ".log")
    capture_filter = [] if every_frame else ["-f", _port_filter(ports)]
    argv = ["tshark", "-q", "-n", "-i", interface, *capture_filter, "-w", str(out_path)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise TsharkError("tshark exited: " + log_path.read_text(errors="replace"))
            if b"Capturing on" in log_path.read_bytes():
                break
            if time.monotonic() > deadline:
                raise TsharkError("tshark did not start capturing: "
                                  + log_path.read_text(errors="replace"))
            time.sleep(0.05)
        time.sleep(settle)  # "Capturing on" is printed just before the loop starts
        yield out_path
        time.sleep(settle)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def dissect_args(*, udpencap_ports: Iterable[int] = (),
                 keylog_lines: Iterable[str] = ()) -> list[str]:
    """tshark options: ``-d udp.port==P,udpencap`` per port and the decryption UAT."""
    args: list[str] = []
    for port in udpencap_ports:
        args += ["-d", f"udp.port=={int(port)},udpencap"]
    for line in keylog_lines:
        line = line.strip()
        if not line:
            continue
        cookie, _, key = line.partition(",")
        if len(cookie) != 16 or not key or any(
            c not in "0123456789abcdefABCDEF" for c in cookie + key
        ):
            raise ValueError(f"not an ICOOKIE,KEY record: {line!r}")
        args += ["-o", f"uat:ikev1_decryption_table:{cookie},{key}"]
    return args


def dissect(pcap: str | os.PathLike[str], *, udpencap_ports: Iterable[int] = (),
            keylog_lines: Iterable[str] = (), display_filter: str | None = None,
            timeout: float = 60.0) -> list[dict[str, Any]]:
    """tshark ``-T json`` dissection of ``pcap`` (a list with one dict per packet).

    ``--no-duplicate-keys`` is used: a field that occurs several times in one
    object (for example ``isakmp.typepayload`` for each payload) becomes a list.
    """
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "json", "--no-duplicate-keys",
            *dissect_args(udpencap_ports=udpencap_ports, keylog_lines=keylog_lines)]
    if display_filter:
        argv += ["-Y", display_filter]
    out = subprocess.run(argv, capture_output=True, text=True, check=False,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise TsharkError(f"tshark failed ({out.returncode}): {out.stderr[-2000:]}")
    text = out.stdout.strip()
    if not text:
        return []
    packets = json.loads(text)
    if not isinstance(packets, list):
        raise TsharkError("tshark -T json did not return a list")
    return packets


def isakmp_layers(packet: dict[str, Any]) -> dict[str, Any] | None:
    """The ``isakmp`` layer of one dissected packet, or None."""
    layers = packet.get("_source", {}).get("layers", {})
    isakmp = layers.get("isakmp")
    if isinstance(isakmp, list):  # several ISAKMP PDUs in one frame: take the first
        isakmp = isakmp[0] if isakmp else None
    return isakmp if isinstance(isakmp, dict) else None
