"""Benchmark: the monitor page's first paint of the Security Associations view at 100,000 SAs.

A gateway's views over 100,000 ISAKMP SAs (each with its IPsec SA: copies, with fresh
handles, cookies and peer addresses, of SAs really negotiated in memory; negotiating
100,000 would only time the DH) are served by ``ikecore.monitor.web.WebServer`` on an
event loop of this process, through a ``ControlServer``'s code in-process as ``ikecore serve
--web`` does. Debian's headless Chromium (Selenium, Debian's chromedriver) opens the page;
timed in the browser (``performance.now()`` from the navigation's start to the first rows
drawn in the table):

* ``web_first_paint_100k_seconds``: the page opened on Main Mode > Security Associations,
  target < 1 s (the anchor); the median of ``--rounds`` fresh loads;
* ``web_sorted_paint_100k_seconds``: a click on the Peer header until the rows sorted by
  peer are drawn (the gateway sorts its 100,000 SAs), no target (anchor 1 s for scale).

Output lines: ``name  ikecore  anchor  ratio`` (ratio = ikecore / anchor; below 1 is
within the target).
Run: .venv/bin/python bench/bench_web.py [--sas 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _line(name: str, ours: float, anchor: float | None, ratio: float | None, note: str = "") -> None:
    a = f"{anchor:.4g}" if anchor is not None else "n/a"
    r = f"{ratio:.2f}" if ratio is not None else "-"
    print(f"{name:<34} {ours:>10.4g} {a:>10} {r:>7}  {note}".rstrip(), flush=True)


def _address(index: int) -> str:
    return f"10.{index // 62500}.{index // 250 % 250}.{1 + index % 250}"


def make_views(sas: int) -> Any:
    """Views over an engine holding ``sas`` copies of SAs negotiated in memory."""
    from ikecore.engine.core import Engine
    from ikecore.gateway.gc_tuning import tune_gc
    from ikecore.monitor.counters import Monitor
    from ikecore.monitor.hostinfo import HostConfig
    from ikecore.monitor.views import Views

    from tests.helpers import RESPONDER, Link

    tune_gc()
    link = Link()
    for i in range(8):
        link.initiator.initiate(RESPONDER, local=(f"127.0.0.{10 + i}", 500), now=link.now)
    link.pump(rounds=200)
    templates = [sa for sa in link.responder.sas() if sa.state.value == "ESTABLISHED" and sa.ipsec_sas]
    engine = Engine(link.responder.config)
    rng = os.urandom
    for i in range(sas):
        template = templates[i % len(templates)]
        handle = i + 1
        engine._sas[handle] = dataclasses.replace(
            template, handle=handle, initiator_cookie=rng(8), responder_cookie=rng(8), remote=(_address(i), 500),
            quick_modes={}, ipsec_sas=[dataclasses.replace(x, handle=handle, spi_in=rng(4), spi_out=rng(4))
                                       for x in template.ipsec_sas])
    return Views(engine, Monitor(), clock=lambda: link.now, host=HostConfig())


async def _close(server: Any) -> None:
    server.close()
    await asyncio.sleep(0.05)  # the sampler's task ends


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sas", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args, _unknown = parser.parse_known_args()
    from interop import chromium

    reason = chromium.available()
    if reason is not None:
        print(f"web_first_paint_100k_seconds skipped: {reason}", flush=True)
        return 0
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.web import WebServer, local_source
    from selenium.webdriver.common.by import By

    views = make_views(args.sas)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(local_source(ControlServer(views)))
    host, port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(30)
    url = f"http://{host}:{port}/#main-mode/security-associations"
    driver = chromium.browser()
    try:
        driver.get("about:blank")
        paints, sorts = [], []
        for _ in range(max(1, args.rounds)):
            driver.get("about:blank")
            driver.get(url)
            deadline = time.monotonic() + 30
            painted = None
            while painted is None and time.monotonic() < deadline:
                painted = driver.execute_script("return window.__ikecoreFirstPaint || null")
                time.sleep(0.01)
            total = driver.execute_script("return document.body.dataset.total")
            if painted is None or total != str(args.sas):
                raise SystemExit(f"the page drew no rows of {args.sas} SAs (total {total!r})")
            paints.append(float(painted) / 1000.0)
            started = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, '#grid thead th[data-col="peer"]').click()
            while time.monotonic() < deadline:
                key = driver.execute_script("return document.body.dataset.key") or ""
                if key.endswith("&sort=peer") and driver.execute_script("return document.body.dataset.painted") != "0":
                    break
                time.sleep(0.005)
            sorts.append(time.perf_counter() - started)
        rows = driver.execute_script("return document.querySelectorAll('#grid tbody tr').length")
    finally:
        driver.quit()
        asyncio.run_coroutine_threadsafe(_close(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    paint = statistics.median(paints)
    _line("web_first_paint_100k_seconds", paint, 1.0, paint / 1.0,
          f"(target < 1 s; {args.sas} SAs, {rows} rows drawn, median of {len(paints)} loads)")
    sort = statistics.median(sorts)
    _line("web_sorted_paint_100k_seconds", sort, 1.0, sort / 1.0, "(click on Peer until the sorted rows are drawn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
