"""The README's tunnel recipe, run for real: ``ikecore serve`` and ``ikecore connect`` in
the two namespaces of :func:`interop.netns.recipe_pair`.

    in b: ikecore serve --listen 192.0.2.2:500 --psk S --driver userland
                        --local-ts 10.2.0.0/24 --remote-ts 10.1.0.0/24
    in a: ikecore connect 192.0.2.2:500 --local 192.0.2.1 --psk S --driver userland
                          --local-ts 10.1.0.0/24 --remote-ts 10.2.0.0/24 --keep

Each :class:`IkecoreEnd` is one such process (the command above plus ``--keylog FILE``
in its work directory, output in ``NAME.log``), stopped by its PID. Its key log holds
the IKE records (``ICOOKIE,KEY``) and one Wireshark ``esp_sa`` record per Quick Mode
SA direction (``"IPv4","SRC","DST","0xSPI",...``); :func:`esp_options` turns the
latter into tshark options that decrypt and authenticate a capture of the tunnel.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from interop import netns

__all__ = ["PSK", "IkecoreEnd", "ikecore_command", "esp_options", "esp_records", "same_records",
           "tools_missing", "require_tools"]

PSK = "S"


def ikecore_command() -> list[str]:
    """The ``ikecore`` console script next to this Python (the venv's), or ``-m ikecore``."""
    script = Path(sys.executable).with_name("ikecore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ikecore"]


def esp_records(lines: Iterable[str]) -> list[str]:
    """The ``esp_sa`` records among key log lines."""
    return [line.strip() for line in lines if line.startswith('"IPv4"') or line.startswith('"IPv6"')]


def _normal(record: str) -> tuple[str, ...]:
    cells = [c.strip('"') for c in record.split(",")]
    cells[3] = f"0x{int(cells[3], 16):08x}"  # SPI
    cells[5], cells[7] = cells[5].lower(), cells[7].lower()  # keys
    return tuple(cells)


def same_records(one: Iterable[str], other: Iterable[str]) -> bool:
    """Whether two lists of ``esp_sa`` records name the same SAs, keys and algorithms."""
    return sorted(map(_normal, one)) == sorted(map(_normal, other))


def esp_options(records: Iterable[str]) -> list[str]:
    """tshark options: ESP decryption and ICV checking with these ``esp_sa`` records."""
    options = ["-o", "esp.enable_encryption_decode:TRUE",
               "-o", "esp.enable_authentication_check:TRUE"]
    for record in records:
        options += ["-o", f"uat:esp_sa:{record}"]
    return options


class IkecoreEnd:
    """One ``ikecore serve`` or ``ikecore connect --keep`` inside a namespace."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.ns = ns
        self.keylog = workdir / f"{name}.keys"
        self.log = workdir / f"{name}.log"
        self.argv = [*argv, "--keylog", str(self.keylog)]
        self.process = netns.spawn(ns, self.argv, log=self.log)

    @classmethod
    def serve(cls, pair: netns.NetnsPair, workdir: Path, *, side: str = "b",
              driver: str = "userland", extra: Sequence[str] = ()) -> IkecoreEnd:
        """``ikecore serve --listen ADDR:500 ...`` on ``side``; waits for "listening on"."""
        mine, other = _sides(pair, side)
        argv = [*ikecore_command(), "serve", "--listen", f"{mine['addr']}:500", "--psk", PSK,
                "--driver", driver, "--local-ts", mine["subnet"], "--remote-ts", other["subnet"],
                *extra]
        end = cls(f"serve-{side}", mine["ns"], argv, workdir)
        end.wait_for(lambda: "listening on" in end.output(), 30, "the 'listening on' line")
        return end

    @classmethod
    def connect(cls, pair: netns.NetnsPair, workdir: Path, *, side: str = "a",
                driver: str = "userland", extra: Sequence[str] = ()) -> IkecoreEnd:
        """``ikecore connect OTHER:500 --local ADDR ... --keep`` on ``side`` (not waited for)."""
        mine, other = _sides(pair, side)
        argv = [*ikecore_command(), "connect", f"{other['addr']}:500", "--local", mine["addr"],
                "--psk", PSK, "--driver", driver, "--local-ts", mine["subnet"],
                "--remote-ts", other["subnet"], "--keep", *extra]
        return cls(f"connect-{side}", mine["ns"], argv, workdir)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def keylog_lines(self) -> list[str]:
        try:
            return self.keylog.read_text().splitlines()
        except OSError:
            return []

    def esp_records(self) -> list[str]:
        return esp_records(self.keylog_lines())

    def wait_for(self, predicate: object, timeout: float, what: str) -> None:
        """Poll ``predicate()`` every 50 ms until true; fail naming ``what`` and the output."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) before "
                                     f"{what}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s:\n"
                                     f"{self.output()[-3000:]}")
            time.sleep(0.05)

    def wait_tunnel(self, timeout: float = 30.0, sas: int = 1) -> list[str]:
        """Wait until the key log holds both directions of ``sas`` Quick Mode SAs and the
        route to the remote selector exists; returns the ``esp_sa`` records."""
        self.wait_for(lambda: len(self.esp_records()) >= 2 * sas, timeout,
                      f"{2 * sas} esp_sa records in --keylog")
        return self.esp_records()

    def routes(self) -> str:
        out = subprocess.run(["ip", "-n", self.ns, "route", "show", "table", "all"],
                             capture_output=True, text=True, check=False, timeout=10)
        return out.stdout

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        return netns.stop(self.process)

    def __enter__(self) -> IkecoreEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sides(pair: netns.NetnsPair, side: str) -> tuple[dict[str, str], dict[str, str]]:
    if side not in ("a", "b"):
        raise ValueError("side must be 'a' or 'b'")
    a = {"ns": pair.ns_a, "addr": pair.addr_a, "inner": pair.inner_a, "subnet": pair.subnet_a}
    b = {"ns": pair.ns_b, "addr": pair.addr_b, "inner": pair.inner_b, "subnet": pair.subnet_b}
    return (a, b) if side == "a" else (b, a)


def tools_missing() -> str | None:
    """None when the recipe can run here (root, iproute2, ping, iperf3, tshark)."""
    return netns.available() or netns.tool_missing("ping", "iperf3", "tshark")


def require_tools(reason: str | None) -> None:
    """Skip (a laptop without the tool) or fail (``IKECORE_REQUIRE_INTEROP=1``) on ``reason``."""
    if reason is None:
        return
    import pytest

    from conftest import interop_required
    if interop_required():
        pytest.fail(f"{reason} (IKECORE_REQUIRE_INTEROP=1)", pytrace=False)
    pytest.skip(reason)
